"""The records the store hands out: expected-version constants, metadata, stored events."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ExpectedVersion(enum.IntEnum):
    """Named expectations, as in KurrentDB; an exact int means "the stream is at this version".

    `NO_STREAM` is the same as the exact version 0: the stream has no events yet.
    """

    ANY = -2
    NO_STREAM = -1
    STREAM_EXISTS = -4

    @classmethod
    def describe(cls, expected: int) -> str:
        try:
            return cls(expected).name
        except ValueError:
            return str(expected)


# Records are handed out for reading; they are plain slotted classes (not frozen ones) because
# loads build thousands of them and a frozen dataclass costs twice as much to construct.
@dataclass(slots=True)
class EventMetadata:
    event_id: str
    stream_id: str
    event_type: str
    version: int
    timestamp: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    schema_version: int = 1
    actor: str | None = None
    global_position: int | None = None
    data_subject: str | None = None  # whose key encrypts the sensitive fields, e.g. "child:c-1"


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A data subject's key row as read with the data: the wrapped key, or None once erased."""

    wrapped: bytes | None
    master_key_id: str | None

    @property
    def erased(self) -> bool:
        return self.wrapped is None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A data key made for a subject that had none in this process; the append that first
    uses it stores it in the same statement (or learns that another key exists)."""

    subject: str
    wrapped: bytes
    master_key_id: str


@dataclass(frozen=True, slots=True)
class Publication:
    """Kafka acknowledged one event at this position."""

    global_position: int
    stream_id: str
    version: int
    topic: str
    partition: int
    offset: int
    epoch: int = 0  # the stream's publication epoch when it was sent (a refill bumps it)


@dataclass(frozen=True, slots=True)
class KafkaPosition:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class StoredEvent:
    """One event as stored: its metadata, the exact payload bytes, and its chain hash."""

    metadata: EventMetadata
    payload: bytes
    chain_hash: bytes = b""
    kafka_position: KafkaPosition | None = None
    # The subject's key row as loaded with the event, if it has encrypted fields.
    subject_key: KeyMaterial | None = field(default=None, compare=False, repr=False)

    @property
    def event_type(self) -> str:
        return self.metadata.event_type

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def event_id(self) -> str:
        return self.metadata.event_id

    @property
    def data(self) -> dict[str, Any]:
        """The payload parsed as JSON (as stored: personal fields are still encrypted)."""
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream_id: str
    first_version: int
    last_version: int
    global_positions: tuple[int, ...]
    idempotent: bool = False
