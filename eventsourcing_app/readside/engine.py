"""Applying events to one generation of one projector, exactly once in effect.

A batch (events as read from Kafka, in partition order) is applied in one database transaction
that also records, for the projector generation, the next Kafka offset of each partition and the
last version applied of each stream. So a crash anywhere leaves either all of a batch or none of
it, and a replayed event is skipped by its stream version. Kafka may hold an event twice (the
publisher is at-least-once) or, after a producer timeout, a later version before an earlier one
is republished: a version at or below the stream's applied one is skipped, and a version past
the next one first gets the missing ones from the mirror (the event store), in order.

An event the projector cannot apply becomes a dead letter; its stream waits behind it (later
versions are not applied, so per-stream order holds), every other stream goes on.
`retry_dead_letters` applies the held streams again from the mirror.

Every batch ends by moving the checkpoint's revision, on the condition that it is still the one
this engine last wrote: if another process moved it meanwhile (two runners, a retry, a rebuild
switching over), the batch is rolled back with `Fenced` and the caller re-reads its positions
instead of writing twice.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Callable, ClassVar, Sequence

from django.db import DataError, IntegrityError, transaction
from django.db.models import F

from .. import metrics
from ..eventstore import get_event_store
from ..eventstore.errors import first_line
from ..eventstore.records import StoredEvent
from ..eventstore.serialization import deserialize_event, json_loads, parse_stream_id, registry
from ..observability import event_log_fields
from .models import DeadLetter, ProjectorCheckpoint, StreamProgress
from .personal import SubjectKeyRing

logger = logging.getLogger(__name__)

# Test-only fault injection: called inside the transaction after the read models are written
# and before the checkpoint is (a crash there must leave no trace after restart).
before_checkpoint: Callable[[], None] | None = None


class Fenced(Exception):
    """Another process moved this projector generation's checkpoint; re-read it and go on."""


class Projector:
    """A read model's projector: which stream types it follows, and how events change its rows.

    Subclasses name handlers `on_<EventType>(event, meta)`; events of other types only advance
    the stream's version. `prepare(events)` loads, in a few queries, the rows a batch touches;
    `flush()` writes them back.
    """

    name: ClassVar[str]
    stream_types: ClassVar[tuple[str, ...]]
    # Event types whose handler reads only fields stored in clear: they are handed the stored
    # JSON (as attributes) instead of a decoded, decrypted event, when stored in the current
    # schema version (older ones are upcast as usual). Decoding is most of a batch's work.
    clear_fields_only: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    models: ClassVar[tuple] = ()

    def __init__(self, generation: int, keyring: SubjectKeyRing) -> None:
        self.generation = generation
        self.keyring = keyring

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        names = cls.__dict__.get("_handled")
        if names is None:
            names = frozenset(n[3:] for n in dir(cls) if n.startswith("on_"))
            cls._handled = names
        return names

    def prepare(self, events: Sequence) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def flush(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, event, meta) -> None:
        getattr(self, f"on_{meta.event_type}")(event, meta)


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    filled: int = 0  # versions taken from the mirror to close a gap
    dead_letters: int = 0
    rows_written: int = 0


@dataclass
class _Failure:
    stored: StoredEvent
    error: str
    version: int = 0  # where its stream is held; the event's own version unless a gap is missing

    def __post_init__(self) -> None:
        self.version = self.version or self.stored.metadata.version


@dataclass
class _Position:
    offsets: dict = field(default_factory=dict)
    events_applied: int = 0
    revision: int = 0


class ProjectionEngine:
    """One projector generation: `apply_batch(events, next_offsets)` in one transaction."""

    def __init__(self, projector_cls: type[Projector], generation: int) -> None:
        self.projector_cls = projector_cls
        self.name = projector_cls.name
        self.generation = generation
        self.stream_types = frozenset(projector_cls.stream_types)
        self.handled = projector_cls.handled_types()
        self.clear_only = projector_cls.clear_fields_only
        self._current = registry.current_version
        self.position = self._read_position(create=True)
        # Each stream's applied version (and hold) as committed by this engine: valid as long as
        # the fence holds (any other writer moves the revision, and `resync` forgets it all).
        self._known: dict[str, tuple[int, int | None]] = {}
        self._pending: dict[str, tuple[int, int | None]] = {}
        self._unreadable: list[tuple[str, int, str]] = []

    # --- the checkpoint ---------------------------------------------------------------

    def _read_position(self, create: bool = False, lock: bool = False) -> _Position | None:
        query = ProjectorCheckpoint.objects.filter(projector=self.name, generation=self.generation)
        if lock:
            query = query.select_for_update()
        row = query.values("offsets", "events_applied", "revision").first()
        if row is None and create:
            ProjectorCheckpoint.objects.get_or_create(projector=self.name, generation=self.generation,
                                                      defaults={"updated_at": datetime.now(timezone.utc)})
            return _Position()
        return None if row is None else _Position(dict(row["offsets"]), row["events_applied"], row["revision"])

    def resync(self) -> _Position:
        """Re-reads the positions after `Fenced` (or at start)."""
        position = self._read_position()
        if position is None:
            raise Fenced(f"projector {self.name} generation {self.generation} no longer exists (a rebuild replaced it)")
        self.position = position
        self._known.clear()
        return position


    def heartbeat(self, caught_up: bool = False) -> None:
        """Notes that a runner is alive on this generation (health reads it), outside batches."""
        now = datetime.now(timezone.utc)
        changes = {"updated_at": now}
        if caught_up:
            changes["caught_up_at"] = now
        ProjectorCheckpoint.objects.filter(projector=self.name, generation=self.generation).update(**changes)

    # --- a batch ------------------------------------------------------------------------

    def apply_batch(self, events: Sequence[StoredEvent], next_offsets: dict[str, int] | None = None,
                    unreadable: Sequence[tuple[str, int, str]] = ()) -> BatchResult:
        """Applies `events` (in the order read) and records `next_offsets` ("topic:partition" ->
        next offset to read), all in one transaction. Raises Fenced if another process moved
        the checkpoint since this engine last wrote it. `unreadable`: Kafka records of the batch
        that are no events of this store, (partition, offset, error), kept as dead letters in the
        same transaction, so that none is passed over without a trace."""
        started = time.perf_counter()
        events = [e for e in events if self._follows(e)]
        self._unreadable = list(unreadable)
        position = self.position
        offsets = {**position.offsets, **(next_offsets or {})}
        self._pending = {}
        try:
            with transaction.atomic():
                result = self._apply(events)
                self._checkpoint(position, offsets, result)
        except _REFUSED as exc:
            self._pending = {}
            # The database refused something the batch writes (a value too long for a column,
            # say): again stream by stream, and the streams it refuses become dead letters, so
            # one bad stream never stops the projector. (No savepoint on the usual path: it
            # would cost every batch two round trips.)
            logger.warning("projector %s: the database refused a batch (%s); applying it stream by stream",
                           self.name, _first_line(exc))
            try:
                with transaction.atomic():
                    result = self._apply_stream_by_stream(events)
                    self._checkpoint(position, offsets, result)
            except BaseException:
                self._pending = {}
                raise
        except BaseException:
            self._pending = {}
            raise
        self.position = _Position(offsets, position.events_applied + result.applied, position.revision + 1)
        metrics.PROJECTION_BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        if result.applied:
            metrics.PROJECTION_EVENTS_APPLIED.labels(self.name).inc(result.applied)
        if result.dead_letters or self._unreadable:
            metrics.DEAD_LETTERS_CREATED.labels(self.name).inc(result.dead_letters + len(self._unreadable))
        if len(self._known) > 200_000:  # bounded memory; a miss costs one query
            self._known.clear()
        self._known.update(self._pending)
        self._pending = {}
        return result

    def _checkpoint(self, position: _Position, offsets: dict, result: BatchResult) -> None:
        self._record_unreadable()
        if before_checkpoint is not None:
            before_checkpoint()
        # The fence: written only if nobody moved the checkpoint since this engine's last batch;
        # otherwise everything of this batch is rolled back. (Checked last, so the row is locked
        # only from here to the commit.)
        self._write_checkpoint(offsets, position.events_applied + result.applied, expect=position.revision)

    def _follows(self, stored: StoredEvent) -> bool:
        try:
            return parse_stream_id(stored.metadata.stream_id)[0] in self.stream_types
        except Exception:  # noqa: BLE001 - a record naming no valid stream is nobody's event
            logger.error("projector %s: a record names the stream %r, which is not a stream id; it is passed over",
                         self.name, stored.metadata.stream_id[:200])
            return False

    def _apply_stream_by_stream(self, events: Sequence[StoredEvent]) -> BatchResult:
        total = BatchResult()
        by_stream: dict[str, list[StoredEvent]] = {}
        for stored in events:
            by_stream.setdefault(stored.metadata.stream_id, []).append(stored)
        for sid, group in by_stream.items():
            pending = dict(self._pending)
            try:
                with transaction.atomic():
                    part = self._apply(group)
            except _REFUSED as exc:
                self._pending = pending  # what the rolled-back savepoint wrote is not there
                first = self._first_new(sid, group)
                if first is None:
                    continue
                part = BatchResult(dead_letters=1)
                self._write_progress({}, {sid: _Failure(first, f"the database refused it: {_first_line(exc)}")},
                                     frozenset())
            total.applied += part.applied
            total.skipped += part.skipped
            total.filled += part.filled
            total.dead_letters += part.dead_letters
            total.rows_written += part.rows_written
        return total

    def _first_new(self, sid: str, group: list[StoredEvent]) -> StoredEvent | None:
        """The first version of the stream this generation has not applied (the one to hold at)."""
        applied, held = self._progress([sid]).get(sid) or (0, None)
        fresh = [e for e in group if e.metadata.version > applied]
        if held is not None or not fresh:
            return None
        if fresh[0].metadata.version > applied + 1:  # a gap: its first version is where it stops
            missing = get_event_store().load_events_sync(sid, applied + 1, applied + 1)
            if missing:
                return missing[0]
        return fresh[0]

    def _record_unreadable(self) -> None:
        now = datetime.now(timezone.utc)
        for where, offset, error in self._unreadable:
            logger.error("projector %s: %s", self.name, error)
            DeadLetter.objects.get_or_create(
                projector=self.name, generation=self.generation, stream_id=f"kafka:{where}", version=offset,
                defaults={"event_id": "", "event_type": "(unreadable record)", "error": error[:4000],
                          "first_failed_at": now, "last_failed_at": now, "resolved_at": now})

    def _write_checkpoint(self, offsets: dict, events_applied: int, *, expect: int) -> None:
        changes = {"offsets": offsets, "events_applied": events_applied, "updated_at": datetime.now(timezone.utc),
                   "revision": F("revision") + 1}
        written = ProjectorCheckpoint.objects.filter(projector=self.name, generation=self.generation,
                                                     revision=expect).update(**changes)
        if not written:
            exists = ProjectorCheckpoint.objects.filter(projector=self.name, generation=self.generation).exists()
            raise Fenced(f"projector {self.name} generation {self.generation} "
                         + ("was moved by another process" if exists else "no longer exists (a rebuild replaced it)"))

    def _progress(self, stream_ids, lock: bool = False, cached: bool = False) -> dict[str, tuple[int, int | None]]:
        found = {}
        if cached:
            found = {sid: self._known[sid] for sid in stream_ids if sid in self._known}
            stream_ids = [sid for sid in stream_ids if sid not in found]
        if not stream_ids:
            return found
        rows = StreamProgress.objects.filter(projector=self.name, generation=self.generation,
                                             stream_id__in=list(stream_ids))
        if lock:
            rows = rows.select_for_update()
        for sid, version, held in rows.values_list("stream_id", "version", "held_at_version"):
            found[sid] = (version, held)
        return found

    def _plan(self, events: Sequence[StoredEvent], progress: dict) -> tuple[list[StoredEvent], int, int, dict]:
        """The events to apply, in order: duplicates dropped, gaps filled from the mirror; a gap
        the mirror cannot fill holds its stream (a dead letter) instead of being jumped."""
        applied = {sid: version for sid, (version, _) in progress.items()}
        plan, skipped, filled, failed = [], 0, 0, {}
        store = None
        for stored in events:
            sid, version = stored.metadata.stream_id, stored.metadata.version
            if sid in failed:
                continue
            last = applied.get(sid, 0)
            if version <= last:
                skipped += 1
                continue
            if version > last + 1:
                store = store or get_event_store()
                missing = store.load_events_sync(sid, last + 1, version - 1)
                if [e.version for e in missing] != list(range(last + 1, version)):
                    failed[sid] = _Failure(stored, f"versions {last + 1}..{version - 1} of {sid} are not in the "
                                                   f"event store, yet version {version} arrived from Kafka",
                                           version=last + 1)
                    continue
                plan.extend(missing)
                filled += len(missing)
            plan.append(stored)
            applied[sid] = version
        return plan, skipped, filled, failed

    def _decode(self, plan: list[StoredEvent], keyring: SubjectKeyRing) -> tuple[list, list[_Failure]]:
        decoded, failures = [], []
        for stored in plan:
            meta = stored.metadata
            if meta.event_type not in self.handled:
                decoded.append((stored, None))
                continue
            try:
                if meta.event_type in self.clear_only and meta.schema_version == self._current(meta.event_type):
                    decoded.append((stored, SimpleNamespace(**json_loads(stored.payload))))
                    continue
                if meta.data_subject is not None and stored.subject_key is None:
                    stored.subject_key = keyring.material(meta.data_subject)
                decoded.append((stored, deserialize_event(stored)))
            except Exception as exc:  # noqa: BLE001 - any undecodable event is a dead letter
                failures.append(_Failure(stored, f"{type(exc).__name__}: {exc}"))
                decoded.append((stored, _UNDECODABLE))
        return decoded, failures

    def _apply(self, events: Sequence[StoredEvent], *, release: frozenset[str] = frozenset()) -> BatchResult:
        """`release`: held streams whose events (from their held version on) are retried."""
        result = BatchResult()
        if not events:
            return result
        progress = self._progress({e.metadata.stream_id for e in events}, lock=bool(release), cached=not release)
        held = {sid for sid, (_, at) in progress.items() if at is not None and sid not in release}
        # A held stream waits as it is: nothing of it is planned, decoded or applied.
        waiting = [e for e in events if e.metadata.stream_id in held]
        plan, result.skipped, result.filled, failed = self._plan(
            [e for e in events if e.metadata.stream_id not in held], progress)
        result.skipped += len(waiting)
        keyring = SubjectKeyRing(e.metadata.data_subject for e in plan if e.metadata.data_subject)
        decoded, failures = self._decode(plan, keyring)
        for failure in failures:
            failed.setdefault(failure.stored.metadata.stream_id, failure)
        while True:  # again without a stream whose event failed (rare): rows are reloaded
            projector = self.projector_cls(self.generation, keyring)
            live = [(s, e) for s, e in decoded if not self._blocked(s, failed)]
            projector.prepare([e for _, e in live if e is not None and e is not _UNDECODABLE])
            versions: dict[str, int] = {}
            applied = 0
            try:
                for stored, event in live:
                    meta = stored.metadata
                    if event is not None:
                        try:
                            projector.apply(event, meta)
                        except Exception as exc:  # noqa: BLE001 - the event becomes a dead letter
                            raise _Failed(_Failure(stored, f"{type(exc).__name__}: {exc}")) from exc
                    versions[meta.stream_id] = meta.version
                    applied += 1
            except _Failed as failed_event:
                failure = failed_event.failure
                failed[failure.stored.metadata.stream_id] = failure
                continue
            break
        result.applied = applied
        result.rows_written = projector.flush()
        self._write_progress(versions, failed, release)
        result.dead_letters = len(failed)
        return result

    @staticmethod
    def _blocked(stored: StoredEvent, failed: dict[str, _Failure]) -> bool:
        failure = failed.get(stored.metadata.stream_id)
        return failure is not None and stored.metadata.version >= failure.version

    def _write_progress(self, versions: dict[str, int], failed: dict[str, _Failure], release: frozenset[str]) -> None:
        now = datetime.now(timezone.utc)
        rows = {sid: StreamProgress(projector=self.name, generation=self.generation, stream_id=sid, version=v,
                                    held_at_version=None)
                for sid, v in versions.items()}
        for sid, failure in failed.items():
            version = failure.version
            row = rows.get(sid)
            if row is None:
                # Nothing of this stream applied in this batch: keep the version it had.
                known = self._progress([sid]).get(sid)
                row = rows[sid] = StreamProgress(projector=self.name, generation=self.generation, stream_id=sid,
                                                 version=known[0] if known else version - 1)
            row.held_at_version = version
            meta = failure.stored.metadata
            logger.error("projector %s: %s version %d could not be applied; the stream waits behind it: %s",
                         self.name, sid, version, failure.error, extra=event_log_fields(meta))
            letter, created = DeadLetter.objects.get_or_create(
                projector=self.name, generation=self.generation, stream_id=sid, version=version,
                defaults={"event_id": meta.event_id if meta.version == version else "",
                          "event_type": meta.event_type if meta.version == version else "(missing)",
                          "error": failure.error[:4000], "first_failed_at": now, "last_failed_at": now})
            if not created:
                DeadLetter.objects.filter(pk=letter.pk).update(
                    error=failure.error[:4000], attempts=letter.attempts + 1, last_failed_at=now, resolved_at=None)
        for sid, row in rows.items():
            self._pending[sid] = (row.version, row.held_at_version)
        if rows:
            StreamProgress.objects.bulk_create(
                list(rows.values()), update_conflicts=True, unique_fields=["projector", "generation", "stream_id"],
                update_fields=["version", "held_at_version"])
        resolved = set(release) - set(failed)
        if resolved:
            DeadLetter.objects.filter(projector=self.name, generation=self.generation, stream_id__in=resolved,
                                      resolved_at__isnull=True).update(resolved_at=now)

    # --- dead letters -------------------------------------------------------------------

    def retry_dead_letters(self) -> tuple[int, int]:
        """Applies each held stream again from the mirror, from the version it stopped at.
        Returns (streams released, streams still held). Safe to run twice at once: each stream
        is retried under its progress row's lock, and only while it is held where it was seen."""
        store = get_event_store()
        released = still = 0
        held = list(StreamProgress.objects.filter(projector=self.name, generation=self.generation,
                                                  held_at_version__isnull=False)
                    .values_list("stream_id", "held_at_version"))
        for sid, at in held:
            with transaction.atomic():
                position = self._read_position(lock=True)
                if position is None:
                    raise Fenced(f"projector {self.name} generation {self.generation} no longer exists")
                current = self._progress([sid], lock=True).get(sid)
                if current is None or current[1] != at:
                    continue  # released (or moved) by another retry meanwhile
                events = [e for e in store.load_events_sync(sid, at) if e.version > current[0]]
                if not events:
                    still += 1
                    continue
                result = self._apply(events, release=frozenset({sid}))
                self._write_checkpoint(position.offsets, position.events_applied + result.applied,
                                       expect=position.revision)
            self.position = _Position(position.offsets, position.events_applied + result.applied, position.revision + 1)
            self._known.pop(sid, None)
            self._pending = {}
            if result.dead_letters:
                still += 1
            else:
                released += 1
        return released, still


# What the database answers to a value it cannot store (not a lost connection or a deadlock,
# which are retried as they are, never made dead letters).
_REFUSED = (DataError, IntegrityError)


def _first_line(exc: BaseException) -> str:
    return first_line(exc)[:300]


class _Failed(Exception):
    def __init__(self, failure: _Failure) -> None:
        self.failure = failure


_UNDECODABLE = object()


def wait_for_version(projector: str, generation: int, stream_id: str, version: int, timeout: float) -> int:
    """Waits (bounded) until the projector generation has applied `version` of the stream;
    returns the version it has applied (lower than asked if the wait ran out)."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        applied = (StreamProgress.objects.filter(projector=projector, generation=generation, stream_id=stream_id)
                   .values_list("version", flat=True).first()) or 0
        if applied >= version or time.monotonic() >= deadline:
            return applied
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 0.05)
