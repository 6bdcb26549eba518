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
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Iterable

from .records import EventMetadata, StoredEvent

GENESIS_HASH = bytes(32)


def canonical_timestamp(value: datetime) -> str:
    """UTC, microseconds, e.g. 2026-11-29T12:00:00.000000Z."""
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # without its "+00:00"


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


class DigestHead:
    """The canonical metadata of the events of one append, for their content digests: the
    parts every event of the append shares (stream, correlation, causation, actor) are
    encoded once. The head is the compact ASCII JSON array

        [event_id, stream_id, event_type, schema_version, timestamp, correlation_id,
         causation_id, actor, data_subject]
    """

    __slots__ = ("_stream", "_context", "_texts")

    def __init__(self, stream_id: str, correlation_id: str | None, causation_id: str | None,
                 actor: str | None) -> None:
        self._stream = _json_text(stream_id)
        self._context = f"{_json_text(correlation_id)},{_json_text(causation_id)},{_json_text(actor)}"
        self._texts: dict[str | None, str] = {}  # event types and subjects, encoded once per append

    def _text(self, value: str | None) -> str:
        text = self._texts.get(value)
        if text is None:
            text = self._texts[value] = _json_text(value)
        return text

    def digest(self, event_id: str, event_type: str, schema_version: int, timestamp: str,
               data_subject: str | None, payload: bytes) -> bytes:
        head = (f"[{_json_text(event_id)},{self._stream},{self._text(event_type)},{int(schema_version)},"
                f"{_json_text(timestamp)},{self._context},{self._text(data_subject)}]")
        return hashlib.sha256(head.encode("ascii") + b"\n" + payload).digest()


def content_digest(metadata: EventMetadata, payload: bytes) -> bytes:
    head = DigestHead(metadata.stream_id, metadata.correlation_id, metadata.causation_id, metadata.actor)
    return head.digest(metadata.event_id, metadata.event_type, metadata.schema_version,
                       canonical_timestamp(metadata.timestamp), metadata.data_subject, payload)


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
