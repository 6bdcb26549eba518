"""Kafka settings and the client configurations built from them.

The producer is idempotent, acks=all, compressed, Java-compatible murmur2
partitioning (a stream's key lands on the same partition for Java clients), and it never
creates topics by producing. Consumers read committed data, manage offsets by hand and
detect "caught up" with partition EOF events (the broker's queried high watermark is not
trusted).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

DAY_MS = 24 * 60 * 60 * 1000
# Event topics keep a year of history for consumers; the mirror keeps everything for ever.
EVENT_RETENTION_MS = 365 * DAY_MS
# Superseded snapshots go after 90 days (the mirror holds the snapshots that loads use).
SNAPSHOT_RETENTION_MS = 90 * DAY_MS


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic_prefix: str = ""
    partitions: int = 12
    replication_factor: int = 1
    event_retention_ms: int = EVENT_RETENTION_MS  # -1: for ever
    snapshot_retention_ms: int = SNAPSHOT_RETENTION_MS  # -1: compaction only
    compression: str = "lz4"
    message_timeout_ms: int = 10000
    max_message_bytes: int = 1_000_000
    stream_types: tuple[str, ...] = ("child", "parent", "conversation")
    extra_producer: dict = field(default_factory=dict)

    @classmethod
    def from_django(cls) -> "KafkaSettings":
        from django.conf import settings

        return cls(
            bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
            topic_prefix=settings.KAFKA_TOPIC_PREFIX,
            partitions=settings.KAFKA_TOPIC_PARTITIONS,
            replication_factor=settings.KAFKA_REPLICATION_FACTOR,
            event_retention_ms=settings.KAFKA_EVENT_RETENTION_MS,
            snapshot_retention_ms=settings.KAFKA_SNAPSHOT_RETENTION_MS,
            compression=settings.KAFKA_COMPRESSION,
            message_timeout_ms=settings.KAFKA_MESSAGE_TIMEOUT_MS,
            stream_types=tuple(settings.EVENTSTORE["STREAM_TYPES"]),
        )

    def with_changes(self, **changes) -> "KafkaSettings":
        return replace(self, **changes)

    def event_topic(self, stream_type: str) -> str:
        return f"{self.topic_prefix}eventstore.{stream_type}"

    def event_topics(self) -> dict[str, str]:
        return {stream_type: self.event_topic(stream_type) for stream_type in self.stream_types}

    def snapshot_topic(self, stream_type: str) -> str:
        return f"{self.topic_prefix}snapshots.{stream_type}"

    def snapshot_topics(self) -> dict[str, str]:
        return {stream_type: self.snapshot_topic(stream_type) for stream_type in self.stream_types}

    def producer_config(self) -> dict:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "partitioner": "murmur2_random",
            "linger.ms": 2,
            "batch.num.messages": 10000,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": self.message_timeout_ms,
            "allow.auto.create.topics": False,
            "client.id": "teddy-eventstore",
            **self.extra_producer,
        }

    def consumer_config(self, group_id: str = "teddy-eventstore-reader") -> dict:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "fetch.error.backoff.ms": 10,
            "allow.auto.create.topics": False,
        }

    def admin_config(self) -> dict:
        # Admin calls report their failures as exceptions, which callers turn into one clear
        # message; librdkafka's own log lines (a connection refused, every few milliseconds,
        # on stderr) would only bury it.
        return {"bootstrap.servers": self.bootstrap_servers, "log_level": QUIET_LOG_LEVEL}


# syslog levels: 2 is "critical", so librdkafka's errors (3) and notices stay unprinted.
QUIET_LOG_LEVEL = 2
