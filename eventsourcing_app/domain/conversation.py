"""A conversation between a child and their teddy bear: its messages, the safety flags raised
on it and its summary, as the `Conversation` aggregate and the events of its stream
(`conversation.<id>`).

What was said is the child's personal data: message texts, summaries and the free-text reason a
conversation ended are sensitive fields, encrypted with the child's key, and come back as None
once the child's data is erased. The conversation keeps its shape then (sequence numbers,
speakers, flags), only the words are gone.

Safety flags are numbered 1, 2, 3 ... in the order they were raised: a flag's number is its
position among the stream's SafetyFlagRaised events, which is how an acknowledgement
(SafetyFlagAcknowledged.flag_number) and any reader of the stream name it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, get_args

from .aggregate import EventSourcedAggregate
from .errors import (
    ConversationAlreadyEnded,
    ConversationAlreadyStarted,
    ConversationNotEnded,
    ConversationNotStarted,
    InvalidValue,
    check_actor_id,
    check_choice,
    check_id,
    check_optional_text,
    check_text,
)
from .events import DomainEvent
from .ids import ActorId, ChildId, ConversationId, DeviceId, datetime_or_none, id_or_none, isoformat_or_none

SPEAKERS = ("child", "bear")
MESSAGE_MAX_LENGTH = 4000
SUMMARY_MAX_LENGTH = 4000
SAFETY_CATEGORIES = ("personal_info", "inappropriate_content", "self_harm", "bullying", "stranger_contact", "other")
SEVERITIES = ("low", "medium", "high", "critical")

_CHILD_SUBJECT = ("child", "child_id")

# The codes as types of event fields (the tuples above are what the commands check against).
Speaker = Literal["child", "bear"]
SafetyCategory = Literal["personal_info", "inappropriate_content", "self_harm", "bullying", "stranger_contact",
                         "other"]
Severity = Literal["low", "medium", "high", "critical"]
assert get_args(Speaker) == SPEAKERS
assert get_args(SafetyCategory) == SAFETY_CATEGORIES
assert get_args(Severity) == SEVERITIES


# --- Events ------------------------------------------------------------------------

@dataclass
class ConversationStarted(DomainEvent):
    conversation_id: ConversationId
    child_id: ChildId
    device_id: DeviceId

    data_subject = _CHILD_SUBJECT


@dataclass
class MessageRecorded(DomainEvent):
    conversation_id: ConversationId
    child_id: ChildId
    sequence: int  # 1, 2, 3, ... within the conversation
    speaker: Speaker
    text: str

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("text",)


@dataclass
class SafetyFlagRaised(DomainEvent):
    """Something in the conversation (or in one message of it) may put the child at risk."""

    conversation_id: ConversationId
    child_id: ChildId
    category: SafetyCategory
    severity: Severity
    message_sequence: int | None = None

    data_subject = _CHILD_SUBJECT


@dataclass
class SafetyFlagAcknowledged(DomainEvent):
    """A parent (or the platform) has seen safety flag `flag_number` of the conversation."""

    conversation_id: ConversationId
    child_id: ChildId
    flag_number: int  # 1 for the first SafetyFlagRaised of the stream, 2 for the second, ...
    acknowledged_by: ActorId

    data_subject = _CHILD_SUBJECT


@dataclass
class ConversationEnded(DomainEvent):
    conversation_id: ConversationId
    child_id: ChildId
    reason: str | None = None

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("reason",)


@dataclass
class ConversationSummarized(DomainEvent):
    """A summary for the parent; a later one replaces an earlier one."""

    conversation_id: ConversationId
    child_id: ChildId
    summary: str

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("summary",)


# --- State values ------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    sequence: int
    speaker: str
    text: str | None  # None once the child's data is erased
    recorded_at: datetime


@dataclass(frozen=True)
class SafetyFlag:
    category: str
    severity: str
    message_sequence: int | None
    raised_at: datetime
    number: int
    acknowledged_at: datetime | None = None
    acknowledged_by: ActorId | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None


# --- The aggregate -----------------------------------------------------------------

class Conversation(EventSourcedAggregate):
    """One conversation: started on a child's device, then messages and flags, then ended."""

    aggregate_type = "conversation"
    # Message metadata (sequence, speaker, time) is kept apart from the texts, so that a
    # snapshot whose texts were erased still restores the conversation's shape.
    snapshot_sensitive_fields = ("message_texts", "summary", "end_reason")
    # 2: end_reason became sensitive. 3: safety flags carry their number and acknowledgement.
    snapshot_schema_version = 3

    def __init__(self, id: str) -> None:
        super().__init__(check_id(id, ConversationId, "conversation id"))
        self.child_id: ChildId | None = None
        self.device_id: DeviceId | None = None
        self.started_at: datetime | None = None
        self.messages: list[Message] = []
        self.safety_flags: list[SafetyFlag] = []
        self.ended_at: datetime | None = None
        self.end_reason: str | None = None
        self.summary: str | None = None

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def last_sequence(self) -> int:
        return self.messages[-1].sequence if self.messages else 0

    # --- Commands ---

    def start(self, child_id: str, device_id: str) -> None:
        if self.started:
            raise ConversationAlreadyStarted(
                f"conversation {self.id} was started already (child {self.child_id}, {self.started_at.isoformat()})"
            )
        child_id = check_id(child_id, ChildId, "child_id")
        device_id = check_id(device_id, DeviceId, "device_id")
        self._raise_event(ConversationStarted(conversation_id=self.id, child_id=child_id, device_id=device_id))

    def record_message(self, speaker: str, text: str) -> None:
        """Records what the child or the bear said, as the next message in sequence."""
        self._require_open()
        speaker = check_choice(speaker, "speaker", SPEAKERS)
        text = check_text(text, "message text", max_length=MESSAGE_MAX_LENGTH, strip=False, multiline=True)
        self._raise_event(MessageRecorded(conversation_id=self.id, child_id=self.child_id,
                                          sequence=self.last_sequence + 1, speaker=speaker, text=text))

    def raise_safety_flag(self, category: str, severity: str, message_sequence: int | None = None) -> None:
        self._require_open()
        category = check_choice(category, "safety category", SAFETY_CATEGORIES)
        severity = check_choice(severity, "severity", SEVERITIES)
        if message_sequence is not None and (
            isinstance(message_sequence, bool) or not isinstance(message_sequence, int)
            or not 1 <= message_sequence <= self.last_sequence
        ):
            raise InvalidValue(
                f"message_sequence {message_sequence!r} is not a message of conversation {self.id} "
                f"(it has messages 1..{self.last_sequence})"
            )
        self._raise_event(SafetyFlagRaised(conversation_id=self.id, child_id=self.child_id, category=category,
                                           severity=severity, message_sequence=message_sequence))

    def acknowledge_safety_flag(self, number: int, acknowledged_by: str) -> None:
        """Records that safety flag `number` was seen, by `acknowledged_by` (an actor id).

        Allowed after the end: an alert is often read once the conversation is over. A flag
        already acknowledged stays as it was (its first acknowledgement is the one on record).
        """
        if not self.started:
            raise ConversationNotStarted(f"conversation {self.id} has not started; it has no safety flags")
        acknowledged_by = check_actor_id(acknowledged_by, "acknowledged_by")
        count = len(self.safety_flags)
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= count:
            valid = f"its flags are numbered 1..{count}" if count else "it has no safety flags"
            raise InvalidValue(f"safety flag {number!r} is not a flag of conversation {self.id} ({valid})")
        if self.safety_flags[number - 1].acknowledged:
            return
        self._raise_event(SafetyFlagAcknowledged(conversation_id=self.id, child_id=self.child_id, flag_number=number,
                                                 acknowledged_by=acknowledged_by))

    def end(self, reason: str | None = None) -> None:
        self._require_open()
        reason = check_optional_text(reason, "reason")
        self._raise_event(ConversationEnded(conversation_id=self.id, child_id=self.child_id, reason=reason))

    def summarize(self, summary: str) -> None:
        """Stores a summary of an ended conversation (replacing any earlier one)."""
        if not self.started:
            raise ConversationNotStarted(f"conversation {self.id} has not started; there is nothing to summarize")
        if not self.ended:
            raise ConversationNotEnded(f"conversation {self.id} is still going on; end it before summarizing it")
        summary = check_text(summary, "summary", max_length=SUMMARY_MAX_LENGTH, multiline=True)
        if summary == self.summary:
            return
        self._raise_event(ConversationSummarized(conversation_id=self.id, child_id=self.child_id, summary=summary))

    def _require_open(self) -> None:
        if not self.started:
            raise ConversationNotStarted(
                f"conversation {self.id} has not started; call start(child_id, device_id) first"
            )
        if self.ended:
            raise ConversationAlreadyEnded(
                f"conversation {self.id} ended at {self.ended_at.isoformat()}; start a new conversation"
            )

    # --- Applying events (state changes only here; no checks, values may be None) ---

    def apply_event(self, event: DomainEvent) -> None:
        """Apply event for reconstruction"""
        if isinstance(event, ConversationStarted):
            self._apply_conversation_started(event)
        elif isinstance(event, MessageRecorded):
            self._apply_message_recorded(event)
        elif isinstance(event, SafetyFlagRaised):
            self._apply_safety_flag_raised(event)
        elif isinstance(event, SafetyFlagAcknowledged):
            self._apply_safety_flag_acknowledged(event)
        elif isinstance(event, ConversationEnded):
            self._apply_conversation_ended(event)
        elif isinstance(event, ConversationSummarized):
            self._apply_conversation_summarized(event)
        else:
            raise TypeError(f"Conversation cannot apply a {event.event_type} event")

    def _apply_conversation_started(self, event: ConversationStarted) -> None:
        self.child_id = event.child_id
        self.device_id = event.device_id
        self.started_at = event.occurred_at

    def _apply_message_recorded(self, event: MessageRecorded) -> None:
        self.messages.append(Message(sequence=event.sequence, speaker=event.speaker, text=event.text,
                                     recorded_at=event.occurred_at))

    def _apply_safety_flag_raised(self, event: SafetyFlagRaised) -> None:
        self.safety_flags.append(SafetyFlag(category=event.category, severity=event.severity,
                                            message_sequence=event.message_sequence, raised_at=event.occurred_at,
                                            number=len(self.safety_flags) + 1))

    def _apply_safety_flag_acknowledged(self, event: SafetyFlagAcknowledged) -> None:
        index = event.flag_number - 1
        self.safety_flags[index] = replace(self.safety_flags[index], acknowledged_at=event.occurred_at,
                                           acknowledged_by=event.acknowledged_by)

    def _apply_conversation_ended(self, event: ConversationEnded) -> None:
        self.ended_at = event.occurred_at
        self.end_reason = event.reason

    def _apply_conversation_summarized(self, event: ConversationSummarized) -> None:
        self.summary = event.summary

    # --- Snapshots ---

    def snapshot_subject(self) -> tuple[str, str] | None:
        return None if self.child_id is None else ("child", str(self.child_id))

    def to_snapshot(self) -> dict:
        return {
            "child_id": None if self.child_id is None else str(self.child_id),
            "device_id": None if self.device_id is None else str(self.device_id),
            "started_at": isoformat_or_none(self.started_at),
            "messages": [
                {"sequence": m.sequence, "speaker": m.speaker, "recorded_at": m.recorded_at.isoformat()}
                for m in self.messages
            ],
            "message_texts": [m.text for m in self.messages],
            "safety_flags": [
                {"number": f.number, "category": f.category, "severity": f.severity,
                 "message_sequence": f.message_sequence, "raised_at": f.raised_at.isoformat(),
                 "acknowledged_at": isoformat_or_none(f.acknowledged_at),
                 "acknowledged_by": None if f.acknowledged_by is None else str(f.acknowledged_by)}
                for f in self.safety_flags
            ],
            "ended_at": isoformat_or_none(self.ended_at),
            "end_reason": self.end_reason,
            "summary": self.summary,
        }

    @classmethod
    def from_snapshot(cls, id: str, version: int, state: dict) -> "Conversation":
        conversation = cls(id)
        conversation.child_id = id_or_none(ChildId, state["child_id"])
        conversation.device_id = id_or_none(DeviceId, state["device_id"])
        conversation.started_at = datetime_or_none(state["started_at"])
        texts = state["message_texts"]
        if texts is None:  # erased
            texts = [None] * len(state["messages"])
        conversation.messages = [
            Message(sequence=m["sequence"], speaker=m["speaker"], text=text,
                    recorded_at=datetime.fromisoformat(m["recorded_at"]))
            for m, text in zip(state["messages"], texts, strict=True)
        ]
        conversation.safety_flags = [
            SafetyFlag(category=f["category"], severity=f["severity"], message_sequence=f["message_sequence"],
                       raised_at=datetime.fromisoformat(f["raised_at"]), number=f["number"],
                       acknowledged_at=datetime_or_none(f["acknowledged_at"]),
                       acknowledged_by=id_or_none(ActorId, f["acknowledged_by"]))
            for f in state["safety_flags"]
        ]
        conversation.ended_at = datetime_or_none(state["ended_at"])
        conversation.end_reason = state["end_reason"]
        conversation.summary = state["summary"]
        conversation._version = version
        return conversation
