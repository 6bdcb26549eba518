"""The Celery application: Redis as broker, tasks discovered in the Django apps."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teddy_project.settings")

app = Celery("teddy_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _connect_context_propagation() -> None:
    from eventsourcing_app.observability import connect_celery_signals

    connect_celery_signals()


_connect_context_propagation()
