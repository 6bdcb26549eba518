"""Health endpoints: /health/ says the process is alive, /health/ready/ checks its dependencies."""
from __future__ import annotations

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


@require_GET
def health_ready(request):
    checks = {}
    for name, check in (("database", _check_database), ("redis", _check_redis), ("kafka", _check_kafka)):
        try:
            check()
            checks[name] = {"status": "up"}
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            checks[name] = {"status": "down", "error": str(exc) or type(exc).__name__}
    down = [name for name, result in checks.items() if result["status"] == "down"]
    body = {"status": "ready" if not down else "unavailable", "down": down, "checks": checks}
    return JsonResponse(body, status=200 if not down else 503)
