"""Faults of the broker: appends never depend on Kafka, and nothing committed is lost.

Each test runs its own broker (faults must not disturb the rest of the session) and its own
store on it, with a short message timeout so that failed sends are noticed quickly.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


from devtools.embedded import start_tansu
from eventsourcing_app.eventstore import build_event_store
from eventsourcing_app.kafka.consumer import StreamOrderGuard
from eventsourcing_app.models import Stream
from eventsourcing_app.operations.relay import KafkaUnavailableError, outbox_backlog, relay_outbox
from eventsourcing_app.operations.verify import verify_integrity
from tests.conftest import LOG_DIR, unique_stream
from tests.events import notes
from tests.integration.conftest import REPO, STREAM_TYPES, database_url
from tests.kafka_helpers import records_by_stream

STREAM_TYPE = "test"  # only these tests write streams of this type


def assert_kafka_holds_the_mirror_in_stream_order(store, settings, streams):
    """Every committed event is in Kafka; read as a consumer does (skipping duplicates by
    stream version), each stream comes out exactly as committed."""
    raw = records_by_stream(settings, STREAM_TYPE, streams)
    skipped = 0
    for stream_id in streams:
        guard = StreamOrderGuard()
        applied = [r.metadata.event_id for r in raw[stream_id] if guard.accept(r)]
        assert applied == [e.metadata.event_id for e in store.load_events_sync(stream_id)], stream_id
        assert guard.duplicates_skipped == len(raw[stream_id]) - len(applied)
        skipped += guard.duplicates_skipped
        assert Stream.objects.get(pk=stream_id).published_version == store.get_stream_version_sync(stream_id)
        assert store.load_events_sync(stream_id, source="kafka") == store.load_events_sync(stream_id)
        assert verify_integrity(stream_id, kafka_settings=settings).ok
    return skipped


def test_appends_commit_while_the_broker_is_paused_and_the_relay_catches_up(own_broker):
    broker, settings = own_broker
    store = build_event_store(kafka_settings=settings)
    streams = [unique_stream(STREAM_TYPE) for _ in range(4)]
    try:
        for stream_id in streams:
            store.append_events_sync(stream_id, notes(2), expected_version=0)
        assert store.flush(30)

        broker.pause()
        try:
            for round_ in range(10):
                for stream_id in streams:
                    store.append_events_sync(stream_id, notes(3), expected_version=2 + 3 * round_)
            time.sleep(4)  # past message.timeout.ms: the sends in flight fail (or not)
            for stream_id in streams:
                store.append_events_sync(stream_id, notes(1), expected_version=32)
            assert all(store.get_stream_version_sync(s) == 33 for s in streams)
            assert outbox_backlog(store, [STREAM_TYPE]) > 0
        finally:
            broker.resume()

        # As beat runs it, every second: a broker just woken from a pause may not answer the
        # first connection in time under load; a later run publishes.
        deadline = time.monotonic() + 60
        while True:
            try:
                report = relay_outbox(store, stream_types=[STREAM_TYPE])
                break
            except KafkaUnavailableError:
                assert time.monotonic() < deadline, "the relay never reached the resumed broker"
                time.sleep(1.0)
        assert report.remaining == 0, report
        assert store.flush(30)
        skipped = assert_kafka_holds_the_mirror_in_stream_order(store, settings, streams)
        print(f"duplicates skipped by the consumer: {skipped}")
    finally:
        store.publisher.close()


def test_the_same_works_when_the_broker_is_unreachable(kafka_settings):
    """Nothing listens at the address at first; the broker appears later."""
    from devtools.embedded import free_port

    port = free_port()
    settings = kafka_settings.with_changes(bootstrap_servers=f"127.0.0.1:{port}", message_timeout_ms=3000)
    store = build_event_store(kafka_settings=settings)
    streams = [unique_stream(STREAM_TYPE) for _ in range(3)]
    broker = None
    try:
        for stream_id in streams:
            for i in range(5):
                store.append_events_sync(stream_id, notes(2), expected_version=2 * i)
        assert all(store.get_stream_version_sync(s) == 10 for s in streams)
        assert outbox_backlog(store, [STREAM_TYPE]) >= 30

        broker = start_tansu(port=port)
        report = relay_outbox(store, stream_types=[STREAM_TYPE])
        assert report.remaining == 0 and report.published >= 30
        assert_kafka_holds_the_mirror_in_stream_order(store, settings, streams)
    finally:
        store.publisher.close()
        if broker:
            broker.stop(kill=True)


def test_a_broker_that_comes_back_empty_is_refilled_by_one_command(own_broker):
    broker, settings = own_broker
    store = build_event_store(kafka_settings=settings)
    streams = [unique_stream(STREAM_TYPE) for _ in range(3)]
    try:
        for stream_id in streams:
            store.append_events_sync(stream_id, notes(4), expected_version=0)
        assert store.flush(30)

        broker.stop(kill=True)  # the memory-only broker loses everything
        broker = start_tansu(port=broker.port, log_path=LOG_DIR / "tansu-refilled.log")
        for stream_id in streams:
            store.append_events_sync(stream_id, notes(2), expected_version=4)  # committed meanwhile
        assert all(store.get_stream_version_sync(s) == 6 for s in streams)

        env = {**os.environ, "DATABASE_URL": database_url(), "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
               "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "KAFKA_TOPIC_PARTITIONS": str(settings.partitions),
               "EVENTSTORE_STREAM_TYPES": ",".join(STREAM_TYPES)}
        done = subprocess.run([sys.executable, "manage.py", "refill_kafka", "--stream-type", STREAM_TYPE],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 still waiting" in done.stdout

        # Positions re-recorded: each points at the record of the same event in the new log.
        assert_kafka_holds_the_mirror_in_stream_order(store, settings, streams)
    finally:
        store.publisher.close()
        broker.stop(kill=True)
