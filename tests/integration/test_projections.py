"""The projectors, against the real store, database and broker.

Proven here:
- applying the same events twice changes nothing the second time (skipped by stream version);
- a gap in a stream's versions (a later version arrives first) is filled from the mirror, in order;
- a process killed after writing the read models but before its checkpoint leaves no trace:
  after a restart every count is right (the transaction held both);
- an event that cannot be applied becomes a dead letter, its stream waits behind it while other
  streams go on, and retrying applies it and what followed, from the mirror;
- a rebuild from Kafka and one from the mirror each equal the incrementally built read models,
  row for row (personal values compared decrypted), and the API's selectors keep answering from
  the old generation until the switch;
- personal values are stored encrypted under the child's key; after an erasure they read as
  None at once, and the projector then purges their ciphertext.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest


from eventsourcing_app.application import Actor
from eventsourcing_app.application.children import register_child_with_consent, update_child_profile
from eventsourcing_app.application.conversations import (
    end_conversation, raise_safety_flag, record_message, start_conversation, summarize_conversation,
)
from eventsourcing_app.application.parents import register_parent
from eventsourcing_app.application.privacy import erase_child_data
from eventsourcing_app.eventstore.records import StoredEvent
from eventsourcing_app.readside.engine import ProjectionEngine
from eventsourcing_app.readside.models import (
    ChildProfile, ConversationView, DeadLetter, ProjectorCheckpoint, SafetyAlert, StreamProgress, TimelineEntry,
)
from eventsourcing_app.readside.personal import SubjectKeyRing, child_subject
from eventsourcing_app.readside.projectors import PROJECTORS
from eventsourcing_app.readside.projectors.conversations import ConversationsProjector
from eventsourcing_app.readside.projectors.profiles import ProfilesProjector
from tests.integration.conftest import REPO as REPO_ROOT

SYSTEM = Actor.system("projection-tests")


def make_family(store, messages: int = 3):
    """A parent with one child and one ended conversation with a flag; returns their ids."""
    tag = uuid.uuid4().hex[:10]
    parent_id, child_id, conversation_id = f"p-{tag}", f"c-{tag}", f"v-{tag}"
    register_parent(actor=SYSTEM, parent_id=parent_id, email=f"{tag}@example.com", name="Pat Tester")
    register_child_with_consent(actor=SYSTEM, parent_id=parent_id, child_id=child_id, name="Robin", age=7,
                                consent_method="signed_form", device_id=f"bear-{tag}", udid=f"udid-{tag}")
    start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=child_id)
    for i in range(messages):
        record_message(actor=SYSTEM, conversation_id=conversation_id, speaker="child" if i % 2 == 0 else "bear",
                       text=f"message {i}")
    raise_safety_flag(actor=SYSTEM, conversation_id=conversation_id, category="bullying", severity="high")
    end_conversation(actor=SYSTEM, conversation_id=conversation_id)
    summarize_conversation(actor=SYSTEM, conversation_id=conversation_id, summary="Robin talked about school.")
    store.flush(10)
    return parent_id, child_id, conversation_id


def scratch_generation() -> int:
    """A generation no runner feeds (negative: a rebuild numbers its new one above the highest)."""
    return -(1 + uuid.uuid4().int % 1_000_000_000)


def events_of(store, *stream_ids) -> list[StoredEvent]:
    return [e for sid in stream_ids for e in store.load_events_sync(sid)]


def conversation_row(generation: int, conversation_id: str) -> ConversationView:
    return ConversationView.objects.get(generation=generation, conversation_id=conversation_id)


def test_the_same_events_twice_change_nothing(store):
    _, child_id, conversation_id = make_family(store)
    generation = scratch_generation()
    engine = ProjectionEngine(ConversationsProjector, generation)
    events = events_of(store, f"conversation.{conversation_id}")
    first = engine.apply_batch(events)
    before = conversation_row(generation, conversation_id)
    second = engine.apply_batch(events)
    after = conversation_row(generation, conversation_id)
    assert (first.applied, second.applied, second.skipped) == (len(events), 0, len(events))
    assert (after.child_messages, after.bear_messages, len(after.flags)) == (2, 1, 1)
    assert (before.child_messages, before.bear_messages, before.flags, before.version) == \
           (after.child_messages, after.bear_messages, after.flags, after.version)


def test_a_gap_on_the_topic_is_filled_from_the_mirror(store):
    _, child_id, conversation_id = make_family(store, messages=4)
    generation = scratch_generation()
    engine = ProjectionEngine(ConversationsProjector, generation)
    events = events_of(store, f"conversation.{conversation_id}")
    # Versions 1, 2, then 5..: 3 and 4 (two messages) never arrived from Kafka.
    arrived = [e for e in events if e.version not in (3, 4)]
    result = engine.apply_batch(arrived)
    row = conversation_row(generation, conversation_id)
    assert result.filled == 2
    assert (row.child_messages, row.bear_messages) == (2, 2)
    assert row.version == events[-1].version
    progress = StreamProgress.objects.get(projector="conversations", generation=generation,
                                          stream_id=f"conversation.{conversation_id}")
    assert progress.version == events[-1].version


CRASH_SCRIPT = """
import os, sys, json
import django
django.setup()
from eventsourcing_app.eventstore import get_event_store
from eventsourcing_app.readside import engine as engine_module
from eventsourcing_app.readside.engine import ProjectionEngine
from eventsourcing_app.readside.projectors.conversations import ConversationsProjector
generation, stream_id = int(sys.argv[1]), sys.argv[2]
events = get_event_store().load_events_sync(stream_id)
engine_module.before_checkpoint = lambda: os._exit(17)  # killed with the read models written, uncommitted
ProjectionEngine(ConversationsProjector, generation).apply_batch(events, {"topic:0": len(events)})
"""


def test_a_crash_between_the_read_models_and_the_checkpoint_leaves_no_double_count(store):
    _, _, conversation_id = make_family(store)
    stream_id = f"conversation.{conversation_id}"
    generation = scratch_generation()
    ProjectionEngine(ConversationsProjector, generation)  # its checkpoint row, as a running projector has
    done = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(generation), stream_id], cwd=REPO_ROOT,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
                               "DATABASE_URL": database_url()}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 17, done.stderr
    assert not ConversationView.objects.filter(generation=generation).exists()
    assert not StreamProgress.objects.filter(projector="conversations", generation=generation).exists()
    checkpoint = ProjectorCheckpoint.objects.get(projector="conversations", generation=generation)
    assert checkpoint.offsets == {} and checkpoint.events_applied == 0

    # Restarted: the same batch again (Kafka redelivers from the stored offsets), then once more.
    events = store.load_events_sync(stream_id)
    engine = ProjectionEngine(ConversationsProjector, generation)
    engine.apply_batch(events, {"topic:0": len(events)})
    engine.apply_batch(events, {"topic:0": len(events)})
    row = conversation_row(generation, conversation_id)
    assert (row.child_messages, row.bear_messages, len(row.flags)) == (2, 1, 1)
    checkpoint.refresh_from_db()
    assert checkpoint.offsets == {"topic:0": len(events)} and checkpoint.events_applied == len(events)


def database_url() -> str:
    from tests.integration.conftest import database_url as url

    return url()


def test_an_event_that_cannot_be_applied_holds_its_stream_and_is_retried(store):
    _, child_a, _ = make_family(store)
    _, child_b, _ = make_family(store)
    generation = scratch_generation()
    engine = ProjectionEngine(ProfilesProjector, generation)
    update_child_profile(actor=SYSTEM, child_id=child_a, changes={"age": 8})
    update_child_profile(actor=SYSTEM, child_id=child_a, changes={"language": "en"})
    a_events, b_events = events_of(store, f"child.{child_a}"), events_of(store, f"child.{child_b}")
    # Version 2 of child A arrives damaged from Kafka (its payload does not fit its type).
    damaged = StoredEvent(metadata=a_events[1].metadata, payload=b'{"unexpected": 1}', chain_hash=b"")
    result = engine.apply_batch([a_events[0], damaged, a_events[2], *b_events])
    assert result.dead_letters == 1
    letter = DeadLetter.objects.get(projector="profiles", generation=generation, stream_id=f"child.{child_a}")
    assert (letter.version, letter.event_type, letter.resolved_at) == (2, "ChildProfileUpdated", None)
    assert "unexpected" in letter.error
    a_row = ChildProfile.objects.get(generation=generation, child_id=child_a)
    b_row = ChildProfile.objects.get(generation=generation, child_id=child_b)
    assert a_row.version == 1  # held behind the dead letter: version 3 was not applied either
    assert b_row.version == len(b_events)  # the other stream went on

    released, still = engine.retry_dead_letters()  # the mirror holds the event intact
    assert (released, still) == (1, 0)
    a_row.refresh_from_db()
    assert a_row.version == 3
    keys = SubjectKeyRing([child_subject(child_a)])
    personal = keys.open(a_row.personal, child_subject(child_a), f"readside_child_profile:{child_a}")
    assert (personal["age"], personal["language"]) == (8, "en")
    letter.refresh_from_db()
    assert letter.resolved_at is not None
    assert StreamProgress.objects.get(projector="profiles", generation=generation,
                                      stream_id=f"child.{child_a}").held_at_version is None


def test_personal_values_are_sealed_and_read_as_erased_at_once(store):
    _, child_id, conversation_id = make_family(store)
    generation = scratch_generation()
    profiles = ProjectionEngine(ProfilesProjector, generation)
    conversations = ProjectionEngine(ConversationsProjector, generation)
    profiles.apply_batch(events_of(store, f"child.{child_id}"))
    conversations.apply_batch(events_of(store, f"conversation.{conversation_id}"))
    row = ChildProfile.objects.get(generation=generation, child_id=child_id)
    assert "Robin" not in json.dumps(row.personal)  # ciphertext only
    subject = child_subject(child_id)
    assert SubjectKeyRing([subject]).open(row.personal, subject, f"readside_child_profile:{child_id}")["name"] == "Robin"

    erase_child_data(actor=SYSTEM, child_id=child_id, reason="parent_request")
    # Before any projector saw the erasure: the key is gone, so the values are.
    assert SubjectKeyRing([subject]).open(row.personal, subject, f"readside_child_profile:{child_id}") == \
           {"name": None, "age": None, "udid": None}
    profiles.apply_batch(events_of(store, f"child.{child_id}"))
    conversations.apply_batch(events_of(store, f"child.{child_id}"))
    row.refresh_from_db()
    assert row.personal == {} and row.erased
    assert conversation_row(generation, conversation_id).personal == {}

    # Rebuilt after the erasure, from the same events: nothing of the child's is written at all.
    rebuilt = scratch_generation()
    for cls in PROJECTORS.values():
        ProjectionEngine(cls, rebuilt).apply_batch(events_of(store, f"child.{child_id}",
                                                             f"conversation.{conversation_id}"))
    for model in (m for cls in PROJECTORS.values() for m in cls.models):
        for values in model.objects.filter(generation=rebuilt, child_id=child_id).values():
            assert values.get("personal", {}) == {}, model.__name__
            assert "Robin" not in json.dumps(values, default=str)


def comparable_rows(model, generation: int, ids: dict[str, list[str]]) -> list[dict]:
    """A generation's rows of some streams' children/conversations, personal values opened."""
    key_field = "conversation_id" if "conversation_id" in [f.name for f in model._meta.fields] else "child_id"
    rows = list(model.objects.filter(generation=generation, **{f"{key_field}__in": ids[key_field]})
                .order_by(*[f.name for f in model._meta.fields if f.name not in ("id", "generation")]).values())
    keys = SubjectKeyRing(child_subject(r["child_id"]) for r in rows)
    for row in rows:
        row.pop("id"), row.pop("generation")
        if "personal" in row:
            context_key = row.get("conversation_id") if model is ConversationView else row["child_id"]
            row["personal"] = keys.open(row["personal"], child_subject(row["child_id"]),
                                        f"{model._meta.db_table}:{context_key}")
    return rows


def test_a_rebuild_equals_the_incremental_read_models(store, celery_worker):
    """The operator's rebuild, blue/green, against the session's worker (from the mirror: the
    session's topics hold thousands of single-event batches, which the test broker replays
    slowly from offset zero; the next test replays Kafka from zero on topics of its own)."""
    source = "mirror"
    from eventsourcing_app.readside.operations import drop_generation, rebuild
    from eventsourcing_app.readside.runner import active_generation
    from eventsourcing_app.readside.selectors import child_profile
    from tests.integration.helpers import wait_until

    from rest_framework.test import APIClient

    from eventsourcing_app.application.accounts import create_parent_account

    families = [make_family(store) for _ in range(3)]
    account = create_parent_account(email=f"rebuild-{uuid.uuid4().hex[:8]}@example.com",
                                    password="a-long-test-password-1")
    child_id = f"c-{uuid.uuid4().hex[:10]}"
    register_child_with_consent(actor=SYSTEM, parent_id=account.parent_id, child_id=child_id, name="Robin",
                                age=7, consent_method="signed_form")
    families.append((account.parent_id, child_id, families[0][2]))
    ids = {"child_id": [f[1] for f in families], "conversation_id": [f[2] for f in families]}
    parent_id = account.parent_id
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {account.token}")
    # The worker's projectors have applied everything of these families.
    for name in PROJECTORS:
        generation = active_generation(name)
        for _, c, v in families:
            for sid in (f"child.{c}", f"conversation.{v}"):
                if sid.split(".")[0] in PROJECTORS[name].stream_types:
                    wait_until(lambda: StreamProgress.objects.filter(
                        projector=name, generation=generation, stream_id=sid,
                        version=store.get_stream_version_sync(sid)).exists(), timeout=30)
    answered, old_generations = [], {}
    for name in ("profiles", "conversations", "alerts", "timeline", "dashboard"):
        old = active_generation(name)
        models = PROJECTORS[name].models
        before = {m.__name__: comparable_rows(m, old, ids) for m in models}

        def progress(_done):  # the API keeps answering from the old generation while it fills
            response = api.get(f"/api/v1/children/{child_id}/")
            answered.append((response.status_code, response.json().get("name")))

        report = rebuild(name, source=source, keep_old=True, progress=progress)
        assert report.old_generation == old and report.new_generation != old
        assert active_generation(name) == report.new_generation
        after = {m.__name__: comparable_rows(m, report.new_generation, ids) for m in models}
        assert after == before, name
        old_generations[name] = old
    assert answered and set(answered) == {(200, "Robin")}
    time.sleep(1.2)  # what the rebuild's grace period is for: readers that still hold the old generation
    for name, old in old_generations.items():
        drop_generation(name, old)
        assert not any(m.objects.filter(generation=old).exists() for m in PROJECTORS[name].models)
    # The worker's runners moved to the new generations: a new event reaches them.
    update_child_profile(actor=SYSTEM, child_id=child_id, changes={"age": 9})
    wait_until(lambda: child_profile(parent_id, child_id)["age"] == 9, timeout=30)


def test_alerts_and_timeline_follow_the_conversation(store):
    _, child_id, conversation_id = make_family(store)
    generation = scratch_generation()
    from eventsourcing_app.readside.projectors.alerts import AlertsProjector
    from eventsourcing_app.readside.projectors.timeline import TimelineProjector

    ProjectionEngine(AlertsProjector, generation).apply_batch(events_of(store, f"conversation.{conversation_id}"))
    alert = SafetyAlert.objects.get(generation=generation, conversation_id=conversation_id)
    assert (alert.flag_number, alert.category, alert.severity, alert.state) == (1, "bullying", "high", "open")
    timeline = ProjectionEngine(TimelineProjector, generation)
    timeline.apply_batch(events_of(store, f"child.{child_id}", f"conversation.{conversation_id}"))
    titles = list(TimelineEntry.objects.filter(generation=generation, child_id=child_id)
                  .order_by("occurred_at", "id").values_list("title", flat=True))
    assert titles[0] == "Registered"
    assert "Safety flag raised: bullying (high)" in titles
    assert not any("Robin" in t or "message" in t for t in titles)  # no personal data in the timeline


def test_catching_up_from_kafka_offset_zero_equals_the_incremental_read_models(own_broker):
    """Every projector fed batch by batch while events arrive, and again from offset zero in
    one go, on a broker and topics of this test: the same rows."""
    from eventsourcing_app.domain import Child, Conversation
    from eventsourcing_app.eventstore import build_event_store
    from eventsourcing_app.eventstore.repository import EventSourcingRepositoryImpl
    from eventsourcing_app.readside.runner import ProjectionRunner

    _, kafka_settings = own_broker
    own_store = build_event_store(kafka_settings=kafka_settings)
    children = EventSourcingRepositoryImpl(Child, event_store=own_store, cache=False)
    conversations = EventSourcingRepositoryImpl(Conversation, event_store=own_store, cache=False)
    tag = uuid.uuid4().hex[:8]
    ids = {"child_id": [], "conversation_id": []}
    incremental, from_zero = scratch_generation(), scratch_generation()
    try:
        for round_ in range(3):
            for n in range(3):
                child = Child(id=f"k-{tag}-{round_}-{n}", parent_id=f"p-{tag}", name=f"Kid {n}", age=5 + n)
                child.register_child()
                child.update_profile({"interests": ["dragons"], "language": "en"})
                children.save_sync(child)
                conversation = Conversation(f"kv-{tag}-{round_}-{n}")
                conversation.start(child.id, f"bear-{n}")
                for m in range(4):
                    conversation.record_message("child" if m % 2 == 0 else "bear", f"words {m}")
                conversation.raise_safety_flag("personal_info", "low", 2)
                conversation.end()
                conversation.summarize(f"summary {n}")
                conversations.save_sync(conversation)
                ids["child_id"].append(child.id)
                ids["conversation_id"].append(conversation.id)
            assert own_store.flush(30)
            for cls in PROJECTORS.values():  # each round resumes from the stored positions
                runner = ProjectionRunner(cls, kafka_settings, generation=incremental)
                try:
                    runner.catch_up(timeout=120)
                finally:
                    runner.close()
        for name, cls in PROJECTORS.items():
            runner = ProjectionRunner(cls, kafka_settings, generation=from_zero)
            try:
                runner.catch_up(timeout=120)
            finally:
                runner.close()
            for model in cls.models:
                built, replayed = comparable_rows(model, incremental, ids), comparable_rows(model, from_zero, ids)
                assert replayed == built and built, f"{name}: {model.__name__}"
    finally:
        own_store.publisher.close()


def test_a_held_stream_stays_held_where_it_stopped(store):
    """Later versions of a held stream, even undecodable ones, neither move its hold nor get
    applied; the other streams of the batch go on."""
    _, child_id, _ = make_family(store)
    generation = scratch_generation()
    engine = ProjectionEngine(ProfilesProjector, generation)
    for n in range(3):
        update_child_profile(actor=SYSTEM, child_id=child_id, changes={"age": 4 + n})
    events = events_of(store, f"child.{child_id}")
    damaged = [StoredEvent(metadata=e.metadata, payload=b'{"unexpected": 1}') for e in events]
    engine.apply_batch([events[0], damaged[1]])
    engine.apply_batch([damaged[2], damaged[3], events[3]])
    progress = StreamProgress.objects.get(projector="profiles", generation=generation, stream_id=f"child.{child_id}")
    assert (progress.version, progress.held_at_version) == (1, 2)
    assert list(DeadLetter.objects.filter(projector="profiles", generation=generation)
                .values_list("version", flat=True)) == [2]
    assert engine.retry_dead_letters() == (1, 0)
    assert engine.retry_dead_letters() == (0, 0)  # nothing held any more: nothing applied twice
    row = ChildProfile.objects.get(generation=generation, child_id=child_id)
    assert row.version == 4


def test_a_gap_the_mirror_cannot_fill_holds_the_stream(store):
    from dataclasses import replace

    _, child_id, _ = make_family(store)
    generation = scratch_generation()
    engine = ProjectionEngine(ProfilesProjector, generation)
    first = events_of(store, f"child.{child_id}")[0]
    bogus = StoredEvent(metadata=replace(first.metadata, version=10**6), payload=first.payload)
    result = engine.apply_batch([first, bogus])
    assert result.dead_letters == 1
    progress = StreamProgress.objects.get(projector="profiles", generation=generation, stream_id=f"child.{child_id}")
    assert (progress.version, progress.held_at_version) == (1, 2)  # not jumped to version 1,000,000
    letter = DeadLetter.objects.get(projector="profiles", generation=generation, stream_id=f"child.{child_id}")
    assert "not in the event store" in letter.error


def test_a_value_the_database_refuses_becomes_a_dead_letter_not_a_stuck_projector(store):
    """Consent recorded for a child id longer than the read model's column: that parent's
    stream is held, every other stream of the batch is applied."""
    from eventsourcing_app.application.parents import grant_consent
    from eventsourcing_app.readside.models import FamilyChild
    from eventsourcing_app.readside.projectors.dashboard import DashboardProjector

    parent_id, child_id, _ = make_family(store)
    other_parent, other_child, _ = make_family(store)
    grant_consent(actor=SYSTEM, parent_id=parent_id, child_id="x" * 150, method="signed_form")
    generation = scratch_generation()
    result = ProjectionEngine(DashboardProjector, generation).apply_batch(
        events_of(store, f"parent.{parent_id}", f"child.{child_id}", f"parent.{other_parent}", f"child.{other_child}"))
    assert result.dead_letters == 1
    letter = DeadLetter.objects.get(projector="dashboard", generation=generation)
    assert (letter.stream_id, letter.version) == (f"parent.{parent_id}", 1)
    assert FamilyChild.objects.filter(generation=generation, child_id__in=[child_id, other_child]).count() == 2


def test_a_second_writer_on_the_same_generation_is_fenced_off(store):
    """Two runners believing they feed one generation (a lock lost with its connection): the
    one that did not write last is refused and rolled back, then goes on from the stored
    positions; nothing is applied twice."""
    from eventsourcing_app.readside.engine import Fenced

    _, _, conversation_id = make_family(store)
    generation = scratch_generation()
    first, second = (ProjectionEngine(ConversationsProjector, generation) for _ in range(2))
    events = events_of(store, f"conversation.{conversation_id}")
    first.apply_batch(events[:3], {"t:0": 3})
    with pytest.raises(Fenced):
        second.apply_batch(events, {"t:0": len(events)})
    row = conversation_row(generation, conversation_id)
    assert (row.version, row.child_messages, row.bear_messages) == (3, 1, 1)  # the refused batch left nothing
    second.resync()
    second.apply_batch(events, {"t:0": len(events)})
    row = conversation_row(generation, conversation_id)
    assert (row.version, row.child_messages, row.bear_messages) == (len(events), 2, 1)


def test_a_record_that_is_no_event_is_kept_as_a_dead_letter_and_passed_over(own_broker):
    from confluent_kafka import Producer

    from eventsourcing_app.domain import Child
    from eventsourcing_app.eventstore import build_event_store
    from eventsourcing_app.eventstore.repository import EventSourcingRepositoryImpl
    from eventsourcing_app.readside.runner import ProjectionRunner

    _, kafka_settings = own_broker
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    producer.produce(kafka_settings.event_topic("child"), key=b"child.junk", value=b"not an event")
    assert producer.flush(10) == 0
    own_store = build_event_store(kafka_settings=kafka_settings)
    try:
        child = Child(id=f"k-{uuid.uuid4().hex[:8]}", parent_id="p-junk", name="Kid", age=6)
        child.register_child()
        EventSourcingRepositoryImpl(Child, event_store=own_store, cache=False).save_sync(child)
        assert own_store.flush(30)
        generation = scratch_generation()
        runner = ProjectionRunner(ProfilesProjector, kafka_settings, generation=generation)
        try:
            runner.catch_up(timeout=60)
        finally:
            runner.close()
    finally:
        own_store.publisher.close()
    letter = DeadLetter.objects.get(projector="profiles", generation=generation)
    assert letter.event_type == "(unreadable record)" and letter.stream_id.startswith("kafka:")
    assert "not an event of this store" in letter.error
    assert ChildProfile.objects.filter(generation=generation, child_id=child.id).exists()


def test_the_projections_command_reports_and_refuses_bad_names(capsys):
    from django.core.management import CommandError, call_command

    call_command("projections", "status", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PROJECTORS)
    assert all(isinstance(r["lag_events"], int) and r["lag_events"] >= 0 for r in rows)
    for args in (["rebuild", "nope"], ["rebuild"], ["rebuild", "profiles", "--all"], ["retry-dead-letters", "nope"]):
        with pytest.raises(CommandError) as refused:
            call_command("projections", *args)
        assert "profiles" in str(refused.value)  # names the projectors there are


def test_a_generation_filled_from_the_mirror_goes_on_from_kafka_where_nothing_is_skipped():
    from eventsourcing_app.readside.operations import mirror_replay_start

    recorded = {"t.conversation:0": 120, "t.conversation:1": 80}  # after the mirror's last recorded offsets
    # As usual: the served generation's positions, where they are not past what the mirror recorded.
    assert mirror_replay_start({"t.conversation:0": 118, "t.conversation:1": 80}, recorded) == {
        "t.conversation:0": 118, "t.conversation:1": 80}
    # After `refill_kafka --recreate-topics`: the served positions point into the deleted logs,
    # far past the new ones; the new generation goes on where the new logs' records begin to be
    # missing from the scan, not where the old logs ended (which would skip every event until
    # the new logs grew that far).
    assert mirror_replay_start({"t.conversation:0": 5_000, "t.conversation:1": 4_000}, recorded) == recorded
    # A partition the mirror recorded nothing for is read from its start; one only the mirror knows
    # is read after what it recorded; no served generation: the mirror's.
    assert mirror_replay_start({"t.conversation:0": 5_000, "t.conversation:2": 7}, {"t.conversation:1": 80}) == {
        "t.conversation:0": 0, "t.conversation:2": 0, "t.conversation:1": 80}
    assert mirror_replay_start(None, recorded) == recorded
