"""The Conversation aggregate and its events: messages in sequence, safety flags and their
acknowledgement, nothing before the start or after the end, summaries, replay and snapshots.
Pure Python, no I/O."""
from __future__ import annotations

import dataclasses
import json

import pytest

from eventsourcing_app.domain import (
    ChildId,
    Conversation,
    ConversationAlreadyEnded,
    ConversationAlreadyStarted,
    ConversationEnded,
    ConversationId,
    ConversationNotEnded,
    ConversationNotStarted,
    ConversationStarted,
    ConversationSummarized,
    DeviceId,
    InvalidValue,
    MessageRecorded,
    SafetyFlagAcknowledged,
    SafetyFlagRaised,
)
from tests.unit.domain_helpers import assert_refused, replayed

CONVERSATION_EVENTS = (ConversationStarted, MessageRecorded, SafetyFlagRaised, SafetyFlagAcknowledged,
                       ConversationEnded, ConversationSummarized)


def started_conversation() -> Conversation:
    conversation = Conversation(ConversationId("conv-456"))
    conversation.start(ChildId("child-123"), DeviceId("device-789"))
    return conversation


def ended_conversation() -> Conversation:
    conversation = started_conversation()
    conversation.record_message("child", "Why is the sky blue?")
    conversation.end("child said goodbye")
    return conversation


@pytest.mark.parametrize("event_class", CONVERSATION_EVENTS)
def test_every_conversation_event_names_the_child_as_its_data_subject(event_class):
    assert event_class.data_subject == ("child", "child_id")
    assert {"conversation_id", "child_id"} <= set(event_class.data_field_names())
    assert set(event_class.sensitive_fields) <= set(event_class.data_field_names())


def test_what_was_said_is_sensitive():
    assert MessageRecorded.sensitive_fields == ("text",)
    assert ConversationSummarized.sensitive_fields == ("summary",)
    assert ConversationEnded.sensitive_fields == ("reason",)
    assert SafetyFlagRaised.sensitive_fields == SafetyFlagAcknowledged.sensitive_fields == ()


# --- Start and messages ------------------------------------------------------------

def test_start_records_the_child_and_device():
    conversation = started_conversation()

    event = conversation.get_domain_events()[0]
    assert isinstance(event, ConversationStarted)
    assert (event.conversation_id, event.child_id, event.device_id) == ("conv-456", "child-123", "device-789")
    assert conversation.started and not conversation.ended
    assert conversation.started_at == event.occurred_at
    assert conversation.stream_id == "conversation.conv-456"


def test_start_twice_is_refused():
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.start("child-123", "device-789"), ConversationAlreadyStarted,
                   match="conversation conv-456 was started already")


@pytest.mark.parametrize("child_id, device_id", [("", "d-1"), ("c-1", ""), (None, "d-1"), ("c-1", None)])
def test_start_needs_a_child_and_a_device(child_id, device_id):
    conversation = Conversation("conv-456")
    assert_refused(conversation, lambda: conversation.start(child_id, device_id), InvalidValue)


def test_messages_are_numbered_from_1_in_order():
    conversation = started_conversation()

    conversation.record_message("child", "Hello bear!")
    conversation.record_message("bear", "Hello Alice!")
    conversation.record_message("child", "  Tell me a story  ")

    events = conversation.get_domain_events()[1:]
    assert [(e.sequence, e.speaker, e.text) for e in events] == [
        (1, "child", "Hello bear!"), (2, "bear", "Hello Alice!"), (3, "child", "  Tell me a story  ")]
    assert all(e.child_id == "child-123" and e.conversation_id == "conv-456" for e in events)
    assert [m.sequence for m in conversation.messages] == [1, 2, 3]
    assert conversation.last_sequence == 3


@pytest.mark.parametrize("speaker", ["parent", "Child", "", None])
def test_record_message_rejects_an_unknown_speaker(speaker):
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.record_message(speaker, "hi"), InvalidValue,
                   match="speaker .* is not one of bear, child")


@pytest.mark.parametrize("text, message", [
    ("", "must not be empty"), ("   ", "must not be empty"), (None, "must be a string"),
    ("x" * 4001, "4001 characters long; the limit is 4000"),
])
def test_record_message_rejects_empty_or_too_long_text(text, message):
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.record_message("child", text), InvalidValue, match=message)


def test_a_message_may_span_lines_and_hold_tabs():
    conversation = started_conversation()
    text = "Knock knock!\r\nWho's there?\n\tA bear 🧸"

    conversation.record_message("bear", text)

    assert conversation.get_domain_events()[-1].text == conversation.messages[-1].text == text


@pytest.mark.parametrize("text, message", [
    ("Hello\x00bear", r"message text contains a control character \(U\+0000\) at position 5; remove it"),
    ("Hello\x0bbear", r"message text contains a control character \(U\+000B\) at position 5"),
    ("Hello\x1b[2Jbear", r"message text contains a control character \(U\+001B\) at position 5"),
    ("  \x7f", r"message text contains a control character \(U\+007F\) at position 2"),
    ("Hello\ud800", r"message text is not valid Unicode \(a lone surrogate U\+D800 at position 5\)"),
    ("\ud83d\ude00", r"message text is not valid Unicode \(a lone surrogate U\+D83D at position 0\)"),
])
def test_record_message_refuses_control_characters_and_surrogates(text, message):
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.record_message("child", text), InvalidValue, match=message)


def test_a_message_may_be_4000_characters_long():
    conversation = started_conversation()
    conversation.record_message("bear", "x" * 4000)
    assert len(conversation.messages[0].text) == 4000


# --- Safety flags ------------------------------------------------------------------

def test_raise_safety_flag_records_category_severity_and_message():
    conversation = started_conversation()
    conversation.record_message("child", "My address is ...")

    conversation.raise_safety_flag("personal_info", "high", message_sequence=1)
    conversation.raise_safety_flag("other", "low")

    first, second = conversation.get_domain_events()[-2:]
    assert isinstance(first, SafetyFlagRaised)
    assert (first.category, first.severity, first.message_sequence) == ("personal_info", "high", 1)
    assert second.message_sequence is None
    assert [(f.category, f.severity) for f in conversation.safety_flags] == [("personal_info", "high"),
                                                                              ("other", "low")]


@pytest.mark.parametrize("category, severity, message", [
    ("rudeness", "low", "safety category 'rudeness' is not one of bullying, inappropriate_content"),
    ("bullying", "extreme", "severity 'extreme' is not one of critical, high, low, medium"),
])
def test_raise_safety_flag_rejects_unknown_categories_and_severities(category, severity, message):
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.raise_safety_flag(category, severity), InvalidValue,
                   match=message)


@pytest.mark.parametrize("sequence", [0, 2, -1, True, "1"])
def test_a_flag_can_only_point_at_a_recorded_message(sequence):
    conversation = started_conversation()
    conversation.record_message("child", "hi")
    assert_refused(conversation, lambda: conversation.raise_safety_flag("other", "low", sequence), InvalidValue,
                   match=r"is not a message of conversation conv-456 \(it has messages 1..1\)")


def test_safety_flags_are_numbered_from_1_in_the_order_raised():
    conversation = started_conversation()
    conversation.record_message("child", "hi")

    for category in ("other", "bullying", "personal_info"):
        conversation.raise_safety_flag(category, "low")

    assert [(f.number, f.category) for f in conversation.safety_flags] == [
        (1, "other"), (2, "bullying"), (3, "personal_info")]
    assert not any(f.acknowledged for f in conversation.safety_flags)
    # SafetyFlagRaised carries no number: a flag's number is its position in the stream.
    assert "flag_number" not in SafetyFlagRaised.data_field_names()


# --- Acknowledging safety flags ----------------------------------------------------

def flagged_conversation(flags: int = 2) -> Conversation:
    conversation = started_conversation()
    conversation.record_message("child", "A man in the park asked where I live")
    for _ in range(flags):
        conversation.raise_safety_flag("stranger_contact", "high", 1)
    return conversation


def test_acknowledging_a_flag_records_who_and_when():
    conversation = flagged_conversation()

    conversation.acknowledge_safety_flag(2, "user:42")

    event = conversation.get_domain_events()[-1]
    assert isinstance(event, SafetyFlagAcknowledged)
    assert (event.conversation_id, event.child_id, event.flag_number, event.acknowledged_by) == (
        "conv-456", "child-123", 2, "user:42")
    first, second = conversation.safety_flags
    assert not first.acknowledged and first.acknowledged_by is None
    assert second.acknowledged and (second.acknowledged_at, second.acknowledged_by) == (event.occurred_at, "user:42")
    assert (second.number, second.category, second.message_sequence) == (2, "stranger_contact", 1)


def test_a_flag_can_be_acknowledged_after_the_conversation_ended():
    conversation = flagged_conversation(1)
    conversation.end("bedtime")

    conversation.acknowledge_safety_flag(1, "system:support-desk")

    assert conversation.safety_flags[0].acknowledged_by == "system:support-desk"


def test_acknowledging_an_acknowledged_flag_changes_nothing_and_keeps_the_first_acknowledgement():
    conversation = flagged_conversation()
    conversation.acknowledge_safety_flag(1, "user:42")
    state, pending = conversation.to_snapshot(), conversation.get_domain_events()

    conversation.acknowledge_safety_flag(1, "user:42")
    conversation.acknowledge_safety_flag(1, "user:43")

    assert conversation.get_domain_events() == pending
    assert conversation.to_snapshot() == state
    assert conversation.safety_flags[0].acknowledged_by == "user:42"


@pytest.mark.parametrize("number", [0, 3, -1, True, "1", None, 1.0])
def test_only_a_raised_flag_can_be_acknowledged_and_the_error_names_the_valid_numbers(number):
    conversation = flagged_conversation()
    assert_refused(conversation, lambda: conversation.acknowledge_safety_flag(number, "user:42"), InvalidValue,
                   match=r"safety flag .* is not a flag of conversation conv-456 \(its flags are numbered 1..2\)")


def test_a_conversation_without_flags_says_so():
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.acknowledge_safety_flag(1, "user:42"), InvalidValue,
                   match=r"safety flag 1 is not a flag of conversation conv-456 \(it has no safety flags\)")


def test_a_conversation_that_has_not_started_has_no_flags_to_acknowledge():
    conversation = Conversation("conv-456")
    assert_refused(conversation, lambda: conversation.acknowledge_safety_flag(1, "user:42"), ConversationNotStarted,
                   match="conversation conv-456 has not started; it has no safety flags")


@pytest.mark.parametrize("acknowledged_by", ["Sam Parent", "sam@example.com", "", None, "user:", "admin:1",
                                             "user:4 2", "user:" + "9" * 101, 42])
def test_acknowledged_by_is_an_actor_id_never_a_name_or_free_text(acknowledged_by):
    conversation = flagged_conversation()
    assert_refused(conversation, lambda: conversation.acknowledge_safety_flag(1, acknowledged_by), InvalidValue,
                   match=r"acknowledged_by .* is not an actor id; give 'user:<id>' or 'system:<name>'")


def test_a_bad_actor_id_is_refused_also_for_an_acknowledged_flag():
    conversation = flagged_conversation()
    conversation.acknowledge_safety_flag(1, "user:42")
    assert_refused(conversation, lambda: conversation.acknowledge_safety_flag(1, "Sam"), InvalidValue,
                   match="is not an actor id")


# --- End and summary ---------------------------------------------------------------

def test_end_records_the_reason():
    conversation = ended_conversation()

    event = conversation.get_domain_events()[-1]
    assert isinstance(event, ConversationEnded) and event.reason == "child said goodbye"
    assert conversation.ended and conversation.ended_at == event.occurred_at
    assert conversation.end_reason == "child said goodbye"


@pytest.mark.parametrize("command", [
    lambda c: c.record_message("child", "are you there?"),
    lambda c: c.raise_safety_flag("other", "low"),
    lambda c: c.end(),
], ids=["record_message", "raise_safety_flag", "end"])
def test_nothing_is_recorded_after_the_end(command):
    conversation = ended_conversation()
    assert_refused(conversation, lambda: command(conversation), ConversationAlreadyEnded,
                   match="conversation conv-456 ended at .*; start a new conversation")


@pytest.mark.parametrize("command", [
    lambda c: c.record_message("child", "hi"),
    lambda c: c.raise_safety_flag("other", "low"),
    lambda c: c.end(),
    lambda c: c.summarize("nothing"),
], ids=["record_message", "raise_safety_flag", "end", "summarize"])
def test_nothing_is_recorded_before_the_start(command):
    conversation = Conversation("conv-456")
    assert_refused(conversation, lambda: command(conversation), ConversationNotStarted, match="has not started")


def test_summarize_an_ended_conversation():
    conversation = ended_conversation()

    conversation.summarize("  Alice asked about the colour of the sky. ")

    event = conversation.get_domain_events()[-1]
    assert isinstance(event, ConversationSummarized)
    assert event.summary == conversation.summary == "Alice asked about the colour of the sky."


def test_a_later_summary_replaces_the_earlier_and_an_identical_one_changes_nothing():
    conversation = ended_conversation()
    conversation.summarize("first")
    conversation.summarize("second")
    conversation.summarize("second")

    assert conversation.summary == "second"
    assert [type(e).__name__ for e in conversation.get_domain_events()].count("ConversationSummarized") == 2


def test_summarize_needs_an_ended_conversation():
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.summarize("so far"), ConversationNotEnded,
                   match="still going on; end it before summarizing it")


@pytest.mark.parametrize("summary", ["", "   ", None, "x" * 4001, "Hi\x00", "Hi\udfff"])
def test_summarize_rejects_an_empty_or_too_long_summary_or_one_that_is_not_text(summary):
    conversation = ended_conversation()
    assert_refused(conversation, lambda: conversation.summarize(summary), InvalidValue, match="summary")


def test_a_summary_may_span_lines():
    conversation = ended_conversation()

    conversation.summarize(" Alice asked:\n\t- why the sky is blue\r\n\t- what bears eat\n")

    assert conversation.summary == "Alice asked:\n\t- why the sky is blue\r\n\t- what bears eat"


def test_the_end_reason_is_one_line():
    conversation = started_conversation()
    assert_refused(conversation, lambda: conversation.end("bye\nsee you"), InvalidValue,
                   match=r"reason contains a control character \(U\+000A\) at position 3")


# --- Replay, redaction and snapshots -----------------------------------------------

def full_history_conversation() -> Conversation:
    conversation = started_conversation()
    conversation.record_message("child", "Hello bear!")
    conversation.record_message("bear", "Hello! What shall we play?")
    conversation.raise_safety_flag("stranger_contact", "medium", 1)
    conversation.raise_safety_flag("other", "low")
    conversation.end("bedtime")
    conversation.acknowledge_safety_flag(1, "user:42")
    conversation.summarize("They said hello.")
    return conversation


def test_replaying_the_events_gives_the_same_state():
    conversation = full_history_conversation()

    assert replayed(conversation).to_snapshot() == conversation.to_snapshot()


def test_erased_texts_keep_the_shape_of_the_conversation():
    conversation = full_history_conversation()
    events = [dataclasses.replace(e, **{name: None for name in e.sensitive_fields})
              for e in conversation.get_domain_events()]

    copy = replayed(conversation, events)

    assert [(m.sequence, m.speaker, m.text) for m in copy.messages] == [(1, "child", None), (2, "bear", None)]
    assert copy.summary is None and copy.ended and copy.safety_flags == conversation.safety_flags
    assert copy.end_reason is None and copy.ended_at == conversation.ended_at
    assert copy.to_snapshot() == {**conversation.to_snapshot(), "message_texts": [None, None], "summary": None,
                                  "end_reason": None}


def test_snapshot_round_trip_through_json_restores_state_and_version():
    conversation = full_history_conversation()
    state = json.loads(json.dumps(conversation.to_snapshot()))

    restored = Conversation.from_snapshot("conv-456", 8, state)

    assert restored.to_snapshot() == conversation.to_snapshot()
    assert restored.messages == conversation.messages
    assert restored.safety_flags == conversation.safety_flags
    assert [(f.number, f.acknowledged_by) for f in restored.safety_flags] == [(1, "user:42"), (2, None)]
    assert restored.version == 8 and isinstance(restored.id, ConversationId)


def test_a_restored_conversation_acknowledges_like_the_original():
    conversation = full_history_conversation()
    restored = Conversation.from_snapshot("conv-456", 8, conversation.to_snapshot())

    restored.acknowledge_safety_flag(1, "user:43")
    restored.acknowledge_safety_flag(2, "user:43")

    assert [e.flag_number for e in restored.get_domain_events()] == [2]
    assert replayed(conversation, [*conversation.get_domain_events(), *restored.get_domain_events()]).to_snapshot() \
        == restored.to_snapshot()


def test_snapshot_with_erased_texts_restores_the_messages_without_words():
    conversation = full_history_conversation()
    state = {**conversation.to_snapshot(), **{key: None for key in Conversation.snapshot_sensitive_fields}}

    restored = Conversation.from_snapshot("conv-456", 8, state)

    assert [(m.sequence, m.text) for m in restored.messages] == [(1, None), (2, None)]
    assert restored.summary is None and restored.last_sequence == 2
    assert restored.end_reason is None and restored.ended


def test_snapshot_names_the_child_once_started():
    assert Conversation("conv-456").snapshot_subject() is None
    assert started_conversation().snapshot_subject() == ("child", "child-123")
    assert set(Conversation.snapshot_sensitive_fields) == {"message_texts", "summary", "end_reason"}
    assert set(Conversation.snapshot_sensitive_fields) <= set(started_conversation().to_snapshot())
    # 2: older snapshots held end_reason in clear; 3: older ones had no flag numbers or acknowledgements
    assert Conversation.snapshot_schema_version == 3


def test_a_restored_conversation_continues_the_sequence():
    conversation = started_conversation()
    conversation.record_message("child", "one")
    restored = Conversation.from_snapshot("conv-456", 2, conversation.to_snapshot())

    restored.record_message("bear", "two")

    assert restored.get_domain_events()[-1].sequence == 2
