from django.apps import AppConfig


class EventsourcingAppConfig(AppConfig):
    name = "eventsourcing_app"
    verbose_name = "Event store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
