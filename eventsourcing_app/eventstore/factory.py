"""Builds the configured event store: the one place that wires recorder, publisher and settings."""
from __future__ import annotations

import os
import threading

from .recorders import recorder_for
from .store import EventStore

_lock = threading.Lock()
_store: EventStore | None = None
_store_pid: int | None = None


def build_event_store(*, kafka_settings=None, alias: str = "default", publish: bool | None = None) -> EventStore:
    """A new event store; tests and tools pass their own Kafka settings."""
    from django.conf import settings

    from ..kafka.config import KafkaSettings
    from ..kafka.publisher import EventPublisher

    kafka_settings = kafka_settings or KafkaSettings.from_django()
    recorder = recorder_for(alias)
    publish = settings.KAFKA_PUBLISH_ENABLED if publish is None else publish
    return EventStore(
        recorder=recorder,
        stream_types=kafka_settings.stream_types,
        max_event_bytes=settings.EVENTSTORE["MAX_EVENT_BYTES"],
        publisher=EventPublisher(kafka_settings, recorder) if publish else None,
        kafka_settings=kafka_settings,
    )


def get_event_store() -> EventStore:
    """The process's event store (a new one after a fork, e.g. in a Celery worker child)."""
    global _store, _store_pid
    with _lock:
        if _store is None or _store_pid != os.getpid():
            _store, _store_pid = build_event_store(), os.getpid()
        return _store
