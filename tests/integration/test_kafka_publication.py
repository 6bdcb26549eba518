"""Publication to Kafka: after commit, in stream order, where the mirror says, through the relay."""
from __future__ import annotations

import time
import uuid

import pytest
from django.core.management import call_command
from django.db import transaction
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from eventsourcing_app.eventstore import EventStore, KafkaTopicError, build_event_store
from eventsourcing_app.eventstore.recorders import PostgresRecorder
from eventsourcing_app.kafka.consumer import StreamOrderGuard
from eventsourcing_app.kafka.topics import check_topics, provision_topics
from eventsourcing_app.models import Event, Stream
from eventsourcing_app.operations.relay import KafkaUnavailableError, outbox_backlog, relay_outbox
from tests.conftest import unique_stream
from tests.events import notes
from tests.kafka_helpers import records_by_stream


@pytest.fixture
def unpublished_store(store) -> EventStore:
    """Appends without publishing: everything stays in the outbox for the relay."""
    return EventStore(recorder=PostgresRecorder(), stream_types=store.stream_types,
                      max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)


def test_kafka_copy_equals_the_mirror(store):
    streams = [unique_stream(), unique_stream()]
    for stream_id in streams:
        store.append_events_sync(stream_id, notes(3), expected_version=0, correlation_id="corr-1", actor="system:test")
        store.append_events_sync(stream_id, notes(2), expected_version=3)
    assert store.flush(30)
    for stream_id in streams:
        mirror = store.load_events_sync(stream_id)
        assert all(e.kafka_position is not None for e in mirror)
        assert store.load_events_sync(stream_id, source="kafka") == mirror
        assert Stream.objects.get(pk=stream_id).published_version == 5


def test_an_independent_client_sees_key_value_headers_and_java_partitioning(store, kafka_settings):
    stream_id = unique_stream()
    store.append_events_sync(stream_id, notes(1), correlation_id="corr-x")
    assert store.flush(30)
    stored = store.load_events_sync(stream_id)[0]
    position = stored.kafka_position
    assert position.partition == (murmur2(stream_id.encode()) & 0x7FFFFFFF) % kafka_settings.partitions

    consumer = KafkaConsumer(bootstrap_servers=kafka_settings.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    try:
        tp = TopicPartition(position.topic, position.partition)
        consumer.assign([tp])
        consumer.seek(tp, position.offset)
        record = next(iter(consumer))
    finally:
        consumer.close()
    headers = {name: value.decode() for name, value in record.headers}
    assert record.key == stream_id.encode()
    assert record.value == stored.payload
    assert headers["event_id"] == stored.metadata.event_id
    assert headers["version"] == "1" and headers["event_type"] == "test.NoteRecorded"
    assert headers["correlation_id"] == "corr-x"
    assert headers["chain_hash"] == stored.chain_hash.hex()


def test_events_reach_kafka_only_after_the_commit(store):
    committed, rolled_back = unique_stream(), unique_stream()
    with transaction.atomic():
        store.append_events_sync(committed, notes(2))
        store.flush(5)
        assert not Event.objects.filter(stream_id=committed, published_at__isnull=False).exists()
        assert records_by_stream(store.kafka_settings, "child", [committed]) == {}
    with pytest.raises(RuntimeError), transaction.atomic():
        store.append_events_sync(rolled_back, notes(2))
        raise RuntimeError("the surrounding work failed")
    assert store.flush(30)
    found = records_by_stream(store.kafka_settings, "child", [committed, rolled_back])
    assert [r.version for r in found[committed]] == [1, 2]
    assert rolled_back not in found
    assert not Stream.objects.filter(pk=rolled_back).exists()


def test_relay_command_publishes_the_backlog_in_stream_order(unpublished_store, store, capsys):
    streams = [unique_stream() for _ in range(3)]
    for round_ in range(3):
        for stream_id in streams:
            unpublished_store.append_events_sync(stream_id, notes(2), expected_version=2 * round_)
    assert outbox_backlog(store) >= 18
    call_command("relay_outbox")
    assert "0 still waiting" in capsys.readouterr().out
    found = records_by_stream(store.kafka_settings, "child", streams)
    for stream_id in streams:
        assert [r.version for r in found[stream_id]] == [1, 2, 3, 4, 5, 6]
        assert Stream.objects.get(pk=stream_id).published_version == 6
        assert store.load_events_sync(stream_id, source="kafka") == store.load_events_sync(stream_id)


def test_the_celery_relay_task_publishes_the_backlog(celery_worker, unpublished_store, store):
    from eventsourcing_app.tasks import relay_outbox as relay_task

    stream_id = unique_stream("conversation")
    unpublished_store.append_events_sync(stream_id, notes(4))
    assert Stream.objects.get(pk=stream_id).published_version == 0
    relay_task.apply_async()
    deadline = time.monotonic() + 60
    while Stream.objects.get(pk=stream_id).published_version < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Stream.objects.get(pk=stream_id).published_version == 4
    found = records_by_stream(store.kafka_settings, "conversation", [stream_id])
    assert [r.version for r in found[stream_id]] == [1, 2, 3, 4]


def test_publishing_is_refused_to_a_topic_with_another_partition_count(store, kafka_settings):
    mismatched = kafka_settings.with_changes(topic_prefix=f"mismatch-{uuid.uuid4().hex[:6]}.", partitions=3)
    provision_topics(mismatched)
    other = build_event_store(kafka_settings=mismatched.with_changes(partitions=6))
    try:
        stream_id = unique_stream()
        other.append_events_sync(stream_id, notes(2))  # the commit does not depend on Kafka
        other.flush(5)
        assert other.get_stream_version_sync(stream_id) == 2
        assert Stream.objects.get(pk=stream_id).published_version == 0
        with pytest.raises(KafkaTopicError, match="has 3 partitions"):
            check_topics(other.kafka_settings)
        with pytest.raises(KafkaUnavailableError, match="events wait in the outbox"):
            relay_outbox(other)
    finally:
        other.publisher.close()
    assert store.flush(30)  # the session's own publisher publishes that stream as usual
    relay_outbox(store)
    assert Stream.objects.get(pk=stream_id).published_version == 2


def test_provision_topics_is_idempotent_and_says_what_it_did(settings, capsys):
    settings.KAFKA_TOPIC_PREFIX = f"prov-{uuid.uuid4().hex[:6]}."
    call_command("provision_topics")
    first = capsys.readouterr().out
    call_command("provision_topics")
    second = capsys.readouterr().out
    assert first.count("created") == 8 and "exists" not in first  # eventstore.* and snapshots.* per type
    assert second.count("exists") == 8 and "created" not in second


def test_a_republished_duplicate_is_skipped_by_consumers(store):
    stream_id = unique_stream("parent")
    store.append_events_sync(stream_id, notes(3))
    assert store.flush(30)
    # Publish everything again, as a relay does after a send that timed out but was written.
    Stream.objects.filter(pk=stream_id).update(published_version=0)
    relay_outbox(store)
    raw = records_by_stream(store.kafka_settings, "parent", [stream_id])[stream_id]
    assert [r.version for r in raw] == [1, 2, 3, 1, 2, 3]

    guard = StreamOrderGuard()
    applied = [r.metadata.event_id for r in raw if guard.accept(r)]
    assert applied == [e.metadata.event_id for e in store.load_events_sync(stream_id)]
    assert guard.duplicates_skipped == 3
