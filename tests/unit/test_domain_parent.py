"""The Parent aggregate and its events: registration, consent, settings, deactivation, replay
and snapshots. Pure Python, no I/O."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from eventsourcing_app.domain import (
    CONSENT_METHODS,
    AggregateDeactivated,
    AlreadyRegistered,
    ChildId,
    ConsentError,
    InvalidName,
    InvalidValue,
    NotRegistered,
    Parent,
    ParentalConsentGranted,
    ParentalConsentWithdrawn,
    ParentDeactivated,
    ParentId,
    ParentRegistered,
    ParentSettingsUpdated,
    UnknownSettingField,
)
from tests.unit.domain_helpers import assert_refused, replayed

PARENT_EVENTS = (ParentRegistered, ParentalConsentGranted, ParentalConsentWithdrawn, ParentSettingsUpdated,
                 ParentDeactivated)
GRANTED_AT = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


def registered_parent() -> Parent:
    parent = Parent(ParentId("parent-456"))
    parent.register("ann@example.com", "Ann", phone="+1 555 0100 123")
    return parent


@pytest.mark.parametrize("event_class", PARENT_EVENTS)
def test_every_parent_event_names_the_parent_as_its_data_subject(event_class):
    assert event_class.data_subject == ("parent", "parent_id")
    assert set(event_class.sensitive_fields) <= set(event_class.data_field_names())


def test_contact_details_are_sensitive():
    assert set(ParentRegistered.sensitive_fields) == {"email", "name", "phone"}


def test_the_reasons_a_parent_gives_are_sensitive():
    assert ParentalConsentWithdrawn.sensitive_fields == ParentDeactivated.sensitive_fields == ("reason",)


def test_settings_are_coded_not_free_text():
    assert ParentSettingsUpdated.coded_fields == ("settings",)


# --- Registration ------------------------------------------------------------------

def test_register_records_the_contact_details():
    parent = registered_parent()

    event = parent.get_domain_events()[0]
    assert isinstance(event, ParentRegistered)
    assert (event.parent_id, event.email, event.name, event.phone) == (
        "parent-456", "ann@example.com", "Ann", "+1 555 0100 123")
    assert parent.registered and parent.active
    assert parent.registered_at == event.occurred_at
    assert parent.stream_id == "parent.parent-456"


def test_register_lowercases_the_email_domain_only():
    parent = Parent("p-1")
    parent.register("  Ann.Smith@Example.COM ", " Ann ")
    assert (parent.email, parent.name, parent.phone) == ("Ann.Smith@example.com", "Ann", None)


@pytest.mark.parametrize("email", ["", "ann", "ann@", "@example.com", "ann@example", "ann @example.com",
                                   "ann@example.", None, 42, "a" * 250 + "@example.com"])
def test_register_rejects_what_is_not_an_email_address(email):
    parent = Parent("p-1")
    assert_refused(parent, lambda: parent.register(email, "Ann"), InvalidValue, match="email")


@pytest.mark.parametrize("name", ["", "  ", None, "x" * 101])
def test_register_rejects_an_empty_or_too_long_name(name):
    parent = Parent("p-1")
    assert_refused(parent, lambda: parent.register("ann@example.com", name), InvalidName, match="name")


@pytest.mark.parametrize("phone", ["", "call me", "12345", "+1 555 0100 123 456 789 0"])
def test_register_rejects_what_is_not_a_phone_number(phone):
    parent = Parent("p-1")
    assert_refused(parent, lambda: parent.register("ann@example.com", "Ann", phone), InvalidValue, match="phone")


@pytest.mark.parametrize("email, name, message", [
    ("ann@example.com", "Ann\x00", r"name contains a control character \(U\+0000\) at position 3; remove it"),
    ("ann@example.com", "An\ud800n", r"name is not valid Unicode \(a lone surrogate U\+D800 at position 2\)"),
    ("ann\x00@example.com", "Ann", r"email contains a control character \(U\+0000\) at position 3"),
])
def test_register_refuses_control_characters_and_surrogates(email, name, message):
    parent = Parent("p-1")
    assert_refused(parent, lambda: parent.register(email, name), InvalidValue, match=message)


def test_register_twice_is_refused():
    parent = registered_parent()
    assert_refused(parent, lambda: parent.register("b@example.com", "B"), AlreadyRegistered,
                   match="parent parent-456 is registered already")


# --- Consent -----------------------------------------------------------------------

def test_grant_consent_records_method_and_time():
    parent = registered_parent()

    parent.grant_consent(ChildId("child-123"), "credit_card", granted_at=GRANTED_AT)

    event = parent.get_domain_events()[-1]
    assert isinstance(event, ParentalConsentGranted)
    assert (event.child_id, event.method, event.granted_at) == ("child-123", "credit_card", GRANTED_AT)
    assert parent.has_consent("child-123")
    assert not parent.has_consent("child-999")


def test_grant_consent_defaults_to_now():
    parent = registered_parent()
    before = datetime.now(timezone.utc)

    parent.grant_consent("child-123", "email_plus")

    assert before <= parent.consents["child-123"].granted_at <= datetime.now(timezone.utc)


@pytest.mark.parametrize("method", CONSENT_METHODS)
def test_every_verifiable_consent_method_is_accepted(method):
    parent = registered_parent()
    parent.grant_consent("child-123", method)
    assert parent.consents["child-123"].method == method


@pytest.mark.parametrize("method", ["", "checkbox", "EMAIL_PLUS", None])
def test_grant_consent_rejects_a_method_that_is_not_verifiable(method):
    parent = registered_parent()
    assert_refused(parent, lambda: parent.grant_consent("child-123", method), InvalidValue,
                   match="consent method .* is not one of credit_card, email_plus")


def test_grant_consent_rejects_a_naive_time():
    parent = registered_parent()
    assert_refused(parent, lambda: parent.grant_consent("child-123", "signed_form", datetime(2026, 3, 1)),
                   InvalidValue, match="no time zone")


def test_consent_cannot_be_granted_twice_for_the_same_child():
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form", GRANTED_AT)
    assert_refused(parent, lambda: parent.grant_consent("child-123", "video_call"), ConsentError,
                   match=r"already consented for child child-123 \(signed_form, .*\); withdraw it first")


def test_withdraw_consent_ends_it_and_it_can_be_granted_again():
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form", GRANTED_AT)

    parent.withdraw_consent("child-123", reason="changed my mind")

    event = parent.get_domain_events()[-1]
    assert isinstance(event, ParentalConsentWithdrawn) and event.reason == "changed my mind"
    assert not parent.has_consent("child-123")
    assert parent.consents["child-123"].withdrawn_at == event.withdrawn_at

    parent.grant_consent("child-123", "video_call")
    assert parent.has_consent("child-123")


@pytest.mark.parametrize("reason, message", [
    ("changed\nmy mind", r"reason contains a control character \(U\+000A\) at position 7"),
    ("\udc00", r"reason is not valid Unicode \(a lone surrogate U\+DC00 at position 0\)"),
])
def test_withdraw_consent_refuses_a_reason_with_control_characters_or_surrogates(reason, message):
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form", GRANTED_AT)
    assert_refused(parent, lambda: parent.withdraw_consent("child-123", reason), InvalidValue, match=message)


def test_withdraw_needs_a_consent_in_force():
    parent = registered_parent()
    assert_refused(parent, lambda: parent.withdraw_consent("child-123"), ConsentError, match="no consent in force")
    parent.grant_consent("child-123", "signed_form")
    parent.withdraw_consent("child-123")
    assert_refused(parent, lambda: parent.withdraw_consent("child-123"), ConsentError)


def test_consents_of_different_children_are_independent():
    parent = registered_parent()
    parent.grant_consent("child-1", "signed_form")
    parent.grant_consent("child-2", "credit_card")

    parent.withdraw_consent("child-1")

    assert (parent.has_consent("child-1"), parent.has_consent("child-2")) == (False, True)


def test_a_deactivated_parent_has_no_consent_in_force():
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form")

    parent.deactivate("account closed")

    assert not parent.has_consent("child-123")


# --- Settings ----------------------------------------------------------------------

def test_settings_have_defaults():
    assert Parent("p-1").settings == {"notifications_enabled": True, "weekly_report": True, "language": "en",
                                      "timezone": "UTC"}


def test_update_settings_records_only_what_changes():
    parent = registered_parent()

    parent.update_settings({"weekly_report": False, "language": "en", "timezone": "Europe/Berlin"})

    event = parent.get_domain_events()[-1]
    assert isinstance(event, ParentSettingsUpdated)
    assert event.settings == {"weekly_report": False, "timezone": "Europe/Berlin"}
    assert parent.settings["timezone"] == "Europe/Berlin"


def test_update_settings_that_change_nothing_raise_no_event():
    parent = registered_parent()
    parent.update_settings({"notifications_enabled": True})
    assert len(parent.get_domain_events()) == 1


def test_update_settings_rejects_an_unknown_setting_naming_the_allowed_ones():
    parent = registered_parent()
    assert_refused(parent, lambda: parent.update_settings({"theme": "dark"}), UnknownSettingField,
                   match="'theme'; allowed fields are language, notifications_enabled, timezone, weekly_report")


@pytest.mark.parametrize("settings, message", [
    ({}, "settings is empty"),
    ({"notifications_enabled": "yes"}, "must be true or false"),
    ({"weekly_report": 1}, "must be true or false"),
    ({"language": ""}, "not a language tag"),
    ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"timezone": "../etc/passwd"}, "not an IANA time zone"),
    ({"timezone": None}, "not an IANA time zone"),
])
def test_update_settings_validates_every_value(settings, message):
    parent = registered_parent()
    assert_refused(parent, lambda: parent.update_settings(settings), InvalidValue, match=message)


# --- Deactivation ------------------------------------------------------------------

COMMANDS = {
    "grant_consent": lambda parent: parent.grant_consent("child-9", "signed_form"),
    "withdraw_consent": lambda parent: parent.withdraw_consent("child-123"),
    "update_settings": lambda parent: parent.update_settings({"weekly_report": False}),
    "deactivate": lambda parent: parent.deactivate(),
}


def test_deactivate_records_the_reason():
    parent = registered_parent()

    parent.deactivate("account closed")

    assert isinstance(parent.get_domain_events()[-1], ParentDeactivated)
    assert (parent.active, parent.deactivated_reason) == (False, "account closed")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_deactivated_parent_takes_no_more_commands(command):
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form")
    parent.deactivate("account closed")
    assert_refused(parent, lambda: COMMANDS[command](parent), AggregateDeactivated,
                   match="parent parent-456 was deactivated")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unregistered_parent_takes_no_commands(command):
    parent = Parent("parent-456")
    assert_refused(parent, lambda: COMMANDS[command](parent), NotRegistered, match="call register")


# --- Replay, redaction and snapshots -----------------------------------------------

def full_history_parent() -> Parent:
    parent = registered_parent()
    parent.grant_consent("child-1", "signed_form", GRANTED_AT)
    parent.grant_consent("child-2", "credit_card", GRANTED_AT + timedelta(days=1))
    parent.withdraw_consent("child-1", "moved")
    parent.update_settings({"timezone": "America/New_York", "weekly_report": False})
    parent.deactivate("closed")
    return parent


def test_replaying_the_events_gives_the_same_state():
    parent = full_history_parent()

    assert replayed(parent).to_snapshot() == parent.to_snapshot()


def test_applying_redacted_events_does_not_fail():
    parent = full_history_parent()
    events = [dataclasses.replace(e, **{name: None for name in e.sensitive_fields}) for e in parent.get_domain_events()]

    copy = replayed(parent, events)

    assert (copy.email, copy.name, copy.phone, copy.deactivated_reason) == (None, None, None, None)
    # The consents stay; only the reason given for withdrawing one is gone.
    assert copy.consents == {child_id: dataclasses.replace(consent, withdrawal_reason=None)
                             for child_id, consent in parent.consents.items()}
    assert parent.consents["child-1"].withdrawal_reason == "moved"


def test_snapshot_round_trip_through_json_restores_state_and_version():
    parent = full_history_parent()
    state = json.loads(json.dumps(parent.to_snapshot()))

    restored = Parent.from_snapshot("parent-456", 6, state)

    assert restored.to_snapshot() == parent.to_snapshot()
    assert restored.consents == parent.consents
    assert restored.version == 6 and isinstance(restored.id, ParentId)


def test_snapshot_names_the_parent_and_its_personal_fields():
    parent = registered_parent()

    assert parent.snapshot_subject() == ("parent", "parent-456")
    assert set(Parent.snapshot_sensitive_fields) == {"email", "name", "phone", "withdrawal_reasons",
                                                     "deactivated_reason"}
    assert set(Parent.snapshot_sensitive_fields) <= set(parent.to_snapshot())
    assert Parent.snapshot_schema_version == 2  # older snapshots held the reasons in clear


def test_snapshot_keeps_the_withdrawal_reasons_out_of_the_consents():
    state = full_history_parent().to_snapshot()

    assert state["withdrawal_reasons"] == {"child-1": "moved"}
    assert [sorted(item) for item in state["consents"]] == [["child_id", "granted_at", "method", "withdrawn_at"]] * 2
    assert "moved" not in json.dumps(state["consents"])


def test_snapshot_with_erased_reasons_restores_the_consents_without_them():
    parent = full_history_parent()
    state = {**json.loads(json.dumps(parent.to_snapshot())), "withdrawal_reasons": None}

    restored = Parent.from_snapshot("parent-456", 6, state)

    assert restored.consents == {child_id: dataclasses.replace(consent, withdrawal_reason=None)
                                 for child_id, consent in parent.consents.items()}
    assert not restored.consents["child-1"].active and restored.consents["child-2"].active


def test_snapshot_with_redacted_personal_fields_restores():
    parent = full_history_parent()
    state = {**parent.to_snapshot(), **{key: None for key in Parent.snapshot_sensitive_fields}}

    restored = Parent.from_snapshot("parent-456", 6, state)

    assert (restored.email, restored.name, restored.deactivated_reason) == (None, None, None)
    assert restored.consents["child-1"].withdrawn_at == parent.consents["child-1"].withdrawn_at
    assert not restored.active


def test_replayed_redacted_events_leave_no_withdrawal_reasons_and_round_trip():
    parent = full_history_parent()
    events = [dataclasses.replace(e, **{name: None for name in e.sensitive_fields}) for e in parent.get_domain_events()]

    copy = replayed(parent, events)

    assert copy.to_snapshot()["withdrawal_reasons"] == {}
    assert Parent.from_snapshot("parent-456", 6, copy.to_snapshot()).to_snapshot() == copy.to_snapshot()


def test_a_restored_parent_keeps_enforcing_its_rules():
    parent = registered_parent()
    parent.grant_consent("child-123", "signed_form")
    restored = Parent.from_snapshot("parent-456", 2, parent.to_snapshot())

    assert restored.has_consent("child-123")
    assert_refused(restored, lambda: restored.grant_consent("child-123", "video_call"), ConsentError)
