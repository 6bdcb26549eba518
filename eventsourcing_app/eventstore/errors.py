"""What can go wrong in the event store. Each message says what was wrong and what to do."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (a database's message goes on for several), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class EventStoreError(Exception):
    """Base of every event store error."""


class ConcurrencyError(EventStoreError):
    """The stream moved on since the caller read it (optimistic concurrency)."""

    def __init__(self, stream_id: str, expected: object, actual: int):
        self.stream_id = stream_id
        self.expected_version = expected
        self.actual_version = actual
        super().__init__(
            f"stream {stream_id} expected version {expected}, actual {actual}: reload the stream and retry"
        )


class DuplicateEventError(EventStoreError):
    """An event id is already stored at another place than the one asked for."""


class StreamClosedError(EventStoreError):
    """The stream was migrated to another stream and takes no more events."""

    def __init__(self, stream_id: str, migrated_to: str):
        self.stream_id = stream_id
        self.migrated_to = migrated_to
        super().__init__(f"stream {stream_id} was migrated to {migrated_to} and is closed: append to {migrated_to}")


class SubjectErasedError(EventStoreError):
    """The subject's personal data was erased; nothing new may be stored under its key."""


class StoreUnavailableError(EventStoreError):
    """The database could not be reached, or the connection was lost during a call."""


class TransientStoreError(EventStoreError):
    """A deadlock or serialization failure: nothing was stored, and the caller's transaction
    is lost; running the whole operation again succeeds."""


class InvalidStreamIdError(EventStoreError, ValueError):
    pass


class UnknownStreamTypeError(EventStoreError):
    pass


class UnknownEventTypeError(EventStoreError):
    pass


class EventSerializationError(EventStoreError, TypeError):
    """An event cannot be written as JSON (a field of an unsupported type)."""


class MalformedEventError(EventStoreError, ValueError):
    """A stored or received event cannot be read back into its class."""


class EventTooLargeError(EventStoreError):
    pass


class ImmutableEventError(EventStoreError):
    """Something tried to change or delete a stored event."""


class IntegrityCheckError(EventStoreError):
    """An integrity verification could not run (e.g. the stream does not exist)."""


class KafkaTopicError(EventStoreError):
    """A topic is missing or does not have the provisioned partition count."""
