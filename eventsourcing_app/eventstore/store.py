"""The event store: append with optimistic concurrency, load, stream versions.

The guide's calls are coroutines (`await store.append_events(...)`); each has a sync twin
(`append_events_sync`, ...) for Celery tasks, the admin and DRF views.

An append is checked completely (stream id, event classes, ids, JSON, size) before anything
is written; it is then one database statement on PostgreSQL. After the commit the events
are handed to Kafka; whatever Kafka has not acknowledged stays in the outbox for the relay.
"""
from __future__ import annotations

import logging
import random
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Literal, Sequence

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction

from .. import metrics
from ..domain.events import DomainEvent
from ..observability import current_actor, current_causation_id, current_correlation_id, stream_context
from .errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    EventTooLargeError,
    StoreUnavailableError,
    StreamClosedError,
    SubjectErasedError,
    TransientStoreError,
    UnknownStreamTypeError,
    first_line,
)
from .configured import get_field_protection
from .integrity import DigestHead, canonical_timestamp
from .ports import FieldProtection, KafkaCopyReader, Publisher
from .records import AppendResult, EventMetadata, ExpectedVersion, StoredEvent
from .recorders import AppendOutcome, DjangoRecorder, PendingEvent
from .serialization import canonical_json, data_subject_of, json_data, parse_stream_id, registry

logger = logging.getLogger(__name__)

_VALID_EXPECTATIONS = {int(e) for e in ExpectedVersion}
_ID_LIMITS = {"correlation_id": 100, "causation_id": 100, "actor": 200}
# Control characters (C0, DEL, C1) and lone surrogates: no metadata value may hold them.
_BAD_METADATA = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What a Kafka record adds to the payload, apart from the values counted per event: header
# names (about 140 bytes), numbers, the chain hash, the timestamp, length prefixes, the record
# and batch framing. Generous on purpose: an event must never be too large for Kafka.
_KAFKA_FIXED_OVERHEAD = 512
_KEY_ATTEMPTS = 3
_TRANSIENT_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
_DEADLOCK_ATTEMPTS = 4
_READ_ALL_MAX = 100_000  # events per read_all call: a page, not the whole log in memory


class EventStore:
    def __init__(self, *, recorder: DjangoRecorder, stream_types: Sequence[str], max_event_bytes: int,
                 publisher: Publisher | None = None, kafka_settings=None,
                 field_protection: FieldProtection | None = None, kafka_reader: KafkaCopyReader | None = None) -> None:
        self.recorder = recorder
        self.stream_types = frozenset(stream_types)
        self.max_event_bytes = max_event_bytes
        self.publisher = publisher
        self.kafka_settings = kafka_settings
        self.field_protection = field_protection or get_field_protection()
        self.kafka_reader = kafka_reader

    # --- append ---------------------------------------------------------------------

    def append_events_sync(
        self,
        stream_id: str,
        events: Sequence[DomainEvent],
        expected_version: int = ExpectedVersion.ANY,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        actor: str | None = None,
    ) -> AppendResult:
        stream_type = self._check_stream(stream_id, for_append=True)
        self._check_expected(expected_version)
        started = time.perf_counter()
        with stream_context(stream_id):
            try:
                return self._append(stream_id, stream_type, events, expected_version, correlation_id, causation_id,
                                    actor)
            except ConcurrencyError:
                metrics.APPEND_CONFLICTS.labels(stream_type).inc()
                raise
            except EventStoreError as exc:
                metrics.APPEND_FAILURES.labels(stream_type, type(exc).__name__).inc()
                raise
            finally:
                metrics.APPEND_SECONDS.labels(stream_type).observe(time.perf_counter() - started)

    def _append(self, stream_id, stream_type, events, expected_version, correlation_id, causation_id,
                actor) -> AppendResult:
        context = {
            "correlation_id": correlation_id if correlation_id is not None else current_correlation_id(),
            "causation_id": causation_id if causation_id is not None else current_causation_id(),
            "actor": actor if actor is not None else current_actor(),
        }
        for name, value in context.items():
            _check_metadata(name, value)
        keys = self.field_protection.for_append()
        for _ in range(_KEY_ATTEMPTS):
            pending = self._prepare(stream_id, events, context, keys)
            outcome = self._record(stream_id, stream_type, int(expected_version), pending, keys.new_key,
                                   keys.subject_keys)
            if outcome.outcome not in ("key_exists", "key_missing", "key_changed"):
                break
            # Another process stored this subject's key first, or a key this process made was
            # rolled back with its transaction: encrypt again with the stored key.
            keys = keys.retry(outcome.outcome, outcome.detail)
        else:
            raise EventStoreError(f"the data key of {outcome.detail} changed during {_KEY_ATTEMPTS} attempts to "
                                  f"append to {stream_id}; retry the append")
        result = self._result(stream_id, expected_version, pending, outcome)
        if outcome.outcome == "appended" and keys.new_key is not None:
            # Kept for later appends only once committed: a key rolled back with the caller's
            # transaction must never encrypt anything again.
            transaction.on_commit(keys.stored, using=self.recorder.alias, robust=True)
        if result.idempotent:
            metrics.APPEND_IDEMPOTENT.labels(stream_type).inc()
            logger.info("re-append of %d events to %s at version %d was already stored", len(pending), stream_id,
                        result.first_version)
            return result
        counts: dict[str, int] = {}
        for p in pending:
            counts[p.event_type] = counts.get(p.event_type, 0) + 1
        # Counted once committed: an append rolled back with the caller's transaction never was.
        transaction.on_commit(lambda: _count_appended(stream_type, counts), using=self.recorder.alias, robust=True)
        logger.debug("appended %d events to %s (version %d)", len(pending), stream_id, result.last_version)
        if self.publisher is not None:
            first = result.first_version
            stored = []
            for i, p in enumerate(pending):
                meta = p.metadata
                meta.version, meta.global_position = first + i, outcome.positions[i]
                stored.append(StoredEvent(metadata=meta, payload=p.payload, chain_hash=outcome.chain_hashes[i]))
            publisher, published, epoch = self.publisher, outcome.published_version, outcome.epoch
            # After the commit, and never failing the append: whatever the producer does, the
            # events are committed and the outbox relay publishes what this hand-off did not.
            transaction.on_commit(lambda: publisher.publish_appended(stream_id, first, published, stored, epoch),
                                  using=self.recorder.alias, robust=True)
        return result

    def _record(self, stream_id, stream_type, expected, pending, new_key, subject_keys) -> AppendOutcome:
        # Outside a caller's transaction the append is a transaction of its own: one the
        # database broke as a deadlock stored nothing and is simply made again (the acknowledgement
        # recorder takes event rows before stream rows, appends the other way round).
        attempts = 1 if connections[self.recorder.alias].in_atomic_block else _DEADLOCK_ATTEMPTS
        for attempt in range(1, attempts):
            try:
                return self._record_once(stream_id, stream_type, expected, pending, new_key, subject_keys)
            except TransientStoreError:
                time.sleep(random.uniform(0.001, 0.005) * attempt)
        return self._record_once(stream_id, stream_type, expected, pending, new_key, subject_keys)

    def _record_once(self, stream_id, stream_type, expected, pending, new_key, subject_keys) -> AppendOutcome:
        try:
            return self.recorder.append(stream_id, stream_type, expected, pending, new_key, subject_keys)
        except (OperationalError, InterfaceError) as exc:
            if getattr(exc.__cause__, "sqlstate", None) in _TRANSIENT_SQLSTATES:
                raise TransientStoreError(
                    f"the append to {stream_id} met a deadlock or a serialization failure and stored nothing: "
                    "run the whole operation again") from exc
            raise self.connection_lost(f"during the append to {stream_id}", exc, "whether it was stored is unknown: "
                                       "retry the same append (re-appending the same events is idempotent)") from exc
        except DatabaseError as exc:
            raise EventStoreError(f"the database refused the append to {stream_id}: {first_line(exc)}") from exc

    def _result(self, stream_id, expected, pending, outcome: AppendOutcome) -> AppendResult:
        kind = outcome.outcome
        if kind == "conflict":
            raise ConcurrencyError(stream_id, ExpectedVersion.describe(int(expected)), outcome.stream_version)
        if kind == "duplicate":
            raise DuplicateEventError(f"{outcome.detail}; an event id can be stored once: give new events new ids")
        if kind == "closed":
            raise StreamClosedError(stream_id, outcome.detail)
        if kind == "erased":
            self.field_protection.forget(outcome.detail)
            raise SubjectErasedError(f"the personal data of {outcome.detail} was erased; no new personal data can be "
                                     f"stored for it (nothing was appended to {stream_id})")
        if kind not in ("appended", "idempotent"):
            raise EventStoreError(f"unexpected append outcome {kind!r} for {stream_id}")
        first = outcome.stream_version - len(pending) + 1
        return AppendResult(stream_id, first, outcome.stream_version, outcome.positions, idempotent=kind == "idempotent")

    def _prepare(self, stream_id: str, events: Sequence[DomainEvent], context: dict, keys) -> list[PendingEvent]:
        if isinstance(events, DomainEvent) or not isinstance(events, (list, tuple)):
            raise EventStoreError("events must be a list of DomainEvent instances")
        if not events:
            raise EventStoreError(f"nothing to append to {stream_id}: the list of events is empty")
        pending: list[PendingEvent] = []
        seen: set[uuid.UUID] = set()
        correlation_id, causation_id, actor = context["correlation_id"], context["causation_id"], context["actor"]
        metadata_bytes = sum(len(v) for v in context.values() if v) + 2 * len(stream_id)
        # Per append, not per event: what every event shares is checked and encoded once.
        heads = DigestHead(stream_id, correlation_id, causation_id, actor)
        classes: dict[type, type[DomainEvent]] = {}
        for event in events:
            cls = classes.get(type(event))
            if cls is None:
                cls = classes[type(event)] = registry.ensure_writable(event)
            raw_id = event.event_id
            try:
                event_id = raw_id if type(raw_id) is uuid.UUID else uuid.UUID(str(raw_id))
            except ValueError:
                raise EventStoreError(f"{cls.event_type} has event_id {raw_id!r}, which is not a UUID") from None
            if event_id in seen:
                raise DuplicateEventError(f"event id {event_id} appears twice in one append to {stream_id}")
            seen.add(event_id)
            occurred_at = event.occurred_at
            if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
                raise EventStoreError(f"{cls.event_type}.occurred_at must be a timezone-aware datetime")
            if occurred_at.tzinfo is not timezone.utc:
                occurred_at = occurred_at.astimezone(timezone.utc)
            id_text = str(event_id)
            data = json_data(event)
            subject = None
            if cls.sensitive_fields:
                subject = data_subject_of(event)
                data = keys.encrypt(data, cls.sensitive_fields, subject, id_text, cls.event_type)
            payload = canonical_json(data, cls.event_type)
            size = len(payload) + metadata_bytes + len(cls.event_type) + len(subject or "") + _KAFKA_FIXED_OVERHEAD
            if size > self.max_event_bytes:
                raise EventTooLargeError(
                    f"{cls.event_type} for {stream_id} is {size} bytes as a Kafka record, over the limit of "
                    f"{self.max_event_bytes} (EVENTSTORE_MAX_EVENT_BYTES); store large content elsewhere "
                    "and put a reference in the event"
                )
            timestamp = canonical_timestamp(occurred_at)
            pending.append(PendingEvent(
                event_id=event_id, event_type=cls.event_type, schema_version=cls.schema_version,
                occurred_at=occurred_at, data_subject=subject, payload=payload,
                digest=heads.digest(id_text, cls.event_type, cls.schema_version, timestamp, subject, payload),
                correlation_id=correlation_id, causation_id=causation_id, actor=actor,
                # The record handed to Kafka after the commit (its version and position set then).
                metadata=EventMetadata(
                    event_id=id_text, stream_id=stream_id, event_type=cls.event_type, version=0,
                    timestamp=occurred_at, correlation_id=correlation_id, causation_id=causation_id,
                    schema_version=cls.schema_version, actor=actor, data_subject=subject),
            ))
        return pending

    # --- read ------------------------------------------------------------------------

    def load_events_sync(self, stream_id: str, from_version: int = 1, to_version: int | None = None, *,
                         source: Literal["mirror", "kafka"] = "mirror") -> list[StoredEvent]:
        """Events of a stream from `from_version` (inclusive) to `to_version` (inclusive, or the end).

        `source="kafka"` reads the same events from the Kafka topic at the positions the
        mirror recorded, so that the two copies can be compared.
        """
        self._check_stream(stream_id)
        for name, value in (("from_version", from_version), ("to_version", to_version)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EventStoreError(f"{name} must be a whole number of 0 or more, not {value!r}")
        try:
            events = self.recorder.load(stream_id, max(from_version, 1), to_version)
        except (OperationalError, InterfaceError) as exc:
            raise self.connection_lost(f"while loading {stream_id}", exc) from exc
        if source == "mirror":
            return events
        if source != "kafka":
            raise EventStoreError(f"source must be 'mirror' or 'kafka', not {source!r}")
        return self._load_from_kafka(stream_id, events)

    def _load_from_kafka(self, stream_id: str, mirror: list[StoredEvent]) -> list[StoredEvent]:
        if self.kafka_reader is None:
            raise EventStoreError("this event store has no Kafka reader; build it with the app's bootstrap")
        unpublished = [e.version for e in mirror if e.kafka_position is None]
        if unpublished:
            raise EventStoreError(
                f"stream {stream_id} versions {unpublished[0]}..{unpublished[-1]} are not yet acknowledged by Kafka "
                "(run `manage.py relay_outbox`, then read again)"
            )
        found = self.kafka_reader([e.kafka_position for e in mirror])
        return [found[e.kafka_position] for e in mirror if e.kafka_position in found]

    def read_all_sync(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Up to `limit` events of every stream with a global position above `after_position`,
        in position order: page through the whole log by passing the last event's position.

        Positions are given when an append starts and transactions commit in any order, so an
        event may appear below a position already read while appends run (the global order has
        gaps and late arrivals). Reading a log at rest (an export, a check, a rebuild while the
        writers wait) sees everything; to follow the live log, read Kafka, as the projectors do.
        """
        if isinstance(after_position, bool) or not isinstance(after_position, int) or after_position < 0:
            raise EventStoreError(f"after_position must be a whole number of 0 or more, not {after_position!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _READ_ALL_MAX:
            raise EventStoreError(f"limit must be a whole number from 1 to {_READ_ALL_MAX:,}, not {limit!r}; "
                                  "page through the log by passing the last event's position")
        try:
            return self.recorder.read_log(after_position, limit)
        except (OperationalError, InterfaceError) as exc:
            raise self.connection_lost("while reading the log", exc) from exc

    def get_stream_version_sync(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if the stream has none."""
        self._check_stream(stream_id)
        try:
            return self.recorder.stream_version(stream_id)
        except (OperationalError, InterfaceError) as exc:
            raise self.connection_lost(f"while reading the version of {stream_id}", exc) from exc

    def connection_lost(self, during: str, exc: Exception, advice: str = "retry") -> StoreUnavailableError:
        """The error for a call that lost its database connection (`during` says which call).
        Outside a transaction the dead connection is closed first, so that whatever the caller
        does next (a command, its own transaction or query) opens a new one."""
        self.recorder.discard_broken_connection()
        return StoreUnavailableError(f"the database connection failed {during} ({first_line(exc)}); {advice}")

    # --- async twins (the guide's API) ------------------------------------------------

    async def append_events(self, stream_id: str, events: Sequence[DomainEvent],
                            expected_version: int = ExpectedVersion.ANY, **metadata) -> AppendResult:
        return await sync_to_async(self.append_events_sync, thread_sensitive=False)(
            stream_id, events, expected_version, **metadata)

    async def load_events(self, stream_id: str, from_version: int = 1, to_version: int | None = None,
                          **options) -> list[StoredEvent]:
        return await sync_to_async(self.load_events_sync, thread_sensitive=False)(
            stream_id, from_version, to_version, **options)

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        return await sync_to_async(self.read_all_sync, thread_sensitive=False)(after_position, limit)

    async def get_stream_version(self, stream_id: str) -> int:
        return await sync_to_async(self.get_stream_version_sync, thread_sensitive=False)(stream_id)

    # --- publication -------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until Kafka acknowledged, and the mirror recorded, everything handed over."""
        return self.publisher.flush(timeout) if self.publisher is not None else True

    # --- checks --------------------------------------------------------------------------

    def _check_stream(self, stream_id: str, for_append: bool = False) -> str:
        stream_type, _ = parse_stream_id(stream_id)
        if for_append and stream_type not in self.stream_types:
            raise UnknownStreamTypeError(
                f"stream type {stream_type!r} of {stream_id} is not one of {sorted(self.stream_types)}; "
                "add it to EVENTSTORE_STREAM_TYPES and run `manage.py provision_topics`"
            )
        return stream_type

    @staticmethod
    def _check_expected(expected: object) -> None:
        if isinstance(expected, bool) or not isinstance(expected, int) or (
                expected < 0 and expected not in _VALID_EXPECTATIONS):
            raise EventStoreError(
                f"expected_version must be a version (0 or more) or one of ExpectedVersion.ANY, NO_STREAM, "
                f"STREAM_EXISTS; got {expected!r}"
            )


def _check_metadata(name: str, value: object) -> None:
    if value is None:
        return
    limit = _ID_LIMITS[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise EventStoreError(f"{name} must be a non-empty string of at most {limit} characters, not {value!r:.120}")
    bad = _BAD_METADATA.search(value)
    if bad:
        raise EventStoreError(f"{name} holds U+{ord(bad.group()):04X} at position {bad.start()}, a control character "
                              "or a lone surrogate; metadata must be printable text")


def _count_appended(stream_type: str, counts: dict[str, int]) -> None:
    for event_type, count in counts.items():
        metrics.EVENTS_APPENDED.labels(stream_type, event_type).inc(count)

