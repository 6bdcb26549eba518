"""Readiness: the database, Redis, the Kafka broker, whether publishing drains, and whether
the projectors keep up.

"kafka_publishing" is down while an event has waited in the outbox longer than
EVENTSTORE_PUBLISH_LAG_ALERT_SECONDS (the backlog and the oldest waiting event's age say how
bad), or while a refill is unfinished, whatever this one process's producer believes. Streams
held by a poison event are counted but do not make it down: they need a person, not a restart.
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis
from confluent_kafka.admin import AdminClient
from django.conf import settings

from ..eventstore import get_event_store
from ..kafka.config import KafkaSettings


class Down(Exception):
    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def check_database() -> None:
    get_event_store().recorder.stream_version("health.check")


def check_redis() -> None:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


def check_kafka() -> None:
    kafka = KafkaSettings.from_django()
    topics = AdminClient(kafka.admin_config()).list_topics(timeout=3).topics
    missing = [t for t in kafka.event_topics().values() if t not in topics]
    if missing:
        raise Down(f"topics missing: {', '.join(missing)} (run `manage.py provision_topics`)")


def check_publishing() -> dict:
    recorder = get_event_store().recorder
    held = recorder.held_streams()  # every stream a poison event holds
    oldest = recorder.oldest_unpublished(exclude=held)
    age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
    details = {"backlog": recorder.outbox_backlog(), "oldest_waiting_seconds": round(max(age, 0.0), 1),
               "held_by_poison_events": len(held)}
    unfinished = recorder.maintenance()
    if unfinished:
        name, started, _ = unfinished[0]
        raise Down(f"a {name} started at {started:%Y-%m-%d %H:%M:%S} UTC did not finish: nothing is published until "
                   "it does (run `manage.py refill_kafka` again, with --recreate-topics if it was meant to empty the "
                   "topics)", details)
    limit = settings.EVENTSTORE["PUBLISH_LAG_ALERT_SECONDS"]
    if age > limit:
        raise Down(f"events have waited {age:.0f}s for Kafka (more than {limit:.0f}s): publishing does not drain; "
                   "see the worker's log for why", details)
    return details


def check_projections() -> dict:
    """Down while a projector leaves an event unapplied longer than the alert limit (no worker
    feeds it, or it is stuck), with the dead letters counted."""
    from ..readside.operations import overdue_projectors

    limit = settings.PROJECTIONS["LAG_ALERT_SECONDS"]
    overdue, dead_letters = overdue_projectors(limit)
    details = {"dead_letters": dead_letters}
    if overdue:
        raise Down(f"projectors {', '.join(overdue)} have not applied events recorded more than {limit:.0f}s ago: "
                   "the parents' API reads stale data; check that a Celery worker runs and its log", details)
    return details


CHECKS = (("database", check_database), ("redis", check_redis), ("kafka", check_kafka),
          ("kafka_publishing", check_publishing), ("projections", check_projections))


def readiness() -> dict:
    """{"status": "ready" | "unavailable", "down": [...], "checks": {name: {"status": ..., ...}}}."""
    checks = {}
    for name, check in CHECKS:
        try:
            checks[name] = {"status": "up", **(check() or {})}
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            checks[name] = {"status": "down", "error": str(exc) or type(exc).__name__,
                            **getattr(exc, "details", {})}
    down = [name for name, result in checks.items() if result["status"] == "down"]
    return {"status": "ready" if not down else "unavailable", "down": down, "checks": checks}
