from django.apps import AppConfig


class EventsourcingAppConfig(AppConfig):
    name = "eventsourcing_app"
    verbose_name = "Event store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import bootstrap, checks  # noqa: F401 - checks registers the system checks

        bootstrap.install()  # the composition root: store, Kafka, privacy, Celery wired together
