"""The Child aggregate and its events: commands, invariants, replay, snapshots, schema evolution.

Pure Python, no I/O. Includes the guide's own examples, exactly as it writes them.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import datetime, timezone

import pytest

from eventsourcing_app.domain import (
    ERASURE_REASONS,
    ActorId,
    AggregateDeactivated,
    AlreadyRegistered,
    Child,
    ChildDataErased,
    ChildDeactivated,
    ChildId,
    ChildProfileUpdated,
    ChildRegistered,
    ChildRegisteredV1,
    ChildRegisteredV2,
    DeviceId,
    DevicePaired,
    DevicePairingError,
    DeviceUnpaired,
    DomainError,
    InvalidAge,
    InvalidName,
    InvalidValue,
    NotRegistered,
    ParentId,
    PersonalDataErased,
    SafetySettingsChanged,
    UnknownProfileField,
)
from eventsourcing_app.eventstore import EventMetadata, StoredEvent, deserialize_event
from eventsourcing_app.eventstore.serialization import encode_payload
from tests.unit.domain_helpers import assert_refused, replayed

CHILD_EVENTS = (ChildRegisteredV1, ChildRegisteredV2, ChildProfileUpdated, DevicePaired, DeviceUnpaired,
                SafetySettingsChanged, ChildDeactivated, ChildDataErased)


def new_child(**overrides) -> Child:
    values = dict(id=ChildId("child-123"), parent_id=ParentId("parent-456"), device_id=DeviceId("device-789"),
                  name="Alice", age=6, udid="unique-device-123")
    values.update(overrides)
    return Child(**values)


def registered_child(**overrides) -> Child:
    child = new_child(**overrides)
    child.register_child()
    return child


def event_types(aggregate) -> list[str]:
    return [type(event).__name__ for event in aggregate.get_domain_events()]


def redacted(event):
    """The event as the store returns it once its subject's key is destroyed."""
    return dataclasses.replace(event, **{name: None for name in event.sensitive_fields})


# --- The guide's examples ----------------------------------------------------------

def test_guide_basic_flow_registers_then_updates_the_profile():
    # 1. Create aggregate
    child = Child(
        id=ChildId("child-123"),
        parent_id=ParentId("parent-456"),
        device_id=DeviceId("device-789"),
        name="Alice",
        age=6,
        udid="unique-device-123"
    )

    # 2. Perform business operations (generates events)
    child.register_child()
    child.update_profile({"age": 7})

    assert child.has_uncommitted_events()
    registered, updated = child.get_domain_events()
    assert isinstance(registered, ChildRegistered)
    assert (registered.child_id, registered.parent_id, registered.name, registered.age) == (
        "child-123", "parent-456", "Alice", 6)
    assert (registered.device_id, registered.udid) == ("device-789", "unique-device-123")
    assert updated.changes == {"age": 7}
    assert (child.name, child.age, child.parent_id, child.device_id) == ("Alice", 7, "parent-456", "device-789")
    assert child.stream_id == "child.child-123"
    assert child.version == 0  # nothing stored yet


def test_child_registration():
    # Given
    child = Child.create_empty("child-123")

    # When
    event = ChildRegistered(child_id=ChildId("child-123"), parent_id=ParentId("parent-456"), name="Alice", age=6)
    child.apply_event(event)

    # Then
    assert child.name == "Alice"
    assert child.age == 6


def test_from_v1_migrates_with_an_unknown_parent():
    v1 = ChildRegisteredV1(child_id=ChildId("child-123"), name="Alice", age=6)

    v2 = ChildRegisteredV2.from_v1(v1)

    assert isinstance(v2, ChildRegisteredV2)
    assert (v2.child_id, v2.parent_id, v2.name, v2.age) == ("child-123", ParentId("unknown"), "Alice", 6)
    assert (v2.event_id, v2.occurred_at) == (v1.event_id, v1.occurred_at)


def test_applying_a_v1_registration_upcasts_it():
    v1 = ChildRegisteredV1(child_id=ChildId("child-123"), name="Alice", age=6)
    child = Child.create_empty("child-123")

    child.apply_event(v1)

    assert (child.name, child.age, child.parent_id, child.registered_at) == ("Alice", 6, "unknown", v1.occurred_at)


def test_child_registered_is_schema_version_2_of_one_event_type():
    assert ChildRegistered is ChildRegisteredV2
    assert (ChildRegisteredV1.event_type, ChildRegisteredV1.schema_version) == ("ChildRegistered", 1)
    assert (ChildRegistered.event_type, ChildRegistered.schema_version) == ("ChildRegistered", 2)


@pytest.mark.parametrize("event_class", CHILD_EVENTS)
def test_every_child_event_names_the_child_as_its_data_subject(event_class):
    assert event_class.data_subject == ("child", "child_id")
    assert "child_id" in event_class.data_field_names()
    assert set(event_class.sensitive_fields) <= set(event_class.data_field_names())


def test_personal_data_is_in_sensitive_fields():
    assert {"name", "age", "udid"} <= set(ChildRegistered.sensitive_fields)
    assert ChildProfileUpdated.sensitive_fields == ("changes",)
    assert DevicePaired.sensitive_fields == ("udid",)
    assert DeviceUnpaired.sensitive_fields == ChildDeactivated.sensitive_fields == ("reason",)


def test_the_erasure_event_has_nothing_to_encrypt():
    # It is written after the child's key is destroyed.
    assert ChildDataErased.sensitive_fields == ()


def stored_event(event_type: str, payload: bytes):
    return StoredEvent(metadata=EventMetadata(event_id="e-1", stream_id="child.child-123", event_type=event_type,
                                              version=1, timestamp=datetime.now(timezone.utc)), payload=payload)


def test_stored_erasures_from_before_actor_ids_and_reasons_still_read():
    event = deserialize_event(stored_event("ChildDataErased",
                                           b'{"child_id":"child-123","erased_by":"privacy-officer-1"}'))

    assert isinstance(event, ChildDataErased)
    assert (event.erased_by, event.reason) == ("privacy-officer-1", None)


def test_code_fields_are_stored_and_read_as_plain_strings():
    erased = ChildDataErased(child_id=ChildId("child-123"), erased_by=ActorId("user:17"), reason="parent_request")
    payload = encode_payload(erased)
    event = deserialize_event(stored_event("ChildDataErased", payload))

    assert payload == b'{"child_id":"child-123","erased_by":"user:17","reason":"parent_request"}'
    assert (event.erased_by, event.reason) == ("user:17", "parent_request")
    assert isinstance(event.erased_by, ActorId) and type(event.reason) is str


# --- Registration ------------------------------------------------------------------

def test_constructor_only_notes_the_values_to_register():
    child = new_child()

    assert not child.registered
    assert not child.has_uncommitted_events()
    assert child.name is None and child.parent_id is None


def test_register_records_who_the_child_is_and_activates_them():
    child = registered_child()

    assert event_types(child) == ["ChildRegisteredV2"]
    assert child.registered and child.active and not child.erased
    assert child.registered_at == child.get_domain_events()[0].occurred_at
    assert (child.udid, child.interests, child.language) == ("unique-device-123", [], None)
    assert (child.content_filter_level, child.daily_time_limit_minutes) == ("strict", 60)
    assert isinstance(child.id, ChildId) and isinstance(child.parent_id, ParentId)


def test_register_without_a_device_leaves_it_unpaired():
    child = registered_child(device_id=None, udid=None)

    assert child.device_id is None and child.udid is None


def test_register_strips_the_name():
    assert registered_child(name="  Alice ").name == "Alice"


@pytest.mark.parametrize("age", [3, 13])
def test_register_accepts_ages_3_and_13(age):
    assert registered_child(age=age).age == age


@pytest.mark.parametrize("age", [2, 14, -1, 0, 100])
def test_register_rejects_age_outside_3_to_13(age):
    child = new_child(age=age)
    assert_refused(child, child.register_child, InvalidAge, match=f"age {age} is outside 3..13")


@pytest.mark.parametrize("age", [True, 6.0, "6", None])
def test_register_rejects_an_age_that_is_not_a_whole_number(age):
    child = new_child(age=age)
    assert_refused(child, child.register_child, InvalidAge, match="whole number")


@pytest.mark.parametrize("name, message", [
    ("", "must not be empty"), ("   ", "must not be empty"), ("x" * 101, "101 characters long; the limit is 100"),
    (None, "must be a string"), (42, "must be a string"),
])
def test_register_rejects_an_empty_or_too_long_name(name, message):
    child = new_child(name=name)
    assert_refused(child, child.register_child, InvalidName, match=message)


def test_register_accepts_a_100_character_name():
    assert registered_child(name="x" * 100).name == "x" * 100


def test_register_requires_a_parent():
    child = new_child(parent_id=None)
    assert_refused(child, child.register_child, InvalidValue, match="no parent_id")


@pytest.mark.parametrize("parent_id", ["", " parent-1", 42])
def test_register_rejects_a_malformed_parent_id(parent_id):
    child = new_child(parent_id=parent_id)
    assert_refused(child, child.register_child, InvalidValue, match="parent_id")


@pytest.mark.parametrize("device_id, udid", [("device-789", None), (None, "unique-device-123")])
def test_register_needs_both_device_id_and_udid_or_neither(device_id, udid):
    child = new_child(device_id=device_id, udid=udid)
    assert_refused(child, child.register_child, DevicePairingError, match="both its device_id and its udid")


def test_register_twice_is_refused():
    child = registered_child()
    assert_refused(child, child.register_child, AlreadyRegistered, match="child child-123 is registered already")


def test_registration_time_is_the_events_registered_at_when_given():
    registered_at = datetime(2020, 1, 2, tzinfo=timezone.utc)
    child = Child.create_empty("child-123")

    child.apply_event(ChildRegistered(child_id=ChildId("child-123"), parent_id=ParentId("p-1"), name="A", age=5,
                                      registered_at=registered_at))

    assert child.registered_at == registered_at


@pytest.mark.parametrize("bad_id", [None, "", " c-1"])
def test_a_child_needs_a_usable_id(bad_id):
    with pytest.raises(InvalidValue, match="child id"):
        Child(bad_id)


# --- Profile -----------------------------------------------------------------------

def test_update_profile_records_only_the_fields_that_change():
    child = registered_child()

    child.update_profile({"name": "Alice", "age": 7, "interests": [" dinosaurs ", "space"], "language": "en"})

    assert child.get_domain_events()[-1].changes == {"age": 7, "interests": ["dinosaurs", "space"], "language": "en"}
    assert (child.age, child.interests, child.language) == (7, ["dinosaurs", "space"], "en")


def test_update_profile_that_changes_nothing_raises_no_event():
    child = registered_child()

    child.update_profile({"name": "Alice", "age": 6})

    assert event_types(child) == ["ChildRegisteredV2"]


def test_update_profile_copies_the_callers_values():
    child = registered_child()
    interests = ["space"]
    child.update_profile({"interests": interests})

    interests.append("trains")

    assert child.interests == ["space"]
    assert child.get_domain_events()[-1].changes == {"interests": ["space"]}


def test_update_profile_rejects_an_unknown_field_naming_it_and_the_allowed_ones():
    child = registered_child()
    assert_refused(child, lambda: child.update_profile({"age": 7, "favourite_colour": "red"}), UnknownProfileField,
                   match="'favourite_colour'; allowed fields are age, interests, language, name")


@pytest.mark.parametrize("changes", [{}, None, [("age", 7)]])
def test_update_profile_needs_a_non_empty_dict(changes):
    child = registered_child()
    assert_refused(child, lambda: child.update_profile(changes), InvalidValue, match="profile changes")


@pytest.mark.parametrize("changes, error, message", [
    ({"age": 14}, InvalidAge, "age 14 is outside 3..13"),
    ({"age": 7, "name": ""}, InvalidName, "name must not be empty"),
    ({"interests": "space"}, InvalidValue, "interests must be a list"),
    ({"interests": ["space", 3]}, InvalidValue, r"interests\[1\] must be a string"),
    ({"interests": ["x"] * 21}, InvalidValue, "21 entries; the limit is 20"),
    ({"language": "english please"}, InvalidValue, "not a language tag"),
    ({"language": None}, InvalidValue, "not a language tag"),
])
def test_update_profile_validates_every_value(changes, error, message):
    child = registered_child()
    assert_refused(child, lambda: child.update_profile(changes), error, match=message)


def test_update_profile_needs_a_registered_child():
    child = new_child()
    assert_refused(child, lambda: child.update_profile({"age": 7}), NotRegistered, match="call register_child")


# --- Device ------------------------------------------------------------------------

def test_pair_device_records_the_device_and_its_udid():
    child = registered_child(device_id=None, udid=None)

    child.pair_device(DeviceId("bear-1"), "udid-1")

    event = child.get_domain_events()[-1]
    assert isinstance(event, DevicePaired) and (event.device_id, event.udid) == ("bear-1", "udid-1")
    assert (child.device_id, child.udid) == ("bear-1", "udid-1")


def test_pairing_the_paired_device_again_changes_nothing():
    child = registered_child()

    child.pair_device("device-789", "unique-device-123")

    assert event_types(child) == ["ChildRegisteredV2"]


def test_pairing_the_paired_device_with_a_new_udid_records_it():
    child = registered_child()

    child.pair_device("device-789", "new-udid")

    assert child.udid == "new-udid"
    assert event_types(child)[-1] == "DevicePaired"


def test_a_child_has_only_one_active_device():
    child = registered_child()
    assert_refused(child, lambda: child.pair_device("bear-2", "udid-2"), DevicePairingError,
                   match="already has device device-789 paired; unpair it before pairing bear-2")


def test_after_unpairing_another_device_can_be_paired():
    child = registered_child()

    child.unpair_device("lost")
    child.pair_device("bear-2", "udid-2")

    unpaired = child.get_domain_events()[1]
    assert isinstance(unpaired, DeviceUnpaired) and (unpaired.device_id, unpaired.reason) == ("device-789", "lost")
    assert (child.device_id, child.udid) == ("bear-2", "udid-2")


def test_unpair_needs_a_paired_device():
    child = registered_child(device_id=None, udid=None)
    assert_refused(child, child.unpair_device, DevicePairingError, match="no device paired")


@pytest.mark.parametrize("device_id, udid", [("", "u"), ("bear-2", ""), ("bear-2", None), (None, "u")])
def test_pair_device_rejects_a_missing_device_id_or_udid(device_id, udid):
    child = registered_child(device_id=None, udid=None)
    assert_refused(child, lambda: child.pair_device(device_id, udid), DomainError)


# --- Safety settings ---------------------------------------------------------------

def test_change_safety_settings_records_both_values():
    child = registered_child()

    child.change_safety_settings("moderate", 90)

    event = child.get_domain_events()[-1]
    assert isinstance(event, SafetySettingsChanged)
    assert (event.content_filter_level, event.daily_time_limit_minutes) == ("moderate", 90)
    assert (child.content_filter_level, child.daily_time_limit_minutes) == ("moderate", 90)


def test_unchanged_safety_settings_raise_no_event():
    child = registered_child()

    child.change_safety_settings("strict", 60)

    assert event_types(child) == ["ChildRegisteredV2"]


@pytest.mark.parametrize("level, minutes, message", [
    ("off", 60, "content_filter_level 'off' is not one of moderate, relaxed, strict"),
    ("strict", -1, "outside 0..1440"),
    ("strict", 1441, "outside 0..1440"),
    ("strict", True, "whole number"),
    ("strict", 30.5, "whole number"),
])
def test_change_safety_settings_rejects_invalid_values(level, minutes, message):
    child = registered_child()
    assert_refused(child, lambda: child.change_safety_settings(level, minutes), InvalidValue, match=message)


@pytest.mark.parametrize("minutes", [0, 1440])
def test_daily_time_limit_may_be_0_to_1440_minutes(minutes):
    child = registered_child()
    child.change_safety_settings("relaxed", minutes)
    assert child.daily_time_limit_minutes == minutes


# --- Deactivation and erasure ------------------------------------------------------

COMMANDS = {
    "register_child": lambda child: child.register_child(),
    "update_profile": lambda child: child.update_profile({"age": 8}),
    "pair_device": lambda child: child.pair_device("bear-2", "udid-2"),
    "unpair_device": lambda child: child.unpair_device(),
    "change_safety_settings": lambda child: child.change_safety_settings("relaxed", 30),
    "deactivate": lambda child: child.deactivate(),
}


def test_deactivate_records_the_reason():
    child = registered_child()

    child.deactivate("family left the platform")

    assert isinstance(child.get_domain_events()[-1], ChildDeactivated)
    assert (child.active, child.deactivated_reason) == (False, "family left the platform")


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"register_child"}))
def test_a_deactivated_child_takes_no_more_commands(command):
    child = registered_child()
    child.deactivate("moved")
    assert_refused(child, lambda: COMMANDS[command](child), AggregateDeactivated,
                   match="child child-123 was deactivated; it takes no more commands")
    with pytest.raises(AggregateDeactivated) as refused:
        COMMANDS[command](child)
    assert "moved" not in str(refused.value)  # the reason is personal data: never in an error message


def test_deactivate_needs_a_registered_child():
    child = new_child()
    assert_refused(child, child.deactivate, NotRegistered)


def test_erasure_clears_the_personal_data_and_keeps_the_rest():
    child = registered_child()
    child.update_profile({"interests": ["space"], "language": "fr"})
    child.deactivate("moved away")

    child.erase_personal_data(erased_by="user:17", reason="parent_request")

    event = child.get_domain_events()[-1]
    assert isinstance(event, ChildDataErased)
    assert (event.erased_by, event.reason) == ("user:17", "parent_request")
    assert isinstance(event.erased_by, ActorId)
    assert (child.name, child.age, child.udid, child.interests, child.language, child.deactivated_reason) == (
        None, None, None, None, None, None)
    assert child.erased and not child.active
    assert (child.parent_id, child.device_id) == ("parent-456", "device-789")


def test_erasure_needs_neither_actor_nor_reason():
    child = registered_child()

    child.erase_personal_data()

    event = child.get_domain_events()[-1]
    assert (event.erased_by, event.reason) == (None, None)


@pytest.mark.parametrize("erased_by", ["user:17", "system:forget_child", "system:retention-job.v2",
                                       "user:" + "x" * 100])
def test_erasure_accepts_actor_ids(erased_by):
    child = registered_child()
    child.erase_personal_data(erased_by=erased_by)
    assert child.get_domain_events()[-1].erased_by == erased_by


@pytest.mark.parametrize("erased_by", [
    "privacy-officer-1", "Ann Smith", "user:", "user:ann smith", "user:ann@example.com", "admin:1", "USER:17",
    " user:17", "user:17\n", "user:" + "x" * 101, "", 17,
])
def test_erasure_refuses_what_is_not_an_actor_id(erased_by):
    child = registered_child()
    assert_refused(child, lambda: child.erase_personal_data(erased_by=erased_by), InvalidValue,
                   match=r"erased_by .* is not an actor id; give 'user:<id>' or 'system:<name>'")


@pytest.mark.parametrize("reason", ERASURE_REASONS)
def test_erasure_accepts_every_reason_code(reason):
    child = registered_child()
    child.erase_personal_data(erased_by="system:forget_child", reason=reason)
    assert child.get_domain_events()[-1].reason == reason


@pytest.mark.parametrize("reason", ["the parent asked", "PARENT_REQUEST", "", 3])
def test_erasure_refuses_a_reason_that_is_not_a_code(reason):
    child = registered_child()
    assert_refused(child, lambda: child.erase_personal_data(erased_by="user:17", reason=reason), InvalidValue,
                   match="erasure reason .* is not one of account_closed, child_request, consent_withdrawn")


def test_a_deactivated_child_can_still_be_erased():
    child = registered_child()
    child.deactivate()

    child.erase_personal_data()

    assert child.erased


def test_an_unregistered_child_can_be_erased():
    child = new_child()
    child.erase_personal_data()
    assert child.erased


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["erase_personal_data"])
def test_an_erased_child_takes_no_more_commands(command):
    child = registered_child()
    child.erase_personal_data()
    run = COMMANDS.get(command, lambda c: c.erase_personal_data())
    assert_refused(child, lambda: run(child), PersonalDataErased, match="personal data was erased")


# --- Replay, redaction and snapshots -----------------------------------------------

def full_history_child() -> Child:
    child = registered_child()
    child.update_profile({"age": 7, "interests": ["space"], "language": "en"})
    child.unpair_device("lost")
    child.pair_device("bear-2", "udid-2")
    child.change_safety_settings("moderate", 45)
    child.deactivate("moved")
    return child


def test_replaying_the_events_gives_the_same_state():
    child = full_history_child()

    assert replayed(child).to_snapshot() == child.to_snapshot()


def test_replaying_an_erased_stream_whose_sensitive_fields_were_redacted_gives_the_erased_state():
    child = full_history_child()
    child.erase_personal_data(erased_by="user:17", reason="parent_request")

    copy = replayed(child, [redacted(event) for event in child.get_domain_events()])

    assert copy.to_snapshot() == child.to_snapshot()
    assert copy.deactivated_reason is None and copy.erased


def test_the_reasons_are_redacted_with_the_rest():
    child = full_history_child()

    copy = replayed(child, [redacted(event) for event in child.get_domain_events()])

    assert child.deactivated_reason == "moved" and copy.deactivated_reason is None
    assert not copy.active


def test_applying_redacted_events_does_not_fail():
    child = full_history_child()

    copy = replayed(child, [redacted(event) for event in child.get_domain_events()])

    assert copy.name is None and copy.age is None and copy.registered and copy.device_id == "bear-2"


def test_applying_an_event_of_another_aggregate_is_a_type_error():
    from tests.events import NoteRecorded

    with pytest.raises(TypeError, match="Child cannot apply a test.NoteRecorded event"):
        Child.create_empty("child-123").apply_event(NoteRecorded(text="x"))


def test_snapshot_round_trip_through_json_restores_state_and_version():
    child = full_history_child()
    state = json.loads(json.dumps(child.to_snapshot()))

    restored = Child.from_snapshot("child-123", 6, state)

    assert restored.to_snapshot() == child.to_snapshot()
    assert restored.version == 6
    assert restored.registered_at == child.registered_at
    assert isinstance(restored.id, ChildId) and isinstance(restored.parent_id, ParentId)
    assert not restored.has_uncommitted_events()


def test_snapshot_names_the_child_and_its_personal_fields():
    child = registered_child()

    assert child.snapshot_subject() == ("child", "child-123")
    assert set(Child.snapshot_sensitive_fields) == {"name", "age", "udid", "interests", "language",
                                                    "deactivated_reason"}
    assert set(Child.snapshot_sensitive_fields) <= set(child.to_snapshot())
    assert Child.snapshot_schema_version == 2  # older snapshots held deactivated_reason in clear


def test_snapshot_of_an_erased_child_round_trips_with_nothing_personal_left():
    child = full_history_child()
    child.erase_personal_data(erased_by="user:17")
    state = json.loads(json.dumps(child.to_snapshot()))

    restored = Child.from_snapshot("child-123", 7, state)

    assert restored.to_snapshot() == child.to_snapshot()
    assert all(state[key] is None for key in Child.snapshot_sensitive_fields)
    assert_refused(restored, restored.deactivate, PersonalDataErased)


def test_snapshot_with_redacted_personal_fields_restores():
    child = registered_child()
    state = {**child.to_snapshot(), **{key: None for key in Child.snapshot_sensitive_fields}}

    restored = Child.from_snapshot("child-123", 1, state)

    assert restored.name is None and restored.interests is None and restored.active
    assert restored.deactivated_reason is None


def test_a_restored_child_keeps_enforcing_its_rules():
    restored = Child.from_snapshot("child-123", 1, registered_child().to_snapshot())

    restored.update_profile({"age": 8})
    assert_refused(restored, lambda: restored.pair_device("bear-2", "u"), DevicePairingError)


# --- Text: valid Unicode, no control characters ----------------------------------

@pytest.mark.parametrize("name, message", [
    ("Al\x00ice", r"name contains a control character \(U\+0000\) at position 2; remove it"),
    ("  Al\x07", r"name contains a control character \(U\+0007\) at position 4; remove it"),
    ("Alice\nBob", r"name contains a control character \(U\+000A\) at position 5; remove it"),
    ("Alice\tBob", r"\(U\+0009\) at position 5"),
    ("Al\x1b[31mice", r"\(U\+001B\) at position 2"),
    ("Al\x7fice", r"\(U\+007F\) at position 2"),
    ("Al\x85ice", r"\(U\+0085\) at position 2"),
    ("Al\ud800ice", r"name is not valid Unicode \(a lone surrogate U\+D800 at position 2\)"),
    ("Al\udfffice", r"name is not valid Unicode \(a lone surrogate U\+DFFF at position 2\)"),
])
def test_register_refuses_control_characters_and_surrogates_in_the_name(name, message):
    child = new_child(name=name)
    assert_refused(child, child.register_child, InvalidName, match=message)


@pytest.mark.parametrize("name", ["Zoë", "علي", "\u200fعلي", "Anne\u00a0Marie", "👩\u200d👧", "李小龙"])
def test_register_accepts_names_in_any_script(name):
    # Format characters (RLM, ZWJ) and no-break spaces are not printable, but are text.
    assert registered_child(name=name).name == name


def test_surrounding_line_breaks_are_stripped_like_spaces():
    assert registered_child(name="Alice\n").name == "Alice"


@pytest.mark.parametrize("command, message", [
    (lambda child: child.update_profile({"interests": ["space", "dino\x00saurs"]}), r"interests\[1\] contains"),
    (lambda child: child.update_profile({"name": "A\ud83d"}), "name is not valid Unicode"),
    (lambda child: child.unpair_device("lost\nin the park"), "reason contains a control character"),
    (lambda child: child.deactivate("moved\x00"), r"reason contains a control character \(U\+0000\) at position 5"),
], ids=["interests", "profile name", "unpair reason", "deactivate reason"])
def test_commands_refuse_control_characters_and_surrogates(command, message):
    child = registered_child()
    assert_refused(child, lambda: command(child), InvalidValue, match=message)


def test_pair_device_refuses_a_control_character_in_the_udid():
    child = registered_child(device_id=None, udid=None)
    assert_refused(child, lambda: child.pair_device("bear-1", "udid\x001"), InvalidValue,
                   match=r"udid contains a control character \(U\+0000\) at position 4")


# --- Ids and errors ----------------------------------------------------------------

def test_typed_ids_are_their_strings():
    child_id = ChildId("child-123")

    assert child_id == "child-123" and hash(child_id) == hash("child-123")
    assert json.dumps({"id": child_id}) == '{"id": "child-123"}'
    assert repr(child_id) == "ChildId('child-123')"
    assert repr(ActorId("user:17")) == "ActorId('user:17')"


def test_domain_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(InvalidAge("age 14 is outside 3..13")))

    assert isinstance(error, DomainError) and str(error) == "age 14 is outside 3..13"
