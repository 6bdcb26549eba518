"""Recorders write and read the mirror tables; the event store chooses one per database.

Invariants every recorder keeps (the contract tests in tests/integration check them all):
 1. Events of a stream get versions 1, 2, 3, ... with no gap and no duplicate.
 2. An append either stores all its events or none of them.
 3. An append whose expectation does not hold stores nothing and reports the actual version.
 4. The same event ids appended again at the place they already hold succeed without
    storing anything; the same ids anywhere else are refused.
 5. Each event's chain hash is sha256(previous chain hash || version || content digest).
 6. The global position increases with the version inside a stream (it may have gaps and
    commit out of order across streams).
 7. The publication marker (`published_version`) only moves forward, and only over events
    that Kafka acknowledged without a gap before them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from django.db import DatabaseError, connections, transaction
import psycopg
from psycopg.types.datetime import TimestamptzLoader

from .errors import DuplicateEventError
from .integrity import GENESIS_HASH, next_chain_hash
from ..privacy.keys import key_materials
from .records import EventMetadata, ExpectedVersion, KafkaPosition, KeyMaterial, StoredEvent

if TYPE_CHECKING:
    from ..privacy.keys import NewKey

LOAD_COLUMNS = (
    "position", "event_id", "version", "event_type", "schema_version", "occurred_at", "correlation_id",
    "causation_id", "actor", "data_subject", "payload", "chain_hash", "kafka_topic", "kafka_partition",
    "kafka_offset",
)


@dataclass(slots=True)
class PendingEvent:
    """An event ready to be written: everything but its version and chain hash."""

    event_id: uuid.UUID
    event_type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str | None
    causation_id: str | None
    actor: str | None
    data_subject: str | None
    payload: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    outcome: str  # "appended", "idempotent", "conflict" or "key_exists" (a new data key lost a race)
    stream_version: int
    published_version: int | None  # before the append; None if the stream did not exist
    positions: tuple[int, ...]
    chain_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Publication:
    """Kafka acknowledged one event at this position."""

    global_position: int
    stream_id: str
    version: int
    topic: str
    partition: int
    offset: int


def row_to_stored_event(stream_id: str, row: Sequence, subject_key: KeyMaterial | None = None) -> StoredEvent:
    (position, event_id, version, event_type, schema_version, occurred_at, correlation_id,
     causation_id, actor, data_subject, payload, chain_hash, topic, partition, offset) = row[:15]
    return StoredEvent(
        metadata=EventMetadata(
            event_id=str(event_id),
            stream_id=stream_id,
            event_type=event_type,
            version=version,
            timestamp=occurred_at,
            correlation_id=correlation_id,
            causation_id=causation_id,
            schema_version=schema_version,
            actor=actor,
            global_position=position,
            data_subject=data_subject,
        ),
        payload=bytes(payload),
        chain_hash=bytes(chain_hash),
        kafka_position=KafkaPosition(topic, partition, offset) if topic is not None else None,
        subject_key=subject_key,
    )


class DjangoRecorder:
    """Portable recorder on the Django ORM (SQLite for the one-command run; any database).

    Several statements per append in one transaction; the stream row is locked with
    SELECT ... FOR UPDATE where the database has it (SQLite serialises writers instead).
    """

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias

    def append(self, stream_id: str, stream_type: str, expected: int, now: datetime,
               events: Sequence[PendingEvent], new_key: NewKey | None = None) -> AppendOutcome:
        from ..models import Event, Stream, SubjectKey, SubjectStream

        streams = Stream.objects.using(self.alias)
        with transaction.atomic(using=self.alias):
            stream = streams.select_for_update().filter(pk=stream_id).first()
            published = stream.published_version if stream else None

            found = Event.objects.using(self.alias).filter(event_id=events[0].event_id).values_list(
                "stream_id", "version").first()
            if found is not None:
                return self._idempotent_or_raise(stream_id, expected, events, found, published)
            if stream is None and _expectation_holds(expected, 0):
                # Concurrent first appends: one row wins, the others wait for it and re-check.
                streams.bulk_create([Stream(stream_id=stream_id, stream_type=stream_type, version=0,
                                            published_version=0, last_hash=GENESIS_HASH, created_at=now,
                                            updated_at=now)], ignore_conflicts=True)
                stream = streams.select_for_update().get(pk=stream_id)
            version = stream.version if stream else 0
            if not _expectation_holds(expected, version):
                transaction.set_rollback(True, using=self.alias)  # no empty stream row is left behind
                return AppendOutcome("conflict", version, published, ())
            if new_key is not None:
                _, created = SubjectKey.objects.using(self.alias).get_or_create(
                    subject=new_key.subject, defaults={"wrapped_key": new_key.wrapped,
                                                       "master_key_id": new_key.master_key_id, "created_at": now})
                if not created:
                    transaction.set_rollback(True, using=self.alias)
                    return AppendOutcome("key_exists", version, published, ())

            chain = bytes(stream.last_hash)
            rows, hashes = [], []
            for offset, pending in enumerate(events, start=1):
                chain = next_chain_hash(chain, version + offset, pending.digest)
                hashes.append(chain)
                rows.append(Event(
                    event_id=pending.event_id, stream_id=stream_id, version=version + offset,
                    event_type=pending.event_type, schema_version=pending.schema_version,
                    occurred_at=pending.occurred_at, correlation_id=pending.correlation_id,
                    causation_id=pending.causation_id, actor=pending.actor, data_subject=pending.data_subject,
                    payload=pending.payload, chain_hash=chain))
            created = Event.objects.using(self.alias).bulk_create(rows)
            SubjectStream.objects.using(self.alias).bulk_create(
                [SubjectStream(subject=subject, stream_id=stream_id)
                 for subject in {e.data_subject for e in events if e.data_subject}], ignore_conflicts=True)
            new_version = version + len(events)
            Stream.objects.using(self.alias).filter(pk=stream_id).update(
                version=new_version, last_hash=chain, updated_at=now)
            return AppendOutcome("appended", new_version, published, tuple(e.position for e in created),
                                 tuple(hashes))

    def _idempotent_or_raise(self, stream_id, expected, events, found, published) -> AppendOutcome:
        from ..models import Event

        found_stream, found_version = found
        ids = [e.event_id for e in events]
        stored = list(Event.objects.using(self.alias).filter(
            stream_id=found_stream, version__gte=found_version, version__lt=found_version + len(ids),
        ).order_by("version").values_list("event_id", "position"))
        same_place = found_stream == stream_id and [s[0] for s in stored] == ids
        if same_place and (expected in (ExpectedVersion.ANY, ExpectedVersion.STREAM_EXISTS)
                           or expected == found_version - 1
                           or (expected == ExpectedVersion.NO_STREAM and found_version == 1)):
            return AppendOutcome("idempotent", found_version + len(ids) - 1, published, tuple(s[1] for s in stored))
        raise DuplicateEventError(
            f"event id {ids[0]} is already stored as stream {found_stream} version {found_version}; "
            "an event id can be stored once: give new events new ids"
        )

    def load(self, stream_id: str, from_version: int, to_version: int | None) -> list[StoredEvent]:
        from ..models import Event

        rows = Event.objects.using(self.alias).filter(stream_id=stream_id, version__gte=from_version)
        if to_version is not None:
            rows = rows.filter(version__lte=to_version)
        rows = list(rows.order_by("version").values_list(*LOAD_COLUMNS))
        materials = key_materials({row[9] for row in rows if row[9] is not None}, self.alias)
        return [row_to_stored_event(stream_id, row, materials.get(row[9])) for row in rows]

    def stream_version(self, stream_id: str) -> int:
        from ..models import Stream

        version = Stream.objects.using(self.alias).filter(pk=stream_id).values_list("version", flat=True).first()
        return version or 0

    def record_publications(self, publications: Sequence[Publication], now: datetime) -> None:
        from ..models import Event, Stream

        with transaction.atomic(using=self.alias):
            for pub in publications:
                Event.objects.using(self.alias).filter(position=pub.global_position, published_at__isnull=True).update(
                    kafka_topic=pub.topic, kafka_partition=pub.partition, kafka_offset=pub.offset, published_at=now)
            for stream_id, first, last in _contiguous_runs(publications):
                Stream.objects.using(self.alias).filter(
                    pk=stream_id, published_version__gte=first - 1, published_version__lt=last,
                ).update(published_version=last)


_APPEND_SQL = (
    "SELECT outcome, stream_version, published_version, positions, hashes FROM eventstore_append("
    "%s, %s, %s, %s, %b::uuid[], %b::text[], %b::int[], %b::timestamptz[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::bytea[], %b::bytea[], %s::text, %b::bytea, %s::text)"  # %b: binary, no escaping
)


# The subject's key row comes with the events: one round trip, and a key destroyed by an
# erasure is never used again.
_LOAD_SQL = (f"SELECT {', '.join('e.' + c if c != 'event_id' else 'e.event_id::text' for c in LOAD_COLUMNS)}, "
             "k.wrapped_key, k.master_key_id "
             "FROM eventstore_event e LEFT JOIN privacy_subject_key k ON k.subject = e.data_subject "
             "WHERE e.stream_id = %s AND e.version >= %s AND e.version <= %s ORDER BY e.version")
_MAX_VERSION = 2**63 - 1


class PostgresRecorder(DjangoRecorder):
    """One round trip per append (the `eventstore_append` function) and per load."""

    def append(self, stream_id: str, stream_type: str, expected: int, now: datetime,
               events: Sequence[PendingEvent], new_key: NewKey | None = None) -> AppendOutcome:
        # A server-side-binding psycopg cursor and a prepared statement (Django's cursors bind
        # client-side: they would quote 13 arrays into the SQL text each time).
        db = connections[self.alias]
        db.ensure_connection()
        try:
            with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
                row = cursor.execute(_APPEND_SQL, [
                    stream_id, stream_type, int(expected), now,
                    [e.event_id for e in events], [e.event_type for e in events],
                    [e.schema_version for e in events], [e.occurred_at for e in events],
                    [e.correlation_id for e in events], [e.causation_id for e in events],
                    [e.actor for e in events], [e.data_subject for e in events], [e.payload for e in events],
                    [e.digest for e in events],
                    new_key and new_key.subject, new_key and new_key.wrapped, new_key and new_key.master_key_id,
                ], prepare=True, binary=True).fetchone()
        except DatabaseError as exc:
            diag = getattr(exc.__cause__, "diag", None)
            if diag is not None and diag.message_hint == "eventstore:duplicate-event":
                raise DuplicateEventError(
                    f"{diag.message_primary}; an event id can be stored once: give new events new ids"
                ) from None
            raise
        outcome, version, published, positions, hashes = row
        return AppendOutcome(outcome, version, published, tuple(positions or ()), tuple(map(bytes, hashes or ())))

    def load(self, stream_id: str, from_version: int, to_version: int | None) -> list[StoredEvent]:
        db = connections[self.alias]
        db.ensure_connection()
        with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            # psycopg's C timestamp loader instead of Django's Python one: the session time
            # zone is UTC, so both give the same instants, this one several times faster.
            cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
            cursor.execute(_LOAD_SQL, [stream_id, from_version, to_version if to_version is not None else _MAX_VERSION],
                           prepare=True, binary=True)
            rows = cursor.fetchall()
        materials: dict[str, KeyMaterial] = {}  # one per subject and load
        for row in rows:
            if row[9] is not None and row[9] not in materials:
                materials[row[9]] = KeyMaterial(row[15], row[16])
        return [row_to_stored_event(stream_id, row, materials.get(row[9])) for row in rows]

    def record_publications(self, publications: Sequence[Publication], now: datetime) -> None:
        runs = _contiguous_runs(publications)
        with transaction.atomic(using=self.alias), connections[self.alias].cursor() as cursor:
            cursor.execute(
                "UPDATE eventstore_event e SET kafka_topic = x.topic, kafka_partition = x.part, "
                "kafka_offset = x.off, published_at = %s "
                "FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::bigint[]) AS x(pos, topic, part, off) "
                "WHERE e.position = x.pos AND e.published_at IS NULL",
                [now, [p.global_position for p in publications], [p.topic for p in publications],
                 [p.partition for p in publications], [p.offset for p in publications]],
            )
            cursor.execute(
                "UPDATE eventstore_stream s SET published_version = x.last "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS x(sid, first, last) "
                "WHERE s.stream_id = x.sid AND s.published_version >= x.first - 1 AND s.published_version < x.last",
                [[r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs]],
            )


def _expectation_holds(expected: int, version: int) -> bool:
    if expected == ExpectedVersion.ANY:
        return True
    if expected == ExpectedVersion.NO_STREAM:
        return version == 0
    if expected == ExpectedVersion.STREAM_EXISTS:
        return version > 0
    return expected == version


def _contiguous_runs(publications: Sequence[Publication]) -> list[tuple[str, int, int]]:
    """(stream, first, last) for each run of consecutive versions acknowledged in this batch."""
    runs: list[tuple[str, int, int]] = []
    for pub in sorted(publications, key=lambda p: (p.stream_id, p.version)):
        if runs and runs[-1][0] == pub.stream_id and runs[-1][2] + 1 >= pub.version:
            stream, first, last = runs[-1]
            runs[-1] = (stream, first, max(last, pub.version))
        else:
            runs.append((pub.stream_id, pub.version, pub.version))
    return runs


def recorder_for(alias: str = "default") -> DjangoRecorder:
    vendor = connections[alias].vendor
    return PostgresRecorder(alias) if vendor == "postgresql" else DjangoRecorder(alias)

