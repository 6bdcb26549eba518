"""The event-sourcing service: repositories, stream information,
manual snapshots and temporal loads behind one object."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from asgiref.sync import sync_to_async

from ..domain.aggregate import EventSourcedAggregate
from .errors import EventStoreError
from .repository import AggregateNotFoundError, EventSourcingRepositoryImpl
from .serialization import parse_stream_id
from .snapshots import SnapshotRecord, SnapshotStore
from .store import EventStore

A = TypeVar("A", bound=EventSourcedAggregate)


@dataclass(frozen=True)
class StreamInfo:
    stream_id: str
    version: int
    event_count: int
    first_event_at: datetime | None
    last_event_at: datetime | None
    published_version: int
    latest_snapshot_version: int | None
    latest_snapshot_at: datetime | None


class EventSourcingService:
    def __init__(self, event_store: EventStore, snapshot_store: SnapshotStore, *, cache=None,
                 snapshot_scheduler=None) -> None:
        self.event_store = event_store
        self.snapshot_store = snapshot_store
        self.cache = cache  # None: the configured cache
        self.snapshot_scheduler = snapshot_scheduler
        self._repositories: dict[type, EventSourcingRepositoryImpl] = {}

    def get_repository(self, aggregate_class: type[A]) -> EventSourcingRepositoryImpl[A]:
        repository = self._repositories.get(aggregate_class)
        if repository is None:
            repository = EventSourcingRepositoryImpl(aggregate_class, event_store=self.event_store,
                                                     snapshot_store=self.snapshot_store, cache=self.cache,
                                                     snapshot_scheduler=self.snapshot_scheduler)
            self._repositories[aggregate_class] = repository
        return repository

    # --- sync -------------------------------------------------------------------------

    def save_aggregate_sync(self, aggregate: EventSourcedAggregate, **metadata) -> None:
        self.get_repository(type(aggregate)).save_sync(aggregate, **metadata)

    def load_aggregate_sync(self, aggregate_class: type[A], aggregate_id: str, *, version: int | None = None,
                            as_of: datetime | None = None) -> A:
        return self.get_repository(aggregate_class).load_sync(aggregate_id, version=version, as_of=as_of)

    def get_stream_info_sync(self, stream_id: str) -> StreamInfo:
        parse_stream_id(stream_id)
        info = self.event_store.recorder.stream_info(stream_id)
        if info is None:
            raise AggregateNotFoundError(f"{stream_id} does not exist")
        stream = info["stream"]
        return StreamInfo(stream_id, stream.version, info["count"], info["first"], info["last"],
                          stream.published_version, info["snapshot_version"], info["snapshot_at"])

    def create_snapshot_sync(self, aggregate_class: type[A], aggregate_id: str) -> SnapshotRecord:
        """Snapshots the aggregate at its current version, now."""
        repository = self.get_repository(aggregate_class)
        aggregate = repository.load_sync(aggregate_id)
        return self.snapshot_store.save_snapshot_sync(aggregate.stream_id, aggregate, aggregate.version)

    # --- the guide's async API ----------------------------------------------------------

    async def save_aggregate(self, aggregate: EventSourcedAggregate, **metadata) -> None:
        await sync_to_async(self.save_aggregate_sync, thread_sensitive=False)(aggregate, **metadata)

    async def load_aggregate(self, aggregate_class: type[A], aggregate_id: str, *, version: int | None = None,
                             as_of: datetime | None = None) -> A:
        return await sync_to_async(self.load_aggregate_sync, thread_sensitive=False)(
            aggregate_class, aggregate_id, version=version, as_of=as_of)

    async def get_stream_info(self, stream_id: str) -> StreamInfo:
        return await sync_to_async(self.get_stream_info_sync, thread_sensitive=False)(stream_id)

    async def create_snapshot(self, aggregate_class: type[A], aggregate_id: str) -> SnapshotRecord:
        return await sync_to_async(self.create_snapshot_sync, thread_sensitive=False)(aggregate_class, aggregate_id)


__all__ = ["AggregateNotFoundError", "EventSourcingService", "StreamInfo", "EventStoreError"]
