"""Aggregates through the repository: saves, races, snapshots, the cache and temporal loads."""
from __future__ import annotations

from datetime import timedelta

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from eventsourcing_app.domain import Child, DomainError
from eventsourcing_app.eventstore import (
    AggregateNotFoundError,
    ConcurrencyError,
    EventSourcingRepositoryImpl,
    EventStoreError,
    deserialize_event,
    get_aggregate_cache,
    get_event_sourcing_service,
    get_snapshot_store,
)
from eventsourcing_app.models import Event, Snapshot
from tests.integration.helpers import new_child, wait_until


@pytest.fixture
def service(store):
    return get_event_sourcing_service()


def rebuilt_from_all_events(store, child_id: str) -> Child:
    child = Child.create_empty(child_id)
    for stored in store.load_events_sync(f"child.{child_id}"):
        child.apply_event(deserialize_event(stored))
        child.increment_version()
    return child


def test_a_1000_event_child_loads_from_its_snapshot_replaying_at_most_10_events(service, store, celery_worker,
                                                                                   monkeypatch):
    child = new_child()
    service.save_aggregate_sync(child)
    for i in range(999):  # one save per change, as platform code does; snapshots are made by the worker
        child.change_safety_settings("moderate" if i % 2 else "strict", 30 + i % 60)
        service.save_aggregate_sync(child)
    assert child.version == 1000
    wait_until(lambda: Snapshot.objects.filter(stream_id=child.stream_id, version__gte=990).exists())

    rows_read = []
    load = store.recorder.load
    monkeypatch.setattr(store.recorder, "load",
                        lambda *args, **kw: rows_read.append(len(result := load(*args, **kw))) or result)
    repository = EventSourcingRepositoryImpl(Child, cache=False)
    loaded = repository.load_sync(child.id)
    assert repository.last_load.started_from == "snapshot"
    assert sum(rows_read) <= 10 and repository.last_load.events_replayed <= 10
    assert loaded.version == 1000
    assert loaded.to_snapshot() == rebuilt_from_all_events(store, child.id).to_snapshot() == child.to_snapshot()
    # the latest snapshots are kept, older ones pruned (once the worker has done all it was asked)
    snapshots = Snapshot.objects.filter(stream_id=child.stream_id)
    wait_until(lambda: snapshots.count() <= get_snapshot_store().keep)
    assert snapshots.order_by("-version").values_list("version", flat=True).first() >= 990


def test_of_two_saves_from_the_same_version_one_wins_and_the_other_changes_nothing(service, store):
    child = new_child()
    service.save_aggregate_sync(child)
    first = service.load_aggregate_sync(Child, child.id)
    second = service.load_aggregate_sync(Child, child.id)
    first.update_profile({"age": 7})
    second.update_profile({"name": "Alicia"})
    service.save_aggregate_sync(first)
    with pytest.raises(ConcurrencyError, match=f"stream child.{child.id} expected version 1, actual 2"):
        service.save_aggregate_sync(second)
    assert second.has_uncommitted_events()  # the loser keeps its events: it may reload and retry
    events = [deserialize_event(e) for e in store.load_events_sync(child.stream_id)]
    assert [type(e).__name__ for e in events] == ["ChildRegisteredV2", "ChildProfileUpdated"]
    assert events[1].changes == {"age": 7}
    reloaded = service.load_aggregate_sync(Child, child.id)
    assert (reloaded.name, reloaded.age, reloaded.version) == ("Alice", 7, 2)


def test_temporal_loads_give_the_state_as_of_a_version_and_a_time(service, store):
    child = new_child(age=5)
    service.save_aggregate_sync(child)
    for age in (6, 7, 8):
        child.update_profile({"age": age})
        service.save_aggregate_sync(child)
    assert service.load_aggregate_sync(Child, child.id, version=2).age == 6
    assert service.load_aggregate_sync(Child, child.id, version=1).age == 5
    times = {e.version: e.metadata.timestamp for e in store.load_events_sync(child.stream_id)}
    assert service.load_aggregate_sync(Child, child.id, as_of=times[3]).age == 7
    assert service.load_aggregate_sync(Child, child.id, as_of=times[3] + timedelta(microseconds=1)).version == 3
    with pytest.raises(AggregateNotFoundError, match="had no events"):
        service.load_aggregate_sync(Child, child.id, as_of=times[1] - timedelta(seconds=1))
    with pytest.raises(AggregateNotFoundError, match="has no version 9"):
        service.load_aggregate_sync(Child, child.id, version=9)
    with pytest.raises(EventStoreError, match="version must be"):
        service.load_aggregate_sync(Child, child.id, version=0)
    # a snapshot newer than the requested version is not used for it
    service.create_snapshot_sync(Child, child.id)
    repository = EventSourcingRepositoryImpl(Child, cache=False)
    assert repository.load_sync(child.id, version=2).age == 6 and repository.last_load.started_from == "empty"
    assert repository.load_sync(child.id).age == 8 and repository.last_load.started_from == "snapshot"


def test_a_snapshot_of_an_older_shape_is_ignored_and_the_aggregate_rebuilt(service, monkeypatch):
    child = new_child()
    service.save_aggregate_sync(child)
    child.update_profile({"age": 9})
    service.save_aggregate_sync(child)
    service.create_snapshot_sync(Child, child.id)
    monkeypatch.setattr(Child, "snapshot_schema_version", Child.snapshot_schema_version + 1)
    repository = EventSourcingRepositoryImpl(Child, cache=False)
    loaded = repository.load_sync(child.id)
    assert repository.last_load.started_from == "empty" and repository.last_load.events_replayed == 2
    assert loaded.age == 9


@pytest.mark.parametrize("command", [
    lambda c: c.update_profile({"age": 14}),
    lambda c: c.update_profile({"age": 2}),
    lambda c: c.update_profile({"name": "   "}),
    lambda c: c.update_profile({"favourite_colour": "blue"}),
    lambda c: c.change_safety_settings("anything-goes", 60),
    lambda c: c.register_child(),
])
def test_every_domain_error_leaves_the_stream_unchanged(service, store, command):
    child = new_child()
    service.save_aggregate_sync(child)
    before = [(e.event_id, e.payload) for e in store.load_events_sync(child.stream_id)]
    loaded = service.load_aggregate_sync(Child, child.id)
    with pytest.raises(DomainError):
        command(loaded)
    service.save_aggregate_sync(loaded)  # nothing pending: nothing written
    assert [(e.event_id, e.payload) for e in store.load_events_sync(child.stream_id)] == before


def test_changes_to_a_deactivated_child_are_refused(service, store):
    child = new_child()
    child.deactivate("moved away")
    service.save_aggregate_sync(child)
    loaded = service.load_aggregate_sync(Child, child.id)
    with pytest.raises(DomainError):
        loaded.update_profile({"age": 8})
    assert store.get_stream_version_sync(child.stream_id) == 2


def test_a_cache_entry_never_wins_over_a_newer_stream_version(service, store):
    cache = get_aggregate_cache()
    assert cache is not None
    child = new_child()
    service.save_aggregate_sync(child)
    cached = EventSourcingRepositoryImpl(Child)
    cached.load_sync(child.id)
    uncached = EventSourcingRepositoryImpl(Child, cache=False)  # another process, say
    other = uncached.load_sync(child.id)
    other.update_profile({"age": 10})
    uncached.save_sync(other)
    assert cache.get(child.stream_id).version == 1  # stale entry still there
    loaded = cached.load_sync(child.id)
    assert (loaded.version, loaded.age) == (2, 10)
    assert cached.last_load.started_from == "cache" and cached.last_load.events_replayed == 1
    assert cache.get(child.stream_id).version == 2
    loaded = cached.load_sync(child.id)
    assert cached.last_load.started_from == "cache" and cached.last_load.events_replayed == 0


def test_stream_info(service):
    child = new_child()
    child.update_profile({"age": 7})
    service.save_aggregate_sync(child)
    service.create_snapshot_sync(Child, child.id)
    info = service.get_stream_info_sync(child.stream_id)
    assert (info.stream_id, info.version, info.event_count, info.latest_snapshot_version) == (
        child.stream_id, 2, 2, 2)
    assert info.first_event_at <= info.last_event_at and info.latest_snapshot_at is not None
    with pytest.raises(AggregateNotFoundError):
        service.get_stream_info_sync("child.never-was")


def test_snapshots_refuse_an_unsaved_or_mismatched_aggregate(service):
    snapshots = get_snapshot_store()
    child = new_child()
    with pytest.raises(EventStoreError, match="unsaved events"):
        snapshots.save_snapshot_sync(child.stream_id, child, 1)
    service.save_aggregate_sync(child)
    with pytest.raises(EventStoreError, match="must be taken of a saved aggregate at version 5"):
        snapshots.save_snapshot_sync(child.stream_id, child, 5)
    with pytest.raises(EventStoreError, match="is stream"):
        snapshots.save_snapshot_sync("child.someone-else", child, 1)
    assert not Snapshot.objects.filter(stream_id=child.stream_id).exists()


def test_snapshots_go_to_a_compacted_topic_keyed_by_stream(service, kafka_settings):
    child = new_child()
    service.save_aggregate_sync(child)
    record = service.create_snapshot_sync(Child, child.id)
    row = Snapshot.objects.get(stream_id=child.stream_id, version=record.version)
    assert row.kafka_topic == kafka_settings.snapshot_topic("child")
    in_kafka = [m for m in topic_records_raw(kafka_settings, "child") if m.key() == child.stream_id.encode()]
    assert in_kafka and in_kafka[-1].value() == bytes(row.state)

    admin = AdminClient(kafka_settings.admin_config())
    resources = [ConfigResource("topic", kafka_settings.snapshot_topic("child")),
                 ConfigResource("topic", kafka_settings.event_topic("child"))]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    assert configs[kafka_settings.snapshot_topic("child")]["cleanup.policy"].value == "compact,delete"
    assert configs[kafka_settings.event_topic("child")]["cleanup.policy"].value == "delete"


def topic_records_raw(kafka_settings, stream_type):
    from confluent_kafka.admin import AdminClient as _Admin

    from eventsourcing_app.kafka.reader import scan_topic

    topic = kafka_settings.snapshot_topic(stream_type)
    meta = _Admin(kafka_settings.admin_config()).list_topics(topic, timeout=10).topics[topic]
    return list(scan_topic(kafka_settings, topic, {p: 0 for p in meta.partitions}))


def test_saving_waits_for_no_snapshot(service, store, monkeypatch):
    """Crossing the threshold only schedules the snapshot task after the commit."""
    scheduled = []
    repository = EventSourcingRepositoryImpl(Child, cache=False, snapshot_scheduler=scheduled.append)
    child = new_child()
    for age in range(4, 13):
        child.update_profile({"age": age})
    repository.save_sync(child)  # versions 1..10: crosses 10
    assert scheduled == [child.stream_id]
    assert not Snapshot.objects.filter(stream_id=child.stream_id).exists()
    child.update_profile({"age": 13})
    repository.save_sync(child)  # version 11: no new threshold
    assert scheduled == [child.stream_id]
    assert Event.objects.filter(stream_id=child.stream_id).count() == 11


def test_a_cache_entry_that_does_not_open_is_a_miss_not_an_error(service):
    """E.g. an entry left in a shared Redis by another database with other keys."""
    import json as _json

    cache = get_aggregate_cache()
    child = new_child()
    service.save_aggregate_sync(child)
    repository = EventSourcingRepositoryImpl(Child)
    repository.load_sync(child.id)
    entry = _json.loads(cache._client.get(cache.key(child.stream_id)))
    entry["state"]["name"]["c"] = entry["state"]["age"]["c"]  # ciphertext of another field
    cache._client.set(cache.key(child.stream_id), _json.dumps(entry))
    loaded = repository.load_sync(child.id)
    assert loaded.name == "Alice" and repository.last_load.started_from != "cache"
    assert repository.load_sync(child.id).name == "Alice"


def test_saving_or_loading_something_that_is_not_an_aggregate_is_a_clear_error(service):
    with pytest.raises(EventStoreError, match="is not an EventSourcedAggregate class"):
        service.save_aggregate_sync("not an aggregate")
    with pytest.raises(EventStoreError, match="is not an EventSourcedAggregate class"):
        service.load_aggregate_sync(dict, "child-1")
