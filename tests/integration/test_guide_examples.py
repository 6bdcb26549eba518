"""One test per usage example of the event-sourcing guide the project's API follows (its
component names and calls: see README "Python API"), written with the guide's own calls (its
coroutines run with asyncio.run).

The test database is shared by the whole session and never flushed, so where the guide uses
the literal "child-123" these tests use a fresh child id; the call shapes are the guide's.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from eventsourcing_app.domain import (
    Child,
    ChildId,
    ChildProfileUpdated,
    ChildRegistered,
    ChildRegisteredV1,
    ChildRegisteredV2,
    DeviceId,
    ParentId,
)
from eventsourcing_app.eventstore import (
    ConcurrencyError,
    EventSourcingRepositoryImpl,
    check_event_store_health,
    deserialize_event,
    get_event_sourcing_service,
    get_event_store,
    get_snapshot_store,
)
from eventsourcing_app.models import Event, Snapshot, Stream
from eventsourcing_app.operations.migration import migrate_stream
from eventsourcing_app.privacy import encrypt_sensitive_fields, get_encryption_key
from eventsourcing_app.privacy.cipher import decrypt_fields
from tests.events import NoteRecorded


def new_child_id() -> str:
    return f"child-{uuid.uuid4().hex[:8]}"


def registered_child(child_id: str | None = None, name: str = "Alice", age: int = 6) -> Child:
    """A child as in the guide's Basic Event Sourcing Flow, registered (one pending event)."""
    child = Child(id=ChildId(child_id or new_child_id()), parent_id=ParentId("parent-456"),
                  device_id=DeviceId("device-789"), name=name, age=age, udid="unique-device-123")
    child.register_child()
    return child


def with_age_changes(child: Child, count: int) -> Child:
    """Adds `count` ChildProfileUpdated events (each a birthday; after 13 the age starts again at 3)."""
    for _ in range(count):
        child.update_profile({"age": child.age + 1 if child.age < 13 else 3})
    return child


def is_envelope(value) -> bool:
    return isinstance(value, dict) and set(value) == {"$enc", "n", "c"} and value["$enc"] == 1


# Guide: "Architecture Components / 1. Event Store" usage example.
def test_event_store_appends_a_child_registered_event_at_expected_version_0(store):
    child_id = new_child_id()
    child_registered_event = ChildRegistered(child_id=ChildId(child_id), parent_id=ParentId("parent-456"),
                                             name="Alice", age=6)

    async def usage():
        event_store = get_event_store()
        result = await event_store.append_events(
            stream_id=f"child.{child_id}",
            events=[child_registered_event],
            expected_version=0
        )
        loaded = await event_store.load_events(f"child.{child_id}")
        version = await event_store.get_stream_version(f"child.{child_id}")
        try:  # a second writer that also believes the stream is new loses
            await event_store.append_events(
                stream_id=f"child.{child_id}",
                events=[ChildRegistered(child_id=ChildId(child_id), parent_id=ParentId("parent-456"),
                                        name="Bob", age=5)],
                expected_version=0
            )
        except ConcurrencyError as error:
            conflict = error
        else:
            conflict = None
        return result, loaded, version, conflict

    result, loaded, version, conflict = asyncio.run(usage())
    assert (result.first_version, result.last_version, result.idempotent) == (1, 1, False)
    assert version == 1 and [e.version for e in loaded] == [1]
    meta = loaded[0].metadata
    assert (meta.event_id, meta.stream_id, meta.event_type) == (
        child_registered_event.event_id, f"child.{child_id}", "ChildRegistered")
    assert deserialize_event(loaded[0]) == child_registered_event
    assert conflict is not None and (conflict.expected_version, conflict.actual_version) == ("0", 1)
    assert Event.objects.filter(stream_id=f"child.{child_id}").count() == 1


# Guide: "Architecture Components / 2. Snapshot Store" usage example.
def test_snapshot_store_saves_a_child_at_version_15_and_loads_start_from_it(store):
    scheduled = []  # automatic snapshots are recorded, not made, so the one below is the guide's
    repository = EventSourcingRepositoryImpl(Child, snapshot_scheduler=scheduled.append)
    child = with_age_changes(registered_child(), 14)
    asyncio.run(repository.save(child))
    assert child.version == 15 and not child.has_uncommitted_events()
    assert scheduled == [child.stream_id]  # the save crossed the frequency of 10

    async def usage():
        snapshot_store = get_snapshot_store()
        record = await snapshot_store.save_snapshot(
            stream_id=child.stream_id,
            aggregate=child,
            version=15
        )
        return record, await snapshot_store.get_latest_snapshot(child.stream_id)

    record, latest = asyncio.run(usage())
    assert (record.stream_id, record.version, record.aggregate_type) == (child.stream_id, 15, "child")
    assert latest.version == 15 and latest.state == child.to_snapshot()
    assert latest.state["name"] == "Alice" and latest.state["age"] == child.age == 9  # 6 -> 13, then 3 -> 9
    stored_state = bytes(Snapshot.objects.get(stream_id=child.stream_id, version=15).state)
    assert b"Alice" not in stored_state and is_envelope(json.loads(stored_state)["name"])

    at_15 = asyncio.run(repository.load(child.id, version=15))
    assert repository.last_load.started_from == "snapshot" and repository.last_load.events_replayed == 0
    assert at_15.version == 15 and at_15.to_snapshot() == child.to_snapshot()


# Guide: "Architecture Components / 3. Event Sourcing Repository" usage example.
def test_repository_saves_a_child_aggregate_and_loads_it_back_by_id(store):
    child_aggregate = registered_child()
    child_id = str(child_aggregate.id)

    async def usage():
        repository = EventSourcingRepositoryImpl(Child)
        await repository.save(child_aggregate)
        loaded_child = await repository.load(child_id)
        return loaded_child

    loaded_child = asyncio.run(usage())
    assert child_aggregate.version == 1 and not child_aggregate.has_uncommitted_events()
    assert isinstance(loaded_child, Child) and loaded_child.id == child_id
    assert loaded_child.version == 1 and not loaded_child.has_uncommitted_events()
    assert (loaded_child.name, loaded_child.age, loaded_child.parent_id, loaded_child.device_id,
            loaded_child.udid) == ("Alice", 6, "parent-456", "device-789", "unique-device-123")
    assert loaded_child.registered and loaded_child.active
    assert loaded_child.to_snapshot() == child_aggregate.to_snapshot()


# Guide: "Usage Examples / Basic Event Sourcing Flow" (steps 1-4).
def test_basic_flow_registers_updates_saves_and_replays_a_child(store):
    child_id = new_child_id()

    async def flow():
        # 1. Create aggregate
        child = Child(
            id=ChildId(child_id),
            parent_id=ParentId("parent-456"),
            device_id=DeviceId("device-789"),
            name="Alice",
            age=6,
            udid="unique-device-123"
        )

        # 2. Perform business operations (generates events)
        child.register_child()
        child.update_profile({"age": 7})
        pending = child.get_domain_events()

        # 3. Save aggregate (persists events)
        es_service = get_event_sourcing_service()
        await es_service.save_aggregate(child)

        # 4. Load aggregate (replays events)
        loaded_child = await es_service.load_aggregate(Child, child_id)
        return child, pending, loaded_child

    child, pending, loaded_child = asyncio.run(flow())
    assert [type(e) for e in pending] == [ChildRegistered, ChildProfileUpdated]
    assert pending[1].changes == {"age": 7}
    assert child.version == 2 and not child.has_uncommitted_events()
    stored = get_event_store().load_events_sync(f"child.{child_id}")
    assert [(e.version, e.event_type) for e in stored] == [(1, "ChildRegistered"), (2, "ChildProfileUpdated")]
    assert loaded_child.version == 2
    assert (loaded_child.name, loaded_child.age, loaded_child.parent_id) == ("Alice", 7, "parent-456")
    assert loaded_child.to_snapshot() == child.to_snapshot()


# Guide: "Usage Examples / Event Replay and Reconstruction".
def test_replay_from_a_version_is_inclusive_and_full_replay_matches_the_repository(store):
    child = registered_child()  # v1: Alice, 6
    child.update_profile({"age": 7})  # v2
    child.update_profile({"name": "Alicia"})  # v3
    child.update_profile({"interests": ["bears"]})  # v4
    child.update_profile({"age": 8})  # v5
    child.update_profile({"language": "en"})  # v6
    child.update_profile({"name": "Ally"})  # v7
    repository = EventSourcingRepositoryImpl(Child)
    asyncio.run(repository.save(child))
    child_id = str(child.id)
    event_store = get_event_store()

    async def replay(from_version: int):
        # Load from specific version
        events = await event_store.load_events(f"child.{child_id}", from_version=from_version)

        # Reconstruct aggregate manually
        child = Child.create_empty(child_id)
        for stored_event in events:
            domain_event = deserialize_event(stored_event)
            child.apply_event(domain_event)
        return events, child

    events, partial = asyncio.run(replay(5))
    assert [e.version for e in events] == [5, 6, 7]  # from_version is inclusive
    # Without the events before version 5 the state is incomplete: no registration, no v3/v4.
    assert not partial.registered and partial.parent_id is None and partial.interests == []
    assert (partial.age, partial.language, partial.name) == (8, "en", "Ally")

    all_events, rebuilt = asyncio.run(replay(1))
    assert [e.version for e in all_events] == list(range(1, 8))
    loaded = asyncio.run(repository.load(child_id))
    assert loaded.version == 7
    assert rebuilt.to_snapshot() == loaded.to_snapshot() == child.to_snapshot()
    assert (rebuilt.name, rebuilt.age, rebuilt.interests, rebuilt.language) == ("Ally", 8, ["bears"], "en")
    assert not rebuilt.has_uncommitted_events()  # applying events replays, it raises nothing new


# Guide: "Usage Examples / Snapshot Management".
def test_snapshot_is_due_at_version_25_not_before_and_is_saved_manually(store):
    scheduled = []  # automatic snapshots are recorded, not made: this example makes them by hand
    repository = EventSourcingRepositoryImpl(Child, snapshot_scheduler=scheduled.append)
    child = with_age_changes(registered_child(), 8)
    asyncio.run(repository.save(child))
    assert child.version == 9 and scheduled == []
    snapshot_store = get_snapshot_store()
    stream_id = child.stream_id

    assert asyncio.run(snapshot_store.should_create_snapshot(stream_id, current_version=9)) is False

    with_age_changes(child, 16)
    asyncio.run(repository.save(child))
    assert child.version == 25 and scheduled == [stream_id]

    async def management():
        # Check if snapshot should be created
        should_snapshot = await snapshot_store.should_create_snapshot(
            stream_id,
            current_version=25
        )

        # Create snapshot manually
        if should_snapshot:
            await snapshot_store.save_snapshot(
                stream_id=stream_id,
                aggregate=child,
                version=25
            )
        return should_snapshot

    assert asyncio.run(management()) is True
    assert list(Snapshot.objects.filter(stream_id=stream_id).values_list("version", flat=True)) == [25]
    latest = snapshot_store.get_latest_snapshot_sync(stream_id)
    assert latest.version == 25 and latest.state == child.to_snapshot()
    # the next one is due 10 events after this snapshot
    assert asyncio.run(snapshot_store.should_create_snapshot(stream_id, current_version=25)) is False
    assert asyncio.run(snapshot_store.should_create_snapshot(stream_id, current_version=34)) is False
    assert asyncio.run(snapshot_store.should_create_snapshot(stream_id, current_version=35)) is True
    loaded = asyncio.run(repository.load(child.id, version=25))
    assert repository.last_load.started_from == "snapshot" and loaded.to_snapshot() == child.to_snapshot()


# Guide: "Integration with DDD / Event Application Pattern".
def test_apply_event_sets_state_from_child_registered_and_profile_updated(store):
    registered_at = datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)
    child = Child.create_empty("child-123")
    registered = ChildRegistered(child_id=ChildId("child-123"), parent_id=ParentId("parent-456"),
                                 name="Alice", age=6, registered_at=registered_at)

    child.apply_event(registered)
    assert (child.name, child.age, child.registered_at) == ("Alice", 6, registered_at)
    assert child.parent_id == "parent-456" and child.registered and child.active

    child.apply_event(ChildProfileUpdated(child_id=ChildId("child-123"), changes={"age": 7, "name": "Ally"}))
    assert (child.name, child.age, child.registered_at) == ("Ally", 7, registered_at)
    # applying is reconstruction: nothing pending, the version is the caller's to count
    assert not child.has_uncommitted_events() and child.version == 0

    # without an explicit registered_at, the event's time is the registration time
    later = Child.create_empty("child-123")
    event = ChildRegistered(child_id=ChildId("child-123"), parent_id=ParentId("parent-456"), name="Alice", age=6)
    later.apply_event(event)
    assert later.registered_at == event.occurred_at


# Guide: "Testing Event Sourcing / Unit Tests" (test_child_registration).
def test_child_registration_applies_name_and_age(store):
    # Given
    child = Child.create_empty("child-123")

    # When
    event = ChildRegistered(child_id=ChildId("child-123"), parent_id=ParentId("parent-456"), name="Alice", age=6)
    child.apply_event(event)

    # Then
    assert child.name == "Alice"
    assert child.age == 6


def create_test_child() -> Child:
    """The guide's create_test_child(): a child not registered yet, with a fresh id."""
    return Child(id=ChildId(new_child_id()), parent_id=ParentId("parent-456"), device_id=DeviceId("device-789"),
                 name="Alice", age=6, udid="unique-device-123")


# Guide: "Testing Event Sourcing / Integration Tests" (test_event_sourcing_flow).
def test_event_sourcing_flow_saves_and_reloads_a_registered_child(store):
    es_service = get_event_sourcing_service()

    async def test_event_sourcing_flow():
        # Given
        child = create_test_child()

        # When
        child.register_child()
        await es_service.save_aggregate(child)
        loaded_child = await es_service.load_aggregate(Child, child.id)

        # Then
        assert loaded_child.name == child.name
        assert loaded_child.version > 0
        return child, loaded_child

    child, loaded_child = asyncio.run(test_event_sourcing_flow())
    assert child.name == "Alice" and loaded_child.version == child.version == 1
    assert loaded_child.to_snapshot() == child.to_snapshot()


def create_test_event() -> NoteRecorded:
    return NoteRecorded(text="hello little bear", n=1)


# Guide: "Testing Event Sourcing / Event Store Tests" (test_event_persistence).
# The only use of the stream "test.stream" in the suite.
def test_event_persistence_stores_and_loads_one_event_on_test_stream(store):
    event_store = get_event_store()

    async def test_event_persistence():
        # Given
        events = [create_test_event()]

        # When
        await event_store.append_events("test.stream", events)
        loaded_events = await event_store.load_events("test.stream")

        # Then
        assert len(loaded_events) == 1
        assert loaded_events[0].metadata.event_type == events[0].event_type
        return events, loaded_events

    events, loaded_events = asyncio.run(test_event_persistence())
    assert loaded_events[0].metadata.event_type == "test.NoteRecorded"
    assert loaded_events[0].metadata.event_id == events[0].event_id
    assert deserialize_event(loaded_events[0]) == events[0]


# Guide: "Security and Compliance / Event Encryption".
def test_encrypt_sensitive_fields_leaves_no_plaintext_name_or_age(store):
    child_id = new_child_id()
    child_registered = ChildRegistered(child_id=ChildId(child_id), parent_id=ParentId("parent-456"),
                                       name="Alice", age=6, udid="unique-device-123")

    encrypted_event = encrypt_sensitive_fields(
        event=child_registered,
        sensitive_fields=['name', 'age'],
        encryption_key=get_encryption_key()
    )

    assert is_envelope(encrypted_event["name"]) and is_envelope(encrypted_event["age"])
    text = json.dumps(encrypted_event)
    assert "Alice" not in text and '"age": 6' not in text
    # the other fields stay as they are (udid was not asked for here)
    assert (encrypted_event["child_id"], encrypted_event["parent_id"], encrypted_event["udid"]) == (
        child_id, "parent-456", "unique-device-123")
    # the child's own key opens it again
    subject = f"child:{child_id}"
    key = get_encryption_key().key_for_reading(subject)
    opened = decrypt_fields(encrypted_event, key, subject, str(child_registered.event_id))
    assert (opened["name"], opened["age"]) == ("Alice", 6)
    # each encryption uses a fresh nonce
    again = encrypt_sensitive_fields(event=child_registered, sensitive_fields=['name', 'age'],
                                     encryption_key=get_encryption_key())
    assert again["name"]["n"] != encrypted_event["name"]["n"]


# Guide: "Monitoring and Observability / Health Checks".
def test_event_store_health_check_reports_healthy_and_unhealthy(store, monkeypatch):
    assert asyncio.run(check_event_store_health()) == {"status": "healthy", "component": "event_store"}

    async def broken(stream_id):
        raise RuntimeError("database unreachable")

    monkeypatch.setattr(get_event_store(), "get_stream_version", broken)
    health = asyncio.run(check_event_store_health())
    assert health["status"] == "unhealthy" and health["error"] == "database unreachable"


# Guide: "Migration and Versioning / Event Schema Evolution".
def test_a_stored_v1_registration_loads_as_v2_with_unknown_parent(store):
    child_id = new_child_id()
    stream_id = f"child.{child_id}"
    v1 = ChildRegisteredV1(child_id=ChildId(child_id), name="Alice", age=6)

    migrated = ChildRegisteredV2.from_v1(v1)
    assert (migrated.child_id, migrated.parent_id, migrated.name, migrated.age) == (child_id, "unknown", "Alice", 6)

    async def old_code_writes_v1():
        event_store = get_event_store()
        await event_store.append_events(stream_id=stream_id, events=[v1], expected_version=0)
        return await event_store.load_events(stream_id)

    stored = asyncio.run(old_code_writes_v1())
    assert [(e.metadata.event_type, e.metadata.schema_version) for e in stored] == [("ChildRegistered", 1)]
    assert "parent_id" not in stored[0].data

    event = deserialize_event(stored[0])
    assert type(event) is ChildRegisteredV2 and event == migrated
    assert event.parent_id == ParentId("unknown") and isinstance(event.parent_id, ParentId)
    assert (event.event_id, event.name, event.age) == (v1.event_id, "Alice", 6)

    child = asyncio.run(EventSourcingRepositoryImpl(Child).load(child_id))
    assert isinstance(child, Child) and child.version == 1
    assert (child.name, child.age, child.parent_id, child.registered) == ("Alice", 6, "unknown", True)


def old_v1_stream(age_change: int) -> tuple[str, list]:
    """A child stream written by old code: a V1 registration and a profile update."""
    child_id = new_child_id()
    stream_id = f"child.{child_id}"
    get_event_store().append_events_sync(stream_id, [
        ChildRegisteredV1(child_id=ChildId(child_id), name="Alice", age=6),
        ChildProfileUpdated(child_id=ChildId(child_id), changes={"age": age_change}),
    ], expected_version=0)
    return stream_id, get_event_store().load_events_sync(stream_id)


def stream_state(stream_id: str) -> tuple:
    row = Stream.objects.filter(pk=stream_id).values_list("version", "migrated_to", "migrated_from").first()
    return row, list(Event.objects.filter(stream_id=stream_id).order_by("version").values_list("event_id", "payload"))


# Guide: "Migration and Versioning / Stream Migration".
def test_migrate_stream_copies_upcast_events_links_both_streams_and_never_overwrites(store):
    event_store = get_event_store()
    old_stream_id, old_events = old_v1_stream(age_change=7)
    new_stream_id = f"child.{new_child_id()}"

    report = migrate_stream(old_stream_id, new_stream_id)

    assert (report.copied, report.dropped) == (2, 0)
    new_events = event_store.load_events_sync(new_stream_id)
    assert [(e.version, e.event_type, e.metadata.schema_version) for e in new_events] == [
        (1, "ChildRegistered", 2), (2, "ChildProfileUpdated", 1)]  # the V1 registration was upcast
    old_domain = [deserialize_event(e) for e in old_events]
    new_domain = [deserialize_event(e) for e in new_events]
    # The copies belong to the new child: its id is their data subject (encrypted under its key).
    _, new_id = new_stream_id.split(".", 1)
    assert [(type(e), e.data(), e.occurred_at) for e in new_domain] == [
        (type(e), {**e.data(), "child_id": new_id}, e.occurred_at) for e in old_domain]
    assert {e.metadata.data_subject for e in new_events} == {f"child:{new_id}"}
    assert new_domain[0].parent_id == "unknown"
    assert not {e.event_id for e in new_events} & {e.event_id for e in old_events}
    assert Stream.objects.get(pk=old_stream_id).migrated_to == new_stream_id
    assert Stream.objects.get(pk=new_stream_id).migrated_from == old_stream_id
    assert [e.event_id for e in event_store.load_events_sync(old_stream_id)] == [e.event_id for e in old_events]
    moved = EventSourcingRepositoryImpl(Child).load_sync(new_id)
    assert (moved.version, moved.name, moved.age, moved.parent_id) == (2, "Alice", 7, "unknown")

    # The same through the management command.
    command_old, command_old_events = old_v1_stream(age_change=9)
    command_new = f"child.{new_child_id()}"
    out = StringIO()
    call_command("migrate_stream", command_old, command_new, stdout=out)
    assert "2 events copied" in out.getvalue()
    assert [e.event_type for e in event_store.load_events_sync(command_new)] == [
        e.event_type for e in command_old_events]
    assert Stream.objects.get(pk=command_new).migrated_from == command_old
    assert Stream.objects.get(pk=command_old).migrated_to == command_new

    # Migrating onto an existing stream is refused and changes nothing.
    refused_old, _ = old_v1_stream(age_change=10)
    before = stream_state(refused_old), stream_state(new_stream_id)
    with pytest.raises(CommandError, match="already exists"):
        call_command("migrate_stream", refused_old, new_stream_id, stdout=StringIO())
    assert (stream_state(refused_old), stream_state(new_stream_id)) == before
    assert Stream.objects.get(pk=refused_old).migrated_to is None
    assert Stream.objects.get(pk=new_stream_id).migrated_from == old_stream_id
