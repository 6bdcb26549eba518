"""Creating and checking the event store's topics.

Topics are created here, never by producing: a producer that auto-creates a topic gives it
the broker's default partition count, which silently moves keys to other partitions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from ..eventstore.errors import KafkaTopicError
from .config import KafkaSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicReport:
    topic: str
    action: str  # "created", "exists", "mismatch"
    partitions: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:8} {self.topic} ({self.partitions} partitions){' - ' + self.detail if self.detail else ''}"


def _topic_configs(settings: KafkaSettings) -> dict[str, dict[str, str]]:
    """Event topics keep everything (never compacted: that would delete history); snapshot
    topics keep the latest snapshot per stream (compacted, key = stream id)."""
    common = {"min.insync.replicas": str(min(2, settings.replication_factor))} if settings.replication_factor > 1 else {}
    configs = {topic: {"cleanup.policy": "delete", "retention.ms": str(settings.event_retention_ms), **common}
               for topic in settings.event_topics().values()}
    configs.update({topic: {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", **common}
                    for topic in settings.snapshot_topics().values()})
    return configs


def provision_topics(settings: KafkaSettings, timeout: float = 15.0) -> list[TopicReport]:
    """Creates missing topics and reports existing ones; idempotent."""
    admin = AdminClient(settings.admin_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaTopicError(
            f"cannot reach Kafka at {settings.bootstrap_servers} to provision topics ({exc}); "
            "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"
        ) from None
    reports: list[TopicReport] = []
    to_create: list[NewTopic] = []
    for topic, config in _topic_configs(settings).items():
        meta = existing.get(topic)
        if meta is None or meta.error is not None:
            to_create.append(NewTopic(topic, num_partitions=settings.partitions,
                                      replication_factor=settings.replication_factor, config=config))
            continue
        count = len(meta.partitions)
        if count == settings.partitions:
            reports.append(TopicReport(topic, "exists", count))
        else:
            reports.append(TopicReport(topic, "mismatch", count,
                                       f"expected {settings.partitions}; keys would move to other partitions"))
    if to_create:
        for topic, future in admin.create_topics(to_create, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                reports.append(TopicReport(topic, "created", settings.partitions))
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    reports.append(TopicReport(topic, "exists", settings.partitions, "created concurrently"))
                else:
                    raise KafkaTopicError(f"could not create topic {topic}: {exc}") from None
    for report in reports:
        logger.log(logging.DEBUG if report.action == "exists" else logging.INFO, "topic %s", report)
    return sorted(reports, key=lambda r: r.topic)


def check_topics(settings: KafkaSettings, timeout: float = 10.0) -> None:
    """Provisions missing topics; refuses to go on if a topic has another partition count."""
    mismatches = [r for r in provision_topics(settings, timeout) if r.action == "mismatch"]
    if mismatches:
        raise KafkaTopicError(
            "refusing to publish: " + "; ".join(f"{r.topic} has {r.partitions} partitions, {r.detail}" for r in mismatches)
            + ". Recreate the topic with the provisioned count (and refill it with `manage.py refill_kafka`) "
            "or set KAFKA_TOPIC_PARTITIONS to match."
        )


def topic_record_counts(settings: KafkaSettings, topics, timeout: float = 10.0) -> dict[str, int]:
    """Roughly how many records each topic holds (offsets between its low and high watermarks;
    0 means empty). Missing topics count 0."""
    from confluent_kafka import Consumer, TopicPartition

    admin = AdminClient(settings.admin_config())
    metadata = admin.list_topics(timeout=timeout).topics
    consumer = Consumer(settings.consumer_config(group_id="teddy-eventstore-watermarks"))
    try:
        counts = {}
        for topic in topics:
            meta = metadata.get(topic)
            if meta is None or meta.error is not None:
                counts[topic] = 0
                continue
            total = 0
            for partition in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
                total += max(high - low, 0)
            counts[topic] = total
        return counts
    finally:
        consumer.close()


def recreate_topics(settings: KafkaSettings, topics, timeout: float = 60.0) -> None:
    """Deletes the topics and creates them again, empty, with the provisioned configuration.
    Kafka deletes asynchronously: creation is retried until it takes."""
    import time

    admin = AdminClient(settings.admin_config())
    existing = admin.list_topics(timeout=15).topics
    doomed = [t for t in topics if t in existing]
    if doomed:
        for topic, future in admin.delete_topics(doomed, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                    raise KafkaTopicError(f"could not delete topic {topic}: {exc}") from None
    configs = _topic_configs(settings)
    deadline = time.monotonic() + timeout
    pending = list(topics)
    while pending:
        futures = admin.create_topics([NewTopic(t, num_partitions=settings.partitions,
                                                replication_factor=settings.replication_factor,
                                                config=configs.get(t, {})) for t in pending],
                                      operation_timeout=timeout)
        retry = []
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout)
                logger.info("topic %s created again, empty", topic)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KafkaTopicError(f"could not create topic {topic} again: {exc}") from None
                retry.append(topic)  # still being deleted
        pending = retry
        if pending:
            time.sleep(0.5)
