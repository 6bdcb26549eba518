"""The event store's public API: the store, its records and errors, the repository and service."""
from .errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventSerializationError,
    EventStoreError,
    EventTooLargeError,
    ImmutableEventError,
    InvalidStreamIdError,
    KafkaTopicError,
    MalformedEventError,
    StoreUnavailableError,
    StreamClosedError,
    SubjectErasedError,
    TransientStoreError,
    UnknownEventTypeError,
    UnknownStreamTypeError,
)
from .configured import (
    build_event_store,
    get_aggregate_cache,
    get_event_sourcing_service,
    get_event_store,
    get_snapshot_store,
)
from .health import check_event_store_health
from .records import AppendResult, EventMetadata, ExpectedVersion, KafkaPosition, StoredEvent
from .serialization import deserialize_event, registry
from .repository import AggregateNotFoundError, EventSourcingRepositoryImpl, LoadReport
from .service import EventSourcingService, StreamInfo
from .snapshots import SnapshotRecord, SnapshotStore
from .store import EventStore

__all__ = [
    "AppendResult", "ConcurrencyError", "DuplicateEventError", "EventMetadata", "EventSerializationError",
    "EventStore", "EventStoreError", "EventTooLargeError", "ExpectedVersion", "ImmutableEventError",
    "InvalidStreamIdError", "KafkaPosition", "KafkaTopicError", "MalformedEventError", "StoredEvent",
    "StoreUnavailableError", "StreamClosedError", "SubjectErasedError", "TransientStoreError",
    "UnknownEventTypeError", "UnknownStreamTypeError", "build_event_store", "check_event_store_health",
    "deserialize_event", "get_event_store", "registry",
    "AggregateNotFoundError", "EventSourcingRepositoryImpl", "EventSourcingService", "LoadReport", "SnapshotRecord",
    "SnapshotStore", "StreamInfo", "get_aggregate_cache", "get_event_sourcing_service", "get_snapshot_store",
]
