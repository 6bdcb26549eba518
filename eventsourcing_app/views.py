"""Health endpoints: /health/ says the process is alive, /health/ready/ checks its dependencies.

Readiness checks the database, Redis and the Kafka broker, and whether publishing drains:
"kafka_publishing" is down while an event has waited in the outbox longer than
EVENTSTORE_PUBLISH_LAG_ALERT_SECONDS (the backlog and the oldest waiting event's age say how
bad), whatever this one process's producer believes. Streams held by a poison event are listed
but do not count as down: they need a person, not a restart.
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from .kafka.config import KafkaSettings


@require_GET
def health_live(request):
    return JsonResponse({"status": "alive"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM eventstore_stream LIMIT 1")


def _check_redis() -> None:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


def _check_kafka() -> None:
    kafka = KafkaSettings.from_django()
    topics = AdminClient(kafka.admin_config()).list_topics(timeout=3).topics
    missing = [t for t in kafka.event_topics().values() if t not in topics]
    if missing:
        raise RuntimeError(f"topics missing: {', '.join(missing)} (run `manage.py provision_topics`)")


def _check_publishing() -> dict:
    from .eventstore import get_event_store
    recorder = get_event_store().recorder
    held = recorder.held_streams()  # every stream a poison event holds
    oldest = recorder.oldest_unpublished(exclude=held)
    age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
    details = {"backlog": recorder.outbox_backlog(), "oldest_waiting_seconds": round(max(age, 0.0), 1),
               "held_by_poison_events": len(held)}
    limit = settings.EVENTSTORE["PUBLISH_LAG_ALERT_SECONDS"]
    if age > limit:
        raise _Down(f"events have waited {age:.0f}s for Kafka (more than {limit:.0f}s): publishing does not drain; "
                    "see the worker's log for why", details)
    return details


class _Down(Exception):
    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


@require_GET
def health_ready(request):
    checks = {}
    for name, check in (("database", _check_database), ("redis", _check_redis), ("kafka", _check_kafka),
                        ("kafka_publishing", _check_publishing)):
        try:
            details = check()
            checks[name] = {"status": "up", **(details or {})}
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            checks[name] = {"status": "down", "error": str(exc) or type(exc).__name__,
                            **getattr(exc, "details", {})}
    down = [name for name, result in checks.items() if result["status"] == "down"]
    body = {"status": "ready" if not down else "unavailable", "down": down, "checks": checks}
    return JsonResponse(body, status=200 if not down else 503)
