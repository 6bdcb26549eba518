"""Erasure (crypto-shredding) and subject access export for a child.

erase_child_data: in one transaction, records `ChildDataErased` (who asked, why; the
request's correlation id is in its metadata), destroys the data keys of the child and of
every alias of it (from stream migrations) and drops their snapshots from the mirror; after
the commit, best effort and logged: tells every process to drop the keys, drops cached
aggregates and publishes snapshot tombstones. Either all of the transaction happens or none
of it. From then on every encrypted field of every event, snapshot and cache entry written
for the child reads as None wherever the bytes are (mirror, Kafka, backups); the hash chains
still verify (they cover the ciphertext), and no new personal data is accepted for the child.

export_child_data: everything held about a child, decrypted, as one JSON-ready dict.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import metrics
from ..domain import Child, Parent
from ..eventstore import AggregateNotFoundError, deserialize_event, get_aggregate_cache, get_event_sourcing_service
from ..eventstore.serialization import json_data, parse_stream_id, subject_name
from .actors import Actor
from .errors import NotFound, PermissionDenied
from .unit_of_work import run_command

logger = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    child_id: str
    key_destroyed: bool
    subjects: list[str]
    streams: list[str]
    encrypted_events: int
    snapshots_dropped: int
    erasure_version: int | None
    left_to_do: list[str] = field(default_factory=list)  # after-commit steps that did not go through

    def __str__(self) -> str:
        left = f"; not done (retried by their own mechanisms): {', '.join(self.left_to_do)}" if self.left_to_do else ""
        return (f"child {self.child_id}: data key {'destroyed' if self.key_destroyed else 'was already gone'}"
                f" ({', '.join(self.subjects)}); {self.encrypted_events} encrypted events in {len(self.streams)} "
                f"streams are now unreadable; {self.snapshots_dropped} snapshots dropped; erasure recorded at "
                f"version {self.erasure_version}{left}")


def child_subjects(child_id: str) -> list[str]:
    """The child's data subject and its aliases (the same child under an older or newer id)."""
    store = get_event_sourcing_service().event_store
    return sorted(store.recorder.subject_aliases(subject_name("child", child_id)))


def streams_of_child(child_id: str, subjects: list[str] | None = None) -> list[str]:
    """The child's own stream(s) and every stream holding data encrypted for the child (the
    child's subjects, if already known)."""
    recorder = get_event_sourcing_service().event_store.recorder
    subjects = subjects if subjects is not None else child_subjects(child_id)
    own = {f"child.{s.split(':', 1)[1]}" for s in subjects}
    return recorder.existing_streams(set(recorder.streams_of_subjects(subjects)) | own)


def erase_child_data(*, actor: Actor, child_id: str, reason: str) -> ErasureReport:
    service = get_event_sourcing_service()
    store = service.event_store
    recorder, protection = store.recorder, store.field_protection
    done: dict = {}

    def decide(uow) -> str:
        # Read again on every attempt (a migration may commit between two).
        subjects = done["subjects"] = child_subjects(child_id)
        live = _live_child_id(child_id)  # after a migration, the erasure is recorded on the new stream
        child = uow.load_own_child(live)
        if not child.erased:
            child.erase_personal_data(erased_by=actor.id, reason=reason)  # refuses a bad reason first
            uow.save(child)
            # Saved first (the stream lock), then the subjects' locks, the order appends take
            # them in: an append in flight for the child finishes first; later ones see the key gone.
            uow.service.save_aggregate_sync(child, actor=actor.id)
        done["destroyed"] = protection.destroy_keys(subjects)
        done["streams"] = streams_of_child(child_id, subjects)
        done["snapshot_streams"] = sorted(set(recorder.snapshot_streams_of_subjects(subjects)) | set(done["streams"]))
        done["dropped"] = service.snapshot_store.delete_snapshots(done["snapshot_streams"])
        done["version"] = child.version
        return child.stream_id

    run_command(actor, decide)
    if done["destroyed"]:
        metrics.ERASURES.inc()
    subjects = done["subjects"]
    left = []
    if not protection.announce_erasure(subjects):
        left.append("broadcast to other processes")
    cache = get_aggregate_cache()
    if cache is not None and not cache.delete(done["streams"]):
        left.append("dropping cached aggregates (they no longer open)")
    service.snapshot_store.publish_tombstones(done["snapshot_streams"])
    report = ErasureReport(child_id, bool(done["destroyed"]), subjects, done["streams"],
                           recorder.count_subject_events(done["streams"], subjects), done["dropped"], done["version"],
                           left)
    logger.info("erasure by %s (%s): %s", actor.id, reason, report)
    return report


def _live_child_id(child_id: str) -> str:
    """The id whose stream is open: a migrated child's stream is followed to the one it moved to."""
    recorder = get_event_sourcing_service().event_store.recorder
    parse_stream_id(f"child.{child_id}")  # an id that cannot be a child's is named as such
    stream, seen = recorder.stream(f"child.{child_id}"), set()
    if stream is None:
        raise NotFound(f"no child {child_id} (stream child.{child_id} does not exist)")
    while stream.migrated_to and stream.migrated_to not in seen:
        seen.add(stream.stream_id)
        following = recorder.stream(stream.migrated_to)
        if following is None:
            break
        stream = following
    return stream.stream_id.split(".", 1)[1]


def export_child_data(*, actor: Actor, child_id: str) -> dict:
    """A data subject access export: the child's current state and every event held about it."""
    service = get_event_sourcing_service()
    if not (actor.is_parent or actor.acts_for_any_family):
        raise PermissionDenied(f"{actor.id} acts neither as a parent nor as staff or a system job")
    try:
        child = service.load_aggregate_sync(Child, child_id)
    except AggregateNotFoundError:
        raise NotFound(f"no child {child_id}") from None
    if actor.is_parent and child.parent_id != actor.parent_id:
        raise NotFound(f"no child {child_id}")
    store = service.event_store
    subjects = child_subjects(child_id)
    export: dict = {
        "subject": subject_name("child", child_id),
        "subjects": subjects,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "exported_by": actor.id,
        # Erased also when reached through an alias (a migrated id) whose own stream is closed.
        "erased": bool(child.erased) or any(m.erased for m in store.recorder.key_materials(subjects).values()),
        "child": child.to_snapshot(),
        "streams": {},
    }
    for stream_id in streams_of_child(child_id, subjects):
        export["streams"][stream_id] = [_event_entry(stored) for stored in store.load_events_sync(stream_id)]
    parent_id = child.parent_id
    if parent_id and store.get_stream_version_sync(f"parent.{parent_id}"):
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
