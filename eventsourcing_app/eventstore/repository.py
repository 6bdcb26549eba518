"""The event-sourcing repository: aggregates in, aggregates out.

`save` appends an aggregate's pending events with the version it was loaded at as the
expected version (a lost race raises ConcurrencyError and stores nothing), then schedules a
snapshot if the save crossed the snapshot frequency. `load` starts from the best of the cache
entry and the latest usable snapshot at or below the requested version, and replays only the
events after it. Temporal loads give the state as of a version or a point in time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, transaction

from .. import metrics
from ..domain.aggregate import EventSourcedAggregate
from ..observability import stream_context
from .cache import AggregateCache
from .errors import EventStoreError, MalformedEventError
from .ports import SnapshotScheduler
from .records import KeyMaterial
from .serialization import deserialize_event
from .snapshots import SnapshotStore
from .store import EventStore

logger = logging.getLogger(__name__)
A = TypeVar("A", bound=EventSourcedAggregate)


class AggregateNotFoundError(EventStoreError, LookupError):
    pass


@dataclass(frozen=True)
class LoadReport:
    """How the last load was made: for tests, logs and metrics."""

    stream_id: str
    version: int
    started_from: str  # "empty", "snapshot" or "cache"
    base_version: int
    events_replayed: int


class EventSourcingRepositoryImpl(Generic[A]):
    def __init__(self, aggregate_class: type[A], *, event_store: EventStore | None = None,
                 snapshot_store: SnapshotStore | None = None, cache: AggregateCache | bool | None = None,
                 snapshot_scheduler: SnapshotScheduler | None = None) -> None:
        """Defaults come from the configuration; `cache=False` loads without the Redis cache."""
        from .configured import get_aggregate_cache, get_event_store, get_snapshot_store, schedule_snapshot

        if not (isinstance(aggregate_class, type) and issubclass(aggregate_class, EventSourcedAggregate)):
            raise EventStoreError(f"{aggregate_class!r} is not an EventSourcedAggregate class")
        if not aggregate_class.aggregate_type:
            raise EventStoreError(f"{aggregate_class.__name__} has no aggregate_type")
        self.aggregate_class = aggregate_class
        self.event_store = event_store or get_event_store()
        self.snapshot_store = snapshot_store or get_snapshot_store()
        self.cache = None if cache is False else cache if cache is not None else get_aggregate_cache()
        self.schedule_snapshot = snapshot_scheduler or schedule_snapshot
        self.last_load: LoadReport | None = None

    def stream_id(self, aggregate_id: str) -> str:
        return f"{self.aggregate_class.aggregate_type}.{aggregate_id}"

    # --- save ------------------------------------------------------------------------

    def save_sync(self, aggregate: A, *, correlation_id: str | None = None, causation_id: str | None = None,
                  actor: str | None = None) -> None:
        if not isinstance(aggregate, self.aggregate_class):
            raise EventStoreError(f"this repository saves {self.aggregate_class.__name__}, not {type(aggregate).__name__}")
        events = aggregate.get_domain_events()
        if not events:
            return
        before = aggregate.version
        result = self.event_store.append_events_sync(
            aggregate.stream_id, events, expected_version=before,
            correlation_id=correlation_id, causation_id=causation_id, actor=actor)
        for _ in events:
            aggregate.increment_version()
        aggregate.clear_domain_events()
        # The cache is filled by loads, not saves: a save would have to encrypt the whole state
        # again, and an entry never wins over a newer version anyway.
        stream_id, after = aggregate.stream_id, result.last_version
        if self.snapshot_store.crosses_threshold(stream_id, before, after):
            logger.info("snapshot threshold reached for %s at version %d", stream_id, after)
            # Fire and forget, after the commit: the save stands whatever scheduling does.
            transaction.on_commit(lambda: self.schedule_snapshot(stream_id), using=self.event_store.recorder.alias,
                                  robust=True)

    async def save(self, aggregate: A, **metadata) -> None:
        await sync_to_async(self.save_sync, thread_sensitive=False)(aggregate, **metadata)

    # --- load ------------------------------------------------------------------------

    def load_sync(self, aggregate_id: str, *, version: int | None = None, as_of: datetime | None = None) -> A:
        """The aggregate now, as of a version, or as of a point in time (the last event at or
        before it). Raises AggregateNotFoundError if the stream has no such state."""
        aggregate_id = str(aggregate_id)
        stream_id = self.stream_id(aggregate_id)
        with stream_context(stream_id):
            try:
                return self._load(aggregate_id, stream_id, version, as_of)
            except (OperationalError, InterfaceError) as exc:
                raise self.event_store.connection_lost(f"while loading {stream_id}", exc) from exc

    def _load(self, aggregate_id: str, stream_id: str, version: int | None, as_of: datetime | None) -> A:
        if version is not None and as_of is not None:
            raise EventStoreError("give a version or a point in time, not both")
        if as_of is not None:
            version = self._version_at(stream_id, as_of)
            if version == 0:
                raise AggregateNotFoundError(f"{stream_id} had no events at {as_of.isoformat()}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise EventStoreError(f"version must be a whole number of 1 or more, not {version!r}")

        cls = self.aggregate_class
        started = time.perf_counter()
        aggregate, started_from, current, material = None, "empty", None, None
        if version is None and self.cache is not None:
            aggregate, current, material = self._from_cache(aggregate_id, stream_id)
            started_from = "cache" if aggregate is not None else started_from
        if aggregate is None:
            snapshot = self.snapshot_store.get_latest_snapshot_sync(stream_id, max_version=version,
                                                                    schema_version=cls.snapshot_schema_version)
            if snapshot is not None:
                try:
                    aggregate = cls.from_snapshot(aggregate_id, snapshot.version, snapshot.state)
                    started_from, material = "snapshot", snapshot.subject_key
                except (KeyError, TypeError, ValueError) as exc:  # a damaged snapshot: replay everything
                    logger.warning("snapshot of %s at version %d is unusable (%r); replaying all events",
                                   stream_id, snapshot.version, exc)
        if aggregate is None:
            aggregate = cls.create_empty(aggregate_id)
        base = aggregate.version

        events = []
        if current is None or current > base:
            events = self.event_store.load_events_sync(stream_id, from_version=base + 1, to_version=version)
        for stored in events:
            aggregate.apply_event(deserialize_event(stored))
            aggregate.increment_version()
        if aggregate.version == 0:
            raise AggregateNotFoundError(f"{stream_id} does not exist")
        if version is not None and aggregate.version != version:
            raise AggregateNotFoundError(f"{stream_id} has no version {version} (it is at {aggregate.version})")
        self.last_load = LoadReport(stream_id, aggregate.version, started_from, base, len(events))
        metrics.LOAD_SECONDS.labels(cls.aggregate_type, started_from).observe(time.perf_counter() - started)
        metrics.LOAD_EVENTS_REPLAYED.labels(cls.aggregate_type, started_from).observe(len(events))
        if version is None and self.cache is not None and events:
            last = events[-1]
            material = next((e.subject_key for e in reversed(events) if e.subject_key is not None), material)
            self.cache.put(aggregate, last.chain_hash, material)
        return aggregate

    async def load(self, aggregate_id: str, *, version: int | None = None, as_of: datetime | None = None) -> A:
        return await sync_to_async(self.load_sync, thread_sensitive=False)(aggregate_id, version=version, as_of=as_of)

    def _from_cache(self, aggregate_id: str, stream_id: str) -> tuple[A | None, int | None, KeyMaterial | None]:
        """The cached aggregate (if its seal verifies), the stream's current version and the
        subject's key row, in one query."""
        entry = self.cache.get(stream_id)
        if entry is None or entry.schema_version != self.aggregate_class.snapshot_schema_version:
            return None, None, None
        check = self.event_store.recorder.cache_check(stream_id, entry.version, entry.subject)
        current, material = check.stream_version, check.subject_key
        if current is None or current < entry.version or (entry.subject is not None and
                                                          (material is None or material.erased)):
            self.cache.delete([stream_id])  # no such stream here, an entry from elsewhere, or erased
            return None, None, None
        # An entry that does not verify or open (altered in Redis, another database, an older
        # shape) is a miss: the cache never fails a load, and is never believed without proof.
        try:
            if not self.cache.verifies(stream_id, entry, check.chain_hash):
                raise MalformedEventError("its seal does not verify")
            state = self.cache.open(stream_id, entry, material)
            return self.aggregate_class.from_snapshot(aggregate_id, entry.version, state), current, material
        except (MalformedEventError, KeyError, TypeError, ValueError) as exc:
            logger.warning("cache entry for %s at version %d is not used (%s); loading from the store",
                           stream_id, entry.version, exc)
            self.cache.delete([stream_id])
            return None, None, None

    def _version_at(self, stream_id: str, moment: datetime) -> int:
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise EventStoreError("the point in time must be a timezone-aware datetime")
        return self.event_store.recorder.version_at(stream_id, moment)
