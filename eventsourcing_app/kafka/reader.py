"""Reading events back from Kafka, by the positions the mirror recorded.

Used to compare the two copies (`load_events(..., source="kafka")`, `verify_integrity`).
It assigns partitions directly (no consumer group, no join delay) and uses partition EOF
events to know it has read everything, not the broker's queried high watermark.
"""
from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from typing import Iterable, Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..eventstore.errors import MalformedEventError
from ..eventstore.records import EventMetadata, KafkaPosition, StoredEvent
from .config import KafkaSettings


def stored_event_from_message(msg) -> StoredEvent:
    """Rebuilds a StoredEvent from a Kafka record's headers and value; a record that is not an
    event of this store raises MalformedEventError naming where it is and what is wrong."""
    where = f"Kafka record {msg.topic()}[{msg.partition()}]@{msg.offset()}"
    try:
        headers = {name: value.decode() if value is not None else None for name, value in msg.headers() or []}
        missing = [h for h in ("event_id", "stream_id", "version", "event_type", "schema_version", "timestamp")
                   if not headers.get(h)]
        if missing:
            raise ValueError(f"headers {missing} are missing")
        timestamp = datetime.strptime(headers["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        position = headers.get("global_position")
        return StoredEvent(
            metadata=EventMetadata(
                event_id=headers["event_id"],
                stream_id=headers["stream_id"],
                event_type=headers["event_type"],
                version=int(headers["version"]),
                timestamp=timestamp,
                correlation_id=headers.get("correlation_id"),
                causation_id=headers.get("causation_id"),
                schema_version=int(headers["schema_version"]),
                actor=headers.get("actor"),
                global_position=int(position) if position is not None else None,
                data_subject=headers.get("data_subject"),
            ),
            payload=msg.value() or b"",
            chain_hash=bytes.fromhex(headers.get("chain_hash") or ""),
            kafka_position=KafkaPosition(msg.topic(), msg.partition(), msg.offset()),
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEventError(f"{where} is not an event of this store: {exc}") from None


def read_positions(settings: KafkaSettings, positions: Iterable[KafkaPosition],
                   timeout: float = 30.0) -> dict[KafkaPosition, object]:
    """The raw Kafka messages at the given positions (missing ones are absent from the result)."""
    wanted: dict[tuple[str, int], set[int]] = defaultdict(set)
    for pos in positions:
        wanted[(pos.topic, pos.partition)].add(pos.offset)
    found: dict[KafkaPosition, object] = {}
    for (topic, partition), offsets in wanted.items():
        for msg in scan_partition(settings, topic, partition, min(offsets), max(offsets), timeout):
            if msg.offset() in offsets:
                found[KafkaPosition(topic, partition, msg.offset())] = msg
    return found


def scan_partition(settings: KafkaSettings, topic: str, partition: int, first: int = 0,
                   last: int | None = None, timeout: float = 30.0) -> Iterator:
    """Messages of one partition from offset `first` up to `last` (or to the end)."""
    for msg in scan_topic(settings, topic, {partition: first}, timeout):
        yield msg
        if last is not None and msg.offset() >= last:
            return


def scan_topic(settings: KafkaSettings, topic: str, starts: dict[int, int], timeout: float = 30.0) -> Iterator:
    """Messages of the given partitions (partition -> first offset) until each reaches its end."""
    consumer = Consumer(settings.consumer_config(group_id=f"teddy-reader-{uuid.uuid4()}"))
    try:
        consumer.assign([TopicPartition(topic, partition, offset) for partition, offset in starts.items()])
        pending = set(starts)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} partitions {sorted(pending)} did not finish within {timeout}s")
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise KafkaException(err)
    finally:
        consumer.close()


class KafkaEventReader:
    """Reads stored events back from Kafka at given positions (the store's `source="kafka"`)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings

    def __call__(self, positions) -> dict[KafkaPosition, StoredEvent]:
        return {position: stored_event_from_message(msg)
                for position, msg in read_positions(self.settings, positions).items()}
