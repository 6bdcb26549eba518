"""Command handlers for conversations: nothing is recorded for a child without consent in force.

Every command checks that the child is registered and active and that its parent's consent
is in force at that moment; a withdrawn consent stops the next message, not only the next
conversation.
"""
from __future__ import annotations

from ..domain import AggregateDeactivated, Child, Conversation, ConversationId, DevicePairingError, PersonalDataErased
from .actors import Actor
from .errors import ConsentRequired
from .unit_of_work import CommandResult, UnitOfWork, change_one, run_command


def _require_recordable(uow: UnitOfWork, child: Child) -> None:
    if child.erased:
        raise PersonalDataErased(f"child {child.id}'s personal data was erased; nothing more is recorded for it")
    if not child.active:
        raise AggregateDeactivated(f"child {child.id} is deactivated; nothing more is recorded for it")
    parent = uow.parent_of(child)
    if parent is None or not parent.has_consent(child.id):
        raise ConsentRequired(f"no parental consent is in force for child {child.id}: nothing is recorded")


def start_conversation(*, actor: Actor, conversation_id: str, child_id: str,
                       device_id: str | None = None) -> CommandResult:
    """Starts a conversation on the child's paired device (the one given must be it)."""
    def decide(uow):
        child = uow.load_own_child(child_id)
        _require_recordable(uow, child)
        device = device_id or child.device_id
        if device is None or device != child.device_id:
            raise DevicePairingError(f"device {device!r} is not paired with child {child_id}"
                                     if device else f"child {child_id} has no device paired")
        conversation = uow.load_or_none(Conversation, conversation_id) or Conversation(ConversationId(conversation_id))
        conversation.start(child_id, device)
        uow.save(conversation)
        return conversation.stream_id

    return run_command(actor, decide)


def _own_conversation(conversation_id: str, *, recordable: bool = True):
    def load(uow: UnitOfWork) -> Conversation:
        conversation, child = uow.load_own_conversation(conversation_id)
        if recordable:
            _require_recordable(uow, child)
        return conversation

    return load


def _conversation_command(actor: Actor, conversation_id: str, change, *, recordable: bool = True) -> CommandResult:
    return change_one(actor, _own_conversation(conversation_id, recordable=recordable), change)


def record_message(*, actor: Actor, conversation_id: str, speaker: str, text: str) -> CommandResult:
    return _conversation_command(actor, conversation_id, lambda c: c.record_message(speaker, text))


def raise_safety_flag(*, actor: Actor, conversation_id: str, category: str, severity: str,
                      message_sequence: int | None = None) -> CommandResult:
    # A safety flag is raised even without consent: it protects the child, it collects nothing.
    return _conversation_command(actor, conversation_id,
                                 lambda c: c.raise_safety_flag(category, severity, message_sequence),
                                 recordable=False)


def acknowledge_safety_flag(*, actor: Actor, conversation_id: str, flag_number: int) -> CommandResult:
    """Records that the actor (the child's parent, staff or a system job) has seen safety flag
    `flag_number` (1 for the first raised); an acknowledged flag stays as it was."""
    # Allowed without consent in force and after the end: seeing an alert about one's child
    # collects nothing about the child.
    return _conversation_command(actor, conversation_id, lambda c: c.acknowledge_safety_flag(flag_number, actor.id),
                                 recordable=False)


def end_conversation(*, actor: Actor, conversation_id: str, reason: str | None = None) -> CommandResult:
    # Ending is always allowed: it stops recording.
    return _conversation_command(actor, conversation_id, lambda c: c.end(reason), recordable=False)


def summarize_conversation(*, actor: Actor, conversation_id: str, summary: str) -> CommandResult:
    return _conversation_command(actor, conversation_id, lambda c: c.summarize(summary))
