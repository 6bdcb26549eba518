"""Command handlers for parents: registration, settings, consent, deactivation."""
from __future__ import annotations

from datetime import datetime

from ..domain import AlreadyRegistered, Child, Parent, ParentId
from .actors import Actor
from .errors import PermissionDenied
from .unit_of_work import CommandResult, change_one, run_command


def register_parent(*, actor: Actor, parent_id: str, email: str, name: str, phone: str | None = None) -> CommandResult:
    def decide(uow):
        uow.require_own_parent(parent_id)
        if uow.load_or_none(Parent, parent_id) is not None:
            raise AlreadyRegistered(f"parent {parent_id} is registered already")
        parent = Parent(ParentId(parent_id))
        parent.register(email=email, name=name, phone=phone)
        uow.save(parent)
        return parent.stream_id

    return run_command(actor, decide)


def _own_parent(parent_id: str):
    return lambda uow: uow.load_own_parent(parent_id)


def update_parent_settings(*, actor: Actor, parent_id: str, settings: dict) -> CommandResult:
    return change_one(actor, _own_parent(parent_id), lambda parent: parent.update_settings(settings))


def grant_consent(*, actor: Actor, parent_id: str, child_id: str, method: str,
                  granted_at: datetime | None = None) -> CommandResult:
    """Records the parent's verifiable consent for a child (before the child can be registered)."""
    def decide(uow):
        parent = uow.load_own_parent(parent_id)
        child = uow.load_or_none(Child, child_id)
        if child is not None and child.parent_id != parent_id:
            raise PermissionDenied(f"child {child_id} belongs to another parent; parent {parent_id} cannot consent "
                                   "for it")
        parent.grant_consent(child_id, method, granted_at)
        uow.save(parent)
        return parent.stream_id

    return run_command(actor, decide)


def withdraw_consent(*, actor: Actor, parent_id: str, child_id: str, reason: str | None = None) -> CommandResult:
    """Withdraws consent and, in the same transaction, deactivates the child: without consent
    nothing more is collected about it."""
    def decide(uow):
        parent = uow.load_own_parent(parent_id)
        parent.withdraw_consent(child_id, reason)
        uow.save(parent)
        child = uow.load_or_none(Child, child_id)
        if child is not None and child.parent_id == parent_id and child.active:
            child.deactivate("consent withdrawn")
            uow.save(child)
        return parent.stream_id

    return run_command(actor, decide)


def deactivate_parent(*, actor: Actor, parent_id: str, reason: str | None = None) -> CommandResult:
    return change_one(actor, _own_parent(parent_id), lambda parent: parent.deactivate(reason))
