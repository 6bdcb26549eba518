"""A Celery worker's relay heals by itself after its broker restarted empty with sends in flight.

A real worker process, on its own broker and queue: it publishes, the broker is killed while
the worker is relaying, comes back empty on the same port, and the worker's next relay tasks
publish the whole backlog in per-stream order, with no restart of the worker (its producer is
replaced, its topics provisioned again before anything is produced).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from devtools.embedded import start_tansu
from eventsourcing_app.eventstore import EventStore
from eventsourcing_app.eventstore.recorders import PostgresRecorder
from eventsourcing_app.kafka.topics import provision_topics
from eventsourcing_app.models import Stream
from tests.conftest import LOG_DIR, unique_stream
from tests.events import notes
from tests.integration.conftest import REPO, STREAM_TYPES, database_url
from tests.integration.helpers import wait_until
from tests.kafka_helpers import records_by_stream


@pytest.fixture
def own_worker(kafka_settings, configured):
    """A broker and a Celery worker process of this test only (own queue, own topics)."""
    from teddy_project.celery import app

    broker = start_tansu(log_path=LOG_DIR / "tansu-worker-heals.log")
    settings = kafka_settings.with_changes(bootstrap_servers=broker.address, message_timeout_ms=3000,
                                           topic_prefix=f"heal{uuid.uuid4().hex[:6]}.")
    provision_topics(settings)
    queue, name = f"heal-{uuid.uuid4().hex[:8]}", f"heal-{uuid.uuid4().hex[:8]}@localhost"
    env = {**os.environ, "DATABASE_URL": database_url(), "KAFKA_BOOTSTRAP_SERVERS": broker.address,
           "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "KAFKA_TOPIC_PARTITIONS": str(settings.partitions),
           "KAFKA_MESSAGE_TIMEOUT_MS": "3000", "EVENTSTORE_STREAM_TYPES": ",".join(STREAM_TYPES),
           "EVENTSTORE_RELAY_GRACE_SECONDS": "0", "CELERY_TASK_DEFAULT_QUEUE": queue,
           # This worker relays for a broker of its own; the session's worker feeds the read models.
           "PROJECTIONS_RUN_IN_WORKER": "0"}
    log = open(LOG_DIR / f"celery-{queue}.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "teddy_project", "worker", "-n", name, "-Q",
                               queue, "--concurrency=1", "--pool=solo", "--loglevel=INFO"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: app.control.ping(destination=[name], timeout=0.5) or worker.poll() is not None, 60)
        assert worker.poll() is None, f"the worker did not start; see {log.name}"
        yield broker, settings, worker, queue
    finally:
        worker.kill()
        worker.wait(10)
        broker.stop(kill=True)


def test_the_workers_relay_publishes_the_backlog_after_an_empty_broker_restart(own_worker, store):
    from eventsourcing_app.tasks import relay_outbox

    broker, settings, worker, queue = own_worker
    unpublished = EventStore(recorder=PostgresRecorder(), stream_types=store.stream_types,
                             max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)
    streams = [unique_stream("test") for _ in range(3)]

    def relay_until_published(version: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            relay_outbox.apply_async(queue=queue)
            if all(Stream.objects.get(pk=s).published_version == version for s in streams):
                return
            time.sleep(1.0)
        raise AssertionError(f"not published up to {version}: "
                             f"{[Stream.objects.get(pk=s).published_version for s in streams]}")

    for stream_id in streams:
        unpublished.append_events_sync(stream_id, notes(3), expected_version=0)
    relay_until_published(3, 60)

    broker.pause()  # the worker's sends hang in flight ...
    for stream_id in streams:
        for i in range(5):
            unpublished.append_events_sync(stream_id, notes(20), expected_version=3 + 20 * i)
    relay_outbox.apply_async(queue=queue)
    time.sleep(1.0)
    broker.stop(kill=True)  # ... when the broker dies, and it comes back empty
    restarted = start_tansu(port=broker.port, log_path=LOG_DIR / "tansu-worker-heals-2.log")  # empty
    try:
        relay_until_published(103, 90)
        for stream_id in streams:  # and publishing goes on as usual
            unpublished.append_events_sync(stream_id, notes(3), expected_version=103)
        relay_until_published(106, 30)
        assert worker.poll() is None  # the same worker process, never restarted
        new_log = records_by_stream(settings, "test", streams)
        for stream_id in streams:
            first_seen = list(dict.fromkeys(r.metadata.version for r in new_log[stream_id]))  # duplicates skipped
            # The new log holds every event not acknowledged before the restart, in order, no gap.
            assert first_seen == list(range(4, 107)), (stream_id, first_seen[:5])
    finally:
        restarted.stop(kill=True)
