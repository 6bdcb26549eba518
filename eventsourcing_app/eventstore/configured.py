"""The process's configured event store and its companions.

The store package does not build them: the composition root (`eventsourcing_app.bootstrap`,
installed when Django starts the app) does, with Kafka, privacy and Celery wired in. These
functions are the guide's entry points (`get_event_store()`, `get_event_sourcing_service()`,
...) and hand out what the root built.
"""
from __future__ import annotations

from typing import Protocol

from .errors import EventStoreError


class Provider(Protocol):
    def event_store(self): ...
    def build_event_store(self, **options): ...
    def snapshot_store(self): ...
    def aggregate_cache(self): ...
    def event_sourcing_service(self): ...
    def field_protection(self): ...
    def schedule_snapshot(self, stream_id: str) -> None: ...


_provider: Provider | None = None


def install(provider: Provider) -> None:
    global _provider
    _provider = provider


def _configured() -> Provider:
    if _provider is None:
        raise EventStoreError("the event store is not configured: run inside the Django project "
                              "(django.setup() installs eventsourcing_app.bootstrap)")
    return _provider


def get_event_store():
    """The process's event store (a new one after a fork, e.g. in a Celery worker child)."""
    return _configured().event_store()


def build_event_store(**options):
    """A new event store, wired like the configured one; tests and tools pass their own
    `kafka_settings=`, `publish=` or `alias=`."""
    return _configured().build_event_store(**options)


def get_snapshot_store():
    return _configured().snapshot_store()


def get_aggregate_cache():
    """The Redis aggregate cache, or None when EVENTSTORE_AGGREGATE_CACHE_SECONDS is 0."""
    return _configured().aggregate_cache()


def get_event_sourcing_service():
    return _configured().event_sourcing_service()


def get_field_protection():
    return _configured().field_protection()


def schedule_snapshot(stream_id: str) -> None:
    """Asks for a snapshot of the stream without waiting (fire and forget)."""
    _configured().schedule_snapshot(stream_id)
