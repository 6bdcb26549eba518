"""Stored events cannot be changed or deleted, and a change made behind the guard's back is found."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from eventsourcing_app.eventstore import ImmutableEventError
from eventsourcing_app.models import Event
from eventsourcing_app.operations.verify import verify_integrity
from tests.conftest import unique_stream
from tests.events import notes


@pytest.fixture
def stored_stream(store):
    stream_id = unique_stream()
    store.append_events_sync(stream_id, notes(5))
    assert store.flush(30)
    return stream_id


@pytest.mark.parametrize("sql", [
    "UPDATE eventstore_event SET payload = '\\x7b7d'::bytea WHERE stream_id = %s",
    "UPDATE eventstore_event SET event_type = 'Other' WHERE stream_id = %s",
    "UPDATE eventstore_event SET occurred_at = occurred_at + interval '1 second' WHERE stream_id = %s",
    "UPDATE eventstore_event SET correlation_id = 'forged' WHERE stream_id = %s",
    "UPDATE eventstore_event SET version = version + 100 WHERE stream_id = %s",
    "DELETE FROM eventstore_event WHERE stream_id = %s",
])
def test_the_database_refuses_to_change_or_delete_events(stored_stream, store, sql):
    before = [(e.payload, e.metadata) for e in store.load_events_sync(stored_stream)]
    with pytest.raises(DatabaseError, match="stored events are immutable"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [stored_stream])
    assert [(e.payload, e.metadata) for e in store.load_events_sync(stored_stream)] == before


def test_the_database_refuses_truncate(stored_stream):
    with pytest.raises(DatabaseError, match="TRUNCATE of eventstore_event refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("TRUNCATE eventstore_event CASCADE")
    assert Event.objects.filter(stream_id=stored_stream).count() == 5


def test_the_orm_refuses_too(stored_stream):
    event = Event.objects.filter(stream_id=stored_stream).first()
    event.payload = b"{}"
    with pytest.raises(ImmutableEventError, match="written only by the event store"):
        event.save()
    with pytest.raises(ImmutableEventError):
        event.delete()
    with pytest.raises(ImmutableEventError, match=r"refusing to change \['payload'\]"):
        Event.objects.filter(stream_id=stored_stream).update(payload=b"{}")
    with pytest.raises(ImmutableEventError):
        Event.objects.filter(stream_id=stored_stream).delete()
    with pytest.raises(ImmutableEventError):
        Event(stream_id=stored_stream, version=99, payload=b"{}").save()


def test_recording_a_kafka_position_is_the_one_change_allowed(stored_stream):
    event = Event.objects.filter(stream_id=stored_stream).order_by("version").first()
    assert Event.objects.filter(pk=event.pk).update(kafka_offset=event.kafka_offset) == 1


def tamper(stream_id: str, version: int, old: bytes, new: bytes) -> None:
    """Changes stored bytes with the guard switched off, as only a database owner could."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE eventstore_event DISABLE TRIGGER eventstore_event_no_update")
        cursor.execute("SELECT payload FROM eventstore_event WHERE stream_id = %s AND version = %s", [stream_id, version])
        payload = bytes(cursor.fetchone()[0])
        assert old in payload
        cursor.execute("UPDATE eventstore_event SET payload = %s WHERE stream_id = %s AND version = %s",
                       [payload.replace(old, new), stream_id, version])
        cursor.execute("ALTER TABLE eventstore_event ENABLE TRIGGER eventstore_event_no_update")


def test_verify_integrity_names_the_stream_and_version_of_one_changed_byte(stored_stream, store, capsys):
    call_command("verify_integrity", stored_stream)
    assert "integrity verified" in capsys.readouterr().out

    tamper(stored_stream, 3, b"note 3", b"note 8")  # one byte
    try:
        assert store.load_events_sync(stored_stream)[2].payload == b'{"n":3,"text":"note 8"}'
        with pytest.raises(CommandError, match=f"first difference: stream {stored_stream} version 3"):
            call_command("verify_integrity", stored_stream)
        out = capsys.readouterr().out
        assert "BROKEN in 1 stream(s)" in out
        assert f"stream {stored_stream} version 3: Kafka copy at" in out and "differs: payload bytes" in out
        report = verify_integrity(stored_stream)
        assert [(b.stream_id, b.version) for b in report.chain_breaks] == [(stored_stream, 3)]
    finally:
        tamper(stored_stream, 3, b"note 8", b"note 3")
    call_command("verify_integrity", stored_stream)


def test_verify_integrity_reports_an_event_missing_from_kafka(store, capsys):
    stream_id = unique_stream()
    store.append_events_sync(stream_id, notes(2))
    assert store.flush(30)
    # Point the mirror at an offset where nothing of this event is.
    Event.objects.filter(stream_id=stream_id, version=2).update(kafka_offset=10**9)
    with pytest.raises(CommandError, match=f"stream {stream_id} version 2"):
        call_command("verify_integrity", stream_id)
    assert "missing from Kafka" in capsys.readouterr().out


def test_verify_integrity_rejects_a_malformed_stream_id():
    with pytest.raises(CommandError, match="not of the form"):
        call_command("verify_integrity", "not a stream")
