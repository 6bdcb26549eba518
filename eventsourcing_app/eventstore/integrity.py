"""The hash chain that ties each stored event to its predecessor in the stream.

    content_digest = sha256(canonical metadata || 0x0a || payload bytes)
    chain_hash(v)  = sha256(chain_hash(v-1) || v as 8 bytes big-endian || content_digest(v))
    chain_hash(0)  = 32 zero bytes

The content digest covers the exact stored bytes and every metadata field but the version
(which an append with ExpectedVersion.ANY learns only under the stream lock); the chain adds
the version. Changing one byte of any of them breaks the chain at that version.
The database computes the chain while it holds the stream lock (only then is the
predecessor known); Python recomputes it to verify.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from .records import EventMetadata, StoredEvent

GENESIS_HASH = bytes(32)


def canonical_timestamp(value: datetime) -> str:
    """UTC, microseconds, e.g. 2026-11-29T12:00:00.000000Z."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_HEAD = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def content_digest(metadata: EventMetadata, payload: bytes) -> bytes:
    head = _HEAD.encode(
        [
            metadata.event_id,
            metadata.stream_id,
            metadata.event_type,
            metadata.schema_version,
            canonical_timestamp(metadata.timestamp),
            metadata.correlation_id,
            metadata.causation_id,
            metadata.actor,
            metadata.data_subject,
        ]
    ).encode("ascii")
    return hashlib.sha256(head + b"\n" + payload).digest()


def next_chain_hash(previous: bytes, version: int, digest: bytes) -> bytes:
    return hashlib.sha256(previous + version.to_bytes(8, "big", signed=True) + digest).digest()


@dataclass(frozen=True)
class IntegrityProblem:
    """The first place where a stream's stored events are not what they should be."""

    stream_id: str
    version: int
    reason: str

    def __str__(self) -> str:
        return f"stream {self.stream_id} version {self.version}: {self.reason}"


def verify_chain(events: Iterable[StoredEvent]) -> IntegrityProblem | None:
    """Recomputes a stream's chain from its first event; returns the first break, if any."""
    previous = GENESIS_HASH
    expected_version = 1
    for stored in events:
        meta = stored.metadata
        if meta.version != expected_version:
            return IntegrityProblem(meta.stream_id, expected_version, f"event missing (next stored is version {meta.version})")
        computed = next_chain_hash(previous, meta.version, content_digest(meta, stored.payload))
        if computed != bytes(stored.chain_hash):
            return IntegrityProblem(meta.stream_id, meta.version, "hash does not match the stored bytes and metadata")
        previous = computed
        expected_version += 1
    return None
