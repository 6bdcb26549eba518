"""The event store: append with optimistic concurrency, load, stream versions.

The guide's calls are coroutines (`await store.append_events(...)`); each has a sync twin
(`append_events_sync`, ...) for Celery tasks, the admin and DRF views.

An append is checked completely (stream id, event classes, ids, JSON, size) before anything
is written; it is then one database statement on PostgreSQL. After the commit the events
are handed to Kafka; whatever Kafka has not acknowledged stays in the outbox for the relay.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Literal, Sequence

from asgiref.sync import sync_to_async
from django.db import transaction

from ..domain.events import DomainEvent
from ..observability import current_actor, current_causation_id, current_correlation_id
from ..privacy.fields import data_subject_of, encrypt_sensitive_fields
from ..privacy.keys import get_subject_keys
from .errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    EventTooLargeError,
    UnknownStreamTypeError,
)
from .integrity import content_digest
from .records import AppendResult, EventMetadata, ExpectedVersion, StoredEvent
from .recorders import DjangoRecorder, PendingEvent
from .serialization import canonical_json, parse_stream_id, registry

logger = logging.getLogger(__name__)

_VALID_EXPECTATIONS = {int(e) for e in ExpectedVersion}
_HEADER_OVERHEAD = 1024  # Kafka record headers (the metadata) on top of the payload
_ID_LIMITS = {"correlation_id": 100, "causation_id": 100, "actor": 200}


class EventStore:
    def __init__(self, *, recorder: DjangoRecorder, stream_types: Sequence[str], max_event_bytes: int,
                 publisher=None, kafka_settings=None) -> None:
        self.recorder = recorder
        self.stream_types = frozenset(stream_types)
        self.max_event_bytes = max_event_bytes
        self.publisher = publisher
        self.kafka_settings = kafka_settings

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
        context = {
            "correlation_id": correlation_id if correlation_id is not None else current_correlation_id(),
            "causation_id": causation_id if causation_id is not None else current_causation_id(),
            "actor": actor if actor is not None else current_actor(),
        }
        for name, value in context.items():
            if value is not None and (not isinstance(value, str) or not value or len(value) > _ID_LIMITS[name]):
                raise EventStoreError(f"{name} must be a non-empty string of at most {_ID_LIMITS[name]} characters")
        keys = _AppendKeys(get_subject_keys())
        pending = self._prepare(stream_id, events, context, keys)
        outcome = self.recorder.append(stream_id, stream_type, int(expected_version), _now(), pending, keys.new)
        if outcome.outcome == "key_exists":
            # Another process made this subject's key first: encrypt with that one instead.
            keys = _AppendKeys(get_subject_keys(), allow_new=False)
            pending = self._prepare(stream_id, events, context, keys)
            outcome = self.recorder.append(stream_id, stream_type, int(expected_version), _now(), pending, None)
        if keys.new is not None and outcome.outcome == "appended":
            # Only once the key row is committed: a rolled-back key must never encrypt anything.
            new = keys.new
            transaction.on_commit(lambda: get_subject_keys().remember(new.subject, new.key), using=self.recorder.alias)
        if outcome.outcome == "conflict":
            raise ConcurrencyError(stream_id, ExpectedVersion.describe(int(expected_version)), outcome.stream_version)
        first = outcome.stream_version - len(pending) + 1
        result = AppendResult(stream_id, first, outcome.stream_version, outcome.positions,
                              idempotent=outcome.outcome == "idempotent")
        if result.idempotent:
            logger.info("re-append of %d events to %s at version %d was already stored", len(pending), stream_id, first)
            return result
        logger.debug("appended %d events to %s (version %d)", len(pending), stream_id, result.last_version)
        if self.publisher is not None:
            stored = [
                StoredEvent(
                    metadata=_metadata(stream_id, first + i, p, outcome.positions[i]),
                    payload=p.payload,
                    chain_hash=outcome.chain_hashes[i],
                )
                for i, p in enumerate(pending)
            ]
            publisher, published = self.publisher, outcome.published_version
            transaction.on_commit(lambda: publisher.publish_appended(stream_id, first, published, stored),
                                  using=self.recorder.alias)
        return result

    def _prepare(self, stream_id: str, events: Sequence[DomainEvent], context: dict,
                 keys: "_AppendKeys") -> list[PendingEvent]:
        if isinstance(events, DomainEvent) or not isinstance(events, (list, tuple)):
            raise EventStoreError("events must be a list of DomainEvent instances")
        if not events:
            raise EventStoreError(f"nothing to append to {stream_id}: the list of events is empty")
        pending: list[PendingEvent] = []
        seen: set[uuid.UUID] = set()
        for event in events:
            cls = registry.ensure_writable(event)
            try:
                event_id = uuid.UUID(str(event.event_id))
            except ValueError:
                raise EventStoreError(f"{cls.event_type} has event_id {event.event_id!r}, which is not a UUID") from None
            if event_id in seen:
                raise DuplicateEventError(f"event id {event_id} appears twice in one append to {stream_id}")
            seen.add(event_id)
            occurred_at = event.occurred_at
            if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
                raise EventStoreError(f"{cls.event_type}.occurred_at must be a timezone-aware datetime")
            occurred_at = occurred_at.astimezone(timezone.utc)
            subject = data_subject_of(event) if cls.sensitive_fields else None
            payload = canonical_json(encrypt_sensitive_fields(event, encryption_key=keys, subject=subject))
            size = len(payload) + _HEADER_OVERHEAD
            if size > self.max_event_bytes:
                raise EventTooLargeError(
                    f"{cls.event_type} for {stream_id} is {size} bytes serialized, over the limit of "
                    f"{self.max_event_bytes} (EVENTSTORE_MAX_EVENT_BYTES); store large content elsewhere "
                    "and put a reference in the event"
                )
            metadata = EventMetadata(
                event_id=str(event_id), stream_id=stream_id, event_type=cls.event_type, version=0,
                timestamp=occurred_at, schema_version=cls.schema_version, data_subject=subject, **context,
            )
            pending.append(PendingEvent(
                event_id=event_id, event_type=cls.event_type, schema_version=cls.schema_version,
                occurred_at=occurred_at, data_subject=subject, payload=payload,
                digest=content_digest(metadata, payload), **context,
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
        events = self.recorder.load(stream_id, max(from_version, 1), to_version)
        if source == "mirror":
            return events
        if source != "kafka":
            raise EventStoreError(f"source must be 'mirror' or 'kafka', not {source!r}")
        return self._load_from_kafka(stream_id, events)

    def _load_from_kafka(self, stream_id: str, mirror: list[StoredEvent]) -> list[StoredEvent]:
        from ..kafka.reader import read_positions, stored_event_from_message

        unpublished = [e.version for e in mirror if e.kafka_position is None]
        if unpublished:
            raise EventStoreError(
                f"stream {stream_id} versions {unpublished[0]}..{unpublished[-1]} are not yet acknowledged by Kafka "
                "(run `manage.py relay_outbox`, then read again)"
            )
        messages = read_positions(self.kafka_settings, [e.kafka_position for e in mirror])
        return [stored_event_from_message(messages[e.kafka_position]) for e in mirror if e.kafka_position in messages]

    def get_stream_version_sync(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if the stream has none."""
        self._check_stream(stream_id)
        return self.recorder.stream_version(stream_id)

    # --- async twins (the guide's API) ------------------------------------------------

    async def append_events(self, stream_id: str, events: Sequence[DomainEvent],
                            expected_version: int = ExpectedVersion.ANY, **metadata) -> AppendResult:
        return await sync_to_async(self.append_events_sync, thread_sensitive=False)(
            stream_id, events, expected_version, **metadata)

    async def load_events(self, stream_id: str, from_version: int = 1, to_version: int | None = None,
                          **options) -> list[StoredEvent]:
        return await sync_to_async(self.load_events_sync, thread_sensitive=False)(
            stream_id, from_version, to_version, **options)

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


class _AppendKeys:
    """The data keys of one append: those this process holds, plus at most one new key, which
    the append statement itself stores (no extra round trip for a new child)."""

    def __init__(self, subject_keys, allow_new: bool = True) -> None:
        self.subject_keys = subject_keys
        self.allow_new = allow_new
        self.new = None

    def key_for_writing(self, subject: str) -> bytes:
        key = self.subject_keys.cached_key_for_writing(subject)
        if key is not None:
            return key
        if self.new is not None and self.new.subject == subject:
            return self.new.key
        if self.allow_new and self.new is None:
            self.new = self.subject_keys.new_key(subject)
            return self.new.key
        return self.subject_keys.key_for_writing(subject)


def _metadata(stream_id: str, version: int, pending: PendingEvent, position: int) -> EventMetadata:
    return EventMetadata(
        event_id=str(pending.event_id), stream_id=stream_id, event_type=pending.event_type, version=version,
        timestamp=pending.occurred_at, correlation_id=pending.correlation_id, causation_id=pending.causation_id,
        schema_version=pending.schema_version, actor=pending.actor, global_position=position,
        data_subject=pending.data_subject,
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)
