"""Faults of publication: whatever happens between the commit and Kafka, every committed event
reaches Kafka in per-stream order, and what cannot go is reported instead of blocking the rest.

Proven here:
- an event dated a day ahead (occurred_at) is relayed within the usual grace, and the events
  after it too (the relay goes by the database's recorded_at), in process and by the Celery task;
- a producer that raises on the hand-off after the commit never fails the append (also inside
  transaction.atomic()); the relay publishes what it did not;
- a broker restarted empty while sends are in flight: the same store and publisher, driven by
  the relay, replace the producer and publish the backlog in order; while the broker is down
  and an event waits, readiness says "kafka" and "kafka_publishing" are down, with the backlog;
- a poison event (Kafka can never take it) is recorded, logged once at ERROR, counted and
  listed; its stream is held, other streams flow, and it is not retried within
  POISON_RETRY_SECONDS;
- the relay lock: two relays never run at once, across processes, and a holder that dies
  leaves no lock behind;
- the refill refuses non-empty topics (changing nothing), its dry run changes nothing, and with
  --recreate-topics it leaves each stream exactly once, in version order, in the new log;
- the publisher's background thread, if it dies, is started again and publishing goes on.

Tests with faults run their own broker (faults must not disturb the rest of the session) and
their own store on it, with a short message timeout so that failed sends are noticed quickly.
Tests leave nothing waiting in the outbox (the readiness check looks at the whole database).
"""
from __future__ import annotations

import io
import logging
import selectors
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.db import transaction

from devtools.embedded import start_tansu
from eventsourcing_app.eventstore import EventStore, build_event_store
from eventsourcing_app.eventstore.records import AppendResult
from eventsourcing_app.eventstore.recorders import PostgresRecorder
from eventsourcing_app.kafka.consumer import StreamOrderGuard
from eventsourcing_app.kafka.topics import provision_topics
from eventsourcing_app.models import PoisonEvent, Stream
from eventsourcing_app.operations.relay import POISON_RETRY_SECONDS, KafkaUnavailableError, relay_outbox
from eventsourcing_app.operations.verify import verify_integrity
from tests.conftest import LOG_DIR, unique_stream
from tests.events import NoteRecorded, notes
from tests.integration.conftest import REPO, process_env
from tests.integration.helpers import wait_until
from tests.kafka_helpers import records_by_stream

STREAM_TYPE = "test"
log = logging.getLogger(__name__)


# --- fixtures and helpers ---------------------------------------------------------------

def unpublished(store) -> EventStore:
    """A store that appends without publishing: everything stays in the outbox for the relay."""
    return EventStore(recorder=PostgresRecorder(), stream_types=store.stream_types,
                      max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)


def published_version(stream_id: str) -> int:
    return Stream.objects.get(pk=stream_id).published_version


def kafka_versions(kafka, stream_id: str) -> list[int]:
    """The versions of the stream's records in the topic, in log order."""
    return [r.metadata.version for r in records_by_stream(kafka, STREAM_TYPE, [stream_id]).get(stream_id, [])]


def command_env(kafka) -> dict:
    return process_env(kafka, KAFKA_MESSAGE_TIMEOUT_MS="3000")


def manage(kafka, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=command_env(kafka),
                          capture_output=True, text=True, timeout=timeout)


def relay_until(store, condition, timeout: float = 30.0, **options) -> None:
    """Runs the relay every second, as beat would, until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the relay did not get there within {timeout}s: {condition}")
        try:
            relay_outbox(store, stream_types=[STREAM_TYPE], time_budget=10.0, **options)
        except KafkaUnavailableError as exc:
            log.info("relay: %s", exc)
        if not condition():
            time.sleep(1.0)


def drain(session_store) -> None:
    """Publishes whatever a test left waiting (to the session broker), so that the readiness
    check of later tests does not see it."""
    try:
        relay_outbox(session_store, stream_types=[STREAM_TYPE], time_budget=20.0)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own outcome
        log.exception("could not drain the outbox after the test")


def read_answer(process: subprocess.Popen, answers: set[str], timeout: float) -> str:
    """The first line of the process's output that is one of `answers` (the shell prints other
    lines first)."""
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no answer from the process within {timeout}s")
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"the process ended without an answer (exit code {process.wait(5)})")
            if line.strip() in answers:
                return line.strip()
    finally:
        selector.close()


# --- 1. an event dated ahead ------------------------------------------------------------

def test_an_event_dated_a_day_ahead_is_relayed_with_the_events_after_it(store):
    stream_id = unique_stream(STREAM_TYPE)
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    writer = unpublished(store)
    writer.append_events_sync(stream_id, [NoteRecorded(text="dated tomorrow", n=1, occurred_at=tomorrow)],
                              expected_version=0)
    for version in (2, 3, 4):
        writer.append_events_sync(stream_id, notes(1, start=version), expected_version=version - 1)

    relay_outbox(store, grace_seconds=2.0, stream_types=[STREAM_TYPE])
    assert published_version(stream_id) == 0  # recorded just now: left to its own publisher

    time.sleep(2.5)  # by the database's clock the events are now older than the grace
    report = relay_outbox(store, grace_seconds=2.0, stream_types=[STREAM_TYPE])
    assert report.published >= 4, report
    assert published_version(stream_id) == 4
    records = records_by_stream(store.kafka_settings, STREAM_TYPE, [stream_id])[stream_id]
    assert [r.metadata.version for r in records] == [1, 2, 3, 4]
    assert records[0].metadata.timestamp == tomorrow  # occurred_at travels unchanged
    assert store.load_events_sync(stream_id, source="kafka") == store.load_events_sync(stream_id)


def test_the_celery_relay_task_publishes_a_stream_that_starts_with_an_event_dated_ahead(store, celery_worker):
    from eventsourcing_app.tasks import relay_outbox as relay_task

    stream_id = unique_stream(STREAM_TYPE)
    writer = unpublished(store)
    writer.append_events_sync(stream_id, [NoteRecorded(text="dated tomorrow", n=1,
                                                       occurred_at=datetime.now(timezone.utc) + timedelta(days=1))],
                              expected_version=0)
    writer.append_events_sync(stream_id, notes(3, start=2), expected_version=1)

    deadline = time.monotonic() + 40
    while published_version(stream_id) < 4:  # the task, sent every few seconds as beat would
        assert time.monotonic() < deadline, "the Celery relay task did not publish the stream"
        relay_task.apply_async()
        try:
            wait_until(lambda: published_version(stream_id) == 4, timeout=5)
        except AssertionError:
            continue
    assert kafka_versions(store.kafka_settings, stream_id) == [1, 2, 3, 4]


# --- 2. a producer that raises on the hand-off ------------------------------------------

def test_a_producer_that_raises_after_the_commit_never_fails_the_append(store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the producer broke during the hand-off")

    monkeypatch.setattr(store.publisher, "publish_appended", broken)
    outside, inside = unique_stream(STREAM_TYPE), unique_stream(STREAM_TYPE)

    result = store.append_events_sync(outside, notes(3), expected_version=0)
    assert isinstance(result, AppendResult) and (result.first_version, result.last_version) == (1, 3)
    with transaction.atomic():
        inner = store.append_events_sync(inside, notes(2), expected_version=0)
    assert isinstance(inner, AppendResult) and inner.last_version == 2

    # Committed (read back through other queries), and waiting in the outbox.
    assert [e.version for e in store.load_events_sync(outside)] == [1, 2, 3]
    assert [e.version for e in store.load_events_sync(inside)] == [1, 2]
    assert published_version(outside) == 0 and published_version(inside) == 0

    relay_outbox(store, stream_types=[STREAM_TYPE])
    assert published_version(outside) == 3 and published_version(inside) == 2
    assert kafka_versions(store.kafka_settings, outside) == [1, 2, 3]
    assert kafka_versions(store.kafka_settings, inside) == [1, 2]


# --- 3. a broker restarted empty --------------------------------------------------------

def test_a_broker_restarted_empty_with_sends_in_flight_is_caught_up_by_the_relay(own_broker, store):
    broker, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    stream_id = unique_stream(STREAM_TYPE)
    restarted = None
    try:
        mine.append_events_sync(stream_id, notes(3), expected_version=0)
        assert mine.flush(30) and published_version(stream_id) == 3

        broker.stop(kill=True)  # the memory-only broker loses everything
        for i in range(5):  # handed to the producer: in flight when the broker comes back
            mine.append_events_sync(stream_id, notes(2, start=4 + 2 * i), expected_version=3 + 2 * i)
        restarted = start_tansu(port=broker.port, log_path=LOG_DIR / "tansu-restarted-in-flight.log")
        provision_topics(kafka)
        assert mine.get_stream_version_sync(stream_id) == 13

        # The same store and publisher: no new one is made by hand.
        relay_until(mine, lambda: published_version(stream_id) == 13, timeout=40)

        raw = records_by_stream(kafka, STREAM_TYPE, [stream_id])[stream_id]
        guard = StreamOrderGuard(applied={stream_id: 3})  # what a consumer had applied before the restart
        applied = [r.metadata.version for r in raw if guard.accept(r)]
        assert applied == list(range(4, 14))
        assert guard.gaps_skipped == 0
        assert mine.load_events_sync(stream_id, from_version=4, source="kafka") == \
            mine.load_events_sync(stream_id, from_version=4)
        assert mine.publisher.replacements >= 1
        assert mine.publisher._thread.is_alive()
    finally:
        mine.publisher.close()
        if restarted:
            restarted.stop(kill=True)
        drain(store)


def test_readiness_says_kafka_and_publishing_are_down_while_events_wait(own_broker, store, client, settings):
    broker, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    stream_id = unique_stream(STREAM_TYPE)
    try:
        mine.append_events_sync(stream_id, notes(2), expected_version=0)
        assert mine.flush(30)
        broker.stop(kill=True)
        mine.append_events_sync(stream_id, notes(3, start=3), expected_version=2)
        assert published_version(stream_id) == 2

        settings.KAFKA_BOOTSTRAP_SERVERS = kafka.bootstrap_servers  # the dead broker
        settings.EVENTSTORE = {**settings.EVENTSTORE, "PUBLISH_LAG_ALERT_SECONDS": 1.0}
        time.sleep(1.5)  # longer than the alert threshold
        response = client.get("/health/ready/")
        body = response.json()
        assert response.status_code == 503, body
        assert body["status"] == "unavailable"
        assert "kafka" in body["down"] and "kafka_publishing" in body["down"]
        publishing = body["checks"]["kafka_publishing"]
        assert publishing["status"] == "down" and publishing["error"]
        assert publishing["backlog"] >= 3  # mine, at least (others' may wait too)
        assert publishing["oldest_waiting_seconds"] > 1
    finally:
        mine.publisher.close()
        drain(store)


# --- 4. poison events -------------------------------------------------------------------

def test_a_poison_event_holds_only_its_stream_and_is_reported_once(own_broker, store, caplog):
    broker, kafka = own_broker
    strict = kafka.with_changes(extra_producer={"message.max.bytes": 20000})
    mine = build_event_store(kafka_settings=strict)
    writer = unpublished(mine)
    held, other = unique_stream(STREAM_TYPE), unique_stream(STREAM_TYPE)
    try:
        mine.append_events_sync(held, notes(2), expected_version=0)
        assert mine.flush(30) and published_version(held) == 2

        big = NoteRecorded(text="x" * 50_000, n=3)  # under the store's own limit, over the producer's
        with caplog.at_level(logging.ERROR, logger="eventsourcing_app.kafka.publisher"):
            assert mine.append_events_sync(held, [big], expected_version=2).last_version == 3
        mine.append_events_sync(held, notes(2, start=4), expected_version=3)
        mine.append_events_sync(other, notes(3), expected_version=0)
        writer.append_events_sync(other, notes(2, start=4), expected_version=3)  # the relay's to publish
        assert mine.flush(30)

        refusals = [r for r in caplog.records if r.levelno == logging.ERROR and held in r.getMessage()]
        assert len(refusals) == 1 and " v3 " in refusals[0].getMessage(), caplog.text
        assert "relay_outbox --poison" in refusals[0].getMessage()
        assert mine.publisher.poison_events >= 1
        row = PoisonEvent.objects.get(stream_id=held)
        assert row.version == 3 and row.attempts == 1 and "SIZE" in row.error.upper()

        report = relay_outbox(mine, stream_types=[STREAM_TYPE])
        assert held in report.held
        assert published_version(other) == 5  # other streams flow
        assert kafka_versions(strict, other) == [1, 2, 3, 4, 5]
        assert published_version(held) == 2  # held at the version before the poison event
        assert kafka_versions(strict, held) == [1, 2]

        relay_outbox(mine, stream_types=[STREAM_TYPE])  # the next run, well within POISON_RETRY_SECONDS
        assert POISON_RETRY_SECONDS > 10
        assert PoisonEvent.objects.get(stream_id=held).attempts == 1
        assert published_version(held) == 2

        listed = [(r["stream_id"], r["version"]) for r in mine.recorder.poison_events()]
        assert (held, 3) in listed
        out = io.StringIO()
        call_command("relay_outbox", "--poison", stdout=out)
        assert f"{held} v3 " in out.getvalue(), out.getvalue()
    finally:
        mine.publisher.close()
        cleanup_poison(store, [held])


def test_a_poison_event_the_relay_finds_is_tried_once_per_run(own_broker, store, caplog):
    broker, kafka = own_broker
    strict = kafka.with_changes(extra_producer={"message.max.bytes": 20000})
    mine = build_event_store(kafka_settings=strict)
    writer = unpublished(mine)
    held, other = unique_stream(STREAM_TYPE), unique_stream(STREAM_TYPE)
    try:
        writer.append_events_sync(held, [NoteRecorded(text="x" * 50_000, n=1)], expected_version=0)
        writer.append_events_sync(held, notes(2, start=2), expected_version=1)
        writer.append_events_sync(other, notes(3), expected_version=0)

        with caplog.at_level(logging.ERROR, logger="eventsourcing_app.kafka.publisher"):
            report = relay_outbox(mine, stream_types=[STREAM_TYPE])
        refusals = [r for r in caplog.records if r.levelno == logging.ERROR and held in r.getMessage()]
        assert len(refusals) == 1 and " v1 " in refusals[0].getMessage(), caplog.text
        assert held in report.held
        assert published_version(other) == 3 and published_version(held) == 0
        # One refusal found by this run: it is not tried again before POISON_RETRY_SECONDS.
        assert PoisonEvent.objects.get(stream_id=held).attempts == 1
    finally:
        mine.publisher.close()
        cleanup_poison(store, [held])


def cleanup_poison(session_store, streams) -> None:
    """The cause is "fixed" (a producer without the low limit publishes it): nothing stays held."""
    PoisonEvent.objects.filter(stream_id__in=streams).delete()
    drain(session_store)


# --- 5. the relay lock ------------------------------------------------------------------

def test_two_relays_never_run_at_once_across_processes(store, kafka_settings):
    stream_id = unique_stream(STREAM_TYPE)
    unpublished(store).append_events_sync(stream_id, notes(2), expected_version=0)
    try:
        with store.recorder.relay_lock() as held:
            assert held
            busy = manage(kafka_settings, "relay_outbox")
            assert "another relay is running" in busy.stdout, busy.stdout + busy.stderr
            assert published_version(stream_id) == 0

        done = manage(kafka_settings, "relay_outbox")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "published" in done.stdout and "another relay" not in done.stdout
        assert published_version(stream_id) == 2
        assert kafka_versions(kafka_settings, stream_id) == [1, 2]
    finally:
        drain(store)


def test_the_relay_lock_goes_away_with_a_holder_that_dies(store, kafka_settings):
    script = ("import time\n"
              "from eventsourcing_app.eventstore import get_event_store\n"
              "with get_event_store().recorder.relay_lock() as held:\n"
              "    print('held' if held else 'busy', flush=True)\n"
              "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", script], cwd=REPO,
                              env=command_env(kafka_settings), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        assert read_answer(holder, {"held", "busy"}, 30) == "held"
        with store.recorder.relay_lock() as held:
            assert not held
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

        def lock_is_free():
            with store.recorder.relay_lock() as free:
                return free

        wait_until(lock_is_free, timeout=3)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# --- 6. the refill ----------------------------------------------------------------------

def test_the_refill_refuses_topics_that_hold_records_and_its_dry_run_changes_nothing(own_broker):
    broker, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    stream_id = unique_stream(STREAM_TYPE)
    try:
        mine.append_events_sync(stream_id, notes(4), expected_version=0)
        assert mine.flush(30)
        before = Stream.objects.get(pk=stream_id)
        assert before.published_version == 4

        refused = manage(kafka, "refill_kafka", "--stream-type", STREAM_TYPE, "--settle", "0")
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0, output
        assert "already hold records" in output and "--recreate-topics" in output and "--force" in output
        after = Stream.objects.get(pk=stream_id)
        assert (after.published_version, after.publication_epoch) == (4, before.publication_epoch)
        assert kafka_versions(kafka, stream_id) == [1, 2, 3, 4]

        dry = manage(kafka, "refill_kafka", "--stream-type", STREAM_TYPE, "--settle", "0", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would republish" in dry.stdout and f"not empty: {kafka.event_topic(STREAM_TYPE)} (" in dry.stdout
        after = Stream.objects.get(pk=stream_id)
        assert (after.published_version, after.publication_epoch) == (4, before.publication_epoch)
        assert kafka_versions(kafka, stream_id) == [1, 2, 3, 4]
    finally:
        mine.publisher.close()


def test_the_refill_after_a_restart_leaves_each_stream_once_in_order(own_broker, store):
    broker, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    stream_id = unique_stream(STREAM_TYPE)
    restarted = None
    try:
        mine.append_events_sync(stream_id, notes(4), expected_version=0)
        assert mine.flush(30) and published_version(stream_id) == 4

        broker.stop(kill=True)
        restarted = start_tansu(port=broker.port, log_path=LOG_DIR / "tansu-refill-recreate.log")
        provision_topics(kafka)
        mine.append_events_sync(stream_id, notes(2, start=5), expected_version=4)
        relay_until(mine, lambda: published_version(stream_id) == 6, timeout=40)
        newer = kafka_versions(kafka, stream_id)
        assert set(newer) == {5, 6}, newer  # the new log holds only the newer events

        mine.publisher.close()  # nothing else publishes during the refill
        done = manage(kafka, "refill_kafka", "--stream-type", STREAM_TYPE, "--recreate-topics", "--settle", "0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 still waiting" in done.stdout

        assert kafka_versions(kafka, stream_id) == [1, 2, 3, 4, 5, 6]
        assert published_version(stream_id) == 6
        assert mine.load_events_sync(stream_id, source="kafka") == mine.load_events_sync(stream_id)
        report = verify_integrity(stream_id, kafka_settings=kafka)
        assert report.ok, report
    finally:
        mine.publisher.close()
        if restarted:
            restarted.stop(kill=True)
        drain(store)


# --- 7. the publisher's background thread ------------------------------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is on purpose
def test_a_publisher_thread_that_died_is_started_again(kafka_settings, monkeypatch, caplog):
    mine = build_event_store(kafka_settings=kafka_settings)
    publisher = mine.publisher
    serve_once = publisher._serve_once
    deaths = []

    def dying():
        if deaths:
            deaths.pop()
            raise SystemExit("killed by the test")  # not an Exception: it ends the thread
        serve_once()

    monkeypatch.setattr(publisher, "_serve_once", dying)
    stream_id = unique_stream(STREAM_TYPE)
    try:
        mine.append_events_sync(stream_id, notes(1), expected_version=0)
        assert mine.flush(30) and published_version(stream_id) == 1

        # Died; the next hand-off starts it again.
        first = publisher._thread
        deaths.append(1)
        wait_until(lambda: not first.is_alive(), timeout=10)
        with caplog.at_level(logging.ERROR, logger="eventsourcing_app.kafka.publisher"):
            mine.append_events_sync(stream_id, notes(2, start=2), expected_version=1)
        assert publisher._thread is not first and publisher._thread.is_alive()
        assert "background thread had stopped" in caplog.text
        assert mine.flush(30) and published_version(stream_id) == 3

        # Died again; a flush starts it again.
        second = publisher._thread
        deaths.append(1)
        wait_until(lambda: not second.is_alive(), timeout=10)
        assert mine.flush(30)
        assert publisher._thread is not second and publisher._thread.is_alive()
        mine.append_events_sync(stream_id, notes(1, start=4), expected_version=3)
        assert mine.flush(30) and published_version(stream_id) == 4
        assert kafka_versions(kafka_settings, stream_id) == [1, 2, 3, 4]
    finally:
        publisher.close()
