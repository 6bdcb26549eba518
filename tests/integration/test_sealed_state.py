"""State kept outside the events cannot be trusted without proof, and reading it writes nothing.

Proven here:
- a Redis cache entry changed behind the store's back (a relaxed content filter, a raised daily
  time limit, another entry's seal, another child's whole entry, garbage) is a miss: the load
  returns the true state from the store, logs a warning, and the next load works from a fresh
  entry;
- a snapshot row changed in the database with its guard switched off, or copied from another
  stream, is not used: the aggregate is rebuilt from its events, with a warning, and
  `verify_integrity` (function and management command) names the stream and version;
- snapshot rows are guarded like events: the database refuses UPDATE (but for the Kafka
  position), DELETE and TRUNCATE, the ORM refuses too, while pruning and erasure still delete;
- a load (empty cache, cache hit, from a snapshot) performs no INSERT, UPDATE or DELETE, seen
  both by Django's query capture and at the psycopg cursor the PostgreSQL recorder uses.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from eventsourcing_app.application import Actor, erase_child_data
from eventsourcing_app.domain import Child, Conversation, ConversationId, Parent, ParentId
from eventsourcing_app.eventstore import (
    EventSourcingRepositoryImpl,
    ImmutableEventError,
    SnapshotStore,
    get_aggregate_cache,
    get_event_sourcing_service,
    get_snapshot_store,
)
from eventsourcing_app.models import Snapshot
from eventsourcing_app.operations.verify import verify_integrity
from tests.integration.helpers import new_child

STRICT = b'"content_filter_level":"strict"'
RELAXED = b'"content_filter_level":"relaxed"'
STORE_LOGGERS = ("eventsourcing_app.eventstore.repository", "eventsourcing_app.eventstore.cache",
                 "eventsourcing_app.eventstore.snapshots")


@pytest.fixture
def service(store):
    return get_event_sourcing_service()


@pytest.fixture
def cache():
    cache = get_aggregate_cache()
    assert cache is not None, "the aggregate cache is switched off (EVENTSTORE_AGGREGATE_CACHE_SECONDS=0)"
    return cache


def strict_child(service, minutes: int = 30) -> Child:
    """A saved child with the strict content filter and a 30-minute daily limit (version 2)."""
    child = new_child()
    child.change_safety_settings("strict", minutes)
    service.save_aggregate_sync(child)
    assert child.version == 2
    return child


def warnings_about(caplog, stream_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name in STORE_LOGGERS and stream_id in r.getMessage()]


# --- 1. the Redis cache --------------------------------------------------------------------


def _relax_filter(entry: dict, other: dict) -> bytes:
    entry["state"]["content_filter_level"] = "relaxed"
    return json.dumps(entry).encode()


def _raise_time_limit(entry: dict, other: dict) -> bytes:
    entry["state"]["daily_time_limit_minutes"] = 24 * 60
    return json.dumps(entry).encode()


def _relax_with_another_entrys_seal(entry: dict, other: dict) -> bytes:
    entry["state"]["content_filter_level"] = "relaxed"
    entry["seal"] = other["seal"]
    return json.dumps(entry).encode()


def _another_childs_whole_entry(entry: dict, other: dict) -> bytes:
    return json.dumps(other).encode()  # a genuine, sealed "relaxed" entry, but of another stream


def _garbage(entry: dict, other: dict) -> bytes:
    return b"\x00not json {\"content_filter_level\": \"relaxed\""


@pytest.mark.parametrize("tamper", [_relax_filter, _raise_time_limit, _relax_with_another_entrys_seal,
                                    _another_childs_whole_entry, _garbage],
                         ids=["relaxed-filter", "raised-time-limit", "other-entrys-seal", "other-childs-entry",
                              "garbage"])
def test_a_tampered_cache_entry_is_a_miss_and_the_true_state_is_loaded(service, cache, caplog, tamper):
    child = strict_child(service)
    # another child, really relaxed, at the same version: its entry is genuine and sealed
    other = new_child()
    other.change_safety_settings("relaxed", 24 * 60)
    service.save_aggregate_sync(other)
    repository = EventSourcingRepositoryImpl(Child)
    repository.load_sync(other.id)
    repository.load_sync(child.id)
    assert repository.load_sync(child.id).content_filter_level == "strict"
    assert repository.last_load.started_from == "cache"  # the entry is used while it is genuine

    client = cache._client
    entry = json.loads(client.get(cache.key(child.stream_id)))
    other_entry = json.loads(client.get(cache.key(other.stream_id)))
    assert entry["state"]["content_filter_level"] == "strict" and other_entry["state"]["content_filter_level"] == "relaxed"
    client.set(cache.key(child.stream_id), tamper(entry, other_entry), ex=cache.ttl_seconds)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eventsourcing_app.eventstore"):
        loaded = repository.load_sync(child.id)
    assert (loaded.content_filter_level, loaded.daily_time_limit_minutes) == ("strict", 30)
    assert (loaded.version, loaded.name, loaded.parent_id) == (2, "Alice", child.parent_id)
    assert repository.last_load.started_from != "cache"
    assert warnings_about(caplog, child.stream_id), [r.getMessage() for r in caplog.records]

    # the entry was replaced by a genuine one: the next load uses it
    again = repository.load_sync(child.id)
    assert repository.last_load.started_from == "cache" and repository.last_load.events_replayed == 0
    assert (again.content_filter_level, again.daily_time_limit_minutes, again.version) == ("strict", 30, 2)
    # and the other child's entry was not affected
    assert repository.load_sync(other.id).content_filter_level == "relaxed"


# --- 2. snapshot rows ----------------------------------------------------------------------


def tamper_snapshot(stream_id: str, version: int, old: bytes, new: bytes) -> None:
    """Changes a snapshot's stored bytes with the guard switched off, as only a database owner could."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE eventstore_snapshot DISABLE TRIGGER eventstore_snapshot_no_update")
        cursor.execute("SELECT state FROM eventstore_snapshot WHERE stream_id = %s AND version = %s",
                       [stream_id, version])
        state = bytes(cursor.fetchone()[0])
        assert old in state
        cursor.execute("UPDATE eventstore_snapshot SET state = %s WHERE stream_id = %s AND version = %s",
                       [state.replace(old, new), stream_id, version])
        cursor.execute("ALTER TABLE eventstore_snapshot ENABLE TRIGGER eventstore_snapshot_no_update")


def drop_snapshots(service, stream_id: str) -> None:
    """Removes the test's bad snapshots through the guarded delete, so a whole-store check stays clean."""
    with transaction.atomic():
        service.snapshot_store.delete_snapshots([stream_id])


def test_a_tampered_snapshot_is_not_used_and_verification_names_it(service, store, caplog):
    child = strict_child(service)
    service.create_snapshot_sync(Child, child.id)
    repository = EventSourcingRepositoryImpl(Child, cache=False)
    repository.load_sync(child.id)
    assert repository.last_load.started_from == "snapshot"
    assert verify_integrity(child.stream_id).ok
    assert store.flush(30)

    tamper_snapshot(child.stream_id, 2, STRICT, RELAXED)
    try:
        assert RELAXED in bytes(Snapshot.objects.get(stream_id=child.stream_id, version=2).state)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="eventsourcing_app.eventstore"):
            loaded = repository.load_sync(child.id)
        assert repository.last_load.started_from == "empty" and repository.last_load.events_replayed == 2
        assert (loaded.content_filter_level, loaded.daily_time_limit_minutes, loaded.version) == ("strict", 30, 2)
        assert warnings_about(caplog, child.stream_id), [r.getMessage() for r in caplog.records]

        report = verify_integrity(child.stream_id)
        assert not report.ok
        assert [(p.stream_id, p.version) for p in report.snapshot_problems] == [(child.stream_id, 2)]
        assert "snapshot" in report.snapshot_problems[0].reason
        assert report.chain_breaks == []  # the events themselves are intact
        with pytest.raises(CommandError, match=rf"stream {child.stream_id} version 2: snapshot"):
            call_command("verify_integrity", child.stream_id)
    finally:
        drop_snapshots(service, child.stream_id)
    assert verify_integrity(child.stream_id).ok


def test_a_snapshot_copied_from_another_stream_does_not_verify(service, caplog):
    source = strict_child(service)  # genuine strict snapshot...
    service.create_snapshot_sync(Child, source.id)
    target = new_child(name="Bob")  # ...copied onto a child with a relaxed filter, at the same version
    target.change_safety_settings("relaxed", 240)
    service.save_aggregate_sync(target)
    row = Snapshot.objects.get(stream_id=source.stream_id, version=2)
    service.snapshot_store.recorder.insert_snapshot(target.stream_id, 2, "child", row.schema_version,
                                                    bytes(row.state), bytes(row.seal), row.data_subject)
    try:
        assert Snapshot.objects.filter(stream_id=target.stream_id, version=2).exists()
        repository = EventSourcingRepositoryImpl(Child, cache=False)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="eventsourcing_app.eventstore"):
            loaded = repository.load_sync(target.id)
        assert repository.last_load.started_from == "empty"
        assert (loaded.name, loaded.content_filter_level, loaded.daily_time_limit_minutes) == ("Bob", "relaxed", 240)
        assert warnings_about(caplog, target.stream_id), [r.getMessage() for r in caplog.records]
        report = verify_integrity(target.stream_id)
        assert not report.ok
        assert [(p.stream_id, p.version) for p in report.snapshot_problems] == [(target.stream_id, 2)]
        assert verify_integrity(source.stream_id).ok  # the original is still good
    finally:
        drop_snapshots(service, target.stream_id)


# --- 3. snapshot rows are guarded like events ------------------------------------------------


class _RolledBack(Exception):
    pass


def run_rolled_back(sql: str, params=()) -> DatabaseError | None:
    """Runs one statement in a transaction that is always rolled back (so a guard that fails
    cannot damage the shared database); returns the database's refusal, or None."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            raise _RolledBack
    except _RolledBack:
        return None
    except DatabaseError as exc:
        return exc


@pytest.fixture
def snapshotted_child(service):
    child = strict_child(service)
    service.create_snapshot_sync(Child, child.id)
    return child


@pytest.mark.parametrize("assignment", [
    "state = '\\x7b7d'::bytea",
    "state = convert_to(replace(convert_from(state, 'UTF8'), '\"strict\"', '\"relaxed\"'), 'UTF8')",
    "seal = NULL",
    "version = version + 1",
    "data_subject = 'child:someone-else'",
    "created_at = created_at + interval '1 second'",
    "schema_version = schema_version + 1",
])
def test_the_database_refuses_to_update_a_snapshot(snapshotted_child, assignment):
    stream_id = snapshotted_child.stream_id
    before = list(Snapshot.objects.filter(stream_id=stream_id).values_list("version", "state", "seal"))
    error = run_rolled_back(f"UPDATE eventstore_snapshot SET {assignment} WHERE stream_id = %s", [stream_id])
    assert error is not None, "the database accepted the UPDATE"
    assert "snapshots are immutable" in str(error)
    assert list(Snapshot.objects.filter(stream_id=stream_id).values_list("version", "state", "seal")) == before


def test_the_database_refuses_to_delete_or_truncate_snapshots(snapshotted_child):
    stream_id = snapshotted_child.stream_id
    error = run_rolled_back("DELETE FROM eventstore_snapshot WHERE stream_id = %s", [stream_id])
    assert error is not None and "deleted only by pruning and erasure" in str(error), error
    error = run_rolled_back("TRUNCATE eventstore_snapshot")
    assert error is not None and "deleted only by pruning and erasure" in str(error), error
    assert Snapshot.objects.filter(stream_id=stream_id).count() == 1


def test_the_orm_refuses_to_change_or_delete_a_snapshot(snapshotted_child):
    stream_id = snapshotted_child.stream_id
    rows = Snapshot.objects.filter(stream_id=stream_id)
    with pytest.raises(ImmutableEventError, match=r"snapshots are immutable: refusing to change \['state'\]"):
        rows.update(state=b"{}")
    with pytest.raises(ImmutableEventError, match="deleted only by pruning and erasure"):
        rows.delete()
    snapshot = rows.get()
    snapshot.state = b"{}"
    with pytest.raises(ImmutableEventError):
        snapshot.save()
    with pytest.raises(ImmutableEventError):
        snapshot.delete()
    with pytest.raises(ImmutableEventError):
        Snapshot(stream_id=stream_id, version=1, aggregate_type="child", schema_version=2, state=b"{}").save()
    assert list(Snapshot.objects.filter(stream_id=stream_id).values_list("version", flat=True)) == [2]
    assert RELAXED not in bytes(rows.get().state)


def test_recording_a_snapshots_kafka_position_is_allowed(snapshotted_child):
    stream_id = snapshotted_child.stream_id
    row = Snapshot.objects.get(stream_id=stream_id)
    assert Snapshot.objects.filter(pk=row.pk).update(kafka_offset=10**9, kafka_partition=0, kafka_topic="t") == 1
    assert Snapshot.objects.filter(pk=row.pk).update(kafka_offset=row.kafka_offset, kafka_partition=row.kafka_partition,
                                                     kafka_topic=row.kafka_topic) == 1
    with connection.cursor() as cursor:  # the trigger agrees
        cursor.execute("UPDATE eventstore_snapshot SET kafka_offset = kafka_offset WHERE stream_id = %s", [stream_id])
        assert cursor.rowcount == 1
    assert Snapshot.objects.get(pk=row.pk).kafka_offset == row.kafka_offset


def test_pruning_and_erasure_still_delete_snapshots(service):
    child = new_child()
    service.save_aggregate_sync(child)
    for age in (7, 8, 9):
        child.update_profile({"age": age})
        service.save_aggregate_sync(child)
        service.create_snapshot_sync(Child, child.id)  # each save of a snapshot prunes to the latest `keep`
    keep = get_snapshot_store().keep
    versions = list(Snapshot.objects.filter(stream_id=child.stream_id).order_by("-version")
                    .values_list("version", flat=True))
    assert versions == [4, 3, 2][:keep]
    assert SnapshotStore(frequencies={}, keep=1).prune(child.stream_id) == len(versions) - 1
    assert list(Snapshot.objects.filter(stream_id=child.stream_id).values_list("version", flat=True)) == [4]

    report = erase_child_data(actor=Actor.system("test"), child_id=child.id, reason="parent_request")
    assert report.snapshots_dropped >= 1
    assert not Snapshot.objects.filter(stream_id=child.stream_id).exists()


# --- 4. a load never writes ----------------------------------------------------------------


WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "MERGE", "COPY")


class StatementLog:
    """Every statement this thread sends, through Django's cursors and psycopg's own."""

    def __init__(self, monkeypatch):
        self.raw: list[str] = []
        thread = threading.get_ident()
        execute = psycopg.Cursor.execute

        def spy(cursor, query, *args, **kwargs):
            if threading.get_ident() == thread:  # not the publisher's thread
                self.raw.append(self._text(cursor, query))
            return execute(cursor, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", spy)
        self.django = CaptureQueriesContext(connection)

    @staticmethod
    def _text(cursor, query) -> str:
        if isinstance(query, bytes):
            return query.decode(errors="replace")
        if isinstance(query, str):
            return query
        try:
            return query.as_string(cursor)
        except Exception:  # noqa: BLE001 - only for the log
            return str(query)

    def __enter__(self):
        self.django.__enter__()
        return self

    def __exit__(self, *exc):
        self.django.__exit__(*exc)

    @property
    def statements(self) -> list[str]:
        return self.raw + [q["sql"] for q in self.django.captured_queries]

    def key_row_touches(self) -> list[str]:
        """Statements on the data key rows other than plain reads (a write, a row lock)."""
        return [s for s in self.statements if "privacy_subject_key" in s
                and (not s.lstrip().upper().startswith("SELECT") or " FOR " in s.upper())]

    def writes(self) -> list[str]:
        return [s for s in self.statements
                if s.lstrip(" (\n\t").upper().startswith(WRITES) or "eventstore_append" in s]


def a_family(service):
    """A child with a parent and a conversation, all saved."""
    child = new_child()
    child.update_profile({"interests": ["dinosaurs"], "language": "en"})
    service.save_aggregate_sync(child)
    parent = Parent(ParentId(child.parent_id))
    parent.register(email="sam@example.org", name="Sam")
    parent.grant_consent(child.id, "signed_form")
    service.save_aggregate_sync(parent)
    talk = Conversation(ConversationId(f"conv-{uuid.uuid4().hex[:10]}"))
    talk.start(child.id, child.device_id)
    talk.record_message("child", "I like the T-rex")
    service.save_aggregate_sync(talk)
    return child, parent, talk


def test_loading_with_the_cache_writes_nothing_to_the_database(service, store, cache, monkeypatch):
    aggregates = a_family(service)
    assert store.flush(30)  # the publisher is idle: what follows is the loads' own traffic
    cache.delete([a.stream_id for a in aggregates])
    repositories = {type(a): EventSourcingRepositoryImpl(type(a)) for a in aggregates}
    with StatementLog(monkeypatch) as log:
        for aggregate in aggregates:
            repository = repositories[type(aggregate)]
            first = repository.load_sync(aggregate.id)  # cache empty: replays, then fills the cache
            assert repository.last_load.started_from == "empty"
            assert cache.get(aggregate.stream_id) is not None
            second = repository.load_sync(aggregate.id)
            assert repository.last_load.started_from == "cache"
            assert first.to_snapshot() == second.to_snapshot() == aggregate.to_snapshot()
    # both captures saw the loads: the recorder's own psycopg cursor and Django's
    assert any("FROM eventstore_event" in s for s in log.raw), log.raw
    assert log.django.captured_queries or log.raw
    assert log.writes() == [], log.writes()
    assert log.key_row_touches() == [], log.key_row_touches()


def test_loading_from_a_snapshot_writes_nothing_to_the_database(service, store, monkeypatch):
    aggregates = a_family(service)
    for aggregate in aggregates:
        service.create_snapshot_sync(type(aggregate), aggregate.id)
    assert store.flush(30)
    with StatementLog(monkeypatch) as log:
        for aggregate in aggregates:
            repository = EventSourcingRepositoryImpl(type(aggregate), cache=False)
            loaded = repository.load_sync(aggregate.id)
            assert repository.last_load.started_from == "snapshot"
            assert loaded.to_snapshot() == aggregate.to_snapshot()
            # an older version too: replayed from the start
            assert repository.load_sync(aggregate.id, version=1).version == 1
    assert any("FROM eventstore_snapshot" in s for s in log.raw), log.raw
    assert log.writes() == [], log.writes()
    assert log.key_row_touches() == [], log.key_row_touches()
