"""Verifying the audit trail: the hash chains of the mirror, its snapshots, and the mirror against Kafka.

`verify_integrity()` recomputes every stream's chain from its first event (one ordered pass
over the events table), checks the stream rows agree with their last event, checks every
snapshot's seal against the chain hash at its version, and compares each published event
with the Kafka record at its recorded position. It names the first stream and version that
differ. A stream that does not exist is an error, never "verified".

An event whose position lies before its partition's first offset was removed by the topic's
retention (KAFKA_EVENT_RETENTION_MS): it is counted as expired, not as a difference; the
mirror keeps it and its hash chain is checked all the same.
"""
from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from confluent_kafka import Consumer, KafkaException, TopicPartition

from ..eventstore.errors import IntegrityCheckError, MalformedEventError
from ..eventstore.integrity import IntegrityProblem, verify_chain
from ..eventstore.recorders import DjangoRecorder
from ..eventstore.records import StoredEvent
from ..eventstore.serialization import parse_stream_id
from ..eventstore.snapshots import SnapshotStore
from ..kafka.config import KafkaSettings
from ..kafka.reader import scan_partition, stored_event_from_message


@dataclass
class VerificationReport:
    streams: int = 0
    events: int = 0
    chain_breaks: list[IntegrityProblem] = field(default_factory=list)
    snapshot_problems: list[IntegrityProblem] = field(default_factory=list)
    kafka_differences: list[IntegrityProblem] = field(default_factory=list)
    unpublished: int = 0
    kafka_checked: int = 0
    kafka_expired: int = 0  # published, then removed from Kafka by retention
    snapshots: int = 0

    def merge(self, other: "VerificationReport") -> None:
        """Adds another check's counts and findings to this one (a child's streams, one by one)."""
        for name in ("streams", "events", "unpublished", "kafka_checked", "kafka_expired", "snapshots"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.chain_breaks += other.chain_breaks
        self.snapshot_problems += other.snapshot_problems
        self.kafka_differences += other.kafka_differences

    @property
    def problems(self) -> list[IntegrityProblem]:
        return self.chain_breaks + self.snapshot_problems + self.kafka_differences

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> IntegrityProblem | None:
        problems = sorted(self.problems, key=lambda p: (p.stream_id, p.version))
        return problems[0] if problems else None


def verify_integrity(stream_id: str | None = None, *, kafka_settings: KafkaSettings | None = None,
                     progress: Callable[[VerificationReport], None] | None = None,
                     recorder: DjangoRecorder | None = None,
                     snapshot_store: SnapshotStore | None = None) -> VerificationReport:
    """Checks one stream, or every stream; compares with Kafka when `kafka_settings` is given."""
    from ..eventstore.configured import get_event_store, get_snapshot_store

    recorder = recorder or get_event_store().recorder
    snapshot_store = snapshot_store or get_snapshot_store()
    report = VerificationReport()
    if stream_id is not None:
        parse_stream_id(stream_id)
        if recorder.stream(stream_id) is None:
            raise IntegrityCheckError(f"stream {stream_id} does not exist: nothing to verify (check the id; "
                                      "`manage.py verify_integrity` without an id checks every stream)")
    grouped = itertools.groupby(recorder.iter_stream_events(stream_id), key=lambda e: e.metadata.stream_id)
    batch: list[tuple[str, list[StoredEvent]]] = []
    for sid, stream_events in grouped:
        batch.append((sid, list(stream_events)))
        if len(batch) >= 500:
            _check_streams(recorder, batch, report)
            batch = []
            if progress:
                progress(report)
    _check_streams(recorder, batch, report)
    # A stream row that claims events none of which exist any more.
    for sid, version in recorder.streams_without_events(stream_id):
        report.chain_breaks.append(IntegrityProblem(sid, 1, f"stream row says version {version}, but no event is stored"))
    for row in recorder.iter_snapshots(stream_id):
        report.snapshots += 1
        problem = snapshot_store.check(row)
        if problem is not None:
            report.snapshot_problems.append(IntegrityProblem(row.stream_id, row.version, f"snapshot: {problem}"))
    if kafka_settings is not None:
        _compare_with_kafka(recorder, kafka_settings, stream_id, report)
    if progress:
        progress(report)
    return report


def _check_streams(recorder: DjangoRecorder, batch: list[tuple[str, list[StoredEvent]]],
                   report: VerificationReport) -> None:
    heads = recorder.stream_heads([sid for sid, _ in batch])
    for sid, events in batch:
        report.streams += 1
        report.events += len(events)
        broken = verify_chain(events)
        if broken is not None:
            report.chain_breaks.append(broken)
            continue
        version, last_hash = heads.get(sid, (None, None))
        if version != events[-1].version:
            report.chain_breaks.append(IntegrityProblem(sid, events[-1].version + 1,
                                                  f"stream row says version {version}, the events end at {events[-1].version}"))
        elif last_hash != events[-1].chain_hash:
            report.chain_breaks.append(IntegrityProblem(sid, events[-1].version, "the stream row's last hash differs"))


def _compare_with_kafka(recorder: DjangoRecorder, settings: KafkaSettings, stream_id: str | None,
                        report: VerificationReport) -> None:
    report.unpublished = recorder.unpublished_count(stream_id)
    partitions = list(recorder.published_partitions(stream_id))
    starts = _log_starts(settings, partitions)
    for topic, partition in partitions:
        mirror = _placed(recorder.iter_partition_events(topic, partition, stream_id), topic, partition, report)
        _compare_partition(settings, topic, partition, mirror, report, starts.get((topic, partition), 0))


def _placed(events: Iterable[StoredEvent], topic: str, partition: int, report: VerificationReport) -> Iterator[StoredEvent]:
    """The events with an offset to compare; one recorded at the partition without an offset
    (an acknowledgement that named none, recorded before the publisher refused those) is a
    difference: its Kafka copy cannot be found."""
    for stored in events:
        if stored.kafka_position.offset is None:
            report.kafka_checked += 1
            report.kafka_differences.append(IntegrityProblem(
                stored.metadata.stream_id, stored.version,
                f"recorded as published to {topic}[{partition}] without an offset; refill with "
                "`manage.py refill_kafka`"))
            continue
        yield stored


def _log_starts(settings: KafkaSettings, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Each partition's first offset still held (its low watermark); 0 where it cannot be read."""
    if not partitions:
        return {}
    consumer = Consumer(settings.consumer_config(group_id=f"teddy-verify-{uuid.uuid4()}"))
    starts = {}
    try:
        for topic, partition in partitions:
            try:
                starts[(topic, partition)] = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                                            timeout=10)[0]
            except KafkaException:
                starts[(topic, partition)] = 0  # the scan then says what it cannot read
    finally:
        consumer.close()
    return starts


def _compare_partition(settings: KafkaSettings, topic: str, partition: int, mirror: Iterable[StoredEvent],
                       report: VerificationReport, log_start: int = 0) -> None:
    mirror = iter(mirror)
    first = next(mirror, None)
    while first is not None and first.kafka_position.offset < log_start:
        report.kafka_expired += 1
        first = next(mirror, None)
    if first is None:
        return
    messages: Iterator = iter(())
    try:
        messages = scan_partition(settings, topic, partition, first.kafka_position.offset)
        msg = next(messages, None)
        for stored in itertools.chain([first], mirror):
            offset = stored.kafka_position.offset
            while msg is not None and msg.offset() < offset:
                msg = next(messages, None)
            report.kafka_checked += 1
            if msg is None or msg.offset() != offset:
                report.kafka_differences.append(IntegrityProblem(
                    stored.metadata.stream_id, stored.version,
                    f"missing from Kafka at {topic}[{partition}]@{offset}; refill with `manage.py refill_kafka`"))
                continue
            try:
                reason = _differs(stored, stored_event_from_message(msg))
            except MalformedEventError as exc:
                reason = str(exc)
            if reason:
                report.kafka_differences.append(IntegrityProblem(stored.metadata.stream_id, stored.version,
                                                           f"Kafka copy at {topic}[{partition}]@{offset} differs: {reason}"))
    except (KafkaException, TimeoutError) as exc:
        report.kafka_differences.append(IntegrityProblem(first.metadata.stream_id, first.version,
                                                   f"cannot read {topic}[{partition}] ({exc})"))
    finally:
        close = getattr(messages, "close", None)
        if close:
            close()


def _differs(mirror: StoredEvent, kafka: StoredEvent) -> str:
    if kafka.payload != mirror.payload:
        return "payload bytes"
    if kafka.metadata != mirror.metadata:
        fields = [name for name in mirror.metadata.__slots__
                  if getattr(mirror.metadata, name) != getattr(kafka.metadata, name)]
        return "metadata " + ", ".join(fields)
    if kafka.chain_hash != mirror.chain_hash:
        return "chain hash"
    return ""
