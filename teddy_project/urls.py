from django.contrib import admin
from django.urls import path

from eventsourcing_app import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", views.health_live, name="health-live"),
    path("health/ready/", views.health_ready, name="health-ready"),
]
