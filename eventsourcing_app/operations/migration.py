"""Stream migration: copy a stream to a new id, transforming its events on the way.

Each event is read at its newest schema version (upcast, decrypted), passed through the
transformation registered for its type (if any), and appended to the new stream in one atomic
append that requires the new stream not to exist. New events get ids derived from the old
ones, so running the same migration twice cannot copy anything twice. Both stream rows record
the link (`migrated_to` / `migrated_from`).
"""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Callable

from django.db import transaction

from ..domain.events import DomainEvent
from ..eventstore import EventStoreError, ExpectedVersion, deserialize_event, get_event_store
from ..eventstore.serialization import parse_stream_id
from ..models import Stream

_MIGRATION_NAMESPACE = uuid.UUID("2f7a8d0c-5b1e-4c39-9a53-7d1f3e6b2a90")
# event_type -> fn(event, old_stream_id, new_stream_id) -> event(s) for the new stream, or None to drop it
_transformations: dict[str, Callable] = {}


def stream_transformation(event_type: str):
    """Registers how events of a type are rewritten when their stream is migrated."""

    def register(fn):
        _transformations[event_type] = fn
        return fn

    return register


@dataclass
class MigrationReport:
    old_stream: str
    new_stream: str
    copied: int
    dropped: int

    def __str__(self) -> str:
        return f"{self.old_stream} -> {self.new_stream}: {self.copied} events copied, {self.dropped} dropped"


def migrate_stream(old_stream_id: str, new_stream_id: str, *, actor: str | None = None) -> MigrationReport:
    parse_stream_id(old_stream_id)
    parse_stream_id(new_stream_id)
    if old_stream_id == new_stream_id:
        raise EventStoreError("the new stream id must differ from the old one")
    store = get_event_store()
    old = Stream.objects.filter(pk=old_stream_id).values_list("version", "migrated_to").first()
    if old is None or old[0] == 0:
        raise EventStoreError(f"stream {old_stream_id} does not exist")
    if old[1]:
        raise EventStoreError(f"stream {old_stream_id} was already migrated to {old[1]}")
    if store.get_stream_version_sync(new_stream_id) > 0:
        raise EventStoreError(f"stream {new_stream_id} already exists; a migration never overwrites a stream")

    migrated: list[DomainEvent] = []
    dropped = 0
    for stored in store.load_events_sync(old_stream_id):
        event = deserialize_event(stored)
        transform = _transformations.get(event.event_type)
        produced = transform(event, old_stream_id, new_stream_id) if transform else event
        produced = [] if produced is None else produced if isinstance(produced, list) else [produced]
        if not produced:
            dropped += 1
        for index, new_event in enumerate(produced):
            new_event = copy.copy(new_event)
            new_event.event_id = str(uuid.uuid5(_MIGRATION_NAMESPACE, f"{stored.event_id}/{index}/{new_stream_id}"))
            new_event.occurred_at = stored.metadata.timestamp
            migrated.append(new_event)
    if not migrated:
        raise EventStoreError(f"the transformations dropped every event of {old_stream_id}; nothing to migrate")

    with transaction.atomic():
        store.append_events_sync(new_stream_id, migrated, expected_version=ExpectedVersion.NO_STREAM,
                                 correlation_id=f"migrate:{old_stream_id}"[:100], actor=actor)
        Stream.objects.filter(pk=old_stream_id).update(migrated_to=new_stream_id)
        Stream.objects.filter(pk=new_stream_id).update(migrated_from=old_stream_id)
    return MigrationReport(old_stream_id, new_stream_id, len(migrated), dropped)
