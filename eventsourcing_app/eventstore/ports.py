"""What the event store is handed by the composition root, as narrow interfaces.

The store imports neither the privacy package, Kafka nor Celery: `eventsourcing_app.bootstrap`
builds the implementations and passes them in.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from .records import KafkaPosition, KeyMaterial, NewKey, StoredEvent


class AppendKeys(Protocol):
    """The data keys of one append: cached ones, plus at most one new key, which the append
    statement itself stores."""

    new_key: NewKey | None
    subject_keys: dict[str, bytes | None]  # subject -> the stored wrapped key used (None: new_key)

    def encrypt(self, data: dict, fields: Sequence[str], subject: str, context: str, label: str = "") -> dict:
        """`data` with the given fields replaced by ciphertext under the subject's key (`label`,
        e.g. the event type, names the field in errors)."""

    def retry(self, outcome: str, subject: str | None) -> "AppendKeys":
        """Keys for another attempt, after the statement refused this attempt's key of
        `subject` ("key_exists": another process stored one first; "key_changed": the stored
        key is another one; "key_missing": the cached key's row is not there, e.g. rolled back
        with its transaction)."""

    def stored(self) -> None:
        """The append's transaction committed (this attempt's new key can be used again)."""


class ErasurePort(Protocol):
    """What an erasure needs of the field protection."""

    def destroy_keys(self, subjects: Sequence[str]) -> list[str]:
        """Destroys the keys in the caller's transaction; returns the subjects that had one."""

    def announce_erasure(self, subjects: Sequence[str]) -> bool:
        """After the commit: every process drops the keys now (best effort)."""


class FieldProtection(ErasurePort, Protocol):
    """Encrypts and decrypts personal fields with each data subject's own key, and seals
    state that must not be altered unnoticed (implemented by `eventsourcing_app.privacy`)."""

    def for_append(self) -> AppendKeys: ...

    def open(self, data: dict, subject: str, material: KeyMaterial | None, context: str) -> dict:
        """`data` with encrypted fields decrypted; with the key destroyed they read as None."""

    def protect(self, data: dict, fields: Sequence[str], subject: str, material: KeyMaterial,
                context: str) -> dict:
        """`data` encrypted like `AppendKeys.encrypt`, with the key row read from the database
        (read paths never create keys)."""

    def seal(self, message: bytes) -> bytes:
        """A MAC of `message` under the store's sealing key."""

    def verify_seal(self, message: bytes, seal: bytes) -> bool: ...

    def forget(self, subject: str) -> None:
        """Drops every key of the subject this process holds (it was erased)."""


class Publisher(Protocol):
    """Hands committed events to Kafka (implemented by `eventsourcing_app.kafka.publisher`)."""

    def publish_appended(self, stream_id: str, first_version: int, published_version: int | None,
                         events: Sequence[StoredEvent], epoch: int | None = 0) -> bool: ...

    def publish_record(self, topic: str, key: str, value: bytes | None, headers: list[tuple[str, bytes]],
                       timeout: float = 10.0, wait: bool = True) -> tuple[str, int, int] | None: ...

    def flush(self, timeout: float = 30.0) -> bool: ...


class KafkaCopyReader(Protocol):
    """Reads events back from Kafka at the positions the mirror recorded."""

    def __call__(self, positions: Sequence[KafkaPosition]) -> dict[KafkaPosition, StoredEvent]: ...


SnapshotScheduler = Callable[[str], None]
"""Asks for a snapshot of a stream, without waiting (a Celery task in production)."""
