"""Celery tasks: thin wrappers around the operations the management commands call too."""
from __future__ import annotations

import logging
import os

from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from django.conf import settings

from .eventstore import get_event_store
from .kafka.config import KafkaSettings
from .kafka.topics import check_topics
from .operations.relay import KafkaUnavailableError, relay_outbox as relay

logger = logging.getLogger(__name__)


@shared_task(name="eventsourcing_app.tasks.relay_outbox", ignore_result=True)
def relay_outbox() -> int:
    """Publishes the outbox backlog; one relay at a time across all workers (the store's relay
    lock), each run bounded in time so that beat's next run finds the lock free again."""
    try:
        report = relay(get_event_store(), grace_seconds=settings.EVENTSTORE["RELAY_GRACE_SECONDS"],
                       batch_size=settings.EVENTSTORE["RELAY_BATCH_SIZE"], time_budget=30.0)
        return report.published
    except KafkaUnavailableError as exc:
        logger.warning("outbox relay skipped: %s", exc)
        return 0


@shared_task(name="eventsourcing_app.tasks.create_snapshot", ignore_result=True)
def create_snapshot(stream_id: str) -> int | None:
    """Snapshots a stream at its current version if it is due; returns the version."""
    from .application.maintenance import snapshot_if_due

    return snapshot_if_due(stream_id)


@worker_ready.connect
def check_at_start(**kwargs) -> None:
    """Refuses to run with a wrong master key; provisions missing topics before publishing."""
    from .checks import check_master_keys

    for error in check_master_keys(databases=["default"]):
        logger.critical("%s (%s)", error.msg, error.hint)
        os._exit(78)  # EX_CONFIG: a worker must not run with keys that cannot read the data
    try:
        check_topics(KafkaSettings.from_django())
    except Exception as exc:  # noqa: BLE001 - the worker still runs; events wait in the outbox
        logger.error("Kafka topics are not ready at worker start: %s", exc)


@worker_process_init.connect
def start_projections(**kwargs) -> None:
    """Each pool process runs the projection threads (one of all processes feeds each projector)."""
    from .readside.worker import start_projection_threads

    start_projection_threads()


@worker_process_shutdown.connect
def stop_projections(**kwargs) -> None:
    from .readside.worker import stop_projection_threads

    stop_projection_threads()
