"""The domain: events and aggregates in plain Python, with no Django or Kafka imports."""
from .aggregate import EventSourcedAggregate
from .events import DomainEvent, DomainError, event_classes

__all__ = ["DomainEvent", "DomainError", "EventSourcedAggregate", "event_classes"]
