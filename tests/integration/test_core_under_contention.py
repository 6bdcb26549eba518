"""The core under contention and faults: keys, consent, ownership, migration, scheduling, Kafka.

Proven here:
- a stale cached data key (not the stored one) is never used to store personal data: the
  append succeeds and the data is encrypted with the STORED key (through the store, on both
  recorders, and through a command handler); a key made in a transaction that rolled back is
  not kept in memory, and no key row is left;
- consent cannot be lost to a race: registering a child while consent is withdrawn, and
  starting a conversation / recording messages while consent is withdrawn, never leave an
  active child without consent, nor anything recorded for the child after the withdrawal;
- a parent cannot erase another family's child (not found, nothing changes), a user acting
  neither as a parent nor as staff is refused, staff can erase;
- after a migration child.A -> child.B, `forget_child A` records the erasure on the open stream
  child.B and destroys both keys; forgetting B afterwards says the key was already gone;
- a command on a migrated (closed) child is a Conflict (409) naming the new stream, one on an
  erased child is refused; nothing is stored either way;
- the snapshot scheduler does not spin while Celery is unreachable, keeps its pending streams
  bounded, and sends them all once Celery is back;
- with Kafka unreachable, appends do not block (the first waits at most a moment, later ones
  not at all), the events wait in the outbox, and snapshot tombstones return at once;
- the relay publishes nothing while a refill is unfinished (RefillUnfinishedError naming
  `manage.py refill_kafka`; readiness says kafka_publishing is down) and works again after it;
- a stream created while a refill waits for sends to settle is republished into the recreated
  topic: every stream is there exactly once, in version order.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction

from devtools.embedded import free_port, start_tansu
from eventsourcing_app.application import (
    Actor,
    Conflict,
    ConsentRequired,
    Gone,
    NotFound,
    PermissionDenied,
    erase_child_data,
    grant_consent,
    record_message,
    register_child,
    register_parent,
    start_conversation,
    update_child_profile,
    withdraw_consent,
)
from eventsourcing_app.domain import (
    AggregateDeactivated,
    Child,
    ChildId,
    Conversation,
    ChildProfileUpdated,
    Parent,
    PersonalDataErased,
)
from eventsourcing_app.eventstore import (
    AggregateNotFoundError,
    EventSourcingRepositoryImpl,
    EventStore,
    build_event_store,
)
from eventsourcing_app.eventstore.recorders import DjangoRecorder, PostgresRecorder
from eventsourcing_app.eventstore.snapshots import SnapshotStore
from eventsourcing_app.kafka.topics import provision_topics
from eventsourcing_app.models import Event, Stream, SubjectKey
from eventsourcing_app.operations.migration import migrate_stream
from eventsourcing_app.operations.relay import (
    KafkaUnavailableError,
    RefillUnfinishedError,
    outbox_backlog,
    refill_kafka,
    relay_outbox,
)
from eventsourcing_app.privacy.cipher import decrypt_fields
from eventsourcing_app.privacy.keyring import MasterKeyring
from eventsourcing_app.privacy.keys import SubjectKeys
from eventsourcing_app.scheduling import BackgroundSnapshotScheduler
from tests.conftest import LOG_DIR, unique_stream
from tests.events import notes
from tests.integration.helpers import wait_until
from tests.kafka_helpers import records_by_stream

SYSTEM = Actor.system("test")
STREAM_TYPE = "test"


# --- helpers ------------------------------------------------------------------------------

def uid() -> str:
    return uuid.uuid4().hex[:10]


def new_family(*, register: bool = True, device: bool = False) -> tuple[str, str]:
    """A fresh parent with consent for a fresh child id; the child registered if asked."""
    n = uid()
    parent_id, child_id = f"parent-{n}", f"child-{n}"
    register_parent(actor=SYSTEM, parent_id=parent_id, email=f"{n}@example.org", name="Robin")
    grant_consent(actor=SYSTEM, parent_id=parent_id, child_id=child_id, method="signed_form")
    if register:
        register_child(actor=SYSTEM, child_id=child_id, parent_id=parent_id, name="Alice", age=6,
                       **({"device_id": f"bear-{n}", "udid": f"udid-{n}"} if device else {}))
    return parent_id, child_id


def load(cls, aggregate_id: str):
    return EventSourcingRepositoryImpl(cls, cache=False).load_sync(aggregate_id)


def load_or_none(cls, aggregate_id: str):
    try:
        return load(cls, aggregate_id)
    except AggregateNotFoundError:
        return None


def stored_key(subject: str) -> bytes | None:
    wrapped = SubjectKey.objects.get(pk=subject).wrapped_key
    return None if wrapped is None else bytes(wrapped)


def version_of(stream_id: str) -> int:
    return Stream.objects.filter(pk=stream_id).values_list("version", flat=True).first() or 0


def published_version(stream_id: str) -> int:
    return Stream.objects.get(pk=stream_id).published_version


def event_types(stream_id: str) -> list[str]:
    return list(Event.objects.filter(stream_id=stream_id).order_by("version").values_list("event_type", flat=True))


def race(first, second, *, second_delay: float = 0.0, timeout: float = 30.0) -> tuple[object, object]:
    """Runs both at the same moment in two threads (the second after `second_delay` seconds);
    each outcome is its result or its exception."""
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def run(index, fn):
        try:
            barrier.wait(10)
            if index == 1 and second_delay:
                time.sleep(second_delay)
            outcomes[index] = fn()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcomes[index] = exc
        finally:
            connections.close_all()  # this thread's connections

    threads = [threading.Thread(target=run, args=(0, first)), threading.Thread(target=run, args=(1, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a racing command did not finish"
    return outcomes[0], outcomes[1]


def unpublished(store) -> EventStore:
    """A store that appends without publishing: its events wait in the outbox for the relay."""
    return EventStore(recorder=PostgresRecorder(), stream_types=store.stream_types,
                      max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)


def kafka_versions(kafka, stream_id: str) -> list[int]:
    return [r.metadata.version for r in records_by_stream(kafka, STREAM_TYPE, [stream_id]).get(stream_id, [])]


# --- 1. stale and rolled-back keys ---------------------------------------------------------

@pytest.mark.parametrize("recorder", ["postgres", "portable"])
def test_a_stale_cached_key_is_never_used_to_store_data_through_the_store(store, recorder):
    writer = store if recorder == "postgres" else EventStore(
        recorder=DjangoRecorder(), stream_types=store.stream_types, max_event_bytes=store.max_event_bytes,
        kafka_settings=store.kafka_settings)
    _, child_id = new_family()
    subject, stream_id = f"child:{child_id}", f"child.{child_id}"
    keys = store.field_protection.keys
    keys.remember(subject, AESGCM(os.urandom(32)), b"not-the-stored-wrapped-key")

    event = ChildProfileUpdated(child_id=ChildId(child_id), changes={"name": "Zoltan"})
    result = writer.append_events_sync(stream_id, [event], expected_version=1)

    assert result.last_version == 2
    assert load(Child, child_id).name == "Zoltan"
    # Encrypted with the stored key: another process, knowing only the database, opens it.
    stored = writer.load_events_sync(stream_id, from_version=2)[0]
    elsewhere = SubjectKeys(MasterKeyring(settings.TEDDY_MASTER_KEYS)).key_for_reading(subject)
    assert decrypt_fields(json.loads(stored.payload), elsewhere, subject, stored.event_id)["changes"] == {
        "name": "Zoltan"}
    # ... and the wrong key is no longer held for writing: the stored one is
    assert keys.cached_for_writing(subject)[1] == stored_key(subject)


def test_a_stale_cached_key_is_never_used_to_store_data_through_a_command(store):
    _, child_id = new_family()
    subject = f"child:{child_id}"
    store.field_protection.keys.remember(subject, AESGCM(os.urandom(32)), b"not-the-stored-wrapped-key")

    # (The command loads the child first, and opening its events with the stored key replaces
    # the wrong one in memory; the store-level test above shows the append's own check.)
    update_child_profile(actor=SYSTEM, child_id=child_id, changes={"name": "Zoltan", "age": 8})

    child = load(Child, child_id)
    assert (child.name, child.age, child.version) == ("Zoltan", 8, 2)
    stored = store.load_events_sync(f"child.{child_id}", from_version=2)[0]
    elsewhere = SubjectKeys(MasterKeyring(settings.TEDDY_MASTER_KEYS)).key_for_reading(subject)
    assert decrypt_fields(json.loads(stored.payload), elsewhere, subject, stored.event_id)["changes"] == {
        "name": "Zoltan", "age": 8}


def test_a_key_made_in_a_transaction_that_rolls_back_is_not_kept(store):
    parent_id, child_id = new_family(register=False)
    subject = f"child:{child_id}"
    with pytest.raises(RuntimeError), transaction.atomic():
        register_child(actor=SYSTEM, child_id=child_id, parent_id=parent_id, name="Rolled", age=5)
        raise RuntimeError("the surrounding work failed")

    assert not store.field_protection.keys.holds(subject)
    assert not SubjectKey.objects.filter(pk=subject).exists()
    assert version_of(f"child.{child_id}") == 0
    # the next registration makes and stores its own key
    register_child(actor=SYSTEM, child_id=child_id, parent_id=parent_id, name="Kept", age=5)
    assert load(Child, child_id).name == "Kept"
    assert SubjectKey.objects.filter(pk=subject, wrapped_key__isnull=False).exists()


# --- 2. consent races -------------------------------------------------------------------

def test_registering_a_child_while_consent_is_withdrawn_never_leaves_an_active_child_without_consent(store):
    rounds, refused, deactivated = 30, 0, 0
    started = time.monotonic()
    for _ in range(rounds):
        parent_id, child_id = new_family(register=False)
        registered, withdrawn = race(
            lambda: register_child(actor=SYSTEM, child_id=child_id, parent_id=parent_id, name="Racer", age=7),
            lambda: withdraw_consent(actor=SYSTEM, parent_id=parent_id, child_id=child_id, reason="changed mind"),
            second_delay=random.uniform(0, 0.012))  # a varying head start: both orders, and the moment between

        assert not isinstance(withdrawn, Exception), withdrawn
        assert not isinstance(registered, Exception) or isinstance(registered, ConsentRequired), registered
        parent = load(Parent, parent_id)
        child = load_or_none(Child, child_id)
        assert not parent.has_consent(child_id)
        assert not (child is not None and child.active and not parent.has_consent(child_id)), (
            f"child {child_id} is registered and active without consent")
        if isinstance(registered, ConsentRequired):
            refused += 1
            assert child is None
        else:
            deactivated += 1
            assert child is not None and not child.active
    print(f"register refused {refused}x, registered then deactivated {deactivated}x "
          f"in {time.monotonic() - started:.1f}s")


def test_nothing_is_recorded_for_a_child_after_its_consent_was_withdrawn(store):
    rounds, recorded_total, started = 30, 0, time.monotonic()
    for n in range(rounds):
        parent_id, child_id = new_family(device=True)
        conversation_id = f"conv-{uid()}"
        if n % 2:  # every other round the conversation is going on already
            start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=child_id)

        def talk():
            done = 0
            try:
                if not n % 2:
                    start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=child_id)
                for i in range(5):
                    record_message(actor=SYSTEM, conversation_id=conversation_id, speaker="child", text=f"hello {i}")
                    done += 1
            except (ConsentRequired, AggregateDeactivated):
                pass
            return done

        recorded, withdrawn = race(talk, lambda: withdraw_consent(actor=SYSTEM, parent_id=parent_id,
                                                                  child_id=child_id),
                                   second_delay=random.uniform(0, 0.06))  # a few messages may go first
        assert not isinstance(recorded, Exception), recorded
        assert not isinstance(withdrawn, Exception), withdrawn
        recorded_total += recorded

        deactivation = Event.objects.get(stream_id=f"child.{child_id}", event_type="ChildDeactivated")
        conversation_events = list(Event.objects.filter(stream_id=f"conversation.{conversation_id}")
                                   .values_list("event_type", "recorded_at"))
        late = [(kind, at) for kind, at in conversation_events if at >= deactivation.recorded_at]
        assert not late, f"recorded after the withdrawal ({deactivation.recorded_at}): {late}"
        messages = [kind for kind, _ in conversation_events if kind == "MessageRecorded"]
        assert len(messages) == recorded  # every message the caller was told was recorded, and no other
        parent, child = load(Parent, parent_id), load(Child, child_id)
        assert not parent.has_consent(child_id) and not child.active
        with pytest.raises((ConsentRequired, AggregateDeactivated, NotFound)):
            record_message(actor=SYSTEM, conversation_id=conversation_id, speaker="child", text="too late")
    print(f"{recorded_total} messages recorded before withdrawals in {rounds} rounds "
          f"in {time.monotonic() - started:.1f}s")


def test_an_erasure_racing_conversation_commands_ends_cleanly_for_both(store):
    """Erasure locks the child's stream, then its subject; a conversation command locks what it
    reads (the child), then its own stream and the subject: neither waits for the other in a
    circle, and a deadlock the database breaks anyway is retried, never a raw database error."""
    for n in range(15):
        parent_id, child_id = new_family(device=True)
        conversation_id = f"conv-{uid()}"
        start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=child_id)

        def talk():
            done = 0
            try:
                for i in range(8):
                    record_message(actor=SYSTEM, conversation_id=conversation_id, speaker="child", text=f"hi {i}")
                    done += 1
            except (PersonalDataErased, Gone, AggregateDeactivated):
                pass
            return done

        recorded, erased = race(talk, lambda: erase_child_data(actor=SYSTEM, child_id=child_id,
                                                               reason="parent_request"),
                                second_delay=random.uniform(0, 0.03))
        assert not isinstance(recorded, Exception), repr(recorded)
        assert not isinstance(erased, Exception), repr(erased)
        assert stored_key(f"child:{child_id}") is None and load(Child, child_id).erased
        texts = [m.text for m in load(Conversation, conversation_id).messages]
        assert len(texts) == recorded and all(text is None for text in texts)  # erased, every one


# --- 3. erasure and ownership -------------------------------------------------------------

def test_a_parent_cannot_erase_another_familys_child_and_staff_can(store):
    _, child_id = new_family()
    other_parent, _ = new_family(register=False)
    subject, stream_id = f"child:{child_id}", f"child.{child_id}"
    wrapped, version = stored_key(subject), version_of(stream_id)

    with pytest.raises(NotFound):
        erase_child_data(actor=Actor.user(5, parent_id=other_parent), child_id=child_id, reason="parent_request")
    with pytest.raises(PermissionDenied):
        erase_child_data(actor=Actor.user(5), child_id=child_id, reason="parent_request")
    assert stored_key(subject) == wrapped and wrapped is not None
    assert version_of(stream_id) == version and "ChildDataErased" not in event_types(stream_id)
    assert load(Child, child_id).name == "Alice"

    report = erase_child_data(actor=Actor.staff(5), child_id=child_id, reason="parent_request")
    assert report.key_destroyed
    assert stored_key(subject) is None
    erased = Event.objects.get(stream_id=stream_id, event_type="ChildDataErased")
    assert erased.actor == "user:5"
    assert load(Child, child_id).erased


def test_forget_child_after_a_migration_erases_on_the_open_stream_and_destroys_both_keys(store, capsys):
    _, old_id = new_family()
    new_id = f"child-{uid()}"
    old_stream, new_stream = f"child.{old_id}", f"child.{new_id}"
    migrate_stream(old_stream, new_stream, actor="system:test")
    assert stored_key(f"child:{old_id}") is not None and stored_key(f"child:{new_id}") is not None

    call_command("forget_child", old_id, reason="parent_request")
    assert "data key destroyed" in capsys.readouterr().out
    assert event_types(new_stream)[-1] == "ChildDataErased"
    assert "ChildDataErased" not in event_types(old_stream)  # the closed stream takes nothing
    assert stored_key(f"child:{old_id}") is None and stored_key(f"child:{new_id}") is None
    assert load(Child, new_id).erased

    call_command("forget_child", new_id, reason="parent_request")
    assert "was already gone" in capsys.readouterr().out
    assert event_types(new_stream).count("ChildDataErased") == 1
    relay_outbox(store, stream_types=["child"], time_budget=20.0)  # the copies waited for the relay


def test_commands_on_a_migrated_or_an_erased_child_are_refused_and_store_nothing(store):
    _, old_id = new_family()
    new_id = f"child-{uid()}"
    old_stream, new_stream = f"child.{old_id}", f"child.{new_id}"
    migrate_stream(old_stream, new_stream, actor="system:test")
    before = (version_of(old_stream), version_of(new_stream))

    with pytest.raises(Conflict) as closed:
        update_child_profile(actor=SYSTEM, child_id=old_id, changes={"name": "Moved"})
    assert closed.value.http_status == 409
    assert new_stream in str(closed.value)
    assert (version_of(old_stream), version_of(new_stream)) == before

    _, erased_id = new_family(device=True)
    conversation_id = f"conv-{uid()}"
    start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=erased_id)
    erase_child_data(actor=SYSTEM, child_id=erased_id, reason="parent_request")
    streams = [f"child.{erased_id}", f"conversation.{conversation_id}"]
    before = [version_of(s) for s in streams]
    with pytest.raises((PersonalDataErased, Gone)):
        update_child_profile(actor=SYSTEM, child_id=erased_id, changes={"name": "Back"})
    with pytest.raises((PersonalDataErased, Gone)):
        record_message(actor=SYSTEM, conversation_id=conversation_id, speaker="child", text="hello again")
    assert [version_of(s) for s in streams] == before
    relay_outbox(store, stream_types=["child"], time_budget=20.0)  # the copies waited for the relay


# --- 4. the snapshot scheduler while Celery is unreachable ---------------------------------

def test_the_snapshot_scheduler_does_not_spin_while_celery_is_unreachable_and_sends_everything_after():
    calls, sent, reachable = [], [], threading.Event()

    def send(stream_id):
        calls.append(stream_id)
        if not reachable.is_set():
            raise ConnectionError("Celery's broker is unreachable")
        sent.append(stream_id)

    scheduler = BackgroundSnapshotScheduler(send=send, max_pending=100)
    stream_ids = [unique_stream("child") for _ in range(3)]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for stream_id in stream_ids:
            scheduler(stream_id)
        assert scheduler.pending <= len(stream_ids)
        time.sleep(0.1)
    assert len(calls) < 10, f"{len(calls)} sends in 1.5s while Celery is unreachable"
    assert sent == [] and scheduler.pending == len(stream_ids)

    reachable.set()
    scheduler(stream_ids[0])
    wait_until(lambda: scheduler.pending == 0, timeout=5)
    assert sorted(sent) == sorted(stream_ids)


# --- 5. Kafka unreachable ------------------------------------------------------------------

def test_appends_and_tombstones_do_not_block_while_kafka_is_unreachable(store, kafka_settings):
    down = kafka_settings.with_changes(bootstrap_servers=f"127.0.0.1:{free_port()}", message_timeout_ms=3000)
    cut_off = build_event_store(kafka_settings=down)
    snapshots = SnapshotStore(frequencies={}, publisher=cut_off.publisher, kafka_settings=down,
                              recorder=cut_off.recorder, field_protection=cut_off.field_protection)
    stream_ids = [unique_stream(STREAM_TYPE) for _ in range(3)]

    def seconds(call) -> float:
        began = time.monotonic()
        call()
        return round(time.monotonic() - began, 2)

    try:
        backlog = outbox_backlog(cut_off, [STREAM_TYPE])
        first = seconds(lambda: cut_off.append_events_sync(stream_ids[0], notes(2), expected_version=0))
        tombstones = [seconds(lambda: snapshots.publish_tombstones(stream_ids))]  # while it still tries to connect
        later = [seconds(lambda i=i: cut_off.append_events_sync(stream_ids[1 + i % 2], notes(1),
                                                                 expected_version=i // 2)) for i in range(5)]
        tombstones.append(seconds(lambda: snapshots.publish_tombstones(stream_ids)))
        # committed, waiting in the outbox
        assert [published_version(s) for s in stream_ids] == [0, 0, 0]
        assert [version_of(s) for s in stream_ids] == [2, 3, 2]
        assert outbox_backlog(cut_off, [STREAM_TYPE]) >= backlog + 7
        assert first < 3.0, f"the first append took {first}s"
        assert all(t < 1.0 for t in tombstones), f"publishing 3 tombstones took {tombstones}s"
        assert all(t < 0.5 for t in later), f"later appends took {later}s (the first {first}s)"
    finally:
        cut_off.publisher.close()
        relay_outbox(store, stream_types=[STREAM_TYPE], time_budget=20.0)  # to the session broker
    assert [published_version(s) for s in stream_ids] == [2, 3, 2]


# --- 6. an unfinished refill -----------------------------------------------------------------

def test_the_relay_publishes_nothing_while_a_refill_is_unfinished(store, client):
    stream_id = unique_stream(STREAM_TYPE)
    unpublished(store).append_events_sync(stream_id, notes(3), expected_version=0)
    store.recorder.begin_maintenance("refill", "test")
    try:
        with pytest.raises(RefillUnfinishedError, match="manage.py refill_kafka"):
            relay_outbox(store, stream_types=[STREAM_TYPE])
        assert published_version(stream_id) == 0

        response = client.get("/health/ready/")
        body = response.json()
        assert response.status_code == 503, body
        assert "kafka_publishing" in body["down"]
        publishing = body["checks"]["kafka_publishing"]
        assert publishing["status"] == "down"
        assert "refill" in publishing["error"] and "manage.py refill_kafka" in publishing["error"]
    finally:
        store.recorder.end_maintenance("refill")

    report = relay_outbox(store, stream_types=[STREAM_TYPE], time_budget=20.0)
    assert not report.skipped
    assert published_version(stream_id) == 3
    assert client.get("/health/ready/").json()["checks"]["kafka_publishing"]["status"] == "up"


# --- 7. a stream created during a refill ------------------------------------------------------

def test_a_stream_created_while_a_refill_settles_is_republished_into_the_recreated_topic(own_broker, store):
    broker, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    first, second = unique_stream(STREAM_TYPE), unique_stream(STREAM_TYPE)
    restarted = None
    messages: list[str] = []

    landed_before_recreate: list[int] = []

    def announce(message: str) -> None:
        messages.append(message)
        if message.startswith("waiting"):
            mine.append_events_sync(second, notes(2), expected_version=0)
            mine.flush(10)
            landed_before_recreate.append(published_version(second))

    try:
        mine.append_events_sync(first, notes(3), expected_version=0)
        assert mine.flush(30) and published_version(first) == 3

        broker.stop(kill=True)  # the memory-only broker loses everything
        restarted = start_tansu(port=broker.port, log_path=LOG_DIR / "tansu-refill-late-stream.log")
        provision_topics(kafka)
        # Committed meanwhile and relayed: the publisher works with the new broker again, so the
        # stream created during the refill is really published into the topic about to be emptied.
        mine.append_events_sync(first, notes(1, start=4), expected_version=3)
        deadline = time.monotonic() + 40
        while published_version(first) != 4:
            assert time.monotonic() < deadline, "the relay did not publish to the restarted broker"
            try:
                relay_outbox(mine, stream_types=[STREAM_TYPE], time_budget=10.0)
            except KafkaUnavailableError:
                time.sleep(1.0)
        assert kafka_versions(kafka, first) == [4]

        report = refill_kafka(mine, stream_types=[STREAM_TYPE], recreate_topics=True, settle_seconds=1.0,
                              announce=announce)
        assert landed_before_recreate == [2], (landed_before_recreate, messages)  # in the old topic
        assert version_of(second) == 2
        assert report.remaining == 0, report

        assert kafka_versions(kafka, first) == [1, 2, 3, 4]
        assert kafka_versions(kafka, second) == [1, 2]
        assert published_version(first) == 4 and published_version(second) == 2
        assert mine.load_events_sync(second, source="kafka") == mine.load_events_sync(second)
        assert store.recorder.maintenance() == []
    finally:
        mine.publisher.close()
        if restarted:
            restarted.stop(kill=True)
