"""The application layer's command handlers, against the real store.

Proven here:
- every handler's happy path returns a CommandResult naming the stream and its new version,
  and the events it stored carry the acting user or system job as their actor;
- every domain error and every application error (NotFound, PermissionDenied, ConsentRequired,
  Conflict) leaves every stream as it was: nothing is stored anywhere;
- consent is enforced: no child without consent; withdrawing it deactivates the child in the
  same transaction (both or neither), after which nothing more is recorded about the child,
  also in a conversation already going on;
- a parent acts only on their own family (another family's child is "not found"); system jobs
  and staff act on any family;
- concurrent commands on one child all succeed (conflicts are retried) and the stream holds
  every change, without gaps;
- an event appended while serving a DRF request is attributed to the user DRF authenticated
  (the middleware's actor is read when the event is appended) and carries the request's
  correlation id;
- a parent acknowledges the safety flags of their own child's conversations (also after the end
  and after consent was withdrawn), once: a second acknowledgement stores nothing; another
  family's conversation is "not found"; a bad flag number stores nothing.
"""
from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import RequestFactory
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from eventsourcing_app.application import (
    Actor,
    acknowledge_safety_flag,
    CommandResult,
    Conflict,
    ConsentRequired,
    InvalidActor,
    NotFound,
    PermissionDenied,
    change_safety_settings,
    deactivate_child,
    deactivate_parent,
    end_conversation,
    erase_child_data,
    export_child_data,
    grant_consent,
    pair_device,
    raise_safety_flag,
    record_message,
    register_child,
    register_parent,
    start_conversation,
    summarize_conversation,
    unpair_device,
    update_child_profile,
    update_parent_settings,
    withdraw_consent,
)
from eventsourcing_app.domain import (
    AggregateDeactivated,
    AlreadyRegistered,
    Child,
    ConsentError,
    Conversation,
    ConversationAlreadyEnded,
    ConversationAlreadyStarted,
    ConversationNotEnded,
    DevicePairingError,
    InvalidAge,
    InvalidName,
    InvalidValue,
    Parent,
    UnknownProfileField,
    UnknownSettingField,
)
from eventsourcing_app.eventstore import (
    EventSourcingRepositoryImpl,
    deserialize_event,
    get_event_sourcing_service,
)
from eventsourcing_app.models import Event, Stream
from eventsourcing_app.observability import CorrelationIdMiddleware, current_actor, event_context

SETUP = Actor.system("test-setup")
SYSTEM = Actor.system("test")
BEAR = Actor.system("bear-service")


def uid() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class World:
    """Two families, built through the application layer by a system job.

    parent: registered, consent for child, child2, pending and gone
    child: registered with a device, an open conversation (1 message) and an ended one
    child2: registered without a device; pending: consent but not registered
    gone: registered and deactivated; unconsented: an id without consent
    other_parent with other_child (their own family, with a device)
    """

    parent: str
    child: str
    device: str
    child2: str
    pending: str
    gone: str
    unconsented: str
    conv_open: str
    conv_ended: str
    other_parent: str
    other_child: str
    new_parent: str
    new_conversation: str

    @property
    def parent_user(self) -> Actor:
        return Actor.user(7, parent_id=self.parent)

    def streams(self) -> list[str]:
        return [f"parent.{self.parent}", f"parent.{self.other_parent}", f"parent.{self.new_parent}",
                *(f"child.{c}" for c in (self.child, self.child2, self.pending, self.gone, self.unconsented,
                                         self.other_child)),
                *(f"conversation.{c}" for c in (self.conv_open, self.conv_ended, self.new_conversation))]


def build_world() -> World:
    n = uid()
    w = World(parent=f"parent-{n}", child=f"child-{n}", device=f"bear-{n}", child2=f"child2-{n}",
              pending=f"pending-{n}", gone=f"gone-{n}", unconsented=f"nocons-{n}", conv_open=f"conv-{n}",
              conv_ended=f"ended-{n}", other_parent=f"otherp-{n}", other_child=f"otherc-{n}",
              new_parent=f"newp-{n}", new_conversation=f"newconv-{n}")
    register_parent(actor=SETUP, parent_id=w.parent, email=f"{n}@example.org", name="Robin")
    for child_id in (w.child, w.child2, w.pending, w.gone):
        grant_consent(actor=SETUP, parent_id=w.parent, child_id=child_id, method="signed_form")
    register_child(actor=SETUP, child_id=w.child, parent_id=w.parent, name="Alice", age=6, device_id=w.device,
                   udid="udid-alice")
    register_child(actor=SETUP, child_id=w.child2, parent_id=w.parent, name="Bruno", age=8)
    register_child(actor=SETUP, child_id=w.gone, parent_id=w.parent, name="Gina", age=9)
    deactivate_child(actor=SETUP, child_id=w.gone, reason="moved away")
    start_conversation(actor=SETUP, conversation_id=w.conv_open, child_id=w.child)
    record_message(actor=SETUP, conversation_id=w.conv_open, speaker="child", text="Hello Teddy")
    start_conversation(actor=SETUP, conversation_id=w.conv_ended, child_id=w.child, device_id=w.device)
    record_message(actor=SETUP, conversation_id=w.conv_ended, speaker="bear", text="Good night")
    end_conversation(actor=SETUP, conversation_id=w.conv_ended)
    register_parent(actor=SETUP, parent_id=w.other_parent, email=f"o{n}@example.org", name="Olu")
    grant_consent(actor=SETUP, parent_id=w.other_parent, child_id=w.other_child, method="credit_card")
    register_child(actor=SETUP, child_id=w.other_child, parent_id=w.other_parent, name="Omar", age=10,
                   device_id=f"obear-{n}", udid="udid-omar")
    return w


@pytest.fixture
def world(store) -> World:
    return build_world()


def store_():
    return get_event_sourcing_service().event_store


def events_of(stream_id: str):
    return store_().load_events_sync(stream_id)


def everything(streams) -> tuple:
    """All events of these streams (ids, versions, bytes, metadata) and the store's totals."""
    return ({s: [(e.event_id, e.version, e.payload, e.metadata.actor, e.metadata.correlation_id)
                 for e in events_of(s)] for s in streams},
            Event.objects.count(), Stream.objects.count())


def types_after(stream_id: str, version: int) -> list[str]:
    return [e.event_type for e in events_of(stream_id) if e.version > version]


def load(cls, aggregate_id):
    return EventSourcingRepositoryImpl(cls, cache=False).load_sync(aggregate_id)


# --- 5. happy paths ----------------------------------------------------------------------

# (id, actor, command, stream the result is about, {stream: new event types}, check of the new state)
HAPPY = [
    ("register_parent", lambda w: Actor.user(7, parent_id=w.new_parent),
     lambda w, a: register_parent(actor=a, parent_id=w.new_parent, email="new@Example.ORG", name="Nia",
                                  phone="+1 555 0100 123"),
     lambda w: f"parent.{w.new_parent}", lambda w: {f"parent.{w.new_parent}": ["ParentRegistered"]},
     lambda w: (load(Parent, w.new_parent).email, load(Parent, w.new_parent).active) == ("new@example.org", True)),
    ("update_parent_settings", lambda w: w.parent_user,
     lambda w, a: update_parent_settings(actor=a, parent_id=w.parent,
                                         settings={"weekly_report": False, "timezone": "Europe/Berlin"}),
     lambda w: f"parent.{w.parent}", lambda w: {f"parent.{w.parent}": ["ParentSettingsUpdated"]},
     lambda w: load(Parent, w.parent).settings["timezone"] == "Europe/Berlin"),
    ("grant_consent", lambda w: w.parent_user,
     lambda w, a: grant_consent(actor=a, parent_id=w.parent, child_id=w.unconsented, method="video_call"),
     lambda w: f"parent.{w.parent}", lambda w: {f"parent.{w.parent}": ["ParentalConsentGranted"]},
     lambda w: load(Parent, w.parent).has_consent(w.unconsented)),
    ("withdraw_consent", lambda w: w.parent_user,
     lambda w, a: withdraw_consent(actor=a, parent_id=w.parent, child_id=w.child, reason="we stopped using it"),
     lambda w: f"parent.{w.parent}",
     lambda w: {f"parent.{w.parent}": ["ParentalConsentWithdrawn"], f"child.{w.child}": ["ChildDeactivated"]},
     lambda w: not load(Parent, w.parent).has_consent(w.child) and not load(Child, w.child).active),
    ("deactivate_parent", lambda w: w.parent_user,
     lambda w, a: deactivate_parent(actor=a, parent_id=w.parent, reason="closing the account"),
     lambda w: f"parent.{w.parent}", lambda w: {f"parent.{w.parent}": ["ParentDeactivated"]},
     lambda w: not load(Parent, w.parent).active),
    ("register_child", lambda w: w.parent_user,
     lambda w, a: register_child(actor=a, child_id=w.pending, parent_id=w.parent, name="Pia", age=4),
     lambda w: f"child.{w.pending}", lambda w: {f"child.{w.pending}": ["ChildRegistered"]},
     lambda w: (load(Child, w.pending).name, load(Child, w.pending).parent_id) == ("Pia", w.parent)),
    ("update_child_profile", lambda w: w.parent_user,
     lambda w, a: update_child_profile(actor=a, child_id=w.child, changes={"interests": ["space"], "language": "fr"}),
     lambda w: f"child.{w.child}", lambda w: {f"child.{w.child}": ["ChildProfileUpdated"]},
     lambda w: (load(Child, w.child).interests, load(Child, w.child).language) == (["space"], "fr")),
    ("pair_device", lambda w: SYSTEM,
     lambda w, a: pair_device(actor=a, child_id=w.child2, device_id=f"bear2-{w.child2}", udid="udid-bruno"),
     lambda w: f"child.{w.child2}", lambda w: {f"child.{w.child2}": ["DevicePaired"]},
     lambda w: load(Child, w.child2).device_id == f"bear2-{w.child2}"),
    ("unpair_device", lambda w: w.parent_user,
     lambda w, a: unpair_device(actor=a, child_id=w.child, reason="lost the bear"),
     lambda w: f"child.{w.child}", lambda w: {f"child.{w.child}": ["DeviceUnpaired"]},
     lambda w: load(Child, w.child).device_id is None),
    ("change_safety_settings", lambda w: w.parent_user,
     lambda w, a: change_safety_settings(actor=a, child_id=w.child, content_filter_level="moderate",
                                         daily_time_limit_minutes=45),
     lambda w: f"child.{w.child}", lambda w: {f"child.{w.child}": ["SafetySettingsChanged"]},
     lambda w: (load(Child, w.child).content_filter_level, load(Child, w.child).daily_time_limit_minutes)
     == ("moderate", 45)),
    ("deactivate_child", lambda w: w.parent_user,
     lambda w, a: deactivate_child(actor=a, child_id=w.child2, reason="too young after all"),
     lambda w: f"child.{w.child2}", lambda w: {f"child.{w.child2}": ["ChildDeactivated"]},
     lambda w: not load(Child, w.child2).active),
    ("start_conversation", lambda w: BEAR,
     lambda w, a: start_conversation(actor=a, conversation_id=w.new_conversation, child_id=w.child,
                                     device_id=w.device),
     lambda w: f"conversation.{w.new_conversation}",
     lambda w: {f"conversation.{w.new_conversation}": ["ConversationStarted"]},
     lambda w: load(Conversation, w.new_conversation).child_id == w.child),
    ("record_message", lambda w: BEAR,
     lambda w, a: record_message(actor=a, conversation_id=w.conv_open, speaker="bear", text="Hello Alice!"),
     lambda w: f"conversation.{w.conv_open}", lambda w: {f"conversation.{w.conv_open}": ["MessageRecorded"]},
     lambda w: [m.text for m in load(Conversation, w.conv_open).messages] == ["Hello Teddy", "Hello Alice!"]),
    ("raise_safety_flag", lambda w: BEAR,
     lambda w, a: raise_safety_flag(actor=a, conversation_id=w.conv_open, category="personal_info",
                                    severity="medium", message_sequence=1),
     lambda w: f"conversation.{w.conv_open}", lambda w: {f"conversation.{w.conv_open}": ["SafetyFlagRaised"]},
     lambda w: [(f.category, f.message_sequence) for f in load(Conversation, w.conv_open).safety_flags]
     == [("personal_info", 1)]),
    ("end_conversation", lambda w: BEAR,
     lambda w, a: end_conversation(actor=a, conversation_id=w.conv_open, reason="bedtime"),
     lambda w: f"conversation.{w.conv_open}", lambda w: {f"conversation.{w.conv_open}": ["ConversationEnded"]},
     lambda w: load(Conversation, w.conv_open).ended),
    ("summarize_conversation", lambda w: BEAR,
     lambda w, a: summarize_conversation(actor=a, conversation_id=w.conv_ended, summary="Said good night."),
     lambda w: f"conversation.{w.conv_ended}",
     lambda w: {f"conversation.{w.conv_ended}": ["ConversationSummarized"]},
     lambda w: load(Conversation, w.conv_ended).summary == "Said good night."),
]


@pytest.mark.parametrize("actor_of, command, stream_of, new_events_of, check",
                         [case[1:] for case in HAPPY], ids=[case[0] for case in HAPPY])
def test_a_command_stores_its_events_with_the_actor_and_returns_the_new_version(world, actor_of, command,
                                                                                 stream_of, new_events_of, check):
    actor = actor_of(world)
    expected = new_events_of(world)
    versions = {s: store_().get_stream_version_sync(s) for s in world.streams()}
    untouched_before = everything([s for s in world.streams() if s not in expected])

    result = command(world, actor)

    assert isinstance(result, CommandResult)
    assert result.stream_id == stream_of(world)
    assert result.version == store_().get_stream_version_sync(result.stream_id) == result.streams[result.stream_id]
    assert result.streams == {s: store_().get_stream_version_sync(s) for s in expected}
    for stream_id, types in expected.items():
        new = [e for e in events_of(stream_id) if e.version > versions[stream_id]]
        assert [e.event_type for e in new] == types
        assert [e.version for e in new] == list(range(versions[stream_id] + 1, versions[stream_id] + 1 + len(types)))
        assert {e.metadata.actor for e in new} == {actor.id}
    untouched_after = everything([s for s in world.streams() if s not in expected])
    assert untouched_after[0] == untouched_before[0]  # no other stream changed...
    new_streams = sum(1 for s in expected if versions[s] == 0)
    assert untouched_after[1:] == (untouched_before[1] + sum(map(len, expected.values())),  # ...nor any elsewhere
                                   untouched_before[2] + new_streams)
    assert check(world)


def test_erase_child_data_records_who_erased_and_makes_the_personal_data_unreadable(world):
    actor = Actor.user(7, parent_id=world.parent)
    before = store_().get_stream_version_sync(f"child.{world.child}")
    report = erase_child_data(actor=actor, child_id=world.child, reason="parent_request")
    assert report.key_destroyed and report.erasure_version == before + 1
    assert f"child.{world.child}" in report.streams and f"conversation.{world.conv_open}" in report.streams
    last = events_of(f"child.{world.child}")[-1]
    assert (last.version, last.event_type, last.metadata.actor) == (before + 1, "ChildDataErased", actor.id)
    assert deserialize_event(last).erased_by == actor.id
    child = load(Child, world.child)
    assert child.erased and child.name is None and child.age is None
    assert [m.text for m in load(Conversation, world.conv_open).messages] == [None]
    assert load(Child, world.other_child).name == "Omar"  # another child is untouched


def test_export_child_data_returns_everything_held_about_the_child_and_stores_nothing(world):
    update_child_profile(actor=world.parent_user, child_id=world.child, changes={"interests": ["trains"]})
    before = everything(world.streams())
    export = export_child_data(actor=world.parent_user, child_id=world.child)
    assert everything(world.streams()) == before
    json.dumps(export)  # JSON-ready
    assert export["subject"] == f"child:{world.child}" and export["exported_by"] == "user:7"
    assert export["child"]["name"] == "Alice" and export["child"]["interests"] == ["trains"]
    assert export["erased"] is False
    streams = export["streams"]
    assert [e["event_type"] for e in streams[f"child.{world.child}"]] == ["ChildRegistered", "ChildProfileUpdated"]
    assert streams[f"child.{world.child}"][0]["data"]["name"] == "Alice"  # decrypted
    assert [e["data"]["text"] for e in streams[f"conversation.{world.conv_open}"]
            if e["event_type"] == "MessageRecorded"] == ["Hello Teddy"]
    assert f"conversation.{world.conv_ended}" in streams
    # the parent's stream contributes only what concerns this child
    mentions = streams[f"parent.{world.parent}"]
    assert [e["event_type"] for e in mentions] == ["ParentalConsentGranted"]
    assert all(e["data"]["child_id"] == world.child for e in mentions)
    assert export["consent"]["method"] == "signed_form" and export["consent"]["withdrawn_at"] is None
    assert not any(world.other_child in s or world.child2 in s for s in streams)


# --- 6. errors change nothing ------------------------------------------------------------

def _deactivate_parent(w):
    deactivate_parent(actor=SETUP, parent_id=w.parent)


# (id, prepare (before the "before" picture), the failing command, the error)
FAILURES = [
    # domain errors
    ("register_parent-invalid-email", None,
     lambda w: register_parent(actor=SYSTEM, parent_id=w.new_parent, email="not-an-email", name="Nia"), InvalidValue),
    ("register_parent-twice", None,
     lambda w: register_parent(actor=SYSTEM, parent_id=w.parent, email="x@example.org", name="Robin"),
     AlreadyRegistered),
    ("update_parent_settings-unknown-setting", None,
     lambda w: update_parent_settings(actor=w.parent_user, parent_id=w.parent, settings={"theme": "dark"}),
     UnknownSettingField),
    ("update_parent_settings-bad-timezone", None,
     lambda w: update_parent_settings(actor=w.parent_user, parent_id=w.parent, settings={"timezone": "Mars/Base"}),
     InvalidValue),
    ("update_parent_settings-deactivated", _deactivate_parent,
     lambda w: update_parent_settings(actor=w.parent_user, parent_id=w.parent, settings={"weekly_report": False}),
     AggregateDeactivated),
    ("grant_consent-unknown-method", None,
     lambda w: grant_consent(actor=w.parent_user, parent_id=w.parent, child_id=w.unconsented,
                             method="pinky_promise"), InvalidValue),
    ("grant_consent-twice", None,
     lambda w: grant_consent(actor=w.parent_user, parent_id=w.parent, child_id=w.child, method="signed_form"),
     ConsentError),
    ("withdraw_consent-none-in-force", None,
     lambda w: withdraw_consent(actor=w.parent_user, parent_id=w.parent, child_id=w.unconsented), ConsentError),
    ("deactivate_parent-twice", _deactivate_parent,
     lambda w: deactivate_parent(actor=w.parent_user, parent_id=w.parent), AggregateDeactivated),
    ("register_child-invalid-age", None,
     lambda w: register_child(actor=w.parent_user, child_id=w.pending, parent_id=w.parent, name="Pia", age=14),
     InvalidAge),
    ("register_child-invalid-name", None,
     lambda w: register_child(actor=w.parent_user, child_id=w.pending, parent_id=w.parent, name="  ", age=5),
     InvalidName),
    ("register_child-twice", None,
     lambda w: register_child(actor=w.parent_user, child_id=w.child, parent_id=w.parent, name="Alice", age=6),
     AlreadyRegistered),
    ("update_child_profile-unknown-field", None,
     lambda w: update_child_profile(actor=w.parent_user, child_id=w.child, changes={"favourite_colour": "blue"}),
     UnknownProfileField),
    ("update_child_profile-invalid-age", None,
     lambda w: update_child_profile(actor=w.parent_user, child_id=w.child, changes={"age": 2}), InvalidAge),
    ("update_child_profile-deactivated", None,
     lambda w: update_child_profile(actor=w.parent_user, child_id=w.gone, changes={"age": 10}),
     AggregateDeactivated),
    ("pair_device-second-device", None,
     lambda w: pair_device(actor=w.parent_user, child_id=w.child, device_id="another-bear", udid="udid-x"),
     DevicePairingError),
    ("unpair_device-none-paired", None,
     lambda w: unpair_device(actor=w.parent_user, child_id=w.child2), DevicePairingError),
    ("change_safety_settings-unknown-level", None,
     lambda w: change_safety_settings(actor=w.parent_user, child_id=w.child, content_filter_level="anything-goes",
                                      daily_time_limit_minutes=60), InvalidValue),
    ("change_safety_settings-too-long", None,
     lambda w: change_safety_settings(actor=w.parent_user, child_id=w.child, content_filter_level="strict",
                                      daily_time_limit_minutes=24 * 60 + 1), InvalidValue),
    ("deactivate_child-twice", None,
     lambda w: deactivate_child(actor=w.parent_user, child_id=w.gone), AggregateDeactivated),
    ("start_conversation-other-device", None,
     lambda w: start_conversation(actor=BEAR, conversation_id=w.new_conversation, child_id=w.child,
                                  device_id="a-strangers-bear"), DevicePairingError),
    ("start_conversation-no-device", None,
     lambda w: start_conversation(actor=BEAR, conversation_id=w.new_conversation, child_id=w.child2),
     DevicePairingError),
    ("start_conversation-twice", None,
     lambda w: start_conversation(actor=BEAR, conversation_id=w.conv_open, child_id=w.child),
     ConversationAlreadyStarted),
    ("start_conversation-deactivated-child", None,
     lambda w: start_conversation(actor=BEAR, conversation_id=w.new_conversation, child_id=w.gone),
     AggregateDeactivated),
    ("record_message-after-end", None,
     lambda w: record_message(actor=BEAR, conversation_id=w.conv_ended, speaker="child", text="Are you there?"),
     ConversationAlreadyEnded),
    ("record_message-unknown-speaker", None,
     lambda w: record_message(actor=BEAR, conversation_id=w.conv_open, speaker="parent", text="Hi"), InvalidValue),
    ("raise_safety_flag-no-such-message", None,
     lambda w: raise_safety_flag(actor=BEAR, conversation_id=w.conv_open, category="bullying", severity="high",
                                 message_sequence=5), InvalidValue),
    ("raise_safety_flag-unknown-category", None,
     lambda w: raise_safety_flag(actor=BEAR, conversation_id=w.conv_open, category="weather", severity="low"),
     InvalidValue),
    ("end_conversation-twice", None,
     lambda w: end_conversation(actor=BEAR, conversation_id=w.conv_ended), ConversationAlreadyEnded),
    ("summarize_conversation-before-end", None,
     lambda w: summarize_conversation(actor=BEAR, conversation_id=w.conv_open, summary="Too early"),
     ConversationNotEnded),
    # application errors
    ("register_child-without-consent", None,
     lambda w: register_child(actor=w.parent_user, child_id=w.unconsented, parent_id=w.parent, name="Una", age=5),
     ConsentRequired),
    ("register_child-unknown-parent", None,
     lambda w: register_child(actor=SYSTEM, child_id=w.unconsented, parent_id=w.new_parent, name="Una", age=5),
     NotFound),
    ("register_child-other-family", None,
     lambda w: register_child(actor=w.parent_user, child_id=w.pending, parent_id=w.other_parent, name="Pia", age=5),
     PermissionDenied),
    ("grant_consent-for-another-parents-child", None,
     lambda w: grant_consent(actor=SYSTEM, parent_id=w.parent, child_id=w.other_child, method="signed_form"),
     PermissionDenied),
    ("update_parent_settings-unknown-parent", None,
     lambda w: update_parent_settings(actor=SYSTEM, parent_id=w.new_parent, settings={"weekly_report": False}),
     NotFound),
    ("update_child_profile-unknown-child", None,
     lambda w: update_child_profile(actor=SYSTEM, child_id=w.unconsented, changes={"age": 5}), NotFound),
    ("update_child_profile-other-family", None,
     lambda w: update_child_profile(actor=w.parent_user, child_id=w.other_child, changes={"age": 5}), NotFound),
    ("record_message-unknown-conversation", None,
     lambda w: record_message(actor=BEAR, conversation_id=w.new_conversation, speaker="child", text="Hi"), NotFound),
    ("end_conversation-unknown-conversation", None,
     lambda w: end_conversation(actor=BEAR, conversation_id=w.new_conversation), NotFound),
    ("erase_child_data-unknown-child", None,
     lambda w: erase_child_data(actor=SYSTEM, child_id=w.unconsented, reason="parent_request"), NotFound),
    ("erase_child_data-free-text-reason", None,
     lambda w: erase_child_data(actor=SYSTEM, child_id=w.child, reason="because Alice asked"), InvalidValue),
    ("export_child_data-unknown-child", None,
     lambda w: export_child_data(actor=SYSTEM, child_id=w.unconsented), NotFound),
]


@pytest.mark.parametrize("prepare, command, error", [case[1:] for case in FAILURES], ids=[case[0] for case in FAILURES])
def test_a_refused_command_changes_no_stream(world, prepare, command, error):
    if prepare is not None:
        prepare(world)
    before = everything(world.streams())
    with pytest.raises(error):
        command(world)
    assert everything(world.streams()) == before


def test_a_command_that_keeps_conflicting_gives_up_with_conflict_and_stores_none_of_its_changes(world, monkeypatch):
    """Each attempt loses the race to another writer: after the retries, Conflict; none of the
    command's events is stored, only the other writer's."""
    stream_id = f"child.{world.child}"
    before = events_of(stream_id)
    interloper_runs = []
    real_update_profile = Child.update_profile

    def racing_update_profile(child, changes):
        def other_writer():
            try:
                minutes = 100 + len(interloper_runs)
                change_safety_settings(actor=SYSTEM, child_id=world.child, content_filter_level="moderate",
                                       daily_time_limit_minutes=minutes)
                interloper_runs.append(minutes)
            finally:
                connection.close()

        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(30)
        real_update_profile(child, changes)

    monkeypatch.setattr(Child, "update_profile", racing_update_profile)
    with pytest.raises(Conflict, match="try again"):
        update_child_profile(actor=world.parent_user, child_id=world.child, changes={"age": 11})
    after = events_of(stream_id)
    assert len(interloper_runs) >= 2
    assert [e.event_id for e in after[:len(before)]] == [e.event_id for e in before]
    new = after[len(before):]
    assert [e.event_type for e in new] == ["SafetySettingsChanged"] * len(interloper_runs)
    assert {e.metadata.actor for e in new} == {SYSTEM.id}
    monkeypatch.undo()
    assert load(Child, world.child).age == 6


def test_an_invalid_actor_is_refused_before_anything_runs(world):
    before = everything(world.streams())
    for bad in ("bob", "user:", "admin:1", "user:7 OR 1=1"):
        with pytest.raises(InvalidActor):
            Actor(bad)
    with pytest.raises(InvalidActor):
        Actor.user(7, parent_id="")
    with pytest.raises(TypeError, match="actor must be an Actor"):
        update_child_profile(actor="user:7", child_id=world.child, changes={"age": 7})
    assert everything(world.streams()) == before


# --- 7. consent ---------------------------------------------------------------------------

def test_a_child_is_registered_only_after_consent(world):
    before = everything(world.streams())
    with pytest.raises(ConsentRequired, match=world.unconsented):
        register_child(actor=world.parent_user, child_id=world.unconsented, parent_id=world.parent, name="Una",
                       age=5)
    assert everything(world.streams()) == before
    assert store_().get_stream_version_sync(f"child.{world.unconsented}") == 0
    grant_consent(actor=world.parent_user, parent_id=world.parent, child_id=world.unconsented, method="email_plus")
    result = register_child(actor=world.parent_user, child_id=world.unconsented, parent_id=world.parent, name="Una",
                            age=5)
    assert (result.stream_id, result.version) == (f"child.{world.unconsented}", 1)


def test_withdrawing_consent_deactivates_the_child_in_the_same_command(world):
    parent_stream, child_stream = f"parent.{world.parent}", f"child.{world.child}"
    parent_before = store_().get_stream_version_sync(parent_stream)
    child_before = store_().get_stream_version_sync(child_stream)
    correlation = f"withdraw-{uid()}"
    with event_context(correlation_id=correlation):
        result = withdraw_consent(actor=world.parent_user, parent_id=world.parent, child_id=world.child,
                                  reason="privacy")
    assert result.streams == {parent_stream: parent_before + 1, child_stream: child_before + 1}
    withdrawn = events_of(parent_stream)[-1]
    deactivated = events_of(child_stream)[-1]
    assert (withdrawn.version, withdrawn.event_type) == (parent_before + 1, "ParentalConsentWithdrawn")
    assert (deactivated.version, deactivated.event_type) == (child_before + 1, "ChildDeactivated")
    assert deserialize_event(withdrawn).child_id == world.child
    assert withdrawn.metadata.correlation_id == deactivated.metadata.correlation_id == correlation
    assert withdrawn.metadata.actor == deactivated.metadata.actor == "user:7"
    assert not load(Child, world.child).active


def test_withdrawal_and_deactivation_are_saved_together_or_not_at_all(world, monkeypatch):
    """If saving the child's deactivation fails, the parent's withdrawal is rolled back too."""
    save = EventSourcingRepositoryImpl.save_sync

    def failing_for_children(repository, aggregate, **metadata):
        if isinstance(aggregate, Child):
            raise RuntimeError("the database went away while saving the child")
        return save(repository, aggregate, **metadata)

    before = everything(world.streams())
    monkeypatch.setattr(EventSourcingRepositoryImpl, "save_sync", failing_for_children)
    with pytest.raises(RuntimeError, match="went away"):
        withdraw_consent(actor=world.parent_user, parent_id=world.parent, child_id=world.child)
    monkeypatch.undo()
    assert everything(world.streams()) == before
    assert load(Parent, world.parent).has_consent(world.child) and load(Child, world.child).active


def test_after_consent_is_withdrawn_nothing_more_is_recorded_about_the_child(world):
    withdraw_consent(actor=world.parent_user, parent_id=world.parent, child_id=world.child)
    before = everything(world.streams())
    with pytest.raises((AggregateDeactivated, ConsentRequired)):
        start_conversation(actor=BEAR, conversation_id=world.new_conversation, child_id=world.child)
    with pytest.raises((AggregateDeactivated, ConsentRequired)):  # the conversation that was going on
        record_message(actor=BEAR, conversation_id=world.conv_open, speaker="child", text="Still there?")
    with pytest.raises((AggregateDeactivated, ConsentRequired)):
        summarize_conversation(actor=BEAR, conversation_id=world.conv_ended, summary="Said good night.")
    with pytest.raises((AggregateDeactivated, ConsentRequired)):
        register_child(actor=SYSTEM, child_id=world.child, parent_id=world.parent, name="Alice", age=6)
    assert everything(world.streams()) == before
    assert store_().get_stream_version_sync(f"conversation.{world.new_conversation}") == 0
    # what protects the child, or stops recording, is still allowed
    raise_safety_flag(actor=BEAR, conversation_id=world.conv_open, category="other", severity="low")
    end_conversation(actor=BEAR, conversation_id=world.conv_open)
    assert types_after(f"conversation.{world.conv_open}", 2) == ["SafetyFlagRaised", "ConversationEnded"]


def test_a_message_is_refused_once_the_parent_is_deactivated_mid_conversation(world):
    """The child is still active, but no consent is in force once its parent is deactivated."""
    deactivate_parent(actor=world.parent_user, parent_id=world.parent)
    assert load(Child, world.child).active
    before = everything(world.streams())
    with pytest.raises(ConsentRequired):
        record_message(actor=BEAR, conversation_id=world.conv_open, speaker="child", text="Hello again")
    with pytest.raises(ConsentRequired):
        start_conversation(actor=BEAR, conversation_id=world.new_conversation, child_id=world.child)
    assert everything(world.streams()) == before


# --- 8. a parent's own family -------------------------------------------------------------

def test_a_parent_acts_only_on_their_own_family(world):
    me = Actor.user(5, parent_id=world.parent)
    before = everything(world.streams())
    with pytest.raises(PermissionDenied):
        register_child(actor=me, child_id=world.pending, parent_id=world.other_parent, name="Pia", age=5)
    with pytest.raises(PermissionDenied):
        grant_consent(actor=me, parent_id=world.other_parent, child_id=world.pending, method="signed_form")
    with pytest.raises(PermissionDenied):
        update_parent_settings(actor=me, parent_id=world.other_parent, settings={"weekly_report": False})
    with pytest.raises(PermissionDenied):
        deactivate_parent(actor=me, parent_id=world.other_parent)

    # another family's child is "not found", exactly as a child that does not exist
    def not_found(call, existing, missing) -> tuple[str, str]:
        with pytest.raises(NotFound) as hidden:
            call(existing)
        with pytest.raises(NotFound) as absent:
            call(missing)
        return str(hidden.value).replace(existing, "<id>"), str(absent.value).replace(missing, "<id>")

    nobody = f"nobody-{uid()}"
    for call in (lambda c: update_child_profile(actor=me, child_id=c, changes={"age": 5}),
                 lambda c: change_safety_settings(actor=me, child_id=c, content_filter_level="relaxed",
                                                  daily_time_limit_minutes=600),
                 lambda c: deactivate_child(actor=me, child_id=c),
                 lambda c: unpair_device(actor=me, child_id=c),
                 lambda c: start_conversation(actor=me, conversation_id=world.new_conversation, child_id=c),
                 lambda c: export_child_data(actor=me, child_id=c)):
        hidden, absent = not_found(call, world.other_child, nobody)
        assert hidden == absent
    start_conversation(actor=SYSTEM, conversation_id=f"oconv-{world.other_child}", child_id=world.other_child)
    before = everything(world.streams())
    hidden, absent = not_found(lambda c: record_message(actor=me, conversation_id=c, speaker="child", text="Hi"),
                               f"oconv-{world.other_child}", nobody)
    assert hidden == absent
    assert everything(world.streams()) == before
    assert store_().get_stream_version_sync(f"conversation.oconv-{world.other_child}") == 1

    # their own family: fine
    assert update_child_profile(actor=me, child_id=world.child, changes={"age": 7}).version >= 2
    assert export_child_data(actor=me, child_id=world.child)["child"]["age"] == 7


@pytest.mark.parametrize("actor", [Actor.system("support-tool"), Actor.staff(1)], ids=["system", "staff"])
def test_system_jobs_and_staff_act_on_any_family(world, actor):
    update_child_profile(actor=actor, child_id=world.other_child, changes={"age": 11})
    assert load(Child, world.other_child).age == 11
    assert events_of(f"child.{world.other_child}")[-1].metadata.actor == actor.id
    assert export_child_data(actor=actor, child_id=world.other_child)["child"]["age"] == 11
    grant_consent(actor=actor, parent_id=world.other_parent, child_id=world.pending, method="government_id")
    assert load(Parent, world.other_parent).has_consent(world.pending)


# --- 9. conflicts are retried ---------------------------------------------------------------

def test_two_handlers_racing_on_one_child_all_succeed_and_every_change_is_stored(world):
    child_id, rounds = world.child, 20
    stream_id = f"child.{child_id}"
    start = store_().get_stream_version_sync(stream_id)
    barrier = threading.Barrier(2)
    results, errors = {"profile": [], "safety": []}, []

    def run(name, command):
        try:
            barrier.wait(10)
            for i in range(rounds):
                results[name].append(command(i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=("profile", lambda i: update_child_profile(
            actor=world.parent_user, child_id=child_id, changes={"interests": [f"topic-{i}"]}))),
        threading.Thread(target=run, args=("safety", lambda i: change_safety_settings(
            actor=BEAR, child_id=child_id, content_filter_level="moderate" if i % 2 else "relaxed",
            daily_time_limit_minutes=30 + i))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(results["profile"]) == len(results["safety"]) == rounds

    events = events_of(stream_id)
    assert [e.version for e in events] == list(range(1, start + 2 * rounds + 1))  # no gaps, nothing lost
    new = [deserialize_event(e) for e in events[start:]]
    assert [e.changes["interests"] for e in new if type(e).__name__ == "ChildProfileUpdated"] == [
        [f"topic-{i}"] for i in range(rounds)]
    assert [e.daily_time_limit_minutes for e in new if type(e).__name__ == "SafetySettingsChanged"] == [
        30 + i for i in range(rounds)]
    # each command's result is the version its event got
    versions = sorted(r.version for r in results["profile"] + results["safety"])
    assert versions == list(range(start + 1, start + 2 * rounds + 1))
    child = load(Child, child_id)
    assert (child.interests, child.daily_time_limit_minutes, child.version) == (
        [f"topic-{rounds - 1}"], 30 + rounds - 1, start + 2 * rounds)


# --- 10. the actor of an HTTP request -----------------------------------------------------

class HeaderAuthentication(BaseAuthentication):
    """Authenticates `X-Test-User: <username>` as that Django user (a stand-in for token auth:
    like it, it runs inside the DRF view, after every middleware)."""

    def authenticate(self, request):
        username = request.META.get("HTTP_X_TEST_USER")
        if not username:
            return None
        try:
            return get_user_model().objects.get(username=username), None
        except get_user_model().DoesNotExist:
            raise AuthenticationFailed("no such user") from None


class RenameChildView(APIView):
    authentication_classes = [HeaderAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request, child_id):
        service = get_event_sourcing_service()
        child = service.load_aggregate_sync(Child, child_id)
        child.update_profile({"name": request.data["name"]})
        service.save_aggregate_sync(child)  # no actor given: the request's
        return Response({"version": child.version})


def _call_view(child_id: str, *, user_header: str | None, correlation_id: str, anonymous_user: bool):
    headers = {"X-Correlation-ID": correlation_id}
    if user_header is not None:
        headers["X-Test-User"] = user_header
    request = RequestFactory().post(f"/children/{child_id}/rename/", data=json.dumps({"name": "Alicia"}),
                                    content_type="application/json", headers=headers)
    if anonymous_user:
        request.user = AnonymousUser()  # as Django's AuthenticationMiddleware leaves it without a session
    view = RenameChildView.as_view()
    return CorrelationIdMiddleware(lambda req: view(req, child_id=child_id))(request)


@pytest.mark.parametrize("anonymous_user", [False, True], ids=["no-user-attribute", "anonymous-user"])
def test_an_event_written_in_a_drf_request_is_attributed_to_the_authenticated_user(world, anonymous_user):
    user = get_user_model().objects.create_user(username=f"robin-{uid()}", password=None)
    correlation_id = f"req-{uid()}"
    stream_id = f"child.{world.child}"
    before = store_().get_stream_version_sync(stream_id)

    response = _call_view(world.child, user_header=user.username, correlation_id=correlation_id,
                          anonymous_user=anonymous_user)

    assert response.status_code == 200, getattr(response, "data", response)
    assert response["X-Correlation-ID"] == correlation_id
    event = events_of(stream_id)[-1]
    assert (event.version, event.event_type) == (before + 1, "ChildProfileUpdated")
    assert event.metadata.actor == f"user:{user.pk}"
    assert event.metadata.correlation_id == correlation_id
    assert deserialize_event(event).changes == {"name": "Alicia"}
    assert current_actor() is None  # the request's actor does not outlive it


def test_an_unauthenticated_drf_request_stores_nothing(world):
    before = everything(world.streams())
    response = _call_view(world.child, user_header=None, correlation_id=f"req-{uid()}", anonymous_user=True)
    assert response.status_code in (401, 403)
    response = _call_view(world.child, user_header=f"ghost-{uid()}", correlation_id=f"req-{uid()}",
                          anonymous_user=False)
    assert response.status_code in (401, 403)
    assert everything(world.streams()) == before


# --- 11. acknowledging safety flags -------------------------------------------------------

def _flag_twice(world) -> str:
    """conv_open with two flags, ended: the stream at version 5."""
    stream_id = f"conversation.{world.conv_open}"
    raise_safety_flag(actor=BEAR, conversation_id=world.conv_open, category="stranger_contact", severity="high",
                      message_sequence=1)
    raise_safety_flag(actor=BEAR, conversation_id=world.conv_open, category="other", severity="low")
    end_conversation(actor=BEAR, conversation_id=world.conv_open)
    assert store_().get_stream_version_sync(stream_id) == 5
    return stream_id


def test_a_parent_acknowledges_a_flag_of_their_own_childs_conversation_once(world):
    stream_id = _flag_twice(world)

    result = acknowledge_safety_flag(actor=world.parent_user, conversation_id=world.conv_open, flag_number=2)

    assert (result.stream_id, result.version, result.streams) == (stream_id, 6, {stream_id: 6})
    stored = events_of(stream_id)[-1]
    event = deserialize_event(stored)
    assert (stored.event_type, stored.metadata.actor) == ("SafetyFlagAcknowledged", "user:7")
    assert (event.flag_number, event.acknowledged_by, event.child_id) == (2, "user:7", world.child)
    assert json.loads(stored.payload)["acknowledged_by"] == "user:7"  # an actor id, in clear: no personal data
    flags = load(Conversation, world.conv_open).safety_flags
    assert [(f.number, f.category, f.acknowledged_by) for f in flags] == [
        (1, "stranger_contact", None), (2, "other", "user:7")]
    assert flags[1].acknowledged_at == event.occurred_at

    before = everything(world.streams())
    again = acknowledge_safety_flag(actor=Actor.user(8, parent_id=world.parent), conversation_id=world.conv_open,
                                    flag_number=2)
    assert (again.stream_id, again.version) == (stream_id, 6)
    assert everything(world.streams()) == before
    assert load(Conversation, world.conv_open).safety_flags[1].acknowledged_by == "user:7"


def test_a_parent_can_still_acknowledge_after_withdrawing_consent(world):
    _flag_twice(world)
    withdraw_consent(actor=world.parent_user, parent_id=world.parent, child_id=world.child)

    acknowledge_safety_flag(actor=world.parent_user, conversation_id=world.conv_open, flag_number=1)

    assert load(Conversation, world.conv_open).safety_flags[0].acknowledged_by == "user:7"


def test_a_refused_acknowledgement_stores_nothing_and_says_why(world):
    _flag_twice(world)
    me = world.parent_user
    other_conversation = f"oconv-{world.other_child}"
    start_conversation(actor=SYSTEM, conversation_id=other_conversation, child_id=world.other_child)
    raise_safety_flag(actor=BEAR, conversation_id=other_conversation, category="bullying", severity="medium")
    streams = [*world.streams(), f"conversation.{other_conversation}"]
    before = everything(streams)

    with pytest.raises(InvalidValue, match=rf"safety flag 3 is not a flag of conversation {world.conv_open} "
                                           r"\(its flags are numbered 1..2\)"):
        acknowledge_safety_flag(actor=me, conversation_id=world.conv_open, flag_number=3)
    with pytest.raises(InvalidValue, match=r"\(it has no safety flags\)"):
        acknowledge_safety_flag(actor=me, conversation_id=world.conv_ended, flag_number=1)
    # another family's conversation reads exactly as one that does not exist
    with pytest.raises(NotFound) as hidden:
        acknowledge_safety_flag(actor=me, conversation_id=other_conversation, flag_number=1)
    with pytest.raises(NotFound) as absent:
        acknowledge_safety_flag(actor=me, conversation_id=world.new_conversation, flag_number=1)
    assert str(hidden.value).replace(other_conversation, "<id>") == str(absent.value).replace(
        world.new_conversation, "<id>")
    with pytest.raises(PermissionDenied):  # a user acting neither as a parent nor as staff
        acknowledge_safety_flag(actor=Actor.user(9), conversation_id=world.conv_open, flag_number=1)
    assert everything(streams) == before


@pytest.mark.parametrize("actor", [Actor.system("support-tool"), Actor.staff(1)], ids=["system", "staff"])
def test_system_jobs_and_staff_acknowledge_on_any_family(world, actor):
    conversation_id = f"oconv-{world.other_child}"
    start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=world.other_child)
    raise_safety_flag(actor=BEAR, conversation_id=conversation_id, category="bullying", severity="medium")

    acknowledge_safety_flag(actor=actor, conversation_id=conversation_id, flag_number=1)

    stored = events_of(f"conversation.{conversation_id}")[-1]
    assert (stored.event_type, stored.metadata.actor) == ("SafetyFlagAcknowledged", actor.id)
    assert load(Conversation, conversation_id).safety_flags[0].acknowledged_by == actor.id
