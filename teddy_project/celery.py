"""The Celery application: Redis as broker, tasks discovered in the Django apps."""
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teddy_project.settings")

app = Celery("teddy_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _connect_context_propagation() -> None:
    from eventsourcing_app.observability import connect_celery_signals

    connect_celery_signals()


_connect_context_propagation()


@signals.worker_init.connect(weak=False)
def _serve_worker_metrics(**kwargs) -> None:
    """In the worker's main process, before its pool starts: WORKER_METRICS_PORT's /metrics."""
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        from eventsourcing_app.operations.metrics import serve_worker_metrics

        serve_worker_metrics(settings.WORKER_METRICS_PORT)


@signals.setup_logging.connect(weak=False)
def _use_django_logging(loglevel=None, logfile=None, **kwargs) -> None:
    """Workers and beat log like the web server (LOG_FORMAT, the context's ids on each line)
    instead of Celery's own format: connecting this signal stops Celery configuring logging.
    LOG_LEVEL sets the level, unless `--loglevel` is on the command line (Celery always passes
    one, WARNING when none was given: only an explicit one wins); `--logfile` takes the
    console's place."""
    import logging.config
    import sys

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    root = logging.getLogger()
    explicit = any(arg == "-l" or arg.startswith(("--loglevel", "-l")) for arg in sys.argv[1:])
    if loglevel and explicit:
        root.setLevel(loglevel.upper() if isinstance(loglevel, str) else loglevel)
    if logfile:
        for console in list(root.handlers):
            handler = logging.FileHandler(logfile, encoding="utf-8")
            handler.setFormatter(console.formatter)
            for log_filter in console.filters:
                handler.addFilter(log_filter)
            root.removeHandler(console)
            root.addHandler(handler)
