"""/api/v1/: the parents' API; /api/schema/ and /api/docs/: its OpenAPI description."""
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

v1 = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("children/", views.ChildrenView.as_view(), name="api-children"),
    path("children/<str:child_id>/", views.ChildDetailView.as_view(), name="api-child"),
    path("children/<str:child_id>/device/", views.DeviceView.as_view(), name="api-child-device"),
    path("children/<str:child_id>/safety-settings/", views.SafetySettingsView.as_view(), name="api-child-safety"),
    path("children/<str:child_id>/consent/", views.ConsentView.as_view(), name="api-child-consent"),
    path("children/<str:child_id>/conversations/", views.ChildConversationsView.as_view(),
         name="api-child-conversations"),
    path("children/<str:child_id>/talk-time/", views.TalkTimeView.as_view(), name="api-child-talk-time"),
    path("children/<str:child_id>/timeline/", views.TimelineView.as_view(), name="api-child-timeline"),
    path("conversations/<str:conversation_id>/", views.ConversationDetailView.as_view(), name="api-conversation"),
    path("alerts/", views.AlertsView.as_view(), name="api-alerts"),
    path("alerts/<str:alert_id>/acknowledge/", views.AcknowledgeAlertView.as_view(), name="api-alert-acknowledge"),
]

urlpatterns = [
    path("v1/", include((v1, "v1"))),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
