"""Stream migration: copy a stream to a new id, transforming its events on the way.

In one transaction: the old stream's row is locked first (appends to it wait from then on),
its events are read a chunk at a time at their newest schema version (upcast, decrypted),
passed through the transformation registered for their type (if any) and appended to the new
stream, which must not exist; then the old stream is closed (later appends to it are refused
with `StreamClosedError` naming the new stream) and both rows record the link. Nothing
appended to the old stream can fall between the copy and the switch.

Personal data: when the stream's own id names its data subject (a child's stream `child.A`
holds events for subject `child:A`), the copies are written for the new id's subject
(`child:B`), so they are encrypted under the new subject's key; and the two subjects become
aliases of each other, so that erasing either erases both (the old stream, and other streams
still written for the old id, such as conversations, are covered too).

New events get ids derived from the old ones, so running the same migration twice cannot
copy anything twice.
"""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Callable

from django.db import transaction

from ..domain.events import DomainEvent
from ..eventstore import EventStoreError, ExpectedVersion, build_event_store, deserialize_event, get_event_store
from ..eventstore.serialization import parse_stream_id, subject_name

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
    subject_alias: tuple[str, str] | None = None

    def __str__(self) -> str:
        alias = (f"; {self.subject_alias[1]} is an alias of {self.subject_alias[0]} (erasing either erases both)"
                 if self.subject_alias else "")
        return (f"{self.old_stream} -> {self.new_stream}: {self.copied} events copied, {self.dropped} dropped; "
                f"{self.old_stream} is closed{alias}")


def migrate_stream(old_stream_id: str, new_stream_id: str, *, actor: str | None = None, chunk: int = 1000,
                   progress: Callable[[int, int], None] | None = None) -> MigrationReport:
    old_type, old_id = parse_stream_id(old_stream_id)
    new_type, new_id = parse_stream_id(new_stream_id)
    if old_stream_id == new_stream_id:
        raise EventStoreError("the new stream id must differ from the old one")
    store = get_event_store()
    # The copies are not handed to Kafka on commit (that would keep every copied event in
    # memory until then): the outbox relay publishes them, a batch at a time.
    copier = build_event_store(publish=False)
    recorder = store.recorder
    copied = dropped = 0
    aliases: set[tuple[str, str]] = set()
    with transaction.atomic(using=recorder.alias):
        old = recorder.lock_stream(old_stream_id)  # appends to the old stream wait from here
        if old is None or old.version == 0:
            raise EventStoreError(f"stream {old_stream_id} does not exist")
        if old.migrated_to:
            raise EventStoreError(f"stream {old_stream_id} was already migrated to {old.migrated_to}")
        if store.get_stream_version_sync(new_stream_id) > 0:
            raise EventStoreError(f"stream {new_stream_id} already exists; a migration never overwrites a stream")
        version = 0
        for first in range(1, old.version + 1, chunk):
            migrated: list[DomainEvent] = []
            for stored in store.load_events_sync(old_stream_id, first, min(first + chunk - 1, old.version)):
                event = deserialize_event(stored)
                before = _subject_of(event)
                transform = _transformations.get(event.event_type)
                produced = transform(event, old_stream_id, new_stream_id) if transform else event
                produced = [] if produced is None else produced if isinstance(produced, list) else [produced]
                if not produced:
                    dropped += 1
                for index, new_event in enumerate(produced):
                    new_event = copy.copy(new_event)
                    new_event.event_id = str(uuid.uuid5(_MIGRATION_NAMESPACE,
                                                        f"{stored.event_id}/{index}/{new_stream_id}"))
                    new_event.occurred_at = stored.metadata.timestamp
                    _rename_subject(new_event, old_type, old_id, new_type, new_id)
                    after = _subject_of(new_event)
                    if before and after and before != after:
                        aliases.add((before, after))
                    migrated.append(new_event)
            if migrated:
                result = copier.append_events_sync(
                    new_stream_id, migrated, expected_version=version or ExpectedVersion.NO_STREAM,
                    correlation_id=f"migrate:{old_stream_id}"[:100], actor=actor)
                version = result.last_version
                copied += len(migrated)
            if progress:
                progress(min(first + chunk - 1, old.version), old.version)
        if copied == 0:
            raise EventStoreError(f"the transformations dropped every event of {old_stream_id}; nothing to migrate")
        recorder.link_migration(old_stream_id, new_stream_id)
        for before, after in sorted(aliases):
            recorder.add_subject_alias(before, after)
    return MigrationReport(old_stream_id, new_stream_id, copied, dropped, min(aliases) if aliases else None)


def _subject_of(event: DomainEvent) -> str | None:
    subject = type(event).data_subject
    value = getattr(event, subject[1], None) if subject else None
    return subject_name(subject[0], value) if isinstance(value, str) and value else None


def _rename_subject(event: DomainEvent, old_type: str, old_id: str, new_type: str, new_id: str) -> None:
    """Writes the copy for the new stream's subject when the event was for the old stream's own
    (a child's stream `child.A` migrated to `child.B`: its events become child B's)."""
    subject = type(event).data_subject
    if subject is None or subject[0] != old_type or new_type != old_type:
        return
    value = getattr(event, subject[1], None)
    if value == old_id:
        setattr(event, subject[1], type(value)(new_id))
