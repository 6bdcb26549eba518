"""Builds the configured event store: the one place that wires recorder, publisher and settings."""
from __future__ import annotations

import os
import threading

from .recorders import recorder_for
from .store import EventStore

_lock = threading.Lock()
_store: EventStore | None = None
_store_pid: int | None = None
_snapshot_store = None
_service = None
_cache = None


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
    global _store, _store_pid, _snapshot_store, _service, _cache
    with _lock:
        if _store is None or _store_pid != os.getpid():
            _store, _store_pid = build_event_store(), os.getpid()
            _snapshot_store = _service = _cache = None
        return _store


def get_snapshot_store():
    """The process's snapshot store, publishing through the event store's producer."""
    global _snapshot_store
    from django.conf import settings

    from .snapshots import SnapshotStore

    store = get_event_store()
    with _lock:
        if _snapshot_store is None:
            config = settings.EVENTSTORE
            _snapshot_store = SnapshotStore(
                frequencies=config["SNAPSHOT_FREQUENCIES"], default_frequency=config["SNAPSHOT_FREQUENCY"],
                keep=config["SNAPSHOTS_KEPT"], publisher=store.publisher, kafka_settings=store.kafka_settings)
        return _snapshot_store


def get_aggregate_cache():
    """The Redis aggregate cache, or None when EVENTSTORE_AGGREGATE_CACHE_SECONDS is 0."""
    global _cache
    from django.conf import settings

    from .cache import AggregateCache

    seconds = settings.EVENTSTORE["AGGREGATE_CACHE_SECONDS"]
    if not seconds:
        return None
    with _lock:
        if _cache is None:
            _cache = AggregateCache(settings.REDIS_URL, seconds)
        return _cache


def get_event_sourcing_service():
    global _service
    from .service import EventSourcingService

    store, snapshots = get_event_store(), get_snapshot_store()
    with _lock:
        if _service is None:
            _service = EventSourcingService(store, snapshots)
        return _service


def schedule_snapshot(stream_id: str) -> None:
    """Asks a Celery worker to snapshot the stream; saving never waits for it."""
    import logging

    from ..tasks import create_snapshot

    try:
        create_snapshot.apply_async(args=[stream_id], retry=False)
    except Exception as exc:  # noqa: BLE001 - a snapshot is an optimisation; the save stands
        logging.getLogger(__name__).warning("could not schedule a snapshot of %s: %s", stream_id, exc)
