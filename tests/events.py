"""Event classes used by the tests (the product's own aggregates come with the domain)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from eventsourcing_app.domain import DomainEvent


@dataclass
class NoteRecorded(DomainEvent, event_type="test.NoteRecorded"):
    text: str
    n: int = 0


@dataclass
class ProfileChanged(DomainEvent, event_type="test.ProfileChanged"):
    changes: dict = field(default_factory=dict)
    changed_at: datetime | None = None


@dataclass
class Unserializable(DomainEvent, event_type="test.Unserializable"):
    value: object = None


def notes(count: int, start: int = 1) -> list[NoteRecorded]:
    return [NoteRecorded(text=f"note {i}", n=i) for i in range(start, start + count)]
