"""The aggregate interface of the guide: events are raised, applied, saved and replayed."""
from __future__ import annotations

from typing import ClassVar

from .events import DomainEvent

# aggregate_type -> class, for code that only has a stream id (snapshot tasks, commands).
_aggregate_classes: dict[str, type["EventSourcedAggregate"]] = {}


def aggregate_classes() -> dict[str, type["EventSourcedAggregate"]]:
    return _aggregate_classes


class EventSourcedAggregate:
    """An aggregate whose state is the sum of its events.

    `version` counts the events already stored; events raised since the last save are
    pending (`get_domain_events`) until the repository stores them and clears them.
    Subclasses set `aggregate_type` (the stream id prefix) and implement `apply_event`.
    """

    aggregate_type: ClassVar[str] = ""
    # Bump when the shape of to_snapshot() changes: older snapshots are then ignored and the
    # aggregate is rebuilt from its events.
    snapshot_schema_version: ClassVar[int] = 1
    # Keys of to_snapshot() holding personal data, stored encrypted like event fields.
    snapshot_sensitive_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.aggregate_type:
            _aggregate_classes[cls.aggregate_type] = cls

    def __init__(self, id: str) -> None:
        self.id = id
        self._version = 0
        self._pending_events: list[DomainEvent] = []

    @property
    def version(self) -> int:
        return self._version

    @property
    def stream_id(self) -> str:
        return f"{self.aggregate_type}.{self.id}"

    def has_uncommitted_events(self) -> bool:
        return bool(self._pending_events)

    def get_domain_events(self) -> list[DomainEvent]:
        return list(self._pending_events)

    def clear_domain_events(self) -> None:
        self._pending_events.clear()

    def increment_version(self) -> None:
        self._version += 1

    def apply_event(self, event: DomainEvent) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not apply {event.event_type}")

    @classmethod
    def create_empty(cls, id: str) -> "EventSourcedAggregate":
        """An aggregate with no history, to replay stored events into."""
        return cls(id)

    def snapshot_subject(self) -> tuple[str, str] | None:
        """(subject type, subject id) whose key protects the snapshot's sensitive fields."""
        return None

    def to_snapshot(self) -> dict:
        """The state as JSON-friendly values (not the version or pending events)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be snapshotted")

    @classmethod
    def from_snapshot(cls, id: str, version: int, state: dict) -> "EventSourcedAggregate":
        """The aggregate at `version`, rebuilt from to_snapshot()'s output."""
        raise NotImplementedError(f"{cls.__name__} cannot be restored from a snapshot")

    def _raise_event(self, event: DomainEvent) -> None:
        """Applies a new event to the state and keeps it for the next save."""
        self.apply_event(event)
        self._pending_events.append(event)
