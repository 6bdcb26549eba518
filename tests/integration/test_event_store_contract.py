"""The event store's invariants (see eventstore/recorders.py), checked for every recorder.

Runs against PostgreSQL twice: the one-statement PostgreSQL recorder with Kafka publishing,
and the portable ORM recorder (the one SQLite uses in the one-command run).
"""
from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import pytest
from django.db import connection

from eventsourcing_app.eventstore import (
    ConcurrencyError,
    DuplicateEventError,
    EventSerializationError,
    EventStoreError,
    EventTooLargeError,
    ExpectedVersion,
    InvalidStreamIdError,
    UnknownEventTypeError,
    UnknownStreamTypeError,
    deserialize_event,
)
from eventsourcing_app.eventstore.integrity import verify_chain
from eventsourcing_app.models import Event, Stream
from eventsourcing_app.observability import event_context
from tests.conftest import unique_stream
from tests.events import NoteRecorded, Unserializable, notes


def snapshot_of(stream_id: str) -> tuple:
    """Everything stored for a stream, to prove a refused call changed nothing."""
    stream = Stream.objects.filter(pk=stream_id).values_list("version", "last_hash").first()
    events = list(Event.objects.filter(stream_id=stream_id).order_by("version").values_list("event_id", "payload"))
    return stream, [(e, bytes(p)) for e, p in events]


def test_append_and_load_round_trip_with_all_metadata(any_store):
    stream_id = unique_stream()
    first = NoteRecorded(text="Alice says hi", n=1)
    with event_context(correlation_id="req-42", causation_id="cmd-7", actor="user:3"):
        result = any_store.append_events_sync(stream_id, [first, NoteRecorded(text="bye", n=2)], expected_version=0)
    assert (result.first_version, result.last_version, result.idempotent) == (1, 2, False)

    loaded = any_store.load_events_sync(stream_id)
    assert [e.version for e in loaded] == [1, 2]
    meta = loaded[0].metadata
    assert meta.event_id == first.event_id
    assert meta.stream_id == stream_id
    assert meta.event_type == "test.NoteRecorded"
    assert meta.schema_version == 1
    assert meta.timestamp == first.occurred_at
    assert (meta.correlation_id, meta.causation_id, meta.actor) == ("req-42", "cmd-7", "user:3")
    assert meta.global_position == result.global_positions[0] < loaded[1].metadata.global_position
    assert deserialize_event(loaded[0]) == first
    assert any_store.get_stream_version_sync(stream_id) == 2
    assert verify_chain(loaded) is None


def test_explicit_metadata_wins_over_the_context(any_store):
    stream_id = unique_stream()
    with event_context(correlation_id="from-context"):
        any_store.append_events_sync(stream_id, notes(1), correlation_id="explicit", causation_id="evt-1")
    meta = any_store.load_events_sync(stream_id)[0].metadata
    assert (meta.correlation_id, meta.causation_id) == ("explicit", "evt-1")


def test_load_from_a_version_and_up_to_a_version(any_store):
    stream_id = unique_stream()
    any_store.append_events_sync(stream_id, notes(10), expected_version=ExpectedVersion.NO_STREAM)
    assert [e.version for e in any_store.load_events_sync(stream_id, from_version=5)] == [5, 6, 7, 8, 9, 10]
    assert [e.version for e in any_store.load_events_sync(stream_id, 3, 4)] == [3, 4]
    assert any_store.load_events_sync(unique_stream()) == []
    assert any_store.get_stream_version_sync(unique_stream()) == 0


def test_stale_expected_version_is_refused_naming_stream_expected_and_actual(any_store):
    stream_id = unique_stream()
    any_store.append_events_sync(stream_id, notes(3), expected_version=0)
    before = snapshot_of(stream_id)
    with pytest.raises(ConcurrencyError) as caught:
        any_store.append_events_sync(stream_id, notes(1), expected_version=2)
    error = caught.value
    assert (error.stream_id, error.expected_version, error.actual_version) == (stream_id, "2", 3)
    assert f"stream {stream_id} expected version 2, actual 3" in str(error)
    assert snapshot_of(stream_id) == before


@pytest.mark.parametrize("expected, existing, allowed", [
    (ExpectedVersion.NO_STREAM, 0, True), (ExpectedVersion.NO_STREAM, 2, False),
    (ExpectedVersion.STREAM_EXISTS, 0, False), (ExpectedVersion.STREAM_EXISTS, 2, True),
    (ExpectedVersion.ANY, 0, True), (ExpectedVersion.ANY, 2, True),
    (0, 0, True), (2, 2, True), (1, 2, False), (3, 2, False),
])
def test_named_expectations_follow_kurrentdb_semantics(any_store, expected, existing, allowed):
    stream_id = unique_stream()
    if existing:
        any_store.append_events_sync(stream_id, notes(existing))
    if allowed:
        result = any_store.append_events_sync(stream_id, notes(1), expected_version=expected)
        assert result.last_version == existing + 1
    else:
        with pytest.raises(ConcurrencyError):
            any_store.append_events_sync(stream_id, notes(1), expected_version=expected)
        assert any_store.get_stream_version_sync(stream_id) == existing
        assert not Stream.objects.filter(pk=stream_id, version=0).exists(), "a refused append left an empty stream"


def test_re_appending_the_same_events_at_the_same_place_is_an_idempotent_success(any_store):
    stream_id = unique_stream()
    batch = notes(3)
    first = any_store.append_events_sync(stream_id, batch, expected_version=0)
    again = any_store.append_events_sync(stream_id, batch, expected_version=0)
    assert again.idempotent and (again.first_version, again.last_version) == (1, 3)
    assert again.global_positions == first.global_positions
    assert any_store.append_events_sync(stream_id, batch).idempotent  # ExpectedVersion.ANY
    assert any_store.get_stream_version_sync(stream_id) == 3
    assert Event.objects.filter(stream_id=stream_id).count() == 3


def test_the_same_event_ids_elsewhere_are_refused(any_store):
    stream_id, other = unique_stream(), unique_stream()
    batch = notes(2)
    any_store.append_events_sync(stream_id, batch, expected_version=0)
    any_store.append_events_sync(stream_id, notes(1))
    with pytest.raises(DuplicateEventError, match=f"already stored as stream {stream_id} version 1"):
        any_store.append_events_sync(other, batch)
    with pytest.raises(DuplicateEventError):
        any_store.append_events_sync(stream_id, batch, expected_version=1)  # not where they are
    with pytest.raises(DuplicateEventError):
        any_store.append_events_sync(stream_id, [batch[1], batch[0]])  # same ids, another order
    same = NoteRecorded(text="twice")
    with pytest.raises(DuplicateEventError, match="appears twice"):
        any_store.append_events_sync(other, [same, same])
    assert any_store.get_stream_version_sync(stream_id) == 3
    assert any_store.get_stream_version_sync(other) == 0


def bad_appends():
    naive = NoteRecorded(text="x")
    naive.occurred_at = datetime(2026, 1, 1)
    not_a_uuid = NoteRecorded(text="x")
    not_a_uuid.event_id = "event-1"
    return [
        ("child.Bad Id", notes(1), 0, InvalidStreamIdError, "not of the form"),
        ("unknown.s-1", notes(1), 0, UnknownStreamTypeError, "add it to EVENTSTORE_STREAM_TYPES"),
        (None, [], 0, EventStoreError, "the list of events is empty"),
        (None, NoteRecorded(text="x"), 0, EventStoreError, "must be a list"),
        (None, [{"text": "x"}], 0, UnknownEventTypeError, "not a DomainEvent"),
        (None, [Unserializable(value=object())], 0, EventSerializationError, "cannot be stored as JSON"),
        (None, [NoteRecorded(text="x" * 1_000_000)], 0, EventTooLargeError, "over the limit"),
        (None, [naive], 0, EventStoreError, "timezone-aware"),
        (None, [not_a_uuid], 0, EventStoreError, "not a UUID"),
        (None, notes(1), -3, EventStoreError, "expected_version must be"),
        (None, notes(1), "1", EventStoreError, "expected_version must be"),
        (None, notes(1), True, EventStoreError, "expected_version must be"),
    ]


@pytest.mark.parametrize("stream_id, events, expected, error, message", bad_appends())
def test_bad_input_is_refused_before_anything_is_written(any_store, stream_id, events, expected, error, message):
    existing = unique_stream()
    any_store.append_events_sync(existing, notes(2))
    before = snapshot_of(existing)
    with pytest.raises(error, match=message):
        any_store.append_events_sync(stream_id or existing, events, expected_version=expected)
    assert snapshot_of(existing) == before


def test_a_batch_with_one_bad_event_stores_none_of_them(any_store):
    stream_id = unique_stream()
    with pytest.raises(EventSerializationError):
        any_store.append_events_sync(stream_id, [*notes(3), Unserializable(value={1, 2})])
    assert any_store.get_stream_version_sync(stream_id) == 0
    assert not Event.objects.filter(stream_id=stream_id).exists()


def test_bad_metadata_and_read_arguments_are_clear_errors(any_store):
    with pytest.raises(EventStoreError, match="correlation_id must be"):
        any_store.append_events_sync(unique_stream(), notes(1), correlation_id="x" * 101)
    with pytest.raises(EventStoreError, match="from_version must be"):
        any_store.load_events_sync(unique_stream(), from_version=-1)
    with pytest.raises(EventStoreError, match="source must be"):
        any_store.load_events_sync(unique_stream(), source="disk")
    with pytest.raises(InvalidStreamIdError):
        any_store.get_stream_version_sync("no dots here")


def test_chain_hashes_link_each_event_to_its_predecessor_across_appends(any_store):
    stream_id = unique_stream()
    for _ in range(3):
        any_store.append_events_sync(stream_id, notes(2))
    events = any_store.load_events_sync(stream_id)
    assert verify_chain(events) is None
    assert bytes(Stream.objects.get(pk=stream_id).last_hash) == events[-1].chain_hash
    assert len({e.chain_hash for e in events}) == 6


def test_the_guides_async_calls_work(any_store):
    stream_id = unique_stream()

    async def scenario():
        await any_store.append_events(stream_id=stream_id, events=notes(2), expected_version=0)
        loaded = await any_store.load_events(stream_id, from_version=2)
        return loaded, await any_store.get_stream_version(stream_id)

    loaded, version = asyncio.run(scenario())
    assert [e.version for e in loaded] == [2] and version == 2


def test_global_positions_grow_with_versions_inside_a_stream(any_store):
    stream_id = unique_stream()
    positions = []
    for _ in range(5):
        positions += any_store.append_events_sync(stream_id, notes(2)).global_positions
    assert positions == sorted(positions) and len(set(positions)) == 10


def test_the_whole_log_is_read_page_by_page_in_position_order_with_each_events_metadata(any_store):
    from tests.integration.test_privacy import SharedNote

    first, second = unique_stream(), unique_stream()
    start = Event.objects.order_by("-position").values_list("position", flat=True).first() or 0
    written = [any_store.append_events_sync(first, notes(3)), any_store.append_events_sync(second, notes(2)),
               any_store.append_events_sync(first, [SharedNote(writer="log-reader", text="personal")])]
    expected = [p for result in written for p in result.global_positions]
    assert any_store.flush(30)  # Kafka positions recorded: the pages and the loads below see the same rows

    read, after = [], start
    while page := any_store.read_all_sync(after_position=after, limit=2):
        assert len(page) <= 2
        read += page
        after = page[-1].metadata.global_position
    assert [e.metadata.global_position for e in read] == expected  # nothing else appends meanwhile
    assert [(e.metadata.stream_id, e.version) for e in read] == [
        (first, 1), (first, 2), (first, 3), (second, 1), (second, 2), (first, 4)]
    assert read[:5] == any_store.load_events_sync(first)[:3] + any_store.load_events_sync(second)
    assert deserialize_event(read[5]).text == "personal"  # its subject's key row came with the page
    assert asyncio.run(any_store.read_all(after_position=expected[-1])) == []
    for bad, message in (({"after_position": -1}, "after_position must be"), ({"limit": 0}, "limit must be"),
                         ({"limit": 100_001}, "page through the log"), ({"after_position": "5"}, "after_position")):
        with pytest.raises(EventStoreError, match=message):
            any_store.read_all_sync(**bad)


def test_a_postgres_append_is_one_statement(store, monkeypatch):
    import psycopg

    stream_id = unique_stream()
    store.append_events_sync(stream_id, notes(1))  # warm up: connection, prepared statement
    statements = []
    execute = psycopg.Cursor.execute
    me = threading.get_ident()  # the publisher thread records Kafka positions meanwhile: not the append's

    def counting(self, query, *args, **kw):
        if threading.get_ident() == me:
            statements.append(query)
        return execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as django_queries:
        store.append_events_sync(stream_id, notes(50), expected_version=1)
    assert len(statements) + len(django_queries) == 1, (statements, django_queries.captured_queries)
    assert store.get_stream_version_sync(stream_id) == 51
