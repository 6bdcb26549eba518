"""Appends that race, appends that are refused, input that is bad, and a database that goes away.

Proven for both recorders on PostgreSQL (the one-statement PostgreSQL recorder and the
portable ORM recorder):
- two writers appending the same events at the same moment store them once: one success and
  one idempotent success with the same positions, never a raw database error or a conflict
  (new stream with ANY / NO_STREAM / 0, and an existing stream at its exact version);
- a batch whose second id is stored elsewhere is refused naming that id and where it is;
  nothing of the batch is stored;
- a refused append (conflict, duplicate ids, closed stream, erased subject) inside a caller's
  transaction leaves that transaction usable, and what it did afterwards commits;
- bad text, control characters in metadata and absurdly nested payloads get the store's own
  error naming the field, and nothing is stored;
- a terminated database connection fails one call with StoreUnavailableError (retry, it is
  idempotent) and the next call works, without a restart;
- verifying a stream that does not exist fails, never says "integrity verified";
- `recorded_at` is the database's time, `occurred_at` the caller's.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, connections, transaction

from eventsourcing_app.application import erase_child_data
from eventsourcing_app.application.actors import Actor
from eventsourcing_app.domain import ChildProfileUpdated, DomainError, InvalidName
from eventsourcing_app.eventstore import (
    ConcurrencyError,
    DuplicateEventError,
    EventSerializationError,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    StoreUnavailableError,
    StreamClosedError,
    SubjectErasedError,
    get_event_sourcing_service,
)
from eventsourcing_app.eventstore.errors import IntegrityCheckError
from eventsourcing_app.models import Event, Stream
from eventsourcing_app.operations.migration import migrate_stream
from eventsourcing_app.operations.verify import verify_integrity
from tests.conftest import unique_stream
from tests.events import NoteRecorded, ProfileChanged, notes
from tests.integration.conftest import REPO, STREAM_TYPES, database_url
from tests.integration.helpers import new_child

RACE_ROUNDS = 40


def stored_copies(event_ids) -> int:
    return Event.objects.filter(event_id__in=[uuid.UUID(str(i)) for i in event_ids]).count()


def race(any_store: EventStore, stream_id: str, batch, expected) -> tuple[list, list]:
    """Two threads append the same events to the same stream at the same moment."""
    barrier = threading.Barrier(2)
    results: list = [None, None]
    errors: list = [None, None]

    def writer(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = any_store.append_events_sync(stream_id, batch, expected_version=expected)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing append did not finish within 60 s"
    return results, errors


def race_problems(round_: int, stream_id: str, batch, results, errors, base_version: int) -> list[str]:
    """What went wrong in one round (empty if exactly one copy was stored and both succeeded)."""
    problems = []
    if any(errors):
        kinds = [f"{type(e).__module__}.{type(e).__name__}: {e}" for e in errors if e is not None]
        problems.append(f"round {round_}: error(s) {kinds}")
        raw = [e for e in errors if isinstance(e, (IntegrityError, ConcurrencyError))]
        if raw:
            problems.append(f"round {round_}: a raw IntegrityError or a ConcurrencyError escaped: {raw!r}")
        return problems
    size = len(batch)
    if sorted(r.idempotent for r in results) != [False, True]:
        problems.append(f"round {round_}: idempotent flags {[r.idempotent for r in results]}, expected one of each")
    if results[0].global_positions != results[1].global_positions:
        problems.append(f"round {round_}: positions differ {results[0].global_positions} "
                        f"vs {results[1].global_positions}")
    for r in results:
        if (r.first_version, r.last_version) != (base_version + 1, base_version + size):
            problems.append(f"round {round_}: versions {r.first_version}..{r.last_version}, expected "
                            f"{base_version + 1}..{base_version + size}")
    count = Event.objects.filter(stream_id=stream_id).count()
    if count != base_version + size:
        problems.append(f"round {round_}: {count} events stored in {stream_id}, expected {base_version + size}")
    copies = stored_copies([e.event_id for e in batch])
    if copies != size:
        problems.append(f"round {round_}: {copies} stored copies of the batch's {size} ids")
    version = Stream.objects.filter(pk=stream_id).values_list("version", flat=True).first()
    if version != base_version + size:
        problems.append(f"round {round_}: stream version {version}, expected {base_version + size}")
    return problems


# --- 1. concurrent identical appends ---------------------------------------------------

@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("expected", [ExpectedVersion.ANY, ExpectedVersion.NO_STREAM, 0],
                         ids=["any", "no_stream", "exact_0"])
def test_two_writers_appending_the_same_events_to_a_new_stream_store_them_once(any_store, expected, size):
    problems = []
    for round_ in range(RACE_ROUNDS):
        stream_id = unique_stream("test")
        batch = [NoteRecorded(text=f"round {round_} note {i}", n=i) for i in range(size)]
        results, errors = race(any_store, stream_id, batch, expected)
        problems += race_problems(round_, stream_id, batch, results, errors, base_version=0)
    assert problems == [], f"{len(problems)} problems, first ones: {problems[:5]}"


@pytest.mark.parametrize("size", [1, 3])
def test_two_writers_appending_the_same_events_at_the_exact_version_of_an_existing_stream_store_them_once(
        any_store, size):
    problems = []
    for round_ in range(RACE_ROUNDS):
        stream_id = unique_stream("test")
        any_store.append_events_sync(stream_id, notes(2), expected_version=ExpectedVersion.NO_STREAM)
        batch = [NoteRecorded(text=f"round {round_} note {i}", n=i) for i in range(size)]
        results, errors = race(any_store, stream_id, batch, 2)
        problems += race_problems(round_, stream_id, batch, results, errors, base_version=2)
    assert problems == [], f"{len(problems)} problems, first ones: {problems[:5]}"


# --- 2. a stored id in second place ----------------------------------------------------

@pytest.mark.parametrize("target", ["new stream", "existing stream", "same stream"])
def test_a_batch_whose_second_id_is_stored_elsewhere_is_refused_naming_it_and_stores_nothing(any_store, target):
    holder = unique_stream("test")
    held = notes(2)
    any_store.append_events_sync(holder, held, expected_version=ExpectedVersion.NO_STREAM)
    if target == "same stream":
        stream_id, stored, where = holder, held[0], f"stream {holder} version 1"
    else:
        stream_id, stored, where = unique_stream("test"), held[1], f"stream {holder} version 2"
        if target == "existing stream":
            any_store.append_events_sync(stream_id, notes(1), expected_version=ExpectedVersion.NO_STREAM)
    before = any_store.get_stream_version_sync(stream_id)
    fresh = [NoteRecorded(text="fresh one"), NoteRecorded(text="fresh two")]

    with pytest.raises(DuplicateEventError) as caught:
        any_store.append_events_sync(stream_id, [fresh[0], stored, fresh[1]])

    assert f"event id {stored.event_id} is already stored as {where}" in str(caught.value)
    assert any_store.get_stream_version_sync(stream_id) == before
    assert stored_copies([e.event_id for e in fresh]) == 0
    assert stored_copies([stored.event_id]) == 1
    assert any_store.get_stream_version_sync(holder) == 2
    if target == "new stream":
        assert not Stream.objects.filter(pk=stream_id).exists(), "the refused append left an empty stream row"


# --- 3. refusals inside a caller's transaction -----------------------------------------

def committed_version(stream_id: str) -> int | None:
    """The stream's version as another connection sees it (only committed data)."""
    found: list = []

    def read() -> None:
        try:
            found.append(Stream.objects.filter(pk=stream_id).values_list("version", flat=True).first())
        finally:
            connections.close_all()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(30)
    return found[0]


def test_a_refused_append_leaves_the_callers_transaction_usable(any_store):
    conflicting = unique_stream("test")
    any_store.append_events_sync(conflicting, notes(2), expected_version=ExpectedVersion.NO_STREAM)
    already = notes(2)
    any_store.append_events_sync(unique_stream("test"), already, expected_version=ExpectedVersion.NO_STREAM)
    duplicate_target = unique_stream("test")
    old, new = unique_stream("test"), unique_stream("test")
    any_store.append_events_sync(old, notes(2), expected_version=ExpectedVersion.NO_STREAM)
    migrate_stream(old, new)
    child = new_child()
    service = get_event_sourcing_service()
    service.save_aggregate_sync(child)
    erase_child_data(actor=Actor.system("tests"), child_id=child.id, reason="parent_request")
    child_stream = f"child.{child.id}"
    child_version = any_store.get_stream_version_sync(child_stream)
    good = unique_stream("test")

    def still_usable(good_version: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        assert Stream.objects.filter(pk=good).values_list("version", flat=True).first() == good_version
        result = any_store.append_events_sync(good, notes(1), expected_version=good_version)
        assert result.last_version == good_version + 1

    with transaction.atomic():
        any_store.append_events_sync(good, notes(1), expected_version=ExpectedVersion.NO_STREAM)

        with pytest.raises(ConcurrencyError):
            any_store.append_events_sync(conflicting, notes(1), expected_version=1)
        still_usable(1)

        with pytest.raises(DuplicateEventError):
            any_store.append_events_sync(duplicate_target, [NoteRecorded(text="new"), *already])
        still_usable(2)

        with pytest.raises(StreamClosedError, match=f"append to {new}"):
            any_store.append_events_sync(old, notes(1))
        still_usable(3)

        with pytest.raises(SubjectErasedError, match=f"child:{child.id}"):
            any_store.append_events_sync(child_stream, [ChildProfileUpdated(child_id=child.id,
                                                                            changes={"name": "Bob"})])
        still_usable(4)

        assert committed_version(good) is None  # not committed yet: one transaction

    assert committed_version(good) == 5
    assert [e.version for e in any_store.load_events_sync(good)] == [1, 2, 3, 4, 5]
    assert any_store.get_stream_version_sync(conflicting) == 2
    assert not Stream.objects.filter(pk=duplicate_target).exists()
    assert any_store.get_stream_version_sync(old) == 2
    assert any_store.get_stream_version_sync(child_stream) == child_version


# --- 4. bad input -----------------------------------------------------------------------

def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"k": value}
    return value


def bad_inputs():
    return [
        ("lone surrogate in a field", lambda: [NoteRecorded(text="Al\ud800ice")], {},
         EventSerializationError, "field test.NoteRecorded.text is not valid Unicode"),
        ("lone surrogate in a dict key", lambda: [ProfileChanged(changes={"na\udc00me": "x"})], {},
         EventSerializationError, "field test.ProfileChanged.changes (a key) is not valid Unicode"),
        ("lone surrogate in a personal field",
         lambda: [ChildProfileUpdated(child_id=f"child-{uuid.uuid4().hex[:10]}", changes={"name": "Al\ud800ice"})],
         {}, EventSerializationError, "ChildProfileUpdated.changes"),
        ("NUL in correlation_id", lambda: notes(1), {"correlation_id": "a\x00b"},
         EventStoreError, "correlation_id holds U+0000 at position 1"),
        ("line feed in actor", lambda: notes(1), {"actor": "user:1\n"},
         EventStoreError, "actor holds U+000A at position 6"),
        ("escape in causation_id", lambda: notes(1), {"causation_id": "evt\x1b[31m"},
         EventStoreError, "causation_id holds U+001B"),
        ("nested 10,000 levels", lambda: [ProfileChanged(changes=nested(10_000))], {},
         EventSerializationError, "levels deep"),
    ]


@pytest.mark.parametrize("make_events, metadata, error, message",
                         [case[1:] for case in bad_inputs()], ids=[case[0] for case in bad_inputs()])
def test_bad_input_gets_the_stores_own_error_naming_the_field_and_stores_nothing(
        any_store, make_events, metadata, error, message):
    stream_id = unique_stream("test")
    events = make_events()
    with pytest.raises(error) as caught:
        any_store.append_events_sync(stream_id, events, **metadata)
    assert message in str(caught.value)
    assert any_store.get_stream_version_sync(stream_id) == 0
    assert not Stream.objects.filter(pk=stream_id).exists()
    assert stored_copies([e.event_id for e in events]) == 0


def test_a_nested_payload_is_refused_as_nested_too_deep_not_with_a_recursion_error(any_store):
    stream_id = unique_stream("test")
    event = ProfileChanged(changes=nested(10_000))
    try:
        any_store.append_events_sync(stream_id, [event])
    except RecursionError:  # pragma: no cover - the failure this test exists for
        pytest.fail("a deeply nested payload raised RecursionError instead of the store's error")
    except EventSerializationError as exc:
        text = str(exc)
        assert text.startswith("field test.ProfileChanged.changes.k.k")
        assert "is nested more than" in text and "levels deep" in text
    else:
        pytest.fail("a payload nested 10,000 levels deep was stored")
    assert any_store.get_stream_version_sync(stream_id) == 0


def test_the_domain_refuses_a_control_character_in_a_childs_name():
    child = new_child()
    with pytest.raises(DomainError) as caught:
        child.update_profile({"name": "Al\x00ice"})
    assert isinstance(caught.value, InvalidName)
    assert "name contains a control character (U+0000) at position 2" in str(caught.value)
    assert child.name == "Alice"


# --- 5. a lost connection ----------------------------------------------------------------

def terminate_connection_of_this_thread() -> int:
    """Terminates the backend of the connection the store uses here, from a second connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with psycopg.connect(database_url(), autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone() == (True,)
    return pid


def rows_of(stream_id: str) -> tuple[int, int]:
    """(events, stream rows) of a stream, read over a connection of its own."""
    with psycopg.connect(database_url(), autocommit=True) as other:
        events = other.execute("SELECT count(*) FROM eventstore_event WHERE stream_id = %s", [stream_id]).fetchone()[0]
        streams = other.execute("SELECT count(*) FROM eventstore_stream WHERE stream_id = %s AND version > 0",
                                [stream_id]).fetchone()[0]
    return events, streams


def test_a_lost_database_connection_fails_one_call_clearly_and_the_next_call_works(any_store):
    stream_id = unique_stream("test")
    batch = notes(3)

    killed = terminate_connection_of_this_thread()
    with pytest.raises(StoreUnavailableError) as caught:
        any_store.append_events_sync(stream_id, batch, expected_version=ExpectedVersion.NO_STREAM)
    message = str(caught.value)
    assert "retry" in message and "idempotent" in message
    events, streams = rows_of(stream_id)
    assert (events, streams) in ((0, 0), (3, 1)), f"half-written: {events} events, {streams} stream rows"

    retried = any_store.append_events_sync(stream_id, batch, expected_version=ExpectedVersion.NO_STREAM)
    assert (retried.first_version, retried.last_version) == (1, 3)
    assert retried.idempotent == (events == 3)
    assert rows_of(stream_id) == (3, 1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != killed

    terminate_connection_of_this_thread()
    with pytest.raises(StoreUnavailableError, match="retry"):
        any_store.load_events_sync(stream_id)
    assert [e.metadata.event_id for e in any_store.load_events_sync(stream_id)] == [e.event_id for e in batch]
    assert any_store.get_stream_version_sync(stream_id) == 3


# --- 6. verifying a stream that does not exist -------------------------------------------

def test_verifying_a_stream_that_does_not_exist_fails_and_never_says_verified(any_store):
    with pytest.raises(IntegrityCheckError, match="stream child.does-not-exist does not exist"):
        verify_integrity("child.does-not-exist", recorder=any_store.recorder)

    out = io.StringIO()
    with pytest.raises(CommandError, match="stream child.does-not-exist does not exist"):
        call_command("verify_integrity", "child.does-not-exist", stdout=out)
    assert "integrity verified" not in out.getvalue()


def test_the_verify_integrity_command_exits_with_an_error_for_an_unknown_stream(kafka_settings):
    env = {**os.environ, "DATABASE_URL": database_url(),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
           "KAFKA_TOPIC_PARTITIONS": str(kafka_settings.partitions),
           "EVENTSTORE_STREAM_TYPES": ",".join(STREAM_TYPES)}
    done = subprocess.run([sys.executable, "manage.py", "verify_integrity", "child.does-not-exist"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "stream child.does-not-exist does not exist" in done.stderr
    assert "integrity verified" not in done.stdout + done.stderr


# --- 7. recorded_at is the database's clock ------------------------------------------------

def test_recorded_at_is_the_databases_time_and_occurred_at_the_callers(any_store):
    stream_id = unique_stream("test")
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    event = NoteRecorded(text="from the future")
    event.occurred_at = tomorrow
    any_store.append_events_sync(stream_id, [event], expected_version=ExpectedVersion.NO_STREAM)
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        db_now = cursor.fetchone()[0]

    row = Event.objects.get(event_id=uuid.UUID(event.event_id))
    assert abs((db_now - row.recorded_at).total_seconds()) < 5, (row.recorded_at, db_now)
    assert row.occurred_at == tomorrow
    assert any_store.load_events_sync(stream_id)[0].metadata.timestamp == tomorrow
