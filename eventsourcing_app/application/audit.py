"""What compliance staff read from the audit trail: events with their personal fields masked or
revealed, what each event changed in its aggregate, the aggregate at any version, the link
of each event in its stream's hash chain, and export rows.

Masking is the default everywhere: a sensitive value is shown as MASK, never as ciphertext.
Revealing decrypts in this process for one answer; the caller records it in the access log
first (application/compliance.py). A value whose data key was destroyed reads as ERASED.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Sequence

from ..domain.aggregate import aggregate_classes
from ..eventstore import AggregateNotFoundError, deserialize_event, get_event_sourcing_service
from ..eventstore.errors import EventStoreError, MalformedEventError, SubjectErasedError
from ..eventstore.integrity import GENESIS_HASH, content_digest, next_chain_hash
from ..eventstore.records import StoredEvent
from ..eventstore.serialization import json_data, parse_stream_id
from ..privacy.cipher import is_envelope

MASK = "•••"
ERASED = "erased"


def utc_text(moment: datetime | None) -> str:
    """2026-12-01 16:37:45.123456 UTC: seconds (and below) and the zone, always."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


# --- events ------------------------------------------------------------------------------

def load_rows(queryset) -> list[StoredEvent]:
    """The StoredEvents of an Event queryset, in its order."""
    return get_event_sourcing_service().event_store.recorder.stored_events(queryset)


def masked_payload(payload: bytes) -> dict:
    """The payload as stored, each encrypted value replaced by MASK."""
    try:
        data = json.loads(payload)
    except ValueError:
        # Never the bytes themselves: they could be personal data in clear.
        return {"(unreadable payload)": f"{len(bytes(payload))} bytes that are not JSON"}
    return {name: MASK if is_envelope(value) else value for name, value in data.items()}


def revealed_payload(stored: StoredEvent) -> dict:
    """The payload decrypted; a field whose key is gone reads ERASED (never ciphertext)."""
    raw = masked_payload(stored.payload)
    if MASK not in raw.values():
        return raw
    erased = stored.subject_key is None or stored.subject_key.erased
    try:
        decoded = json_data(deserialize_event(stored))
    except (SubjectErasedError, MalformedEventError, EventStoreError) as exc:
        if erased:
            return {name: ERASED if value == MASK else value for name, value in raw.items()}
        return {**raw, "(cannot be decrypted)": str(exc)}
    return {name: (ERASED if erased and decoded.get(name) is None else decoded.get(name)) if value == MASK else value
            for name, value in raw.items()}


def payload_of(stored: StoredEvent, reveal: bool) -> dict:
    return revealed_payload(stored) if reveal else masked_payload(stored.payload)


def sensitive_names(stored: StoredEvent) -> list[str]:
    return [name for name, value in masked_payload(stored.payload).items() if value == MASK]


# --- the hash chain link of one event --------------------------------------------------

@dataclass(frozen=True)
class ChainLink:
    ok: bool
    detail: str


def chain_link(stored: StoredEvent) -> ChainLink:
    """Whether the event's stored hash follows from its predecessor's and its own bytes."""
    recorder = get_event_sourcing_service().event_store.recorder
    version = stored.version
    previous = GENESIS_HASH if version == 1 else recorder.chain_hash_at(stored.metadata.stream_id, version - 1)
    if previous is None:
        return ChainLink(False, f"version {version - 1}, its predecessor, is missing from the stream")
    computed = next_chain_hash(previous, version, content_digest(stored.metadata, stored.payload))
    if computed != bytes(stored.chain_hash):
        return ChainLink(False, "the stored hash does not match this event's bytes and metadata: it was altered")
    return ChainLink(True, "this event's hash follows from its predecessor's and its own bytes "
                           "(run the integrity check for the whole stream)")


# --- state and changes ----------------------------------------------------------------

@dataclass(frozen=True)
class FieldChange:
    name: str
    before: object
    after: object
    sensitive: bool


@dataclass
class EventChanges:
    version: int
    changes: list[FieldChange] = field(default_factory=list)


def _aggregate_class(stream_id: str):
    stream_type, aggregate_id = parse_stream_id(stream_id)
    return aggregate_classes().get(stream_type), aggregate_id


def _subject_erased(stream_id: str) -> bool:
    """Whether any personal data of this stream sits under a destroyed key."""
    from ..models import Event, SubjectKey

    subjects = (Event.objects.filter(stream_id=stream_id, data_subject__isnull=False)
                .values_list("data_subject", flat=True).distinct()[:20])
    return SubjectKey.objects.filter(subject__in=list(subjects), destroyed_at__isnull=False).exists()


def _shown(value, sensitive: bool, reveal: bool, erased: bool):
    if not sensitive:
        return value
    if erased:
        return ERASED
    if value in (None, [], {}):
        return value  # nothing to hide
    return value if reveal else MASK


def state_at(stream_id: str, version: int, *, reveal: bool) -> dict:
    """The aggregate rebuilt from its events up to `version`, sensitive fields masked unless revealed."""
    cls, aggregate_id = _aggregate_class(stream_id)
    if cls is None:
        raise EventStoreError(f"{stream_id} has no aggregate class: there is no state to rebuild, only events")
    try:
        aggregate = get_event_sourcing_service().get_repository(cls).load_sync(aggregate_id, version=version)
    except AggregateNotFoundError as exc:
        raise EventStoreError(str(exc)) from None
    erased = _subject_erased(stream_id)
    sensitive = set(cls.snapshot_sensitive_fields)
    return {name: _shown(value, name in sensitive, reveal, erased) for name, value in aggregate.to_snapshot().items()}


def changes_of(stream_id: str, events: Sequence[StoredEvent], *, reveal: bool) -> dict[int, EventChanges]:
    """For each of these consecutive events of the stream (as the page already loaded them):
    the aggregate's fields it changed, before and after.

    The state before the first is rebuilt from the nearest snapshot and the events after it;
    personal values are compared decrypted inside this process but shown masked unless
    `reveal`, so a masked page still tells which update touched the age."""
    cls, aggregate_id = _aggregate_class(stream_id)
    if cls is None or not events:
        return {}
    from_version = events[0].version
    service = get_event_sourcing_service()
    if from_version > 1:
        try:
            aggregate = service.get_repository(cls).load_sync(aggregate_id, version=from_version - 1)
        except Exception as exc:  # noqa: BLE001 - a page says why, never a 500
            return {from_version: EventChanges(from_version, [
                FieldChange("(state before this event cannot be rebuilt)", "", str(exc), False)])}
    else:
        aggregate = cls.create_empty(aggregate_id)
    sensitive = set(cls.snapshot_sensitive_fields)
    erased = _subject_erased(stream_id)
    before = aggregate.to_snapshot()
    result: dict[int, EventChanges] = {}
    for stored in events:
        try:
            aggregate.apply_event(deserialize_event(stored))
        except Exception as exc:  # noqa: BLE001 - shown on the page, never a 500
            result[stored.version] = EventChanges(stored.version, [FieldChange("(cannot be applied)", "", str(exc), False)])
            break
        aggregate.increment_version()
        after = aggregate.to_snapshot()
        changes = EventChanges(stored.version)
        for name in after:
            if before.get(name) != after[name]:
                secret = name in sensitive
                old, new = _list_growth(before.get(name), after[name])
                changes.changes.append(FieldChange(name, _shown(old, secret, reveal, erased),
                                                   _shown(new, secret, reveal, erased), secret))
        result[stored.version] = changes
        before = after
    return result


def _list_growth(before, after):
    """A list that only grew shows as the items added (a conversation's messages)."""
    if isinstance(before, list) and isinstance(after, list) and after[:len(before)] == before and len(before) > 3:
        return f"{len(before)} items", after[len(before):]
    return before, after


# --- export rows ----------------------------------------------------------------------

EXPORT_COLUMNS = ("position", "event_id", "stream_id", "version", "event_type", "schema_version", "occurred_at",
                  "correlation_id", "causation_id", "actor", "data_subject", "kafka_topic", "kafka_partition",
                  "kafka_offset", "chain_hash", "payload")


def export_row(stored: StoredEvent, reveal: bool) -> dict:
    meta = stored.metadata
    position = stored.kafka_position
    return {
        "position": meta.global_position,
        "event_id": meta.event_id,
        "stream_id": meta.stream_id,
        "version": meta.version,
        "event_type": meta.event_type,
        "schema_version": meta.schema_version,
        "occurred_at": meta.timestamp.astimezone(timezone.utc).isoformat(),
        "correlation_id": meta.correlation_id,
        "causation_id": meta.causation_id,
        "actor": meta.actor,
        "data_subject": meta.data_subject,
        "kafka_topic": position.topic if position else None,
        "kafka_partition": position.partition if position else None,
        "kafka_offset": position.offset if position else None,
        "chain_hash": bytes(stored.chain_hash).hex(),
        "payload": payload_of(stored, reveal),
    }


def iter_export_rows(queryset, reveal: bool, chunk: int = 2000) -> Iterator[dict]:
    """Rows of an Event queryset in position order, fetched in keyset chunks (no OFFSET)."""
    last = 0
    while True:
        batch = load_rows(queryset.filter(position__gt=last).order_by("position")[:chunk])
        if not batch:
            return
        for stored in batch:
            yield export_row(stored, reveal)
        last = batch[-1].metadata.global_position


def children_of(event_id: str, limit: int = 50) -> list[tuple[int, str, int, str]]:
    from ..models import Event

    return list(Event.objects.filter(causation_id=event_id).order_by("position")
                .values_list("position", "stream_id", "version", "event_type")[:limit])


def cause_of(causation_id: str | None):
    """The event that caused this one, if the causation id is an event of this store."""
    from ..models import Event

    if not causation_id:
        return None
    try:
        import uuid

        uuid.UUID(causation_id)
    except ValueError:
        return None
    return Event.objects.filter(event_id=causation_id).values_list("position", "stream_id", "version",
                                                                   "event_type").first()


# --- what the audit pages read ----------------------------------------------------------

def timeline(stream_id: str, after_version: int, limit: int) -> list[StoredEvent]:
    from ..models import Event

    return load_rows(Event.objects.filter(stream_id=stream_id, version__gt=after_version).order_by("version")[:limit])


def event_at(position: int) -> tuple[StoredEvent, dict] | None:
    """The event at a global position, and its store times (recorded, published)."""
    from ..models import Event

    found = load_rows(Event.objects.filter(position=position))
    if not found:
        return None
    times = Event.objects.filter(position=position).values("recorded_at", "published_at").first()
    return found[0], times


def correlated_events(correlation_id: str, limit: int) -> list[tuple]:
    """(position, stream id, version, type, occurred at) of the request's events, in order."""
    from ..models import Event

    return list(Event.objects.filter(correlation_id=correlation_id).order_by("position")
                .values_list("position", "stream_id", "version", "event_type", "occurred_at")[:limit])


def latest_snapshot(stream_id: str) -> tuple[int, datetime] | None:
    from ..models import Snapshot

    return (Snapshot.objects.filter(stream_id=stream_id).order_by("-version")
            .values_list("version", "created_at").first())


def subjects_of_stream(stream_id: str) -> list[str]:
    """The data subjects whose keys protect this stream's personal data."""
    from ..models import SubjectStream

    return sorted(SubjectStream.objects.filter(stream_id=stream_id).values_list("subject", flat=True))


@dataclass
class SubjectSummary:
    kind: str
    subject_id: str
    streams: list  # Stream rows
    parent_stream: object | None  # a child's parent's stream (its consent records), if any
    erasure: dict | None  # position, erased_by, reason, correlation_id of ChildDataErased


def subject_summary(subject: str) -> SubjectSummary:
    """A data subject's streams, a child's parent stream and how the child was erased."""
    from ..models import Event, Stream, SubjectStream
    from .privacy import streams_of_child

    kind, subject_id = subject.split(":", 1)
    if kind == "child":
        names = streams_of_child(subject_id)
    else:
        names = sorted(SubjectStream.objects.filter(subject=subject).values_list("stream_id", flat=True))
    streams = list(Stream.objects.filter(stream_id__in=names).order_by("stream_id"))
    parent_stream, erasure = None, None
    if kind == "child":
        own = f"child.{subject_id}"
        registered = Event.objects.filter(stream_id=own, version=1).values_list("payload", flat=True).first()
        parent_id = masked_payload(registered).get("parent_id") if registered is not None else None
        if parent_id:
            parent_stream = Stream.objects.filter(stream_id=f"parent.{parent_id}").first()
        found = (Event.objects.filter(stream_id=own, event_type="ChildDataErased")
                 .values_list("position", "payload", "actor", "correlation_id").first())
        if found is not None:
            data = masked_payload(found[1])
            erasure = {"position": found[0], "erased_by": data.get("erased_by") or found[2],
                       "reason": data.get("reason"), "correlation_id": found[3]}
    return SubjectSummary(kind, subject_id, streams, parent_stream, erasure)
