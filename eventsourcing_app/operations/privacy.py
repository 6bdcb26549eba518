"""Erasure (crypto-shredding) and subject access export for a child.

forget_child: destroys the child's data key, so every encrypted field of every event,
snapshot and cache entry written for the child (child stream, conversations) reads as None from
now on, wherever the bytes are (mirror, Kafka, backups); drops the child's snapshots (mirror
and Kafka tombstones) and cached aggregates; appends ChildDataErased. Nothing is deleted from
the immutable log, so the hash chains still verify.

export_child: everything held about a child, decrypted, as one JSON-ready dict.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from ..domain import Child, Parent
from ..eventstore import (
    AggregateNotFoundError,
    ConcurrencyError,
    deserialize_event,
    get_aggregate_cache,
    get_event_sourcing_service,
)
from ..eventstore.serialization import json_data
from ..models import Event, Snapshot, Stream, SubjectStream
from ..privacy.fields import subject_name
from ..privacy.keys import get_subject_keys

logger = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    child_id: str
    key_destroyed: bool
    streams: list[str]
    encrypted_events: int
    snapshots_dropped: int
    erasure_version: int | None

    def __str__(self) -> str:
        return (f"child {self.child_id}: data key {'destroyed' if self.key_destroyed else 'was already gone'}; "
                f"{self.encrypted_events} encrypted events in {len(self.streams)} streams are now unreadable; "
                f"{self.snapshots_dropped} snapshots dropped; erasure recorded at version {self.erasure_version}")


def child_subject(child_id: str) -> str:
    return subject_name("child", child_id)


def streams_of_child(child_id: str) -> list[str]:
    """The child's own stream and every stream holding data encrypted for the child."""
    subject = child_subject(child_id)
    streams = set(SubjectStream.objects.filter(subject=subject).values_list("stream_id", flat=True))
    streams.add(f"child.{child_id}")
    return sorted(Stream.objects.filter(pk__in=streams).values_list("stream_id", flat=True))


def forget_child(child_id: str, *, actor: str | None = None) -> ErasureReport:
    service = get_event_sourcing_service()
    stream_id = f"child.{child_id}"
    if not Stream.objects.filter(pk=stream_id).exists():
        raise AggregateNotFoundError(f"no child {child_id} (stream {stream_id} does not exist)")
    subject = child_subject(child_id)
    streams = streams_of_child(child_id)

    key_destroyed = get_subject_keys().destroy(subject)
    snapshot_streams = set(Snapshot.objects.filter(data_subject=subject).values_list("stream_id", flat=True))
    snapshots_dropped = service.snapshot_store.delete_snapshots(sorted(snapshot_streams | set(streams)))
    cache = get_aggregate_cache()
    if cache is not None:
        cache.delete(streams)

    erasure_version = None
    for _ in range(5):  # a concurrent save may win the race: reload and try again
        child = service.load_aggregate_sync(Child, child_id)
        if child.erased:
            erasure_version = child.version
            break
        child.erase_personal_data(erased_by=actor)
        try:
            service.save_aggregate_sync(child, actor=actor)
            erasure_version = child.version
            break
        except ConcurrencyError:
            continue
    report = ErasureReport(child_id, key_destroyed, streams,
                           Event.objects.filter(stream_id__in=streams, data_subject=subject).count(), snapshots_dropped,
                           erasure_version)
    logger.info("erasure: %s", report)
    return report


def export_child(child_id: str) -> dict:
    """A data subject access export: the child's current state and every event held about it."""
    service = get_event_sourcing_service()
    child = service.load_aggregate_sync(Child, child_id)
    store = service.event_store
    export: dict = {
        "subject": child_subject(child_id),
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "erased": bool(child.erased),
        "child": child.to_snapshot(),
        "streams": {},
    }
    for stream_id in streams_of_child(child_id):
        export["streams"][stream_id] = [_event_entry(stored) for stored in store.load_events_sync(stream_id)]
    parent_id = child.parent_id
    if parent_id and Stream.objects.filter(pk=f"parent.{parent_id}").exists():
        mentions = [stored for stored in store.load_events_sync(f"parent.{parent_id}")
                    if stored.data.get("child_id") == child_id]
        export["streams"][f"parent.{parent_id}"] = [_event_entry(stored) for stored in mentions]
        try:
            parent = service.load_aggregate_sync(Parent, parent_id)
            export["consent"] = next((c for c in parent.to_snapshot()["consents"] if c["child_id"] == child_id), None)
        except AggregateNotFoundError:
            pass
    return export


def _event_entry(stored) -> dict:
    meta = stored.metadata
    return {
        "version": meta.version,
        "event_id": meta.event_id,
        "event_type": meta.event_type,
        "schema_version": meta.schema_version,
        "timestamp": meta.timestamp.isoformat(),
        "correlation_id": meta.correlation_id,
        "causation_id": meta.causation_id,
        "actor": meta.actor,
        "data": json_data(deserialize_event(stored)),
    }
