from django.contrib import admin
from django.urls import include, path

from eventsourcing_app import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("eventsourcing_app.api.urls")),
    path("health/", views.health_live, name="health-live"),
    path("health/ready/", views.health_ready, name="health-ready"),
    # Prometheus scrapes /metrics; no personal data is in it (labels name kinds, never ids).
    path("metrics", views.metrics, name="metrics"),
]

# Under /api/ errors keep the API's error shape; elsewhere Django's pages.
handler404 = "eventsourcing_app.api.errors.json_not_found"
handler500 = "eventsourcing_app.api.errors.json_server_error"
