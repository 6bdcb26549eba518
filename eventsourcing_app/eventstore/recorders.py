"""Recorders write and read the mirror tables; the event store chooses one per database.

Invariants every recorder keeps (the contract tests in tests/integration check them all):
 1. Events of a stream get versions 1, 2, 3, ... with no gap and no duplicate.
 2. An append either stores all its events or none of them.
 3. An append whose expectation does not hold stores nothing and reports the actual version.
 4. The same event ids appended again at the place they already hold succeed without
    storing anything, also when the two appends race (on a new stream too); the same ids
    anywhere else are refused. Every id of a batch is checked.
 5. Each event's chain hash is sha256(previous chain hash || version || content digest).
 6. The global position increases with the version inside a stream (it may have gaps and
    commit out of order across streams).
 7. The publication marker (`published_version`) only moves forward, and only over events
    that Kafka acknowledged without a gap before them; only a refill resets it.
 8. No event with personal data is stored for a subject whose key was destroyed, whatever
    the writing process holds in memory; a closed (migrated) stream takes no events.
 9. An expected refusal (conflict, duplicate, erased, closed) is an outcome, not a failed
    statement: a caller's transaction stays usable.
10. Events record `recorded_at`, the database's clock, which orders operational work.

Everything outside the store (relay, refill, verification, erasure, migration) reads and
writes these tables through a recorder's methods, never with its own queries.
"""
from __future__ import annotations

import contextlib
import fcntl
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Sequence

import psycopg
from django.db import Error as DjangoDbError
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Count, F, Max, Min, Q
from psycopg.types.datetime import TimestamptzLoader

from .errors import EventStoreError
from .integrity import GENESIS_HASH, next_chain_hash
from .records import EventMetadata, ExpectedVersion, KafkaPosition, KeyMaterial, NewKey, Publication, StoredEvent

LOAD_COLUMNS = (
    "position", "event_id", "version", "event_type", "schema_version", "occurred_at", "correlation_id",
    "causation_id", "actor", "data_subject", "payload", "chain_hash", "kafka_topic", "kafka_partition",
    "kafka_offset",
)
_MAX_VERSION = 2**63 - 1
_RELAY_LOCK_ID = 0x7EDD7E1A  # the relay's advisory lock (any fixed number; the same in every process)
# Advisory lock class of data subjects: (SUBJECT_LOCK_CLASS, hashtext(subject)). Appends hold it
# shared, an erasure exclusively; in the lock manager only (no row is written to take it).
SUBJECT_LOCK_CLASS = 0x5EC7


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
    metadata: EventMetadata | None = None  # the event's metadata as published (the store fills it in)


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    # "appended", "idempotent", "conflict", "duplicate", "closed", "erased", "key_exists", "key_missing"
    outcome: str
    stream_version: int
    published_version: int | None  # before the append; None if the stream did not exist
    positions: tuple[int, ...]
    chain_hashes: tuple[bytes, ...] = ()
    detail: str | None = None  # duplicate: what is stored; closed: the new stream; erased/key_*: the subject
    epoch: int | None = None  # the stream's publication epoch (None if the stream did not exist)


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """A stored snapshot with what a load needs to trust it: the chain hash of the stream at
    the snapshot's version (the seal is bound to it) and the subject's key row."""

    stream_id: str
    version: int
    aggregate_type: str
    schema_version: int
    state: bytes
    seal: bytes | None
    data_subject: str | None
    created_at: datetime
    chain_hash: bytes | None
    subject_key: KeyMaterial | None


@dataclass(frozen=True, slots=True)
class CacheCheck:
    """What a cached entry is checked against: the stream now, the chain hash at the entry's
    version and the subject's key row."""

    stream_version: int | None
    chain_hash: bytes | None
    subject_key: KeyMaterial | None


@dataclass(frozen=True, slots=True)
class StreamRow:
    stream_id: str
    stream_type: str
    version: int
    published_version: int
    publication_epoch: int
    last_hash: bytes
    created_at: datetime
    updated_at: datetime
    migrated_to: str | None
    migrated_from: str | None


class _Refused(Exception):
    """Rolls back the portable recorder's savepoint and carries the outcome out."""

    def __init__(self, outcome: AppendOutcome):
        self.outcome = outcome


@contextlib.contextmanager
def session_advisory_lock(db, key: int, name: str | None = None) -> Iterator[bool]:
    """Yields True while this connection holds a PostgreSQL session advisory lock (`key`, or
    the pair `key` and the hash of `name`), False if another holds it; never waits. It cannot
    expire under its holder, and PostgreSQL drops it when the holder's connection ends."""
    args, params = ("%s", [key]) if name is None else ("%s, hashtext(%s)", [key, name])
    with db.cursor() as cursor:
        cursor.execute(f"SELECT pg_try_advisory_lock({args})", params)
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(DjangoDbError), db.cursor() as cursor:  # a lost connection released it
                cursor.execute(f"SELECT pg_advisory_unlock({args})", params)


def lock_path_beside_database(alias: str, what: str) -> Path:
    """A lock file beside the SQLite database file (or in /tmp for an in-memory one)."""
    name = str(connections[alias].settings_dict.get("NAME") or "eventstore")
    if name in ("", ":memory:") or "mode=memory" in name:
        return Path("/tmp") / f"teddy-eventstore.{what}.lock"
    return Path(f"{name}.{what}.lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Yields True while this process holds an exclusive lock on the file, False if another
    does. It cannot expire under its holder and goes away with the process."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def row_to_stored_event(stream_id: str, row: Sequence, subject_key: KeyMaterial | None = None) -> StoredEvent:
    (position, event_id, version, event_type, schema_version, occurred_at, correlation_id,
     causation_id, actor, data_subject, payload, chain_hash, topic, partition, offset) = row[:15]
    # Positional arguments, in the classes' field order: a load builds thousands of these.
    return StoredEvent(
        EventMetadata(str(event_id), stream_id, event_type, version, occurred_at, correlation_id, causation_id,
                      schema_version, actor, position, data_subject),
        bytes(payload), bytes(chain_hash), KafkaPosition(topic, partition, offset) if topic is not None else None,
        subject_key,
    )


def _aware(value):
    """SQLite hands timestamps back naive (UTC) from raw queries."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


class DjangoRecorder:
    """Portable recorder on the Django ORM (SQLite for the one-command run; any database).

    Several statements per append inside a savepoint; the stream row is locked with
    SELECT ... FOR UPDATE where the database has it (SQLite serialises writers instead).
    """

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias

    # --- connections -------------------------------------------------------------------

    def connection(self):
        """The alias's connection, replaced first if a previous call lost it (a terminated
        backend, a network cut): a lost connection fails one call, never the next ones."""
        self.discard_broken_connection()
        db = connections[self.alias]
        db.ensure_connection()
        return db

    def discard_broken_connection(self) -> None:
        """Closes the alias's connection if it is dead and no transaction holds it: Django drops a
        broken connection only at the end of a request, so in a worker or a script the next query
        would fail on it too instead of opening a new one."""
        db = connections[self.alias]
        raw = db.connection
        if raw is not None and not db.in_atomic_block and (getattr(raw, "closed", False) or getattr(raw, "broken", False)):
            try:
                db.close()
            except DatabaseError:  # closing a dead connection; it is dropped all the same
                pass

    # --- append ------------------------------------------------------------------------

    def append(self, stream_id: str, stream_type: str, expected: int, events: Sequence[PendingEvent],
               new_key: NewKey | None = None, subject_keys: dict[str, bytes | None] | None = None) -> AppendOutcome:
        """`subject_keys`: for each data subject of the events, the stored (wrapped) key the
        caller encrypted with, or None for the new key it passes."""
        self.connection()
        ids = [e.event_id for e in events]
        try:
            with transaction.atomic(using=self.alias):  # a savepoint inside a caller's transaction
                return self._append(stream_id, stream_type, expected, events, new_key, subject_keys or {})
        except _Refused as refused:
            outcome = refused.outcome
            if outcome.outcome == "conflict":
                return self._find_stored(stream_id, ids, expected, outcome.published_version, outcome.epoch) or outcome
            return outcome
        except IntegrityError:
            # An id stored meanwhile (a concurrent identical append, or the ids elsewhere).
            found = self._find_stored(stream_id, ids, expected, None, None)
            return found or AppendOutcome("conflict", self.stream_version(stream_id), None, ())

    def _append(self, stream_id, stream_type, expected, events, new_key, subject_keys) -> AppendOutcome:
        from django.db.models.functions import Now

        from ..models import Event, Stream, SubjectKey, SubjectStream

        now = datetime.now(timezone.utc)
        streams = Stream.objects.using(self.alias)
        stream = streams.select_for_update(no_key=True).filter(pk=stream_id).first()
        if stream is None:
            if expected >= 1 or expected == ExpectedVersion.STREAM_EXISTS:
                raise _Refused(AppendOutcome("conflict", 0, None, ()))
            # Concurrent first appends: one row wins, the others wait for it and re-check.
            streams.bulk_create([Stream(stream_id=stream_id, stream_type=stream_type, version=0,
                                        published_version=0, last_hash=GENESIS_HASH, created_at=Now(),
                                        updated_at=Now())], ignore_conflicts=True)
            stream = streams.select_for_update(no_key=True).get(pk=stream_id)
        version, published, epoch = stream.version, stream.published_version, stream.publication_epoch
        if stream.migrated_to:
            raise _Refused(AppendOutcome("closed", version, published, (), detail=stream.migrated_to, epoch=epoch))
        if not _expectation_holds(expected, version):
            raise _Refused(AppendOutcome("conflict", version, published, (), epoch=epoch))
        keys = SubjectKey.objects.using(self.alias)
        if new_key is not None:
            _, created = keys.get_or_create(subject=new_key.subject, defaults={
                "wrapped_key": new_key.wrapped, "master_key_id": new_key.master_key_id, "created_at": now})
            if not created:
                raise _Refused(AppendOutcome("key_exists", version, published, (), detail=new_key.subject))
        subjects = sorted({e.data_subject for e in events if e.data_subject})
        existing = [s for s in subjects if new_key is None or s != new_key.subject]
        if existing:
            rows = self._share_locked_keys(existing)
            # The same order of refusals as eventstore_append: erased, changed, missing.
            erased = [s for s in existing if s in rows and rows[s] is None]
            if erased:
                raise _Refused(AppendOutcome("erased", version, published, (), detail=erased[0]))
            changed = [s for s in existing if s in rows and subject_keys.get(s) is not None
                       and bytes(rows[s]) != subject_keys[s]]
            if changed:
                raise _Refused(AppendOutcome("key_changed", version, published, (), detail=changed[0]))
            missing = [s for s in existing if s not in rows]
            if missing:
                raise _Refused(AppendOutcome("key_missing", version, published, (), detail=missing[0]))

        chain = bytes(stream.last_hash)
        rows, hashes = [], []
        for offset, pending in enumerate(events, start=1):
            chain = next_chain_hash(chain, version + offset, pending.digest)
            hashes.append(chain)
            rows.append(Event(
                event_id=pending.event_id, stream_id=stream_id, version=version + offset,
                event_type=pending.event_type, schema_version=pending.schema_version,
                occurred_at=pending.occurred_at, recorded_at=Now(), correlation_id=pending.correlation_id,
                causation_id=pending.causation_id, actor=pending.actor, data_subject=pending.data_subject,
                payload=pending.payload, chain_hash=chain))
        created = Event.objects.using(self.alias).bulk_create(rows)
        SubjectStream.objects.using(self.alias).bulk_create(
            [SubjectStream(subject=subject, stream_id=stream_id) for subject in subjects], ignore_conflicts=True)
        new_version = version + len(events)
        streams.filter(pk=stream_id).update(version=new_version, last_hash=chain, updated_at=Now())
        return AppendOutcome("appended", new_version, published, tuple(e.position for e in created), tuple(hashes),
                             epoch=epoch)

    def _share_locked_keys(self, subjects: list[str]) -> dict[str, bytes | None]:
        """The subjects' key rows, read under each subject's lock in shared mode (an erasure
        takes it exclusively, so it waits for this append; SQLite has one writer at a time)."""
        from ..models import SubjectKey

        db = connections[self.alias]
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, hashtext(s)) FROM unnest(%s::text[]) AS s",
                               [SUBJECT_LOCK_CLASS, subjects])
                cursor.execute("SELECT subject, wrapped_key FROM privacy_subject_key WHERE subject = ANY(%s)",
                               [subjects])
                return dict(cursor.fetchall())
        return dict(SubjectKey.objects.using(self.alias).filter(pk__in=subjects).values_list("subject", "wrapped_key"))

    def _find_stored(self, stream_id: str, ids: list, expected: int, published: int | None,
                     epoch: int | None) -> AppendOutcome | None:
        """Where the batch's ids are stored: idempotent, duplicate, or None (nowhere)."""
        from ..models import Event

        stored = {row[0]: row[1:] for row in Event.objects.using(self.alias).filter(event_id__in=ids)
                  .values_list("event_id", "stream_id", "version", "position")}
        if not stored:
            return None
        first = stored.get(ids[0])
        if first is not None and first[0] == stream_id and (
                expected in (ExpectedVersion.ANY, ExpectedVersion.STREAM_EXISTS) or expected == first[1] - 1
                or (expected == ExpectedVersion.NO_STREAM and first[1] == 1)):
            if all(stored.get(i, (None, None))[:2] == (stream_id, first[1] + n) for n, i in enumerate(ids)):
                return AppendOutcome("idempotent", first[1] + len(ids) - 1, published,
                                     tuple(stored[i][2] for i in ids), epoch=epoch)
        event_id = next(i for i in ids if i in stored)
        where = stored[event_id]
        return AppendOutcome("duplicate", 0, published, (),
                             detail=f"event id {event_id} is already stored as stream {where[0]} version {where[1]}")

    # --- read --------------------------------------------------------------------------

    def load(self, stream_id: str, from_version: int, to_version: int | None) -> list[StoredEvent]:
        from ..models import Event

        self.connection()
        rows = Event.objects.using(self.alias).filter(stream_id=stream_id, version__gte=from_version)
        if to_version is not None:
            rows = rows.filter(version__lte=to_version)
        rows = list(rows.order_by("version").values_list(*LOAD_COLUMNS))
        materials = self.key_materials({row[9] for row in rows if row[9] is not None})
        return [row_to_stored_event(stream_id, row, materials.get(row[9])) for row in rows]

    def stored_events(self, queryset) -> list[StoredEvent]:
        """The events of an Event queryset (any streams, in its order), with their subjects' key
        rows (one more query)."""
        rows = list(queryset.using(self.alias).values_list(*LOAD_COLUMNS, "stream_id"))
        subject = LOAD_COLUMNS.index("data_subject")
        materials = self.key_materials({row[subject] for row in rows if row[subject] is not None})
        return [row_to_stored_event(row[-1], row, materials.get(row[subject])) for row in rows]

    def read_log(self, after_position: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events with a global position above `after_position`, in position
        order, with their subjects' key rows."""
        from ..models import Event

        self.connection()
        return self.stored_events(Event.objects.filter(position__gt=after_position).order_by("position")[:limit])

    def stream_version(self, stream_id: str) -> int:
        from ..models import Stream

        self.connection()
        version = Stream.objects.using(self.alias).filter(pk=stream_id).values_list("version", flat=True).first()
        return version or 0

    def stream(self, stream_id: str) -> StreamRow | None:
        from ..models import Stream

        row = Stream.objects.using(self.alias).filter(pk=stream_id).values_list(
            "stream_id", "stream_type", "version", "published_version", "publication_epoch", "last_hash", "created_at",
            "updated_at", "migrated_to", "migrated_from").first()
        return None if row is None else StreamRow(*row[:5], bytes(row[5]), *row[6:])

    def stream_info(self, stream_id: str) -> dict | None:
        """Version, publication, event count and first/last event times of one stream."""
        from ..models import Event, Snapshot

        stream = self.stream(stream_id)
        if stream is None:
            return None
        events = Event.objects.using(self.alias).filter(stream_id=stream_id).aggregate(
            count=Count("position"), first=Min("occurred_at"), last=Max("occurred_at"))
        snapshot = (Snapshot.objects.using(self.alias).filter(stream_id=stream_id).order_by("-version")
                    .values_list("version", "created_at").first()) or (None, None)
        return {"stream": stream, "count": events["count"], "first": events["first"], "last": events["last"],
                "snapshot_version": snapshot[0], "snapshot_at": snapshot[1]}

    def version_at(self, stream_id: str, moment: datetime) -> int:
        """The version of the stream's last event that occurred at or before `moment`."""
        from ..models import Event

        return (Event.objects.using(self.alias).filter(stream_id=stream_id, occurred_at__lte=moment)
                .order_by("-version").values_list("version", flat=True).first()) or 0

    def chain_hash_at(self, stream_id: str, version: int) -> bytes | None:
        from ..models import Event

        value = Event.objects.using(self.alias).filter(stream_id=stream_id, version=version).values_list(
            "chain_hash", flat=True).first()
        return None if value is None else bytes(value)

    def key_materials(self, subjects) -> dict[str, KeyMaterial]:
        """The key rows of these subjects, in one query."""
        from ..models import SubjectKey

        subjects = set(subjects)
        if not subjects:
            return {}
        rows = SubjectKey.objects.using(self.alias).filter(pk__in=subjects).values_list(
            "subject", "wrapped_key", "master_key_id")
        return {subject: KeyMaterial(bytes(wrapped) if wrapped is not None else None, master_id)
                for subject, wrapped, master_id in rows}

    def cache_check(self, stream_id: str, version: int, subject: str | None) -> CacheCheck:
        from ..models import Stream

        current = Stream.objects.using(self.alias).filter(pk=stream_id).values_list("version", flat=True).first()
        material = self.key_materials([subject]).get(subject) if subject else None
        return CacheCheck(current, self.chain_hash_at(stream_id, version), material)

    def streams_of_subjects(self, subjects) -> list[str]:
        """Every stream holding data encrypted for one of these subjects."""
        from ..models import SubjectStream

        return sorted(set(SubjectStream.objects.using(self.alias).filter(subject__in=list(subjects))
                          .values_list("stream_id", flat=True)))

    def existing_streams(self, stream_ids) -> list[str]:
        from ..models import Stream

        return sorted(Stream.objects.using(self.alias).filter(pk__in=list(stream_ids)).values_list("stream_id", flat=True))

    def count_subject_events(self, stream_ids, subjects) -> int:
        from ..models import Event

        return Event.objects.using(self.alias).filter(stream_id__in=list(stream_ids),
                                                      data_subject__in=list(subjects)).count()

    # --- publication -------------------------------------------------------------------

    def record_publications(self, publications: Sequence[Publication]) -> None:
        """Records where Kafka acknowledged each event (the latest acknowledgement wins: after a
        refill the positions point into the new log) and moves `published_version` over runs
        acknowledged without a gap."""
        from ..models import Event, Stream

        now = datetime.now(timezone.utc)
        self.connection()
        with transaction.atomic(using=self.alias):
            # Locked in stream id order, as every multi-stream writer takes them (no deadlocks).
            epochs = dict(Stream.objects.using(self.alias).select_for_update(no_key=True).filter(
                pk__in={p.stream_id for p in publications}).order_by("stream_id")
                .values_list("stream_id", "publication_epoch"))
            for pub in publications:  # the latest acknowledgement wins (see PostgresRecorder)
                Event.objects.using(self.alias).filter(position=pub.global_position).update(
                    kafka_topic=pub.topic, kafka_partition=pub.partition, kafka_offset=pub.offset, published_at=now)
            current = [p for p in publications if epochs.get(p.stream_id) == p.epoch]  # not from before a refill
            for stream_id, first, last, _ in _contiguous_runs(current):
                Stream.objects.using(self.alias).filter(
                    pk=stream_id, published_version__gte=first - 1, published_version__lt=last,
                ).update(published_version=last)

    def outbox_backlog(self, stream_types: Sequence[str] | None = None) -> int:
        """How many committed events Kafka has not acknowledged yet."""
        from ..models import Stream

        from django.db.models import Sum

        lagging = Stream.objects.using(self.alias).filter(version__gt=F("published_version"))
        if stream_types:
            lagging = lagging.filter(stream_type__in=stream_types)
        return int(lagging.aggregate(n=Sum(F("version") - F("published_version")))["n"] or 0)

    def oldest_unpublished(self, stream_types: Sequence[str] | None = None,
                           exclude: Sequence[str] = ()) -> datetime | None:
        """When the oldest event that Kafka has not acknowledged was recorded."""
        from ..models import Event

        heads = Event.objects.using(self.alias).filter(stream__version__gt=F("stream__published_version"),
                                                       version=F("stream__published_version") + 1)
        if stream_types:
            heads = heads.filter(stream__stream_type__in=stream_types)
        if exclude:
            heads = heads.exclude(stream_id__in=list(exclude))
        return _aware(heads.aggregate(oldest=Min("recorded_at"))["oldest"])

    def outbox_heads(self, grace_seconds: float, limit: int, stream_types: Sequence[str] | None = None,
                     held: Sequence[str] = ()) -> list[str]:
        """Streams whose first unacknowledged event was recorded more than `grace_seconds`
        ago by the database's clock (an event's own occurred_at plays no part)."""
        from ..models import Event

        cutoff = self.database_now() - timedelta(seconds=grace_seconds)
        heads = Event.objects.using(self.alias).filter(
            stream__version__gt=F("stream__published_version"), version=F("stream__published_version") + 1,
            recorded_at__lt=cutoff)
        if stream_types:
            heads = heads.filter(stream__stream_type__in=stream_types)
        if held:
            heads = heads.exclude(stream_id__in=list(held))
        return list(heads.order_by("stream_id").values_list("stream_id", flat=True)[:limit])

    def unpublished_events(self, stream_ids: Sequence[str], limit: int) -> list[StoredEvent]:
        """Each stream's events after its published version, in version order; at most
        `limit` events in all, but always whole streams up to `limit` (only a stream longer
        than the whole budget is cut, and continues in the next round)."""
        from ..models import Event

        rows = list(Event.objects.using(self.alias).filter(
            stream_id__in=list(stream_ids), version__gt=F("stream__published_version"),
        ).order_by("stream_id", "version").values_list("stream_id", *LOAD_COLUMNS)[:limit + 1])
        return [row_to_stored_event(row[0], row[1:]) for row in _whole_streams(rows, limit)]

    def published_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        from ..models import Stream

        return dict(Stream.objects.using(self.alias).filter(pk__in=list(stream_ids))
                    .values_list("stream_id", "published_version"))

    def publication_state(self, stream_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """stream -> (published version, publication epoch)."""
        from ..models import Stream

        return {sid: (published, epoch) for sid, published, epoch in Stream.objects.using(self.alias).filter(
            pk__in=list(stream_ids)).values_list("stream_id", "published_version", "publication_epoch")}

    def stream_ids_chunks(self, stream_types: Sequence[str] | None, chunk: int,
                          created_since: datetime | None = None) -> Iterator[list[str]]:
        """Every stream id (of these types; created since a moment, if given), in chunks, by
        keyset (no long scan held open)."""
        from ..models import Stream

        after = ""
        while True:
            query = Stream.objects.using(self.alias).filter(stream_id__gt=after)
            if stream_types:
                query = query.filter(stream_type__in=stream_types)
            if created_since is not None:
                query = query.filter(created_at__gte=created_since)
            ids = list(query.order_by("stream_id").values_list("stream_id", flat=True)[:chunk])
            if not ids:
                return
            yield ids
            after = ids[-1]

    def reset_publication(self, stream_ids: Sequence[str]) -> int:
        """Marks these streams unpublished in a new publication epoch (a refill republishes them;
        acknowledgements of sends from before no longer count): one short statement, so appends
        to them wait for a moment at most."""
        from ..models import Stream

        with transaction.atomic(using=self.alias):
            streams = Stream.objects.using(self.alias).filter(pk__in=list(stream_ids))
            list(streams.select_for_update(no_key=True).order_by("stream_id").values_list("pk", flat=True))  # in order
            return streams.update(published_version=0, publication_epoch=F("publication_epoch") + 1)

    def stream_totals(self, stream_types: Sequence[str] | None = None) -> tuple[int, int]:
        """(streams, events) of these stream types."""
        from django.db.models import Sum

        from ..models import Stream

        query = Stream.objects.using(self.alias)
        if stream_types:
            query = query.filter(stream_type__in=list(stream_types))
        totals = query.aggregate(streams=Count("stream_id"), events=Sum("version"))
        return totals["streams"] or 0, totals["events"] or 0

    def stream_length_distribution(self, bounds: Sequence[int]) -> dict[str, tuple[list[int], int, int]]:
        """Per stream type: how many streams have at most each of `bounds` events (cumulative,
        as Prometheus buckets), how many streams there are, and their events. One scan of the
        streams table (one row per stream, not per event)."""
        from django.db.models import Sum

        from ..models import Stream

        buckets = {f"le_{b}": Count("stream_id", filter=Q(version__lte=b)) for b in bounds}
        rows = (Stream.objects.using(self.alias).values("stream_type")
                .annotate(streams=Count("stream_id"), events=Sum("version"), **buckets))
        return {row["stream_type"]: ([row[f"le_{b}"] for b in bounds], row["streams"], row["events"] or 0)
                for row in rows}

    def erased_subjects(self) -> int:
        """Data subjects whose key was destroyed."""
        from ..models import SubjectKey

        return SubjectKey.objects.using(self.alias).filter(destroyed_at__isnull=False).count()

    def begin_maintenance(self, name: str, detail: str) -> datetime:
        """Marks `name` in progress (replacing an unfinished one); returns its start: the start of
        the oldest transaction in flight (a stream it creates is stamped no earlier than that)."""
        from ..models import Maintenance

        started = self.oldest_transaction_start()
        Maintenance.objects.using(self.alias).update_or_create(name=name, defaults={"started_at": started,
                                                                                    "detail": detail})
        return started

    def end_maintenance(self, name: str) -> None:
        from ..models import Maintenance

        Maintenance.objects.using(self.alias).filter(name=name).delete()

    def maintenance(self) -> list[tuple[str, datetime, str]]:
        from ..models import Maintenance

        return [(name, _aware(started), detail) for name, started, detail in
                Maintenance.objects.using(self.alias).values_list("name", "started_at", "detail")]

    def record_poison(self, position: int, stream_id: str, version: int, error: str) -> int:
        """Records (or counts again) an event Kafka refused for good; returns its attempts."""
        from ..models import PoisonEvent

        now = datetime.now(timezone.utc)
        self.connection()
        with transaction.atomic(using=self.alias):
            row, created = PoisonEvent.objects.using(self.alias).select_for_update().get_or_create(
                position=position, defaults={"stream_id": stream_id, "version": version,
                                             "error": error, "first_seen": now, "last_seen": now})
            if not created:
                PoisonEvent.objects.using(self.alias).filter(pk=row.pk).update(
                    attempts=F("attempts") + 1, last_seen=now, error=error)
                return row.attempts + 1
            return 1

    def held_streams(self, retry_after_seconds: float | None = None) -> list[str]:
        """Streams whose next event is a poison event (seen less than `retry_after_seconds`
        ago, if given: older ones are due for another try)."""
        from ..models import PoisonEvent

        poisoned = list(PoisonEvent.objects.using(self.alias).values_list("stream_id", "version", "last_seen"))
        if not poisoned:
            return []
        recent = (datetime.now(timezone.utc) - timedelta(seconds=retry_after_seconds)
                  if retry_after_seconds is not None else None)
        published = self.published_versions([s for s, _, _ in poisoned])
        return sorted({s for s, v, seen in poisoned
                       if published.get(s, 0) == v - 1 and (recent is None or _aware(seen) >= recent)})

    def clear_resolved_poison(self) -> int:
        """Forgets poison events that were published since (their cause was fixed)."""
        from ..models import PoisonEvent

        poisoned = list(PoisonEvent.objects.using(self.alias).values_list("position", "stream_id", "version"))
        if not poisoned:
            return 0
        published = self.published_versions([s for _, s, _ in poisoned])
        resolved = [p for p, s, v in poisoned if published.get(s, 0) >= v]
        self.clear_poison(resolved)
        return len(resolved)

    def poison_events(self) -> list[dict]:
        """Poison events still blocking their stream."""
        from ..models import PoisonEvent

        rows = list(PoisonEvent.objects.using(self.alias).order_by("first_seen").values(
            "position", "stream_id", "version", "error", "attempts", "first_seen", "last_seen"))
        published = self.published_versions([r["stream_id"] for r in rows])
        return [r for r in rows if published.get(r["stream_id"], 0) < r["version"]]

    def clear_poison(self, positions: Sequence[int]) -> None:
        from ..models import PoisonEvent

        if positions:
            PoisonEvent.objects.using(self.alias).filter(position__in=list(positions)).delete()

    @contextlib.contextmanager
    def relay_lock(self) -> Iterator[bool]:
        """One relay (or refill) at a time across processes: yields False if another holds it.
        Here a lock on a file beside the SQLite database: it cannot expire under its holder and
        goes away with the process."""
        with file_lock(lock_path_beside_database(self.alias, "relay")) as held:
            yield held

    def oldest_transaction_start(self) -> datetime:
        """The database's now, or the start of an older transaction still in flight."""
        db = self.connection()
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT least(clock_timestamp(), min(xact_start)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                return cursor.fetchone()[0]
        return self.database_now()  # SQLite: one writer at a time, none in flight now

    def database_now(self) -> datetime:
        """The database's clock (the one recorded_at and created_at follow)."""
        db = self.connection()
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT clock_timestamp()")
                return cursor.fetchone()[0]
        return datetime.now(timezone.utc)

    # --- snapshots ---------------------------------------------------------------------

    def insert_snapshot(self, stream_id: str, version: int, aggregate_type: str, schema_version: int,
                        state: bytes, seal: bytes, subject: str | None) -> tuple[datetime, bool]:
        """Stores a snapshot unless one of this version is stored already: (when, whether this
        call stored it)."""
        from ..models import Snapshot

        now = datetime.now(timezone.utc)
        try:
            with transaction.atomic(using=self.alias):  # a savepoint: a duplicate spoils nothing
                Snapshot.objects.using(self.alias).bulk_create([Snapshot(
                    stream_id=stream_id, version=version, aggregate_type=aggregate_type, schema_version=schema_version,
                    state=state, seal=seal, data_subject=subject, created_at=now)])
        except IntegrityError:
            return now, False
        return now, True

    def latest_snapshot(self, stream_id: str, max_version: int | None, schema_version: int | None) -> SnapshotRow | None:
        from ..models import Snapshot

        query = Snapshot.objects.using(self.alias).filter(stream_id=stream_id)
        if max_version is not None:
            query = query.filter(version__lte=max_version)
        if schema_version is not None:
            query = query.filter(schema_version=schema_version)
        row = query.order_by("-version").values_list(
            "version", "aggregate_type", "schema_version", "state", "seal", "data_subject", "created_at").first()
        if row is None:
            return None
        version, aggregate_type, schema, state, seal, subject, created_at = row
        material = self.key_materials([subject]).get(subject) if subject else None
        return SnapshotRow(stream_id, version, aggregate_type, schema, bytes(state),
                           None if seal is None else bytes(seal), subject, _aware(created_at),
                           self.chain_hash_at(stream_id, version), material)

    def snapshot_versions(self, stream_id: str) -> list[int]:
        from ..models import Snapshot

        return list(Snapshot.objects.using(self.alias).filter(stream_id=stream_id).order_by("-version")
                    .values_list("version", flat=True))

    def snapshot_streams_of_subjects(self, subjects) -> list[str]:
        from ..models import Snapshot

        return sorted(set(Snapshot.objects.using(self.alias).filter(data_subject__in=list(subjects))
                          .values_list("stream_id", flat=True)))

    def delete_snapshots(self, stream_ids: Sequence[str], below_version: int | None = None) -> int:
        """The guarded delete: the only way snapshots go (pruning below a version, erasure of all)."""
        from ..models import Snapshot, SnapshotDeletePermit

        token = uuid.uuid4()
        with transaction.atomic(using=self.alias):
            SnapshotDeletePermit.objects.using(self.alias).bulk_create([SnapshotDeletePermit(token=token)])
            query = Snapshot.objects.using(self.alias).filter(stream_id__in=list(stream_ids))
            if below_version is not None:
                query = query.filter(version__lt=below_version)
            deleted = query._raw_delete(self.alias)  # the queryset's delete() is refused on purpose
            SnapshotDeletePermit.objects.using(self.alias).filter(token=token)._raw_delete(self.alias)
        return deleted

    def record_snapshot_position(self, stream_id: str, version: int, position: tuple[str, int, int]) -> None:
        from ..models import Snapshot

        Snapshot.objects.using(self.alias).filter(stream_id=stream_id, version=version).update(
            kafka_topic=position[0], kafka_partition=position[1], kafka_offset=position[2])

    def iter_snapshots(self, stream_id: str | None = None) -> Iterator[SnapshotRow]:
        """Every snapshot with the chain hash at its version, for verification."""
        from ..models import Snapshot

        query = Snapshot.objects.using(self.alias).order_by("stream_id", "version")
        if stream_id is not None:
            query = query.filter(stream_id=stream_id)
        for row in query.values_list("stream_id", "version", "aggregate_type", "schema_version", "state", "seal",
                                     "data_subject", "created_at").iterator(chunk_size=1000):
            sid, version, aggregate_type, schema, state, seal, subject, created_at = row
            yield SnapshotRow(sid, version, aggregate_type, schema, bytes(state), None if seal is None else bytes(seal),
                              subject, _aware(created_at), self.chain_hash_at(sid, version), None)

    # --- verification ------------------------------------------------------------------

    def iter_stream_events(self, stream_id: str | None = None, chunk: int = 5000) -> Iterator[StoredEvent]:
        """Every event (of one stream), ordered by stream and version, without holding all in memory."""
        from ..models import Event

        query = Event.objects.using(self.alias).order_by("stream_id", "version")
        if stream_id is not None:
            query = query.filter(stream_id=stream_id)
        for row in query.values_list("stream_id", *LOAD_COLUMNS).iterator(chunk_size=chunk):
            yield row_to_stored_event(row[0], row[1:])

    def iter_events_of_types(self, stream_types: Sequence[str], chunk: int = 5000) -> Iterator[list[StoredEvent]]:
        """Every event of these stream types, in chunks, each stream in version order (a
        projection rebuilt from the mirror)."""
        from ..models import Event

        query = (Event.objects.using(self.alias).filter(stream__stream_type__in=list(stream_types))
                 .order_by("stream_id", "version").values_list("stream_id", *LOAD_COLUMNS))
        batch: list[StoredEvent] = []
        for row in query.iterator(chunk_size=chunk):
            batch.append(row_to_stored_event(row[0], row[1:]))
            if len(batch) >= chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    def last_offsets(self, topics: Sequence[str]) -> dict[str, int]:
        """The highest offset recorded per "topic:partition" of these topics. Every record at
        or below it was committed to the mirror before it was published."""
        from django.db.models import Max

        from ..models import Event

        rows = (Event.objects.using(self.alias).filter(kafka_topic__in=list(topics))
                .values_list("kafka_topic", "kafka_partition").annotate(last=Max("kafka_offset")))
        return {f"{topic}:{partition}": last for topic, partition, last in rows}

    def stream_heads(self, stream_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        from ..models import Stream

        return {sid: (version, bytes(last_hash)) for sid, version, last_hash in
                Stream.objects.using(self.alias).filter(stream_id__in=list(stream_ids))
                .values_list("stream_id", "version", "last_hash")}

    def streams_without_events(self, stream_id: str | None = None) -> list[tuple[str, int]]:
        from ..models import Stream

        query = Stream.objects.using(self.alias).filter(version__gt=0, events__isnull=True)
        if stream_id is not None:
            query = query.filter(stream_id=stream_id)
        return list(query.values_list("stream_id", "version"))

    def unpublished_count(self, stream_id: str | None = None) -> int:
        from ..models import Event

        query = Event.objects.using(self.alias).filter(published_at__isnull=True)
        return (query.filter(stream_id=stream_id) if stream_id else query).count()

    def published_partitions(self, stream_id: str | None = None) -> list[tuple[str, int]]:
        from ..models import Event

        query = Event.objects.using(self.alias).filter(published_at__isnull=False)
        if stream_id is not None:
            query = query.filter(stream_id=stream_id)
        return sorted(query.order_by().values_list("kafka_topic", "kafka_partition").distinct())

    def iter_partition_events(self, topic: str, partition: int, stream_id: str | None = None) -> Iterator[StoredEvent]:
        """The mirror's events recorded at one Kafka partition, in offset order."""
        from ..models import Event

        query = Event.objects.using(self.alias).filter(kafka_topic=topic, kafka_partition=partition)
        if stream_id is not None:
            query = query.filter(stream_id=stream_id)
        for row in query.order_by("kafka_offset").values_list("stream_id", *LOAD_COLUMNS).iterator(chunk_size=5000):
            yield row_to_stored_event(row[0], row[1:])

    # --- migration -----------------------------------------------------------------------

    def lock_stream(self, stream_id: str) -> StreamRow | None:
        """Locks the stream row until the caller's transaction ends (appends to it wait)."""
        from ..models import Stream

        if not connections[self.alias].in_atomic_block:
            raise EventStoreError("lock_stream needs a transaction (wrap the call in transaction.atomic())")
        found = Stream.objects.using(self.alias).select_for_update(no_key=True).filter(pk=stream_id).exists()
        return self.stream(stream_id) if found else None

    def check_versions(self, expected: dict[str, int]) -> tuple[str, int] | None:
        """Share-locks these streams until the caller's transaction ends and returns the first
        whose version is not the one given (0: the stream must not exist), with its version, or
        None. A command that decided on what it read cannot commit after that changed."""
        from ..models import Stream

        if not connections[self.alias].in_atomic_block:
            raise EventStoreError("check_versions needs a transaction (wrap the call in transaction.atomic())")
        ids = sorted(expected)
        db = connections[self.alias]
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT stream_id, version FROM eventstore_stream WHERE stream_id = ANY(%s) "
                               "ORDER BY stream_id FOR SHARE", [ids])
                found = dict(cursor.fetchall())
        else:
            found = dict(Stream.objects.using(self.alias).filter(pk__in=ids).values_list("stream_id", "version"))
        return next(((sid, found.get(sid, 0)) for sid in ids if found.get(sid, 0) != expected[sid]), None)

    def link_migration(self, old_stream_id: str, new_stream_id: str) -> None:
        """Closes the old stream (its appends are refused, naming the new one) and links both."""
        from ..models import Stream

        Stream.objects.using(self.alias).filter(pk=old_stream_id).update(migrated_to=new_stream_id)
        Stream.objects.using(self.alias).filter(pk=new_stream_id).update(migrated_from=old_stream_id)

    def add_subject_alias(self, subject: str, alias: str) -> None:
        from ..models import SubjectAlias

        now = datetime.now(timezone.utc)
        SubjectAlias.objects.using(self.alias).bulk_create(
            [SubjectAlias(subject=subject, alias=alias, created_at=now),
             SubjectAlias(subject=alias, alias=subject, created_at=now)], ignore_conflicts=True)

    def subject_aliases(self, subject: str) -> set[str]:
        """The subject and every name linked to it by aliases (transitively)."""
        from ..models import SubjectAlias

        known, frontier = {subject}, {subject}
        while frontier:
            found = set(SubjectAlias.objects.using(self.alias).filter(subject__in=list(frontier))
                        .values_list("alias", flat=True)) - known
            known |= found
            frontier = found
        return known


# psycopg binds these server-side (%b: binary, no escaping or quoting of 13 arrays).
_APPEND_SQL = (
    "SELECT outcome, stream_version, published_version, positions, hashes, detail, epoch FROM eventstore_append("
    "%s, %s, %s, %b::uuid[], %b::text[], %b::int[], %b::timestamptz[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::bytea[], %b::bytea[], %s::text, %b::bytea, %s::text, %b::text[], %b::bytea[])"
)

# The subject's key row comes with the events: one round trip, and a key destroyed by an
# erasure is never used again. Joined to the first event only (a stream's events mostly share
# one subject): a key lookup per event was three quarters of the statement's time. Versions
# have no gaps, so the first event is the one at the first version asked for.
# The event columns a StoredEvent is built from (the event id as text: cheaper than UUID objects).
_EVENT_COLUMNS = ", ".join("e." + c if c != "event_id" else "e.event_id::text" for c in LOAD_COLUMNS)

_LOAD_SQL = (f"SELECT {_EVENT_COLUMNS}, "
             "k.wrapped_key, k.master_key_id "
             "FROM eventstore_event e "
             "LEFT JOIN privacy_subject_key k ON k.subject = CASE WHEN e.version = %s THEN e.data_subject END "
             "WHERE e.stream_id = %s AND e.version >= %s AND e.version <= %s ORDER BY e.version")

_READ_LOG_SQL = (
    f"SELECT e.stream_id, {_EVENT_COLUMNS} "
    "FROM eventstore_event e WHERE e.position > %s ORDER BY e.position LIMIT %s"
)

_UNPUBLISHED_SQL = (
    f"SELECT e.stream_id, {_EVENT_COLUMNS} "
    "FROM eventstore_event e JOIN eventstore_stream s ON s.stream_id = e.stream_id "
    "WHERE e.stream_id = ANY(%s::text[]) AND e.version > s.published_version "
    "ORDER BY e.stream_id, e.version LIMIT %s"
)

# The snapshot, the chain hash at its version (its seal is bound to it) and the key row.
_LATEST_SNAPSHOT_SQL = (
    "SELECT s.version, s.aggregate_type, s.schema_version, s.state, s.seal, s.data_subject, s.created_at, "
    "e.chain_hash, k.subject, k.wrapped_key, k.master_key_id "
    "FROM eventstore_snapshot s "
    "LEFT JOIN eventstore_event e ON e.stream_id = s.stream_id AND e.version = s.version "
    "LEFT JOIN privacy_subject_key k ON k.subject = s.data_subject "
    "WHERE s.stream_id = %s AND s.version <= %s AND (s.schema_version = %s OR %s < 0) "
    "ORDER BY s.version DESC LIMIT 1"
)

_CACHE_CHECK_SQL = (
    "SELECT (SELECT version FROM eventstore_stream WHERE stream_id = %s), "
    "(SELECT chain_hash FROM eventstore_event WHERE stream_id = %s AND version = %s), "
    "k.wrapped_key, k.master_key_id, k.subject IS NOT NULL "
    "FROM (SELECT 1) AS one LEFT JOIN privacy_subject_key k ON k.subject = %s"
)


class PostgresRecorder(DjangoRecorder):
    """One round trip per append (the `eventstore_append` function), per load, per snapshot
    lookup and per cache check."""

    def append(self, stream_id: str, stream_type: str, expected: int, events: Sequence[PendingEvent],
               new_key: NewKey | None = None, subject_keys: dict[str, bytes | None] | None = None) -> AppendOutcome:
        subjects = sorted({e.data_subject for e in events if e.data_subject is not None})
        subject_keys = subject_keys or {}
        # A server-side-binding psycopg cursor and a prepared statement (Django's cursors bind
        # client-side: they would quote 13 arrays into the SQL text each time).
        db = self.connection()
        with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            row = cursor.execute(_APPEND_SQL, [
                stream_id, stream_type, int(expected),
                [e.event_id for e in events], [e.event_type for e in events],
                [e.schema_version for e in events], [e.occurred_at for e in events],
                [e.correlation_id for e in events], [e.causation_id for e in events],
                [e.actor for e in events], [e.data_subject for e in events], [e.payload for e in events],
                [e.digest for e in events],
                new_key and new_key.subject, new_key and new_key.wrapped, new_key and new_key.master_key_id,
                subjects, [subject_keys.get(subject) for subject in subjects],
            ], prepare=True, binary=True).fetchone()
        outcome, version, published, positions, hashes, detail, epoch = row
        return AppendOutcome(outcome, version, published, tuple(positions or ()), tuple(map(bytes, hashes or ())),
                             detail, epoch)

    def _fetch(self, sql: str, params: list) -> list[tuple]:
        """The rows of a prepared statement, bound server-side and read in binary."""
        db = self.connection()
        with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            # psycopg's C timestamp loader instead of Django's Python one: the session time
            # zone is UTC, so both give the same instants, this one several times faster.
            cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
            cursor.execute(sql, params, prepare=True, binary=True)
            return cursor.fetchall()

    def load(self, stream_id: str, from_version: int, to_version: int | None) -> list[StoredEvent]:
        rows = self._fetch(_LOAD_SQL, [from_version, stream_id, from_version,
                                       to_version if to_version is not None else _MAX_VERSION])
        materials: dict[str, KeyMaterial] = {}  # one per subject and load
        if rows and rows[0][9] is not None:
            # No key row reads as an erased key (nothing opens its fields), as it always did.
            first = rows[0]
            materials[first[9]] = KeyMaterial(None if first[15] is None else bytes(first[15]), first[16])
        others = {row[9] for row in rows if row[9] is not None} - materials.keys()
        if others:  # subjects after the first event's: their key rows in one more query
            materials.update(self.key_materials(others))
            materials.update({subject: KeyMaterial(None, None) for subject in others - materials.keys()})
        return [row_to_stored_event(stream_id, row, materials.get(row[9])) for row in rows]

    def latest_snapshot(self, stream_id: str, max_version: int | None, schema_version: int | None) -> SnapshotRow | None:
        db = self.connection()
        schema = -1 if schema_version is None else schema_version
        with db.wrap_database_errors, db.cursor() as cursor:
            cursor.execute(_LATEST_SNAPSHOT_SQL, [stream_id, _MAX_VERSION if max_version is None else max_version,
                                                  schema, schema])
            row = cursor.fetchone()
        if row is None:
            return None
        version, aggregate_type, schema, state, seal, subject, created_at, chain, key_row, wrapped, master_id = row
        material = None if key_row is None else KeyMaterial(None if wrapped is None else bytes(wrapped), master_id)
        return SnapshotRow(stream_id, version, aggregate_type, schema, bytes(state), None if seal is None else bytes(seal),
                           subject, created_at, None if chain is None else bytes(chain), material)

    def cache_check(self, stream_id: str, version: int, subject: str | None) -> CacheCheck:
        db = self.connection()
        with db.wrap_database_errors, db.cursor() as cursor:
            cursor.execute(_CACHE_CHECK_SQL, [stream_id, stream_id, version, subject])
            current, chain, wrapped, master_id, has_row = cursor.fetchone()
        material = KeyMaterial(None if wrapped is None else bytes(wrapped), master_id) if has_row else None
        return CacheCheck(current, None if chain is None else bytes(chain), material)

    def record_publications(self, publications: Sequence[Publication]) -> None:
        publications = _latest_epoch_only(publications)
        runs = _contiguous_runs(publications)
        now = datetime.now(timezone.utc)
        # One transaction (one commit to flush), the event rows first, without holding any
        # stream row (appends to those streams go on meanwhile), then the stream rows, locked
        # only from there to the commit.
        db = self.connection()
        # A server-side-binding cursor, binary: Django's would quote the arrays (thousands of
        # values in a relay's batch) into the statement's text.
        with transaction.atomic(using=self.alias), db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            # The latest acknowledgement of an event wins (after a refill, its position in the
            # new log). Epochs are not checked here, per event, but for the stream below: an
            # older epoch's acknowledgement arrives while the refill lets sends settle, before
            # the republished copy's, which then overwrites it.
            cursor.execute(
                "UPDATE eventstore_event e SET kafka_topic = x.topic, kafka_partition = x.part, "
                "kafka_offset = x.off, published_at = %s "
                "FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::bigint[]) AS x(pos, topic, part, off) "
                "WHERE e.position = x.pos",
                [now, [p.global_position for p in publications], [p.topic for p in publications],
                 [p.partition for p in publications], [p.offset for p in publications]],
                prepare=True, binary=True,
            )
            # The runs are sorted by stream id, and the plan takes the rows in that order, as
            # every multi-stream writer locks them. (Not guaranteed by PostgreSQL: a deadlock the
            # database breaks costs a command a retry, or this batch a republication. An explicit
            # ordered lock statement here costs every batch a round trip with the rows held.)
            cursor.execute(
                "UPDATE eventstore_stream s SET published_version = x.last "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::int[]) AS x(sid, first, last, epoch) "
                "WHERE s.stream_id = x.sid AND s.publication_epoch = x.epoch "
                "AND s.published_version >= x.first - 1 AND s.published_version < x.last",
                [[r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs], [r[3] for r in runs]],
                prepare=True, binary=True,
            )

    def read_log(self, after_position: int, limit: int) -> list[StoredEvent]:
        # One binary statement walking the primary key, and the page's key rows in a second
        # (joined per event, the key lookups would cost more than reading the events).
        rows = self._fetch(_READ_LOG_SQL, [after_position, limit])
        subject = LOAD_COLUMNS.index("data_subject") + 1
        materials = self.key_materials({row[subject] for row in rows if row[subject] is not None})
        return [row_to_stored_event(row[0], row[1:], materials.get(row[subject])) for row in rows]

    def unpublished_events(self, stream_ids: Sequence[str], limit: int) -> list[StoredEvent]:
        # As the portable recorder, in one binary statement (the relay's backlog reads).
        rows = self._fetch(_UNPUBLISHED_SQL, [list(stream_ids), limit + 1])
        return [row_to_stored_event(row[0], row[1:]) for row in _whole_streams(rows, limit)]

    @contextlib.contextmanager
    def relay_lock(self) -> Iterator[bool]:
        """A session advisory lock: it cannot expire under its holder, and PostgreSQL drops it
        when the holder's connection ends (a killed worker never leaves it behind)."""
        with session_advisory_lock(self.connection(), _RELAY_LOCK_ID) as held:
            yield held

    def outbox_heads(self, grace_seconds: float, limit: int, stream_types: Sequence[str] | None = None,
                     held: Sequence[str] = ()) -> list[str]:
        # The database's clock, in the same statement: no clock of any other machine is involved.
        sql = ("SELECT s.stream_id FROM eventstore_stream s "
               "JOIN eventstore_event e ON e.stream_id = s.stream_id AND e.version = s.published_version + 1 "
               "WHERE s.version > s.published_version AND e.recorded_at < now() - make_interval(secs => %s) "
               "AND (%s::text[] IS NULL OR s.stream_type = ANY(%s::text[])) "
               "AND NOT (s.stream_id = ANY(%s::text[])) ORDER BY s.stream_id LIMIT %s")
        types = list(stream_types) if stream_types else None
        with self.connection().cursor() as cursor:
            cursor.execute(sql, [grace_seconds, types, types, list(held), limit])
            return [row[0] for row in cursor.fetchall()]


def _whole_streams(rows: list, limit: int) -> list:
    """The first `limit` of (stream id, ...) rows, without the stream the limit cuts, unless it
    is the only one."""
    if len(rows) <= limit:
        return rows
    cut_stream = rows[limit][0]
    return [r for r in rows[:limit] if r[0] != cut_stream] or rows[:limit]


def _expectation_holds(expected: int, version: int) -> bool:
    if expected == ExpectedVersion.ANY:
        return True
    if expected == ExpectedVersion.NO_STREAM:
        return version == 0
    if expected == ExpectedVersion.STREAM_EXISTS:
        return version > 0
    return expected == version


def _latest_epoch_only(publications: Sequence[Publication]) -> Sequence[Publication]:
    """Drops acknowledgements of a stream's older epoch when a batch also holds a newer one
    (epochs only grow: the older ones are stale), so that each stream has one epoch here."""
    latest: dict[str, int] = {}
    for pub in publications:
        if latest.get(pub.stream_id, -1) < pub.epoch:
            latest[pub.stream_id] = pub.epoch
    if all(pub.epoch == latest[pub.stream_id] for pub in publications):
        return publications
    return [pub for pub in publications if pub.epoch == latest[pub.stream_id]]


def _contiguous_runs(publications: Sequence[Publication]) -> list[tuple[str, int, int, int]]:
    """(stream, first, last, epoch) for each run of consecutive versions acknowledged in this
    batch within one publication epoch."""
    runs: list[tuple[str, int, int, int]] = []
    for pub in sorted(publications, key=lambda p: (p.stream_id, p.epoch, p.version)):
        if runs and runs[-1][0] == pub.stream_id and runs[-1][3] == pub.epoch and runs[-1][2] + 1 >= pub.version:
            stream, first, last, epoch = runs[-1]
            runs[-1] = (stream, first, max(last, pub.version), epoch)
        else:
            runs.append((pub.stream_id, pub.version, pub.version, pub.epoch))
    return runs


def recorder_for(alias: str = "default") -> DjangoRecorder:
    vendor = connections[alias].vendor
    return PostgresRecorder(alias) if vendor == "postgresql" else DjangoRecorder(alias)
