"""The event sourcing service of the guide, section 4: repositories, stream information,
manual snapshots and temporal loads behind one object."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db.models import Count, Max, Min

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
    def __init__(self, event_store: EventStore, snapshot_store: SnapshotStore) -> None:
        self.event_store = event_store
        self.snapshot_store = snapshot_store
        self._repositories: dict[type, EventSourcingRepositoryImpl] = {}

    def get_repository(self, aggregate_class: type[A]) -> EventSourcingRepositoryImpl[A]:
        repository = self._repositories.get(aggregate_class)
        if repository is None:
            repository = EventSourcingRepositoryImpl(aggregate_class, event_store=self.event_store,
                                                     snapshot_store=self.snapshot_store)
            self._repositories[aggregate_class] = repository
        return repository

    # --- sync -------------------------------------------------------------------------

    def save_aggregate_sync(self, aggregate: EventSourcedAggregate, **metadata) -> None:
        self.get_repository(type(aggregate)).save_sync(aggregate, **metadata)

    def load_aggregate_sync(self, aggregate_class: type[A], aggregate_id: str, *, version: int | None = None,
                            as_of: datetime | None = None) -> A:
        return self.get_repository(aggregate_class).load_sync(aggregate_id, version=version, as_of=as_of)

    def get_stream_info_sync(self, stream_id: str) -> StreamInfo:
        from ..models import Snapshot, Stream

        parse_stream_id(stream_id)
        stream = Stream.objects.filter(pk=stream_id).values_list("version", "published_version").first()
        if stream is None:
            raise AggregateNotFoundError(f"{stream_id} does not exist")
        events = Stream.objects.filter(pk=stream_id).aggregate(
            count=Count("events"), first=Min("events__occurred_at"), last=Max("events__occurred_at"))
        snapshot = (Snapshot.objects.filter(stream_id=stream_id).order_by("-version")
                    .values_list("version", "created_at").first()) or (None, None)
        return StreamInfo(stream_id, stream[0], events["count"], events["first"], events["last"], stream[1],
                          snapshot[0], snapshot[1])

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
