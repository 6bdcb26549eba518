"""Creating and checking the event store's topics, and keeping their configuration as set.

Topics are created here, never by producing: a producer that auto-creates a topic gives it
the broker's default partition count, which silently moves keys to other partitions.

Retention and cleanup are applied to existing topics too: `provision_topics` reads each
topic's configuration (DescribeConfigs), sets what differs from the settings
(IncrementalAlterConfigs, or the older AlterConfigs where a broker has only that) and reports
every change. A broker that allows neither leaves the topic as it is, and the report says so.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic

from ..eventstore.errors import KafkaTopicError
from .config import DAY_MS, KafkaSettings

logger = logging.getLogger(__name__)

# How long a snapshot tombstone (published by an erasure) stays after compaction. The value it
# replaces goes at the next compaction whatever this is; the tombstone holds only the stream
# id (no personal data), so it may stay long enough for a reader of the topic that was away
# for days to still see the deletion. A week; the topic's retention.ms ends it anyway.
SNAPSHOT_TOMBSTONE_RETENTION_MS = 7 * DAY_MS
# Errors after which the older, non-incremental AlterConfigs is worth a try.
_NOT_SUPPORTED = frozenset({KafkaError._UNSUPPORTED_FEATURE, KafkaError.UNSUPPORTED_VERSION,
                            KafkaError.INVALID_REQUEST})


@dataclass(frozen=True)
class ConfigChange:
    name: str
    old: str | None  # None: the broker reported no value
    new: str

    def __str__(self) -> str:
        return f"{self.name} {self.old if self.old is not None else '(not set)'} -> {self.new}"


@dataclass(frozen=True)
class TopicReport:
    topic: str
    # "created", "exists" (as configured), "updated" (configuration changed), "mismatch" (another
    # partition count), "differs" (configuration differs, and the broker did not allow changing it)
    action: str
    partitions: int
    detail: str = ""
    changes: tuple[ConfigChange, ...] = ()

    def __str__(self) -> str:
        text = f"{self.action:8} {self.topic} ({self.partitions} partitions)"
        if self.changes:
            text += ": " + ", ".join(str(change) for change in self.changes)
        return text + (f" - {self.detail}" if self.detail else "")


def _topic_configs(settings: KafkaSettings) -> dict[str, dict[str, str]]:
    """Event topics delete by time and are never compacted (compaction keeps only the last
    record per key: it would delete a stream's history); snapshot topics keep the latest
    snapshot per stream (compacted, key = stream id) and drop records older than their
    retention, superseded or not."""
    common = {"min.insync.replicas": str(min(2, settings.replication_factor))} if settings.replication_factor > 1 else {}
    configs = {topic: {"cleanup.policy": "delete", "retention.ms": str(settings.event_retention_ms), **common}
               for topic in settings.event_topics().values()}
    configs.update({topic: {"cleanup.policy": "compact,delete", "retention.ms": str(settings.snapshot_retention_ms),
                            "min.compaction.lag.ms": "60000",
                            "delete.retention.ms": str(SNAPSHOT_TOMBSTONE_RETENTION_MS), **common}
                    for topic in settings.snapshot_topics().values()})
    return configs


def _same(name: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if name == "cleanup.policy":  # a list: "delete,compact" is "compact,delete"
        return {p.strip() for p in current.split(",")} == {p.strip() for p in wanted.split(",")}
    return current.strip() == wanted


def _error_code(exc: Exception):
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return error.code() if error is not None else None


def _describe(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, dict | str]:
    """Each topic's configuration entries by name, or why they could not be read."""
    if not topics:
        return {}
    out: dict[str, dict | str] = {}
    try:
        futures = admin.describe_configs([ConfigResource("topic", t) for t in topics], request_timeout=timeout)
    except KafkaException as exc:
        return {topic: str(exc) for topic in topics}
    for resource, future in futures.items():
        try:
            out[resource.name] = future.result(timeout=timeout)
        except KafkaException as exc:
            out[resource.name] = str(exc)
    return out


def _alter(admin: AdminClient, changes: dict[str, tuple[ConfigChange, ...]], current: dict[str, dict],
           timeout: float) -> dict[str, str | None]:
    """Applies the changes; per topic None (applied) or why not."""
    if not changes:
        return {}
    results: dict[str, str | None] = {}
    fallback: list[str] = []
    try:
        futures = admin.incremental_alter_configs(
            [ConfigResource("topic", topic, incremental_configs=[
                ConfigEntry(c.name, c.new, incremental_operation=AlterConfigOpType.SET) for c in topic_changes])
             for topic, topic_changes in changes.items()], request_timeout=timeout)
        outcomes = {resource.name: future for resource, future in futures.items()}
    except KafkaException as exc:
        outcomes = {topic: exc for topic in changes}
    for topic, outcome in outcomes.items():
        try:
            if isinstance(outcome, Exception):
                raise outcome
            outcome.result(timeout=timeout)
            results[topic] = None
        except KafkaException as exc:
            if _error_code(exc) in _NOT_SUPPORTED:
                fallback.append(topic)
            else:
                results[topic] = str(exc)
    for topic in fallback:
        results[topic] = _alter_whole(admin, topic, changes[topic], current[topic], timeout)
    return results


def _alter_whole(admin: AdminClient, topic: str, changes: tuple[ConfigChange, ...], current: dict,
                 timeout: float) -> str | None:
    """AlterConfigs (brokers before 2.3) replaces a topic's whole configuration: the topic's
    own settings are sent again with the changes, or they would fall back to the defaults."""
    own = {name: entry.value for name, entry in current.items()
           if int(getattr(entry.source, "value", entry.source)) == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
           and entry.value is not None and not entry.is_sensitive and not entry.is_read_only}
    own.update({c.name: c.new for c in changes})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            futures = admin.alter_configs([ConfigResource("topic", topic, set_config=own)], request_timeout=timeout)
        for future in futures.values():
            future.result(timeout=timeout)
        return None
    except KafkaException as exc:
        if _error_code(exc) in _NOT_SUPPORTED:
            return "the broker does not allow changing topic configuration (neither IncrementalAlterConfigs nor AlterConfigs)"
        return str(exc)


def provision_topics(settings: KafkaSettings, timeout: float = 15.0, *, apply_config: bool = True) -> list[TopicReport]:
    """Creates missing topics, sets the configured retention and cleanup on existing ones, and
    reports what it did; idempotent. With `apply_config=False` an existing topic's configuration
    is only compared (reported `differs`), never changed."""
    admin = AdminClient(settings.admin_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaTopicError(
            f"cannot reach Kafka at {settings.bootstrap_servers} to provision topics ({exc}); "
            "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"
        ) from None
    wanted = _topic_configs(settings)
    reports: list[TopicReport] = []
    to_create: list[NewTopic] = []
    present: dict[str, int] = {}
    for topic, config in wanted.items():
        meta = existing.get(topic)
        if meta is None or meta.error is not None:
            to_create.append(NewTopic(topic, num_partitions=settings.partitions,
                                      replication_factor=settings.replication_factor, config=config))
        else:
            present[topic] = len(meta.partitions)

    described = _describe(admin, list(present), timeout)
    changes: dict[str, tuple[ConfigChange, ...]] = {}
    for topic, entries in described.items():
        if isinstance(entries, dict):
            found = tuple(ConfigChange(name, entries[name].value if name in entries else None, value)
                          for name, value in wanted[topic].items()
                          if not _same(name, entries[name].value if name in entries else None, value))
            if found:
                changes[topic] = found
    if apply_config:
        failures = _alter(admin, changes, {t: described[t] for t in changes}, timeout)
    else:
        failures = {t: "left as it is here; `manage.py provision_topics` applies the configured one" for t in changes}

    for topic, count in present.items():
        topic_changes = changes.get(topic, ())
        failure = failures.get(topic)
        unread = described.get(topic) if isinstance(described.get(topic), str) else None
        notes = []
        if count != settings.partitions:
            action = "mismatch"
            notes.append(f"expected {settings.partitions}; keys would move to other partitions")
        else:
            action = "differs" if failure else "updated" if topic_changes else "exists"
        if failure:
            notes.append(f"not changed: {failure}" + ("; change it with the broker's own tools" if apply_config else ""))
        if unread:
            notes.append(f"configuration not checked: the broker did not describe it ({unread})")
        reports.append(TopicReport(topic, action, count, "; ".join(notes), topic_changes))

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
        level = {"exists": logging.DEBUG, "differs": logging.WARNING}.get(report.action, logging.INFO)
        logger.log(level, "topic %s", report)
    return sorted(reports, key=lambda r: r.topic)


def check_topics(settings: KafkaSettings, timeout: float = 10.0) -> None:
    """Before publishing: creates missing topics, refuses to go on if a topic has another
    partition count. It never changes an existing topic's retention (a process started with
    other settings must not shorten what Kafka keeps): a difference is logged, and
    `manage.py provision_topics` applies it. Retention decides how long Kafka keeps records,
    not where they go."""
    mismatches = [r for r in provision_topics(settings, timeout, apply_config=False) if r.action == "mismatch"]
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
