"""Command handlers for children: registration (with consent), profile, device, safety, deactivation."""
from __future__ import annotations

from ..domain import AlreadyRegistered, Child, ChildId, Parent
from .actors import Actor
from .errors import ConsentRequired, NotFound
from .unit_of_work import CommandResult, change_one, run_command


def register_child(*, actor: Actor, child_id: str, parent_id: str, name: str, age: int,
                   device_id: str | None = None, udid: str | None = None) -> CommandResult:
    """Registers a child of a parent who has given consent for it (consent first, then data)."""
    def decide(uow):
        uow.require_own_parent(parent_id)
        parent = uow.load_or_none(Parent, parent_id)
        if parent is None:
            raise NotFound(f"parent {parent_id} does not exist")
        if not parent.has_consent(child_id):
            raise ConsentRequired(f"parent {parent_id} has no consent in force for child {child_id}: record it "
                                  "(grant_consent) before registering the child")
        if uow.load_or_none(Child, child_id) is not None:
            raise AlreadyRegistered(f"child {child_id} is registered already")
        child = Child(id=ChildId(child_id), parent_id=parent_id, device_id=device_id, name=name, age=age, udid=udid)
        child.register_child()
        uow.save(child)
        return child.stream_id

    return run_command(actor, decide)


def _own_child(child_id: str):
    return lambda uow: uow.load_own_child(child_id)


def update_child_profile(*, actor: Actor, child_id: str, changes: dict) -> CommandResult:
    return change_one(actor, _own_child(child_id), lambda child: child.update_profile(changes))


def pair_device(*, actor: Actor, child_id: str, device_id: str, udid: str) -> CommandResult:
    return change_one(actor, _own_child(child_id), lambda child: child.pair_device(device_id, udid))


def unpair_device(*, actor: Actor, child_id: str, reason: str | None = None) -> CommandResult:
    return change_one(actor, _own_child(child_id), lambda child: child.unpair_device(reason))


def change_safety_settings(*, actor: Actor, child_id: str, content_filter_level: str,
                           daily_time_limit_minutes: int) -> CommandResult:
    return change_one(actor, _own_child(child_id), lambda child: child.change_safety_settings(
        content_filter_level, daily_time_limit_minutes))


def deactivate_child(*, actor: Actor, child_id: str, reason: str | None = None) -> CommandResult:
    return change_one(actor, _own_child(child_id), lambda child: child.deactivate(reason))


def register_child_with_consent(*, actor: Actor, parent_id: str, child_id: str, name: str, age: int,
                                consent_method: str | None = None, device_id: str | None = None,
                                udid: str | None = None) -> CommandResult:
    """What a parent does in the app: records consent (unless one is in force already) and
    registers the child, in one unit of work, so neither is stored without the other."""
    def decide(uow):
        uow.require_own_parent(parent_id)
        parent = uow.load_or_none(Parent, parent_id)
        if parent is None:
            raise NotFound(f"parent {parent_id} does not exist")
        if uow.load_or_none(Child, child_id) is not None:
            raise AlreadyRegistered(f"child {child_id} is registered already; choose another child_id")
        if not parent.has_consent(child_id):
            if consent_method is None:
                raise ConsentRequired(f"no consent is in force for child {child_id}: give consent_method "
                                      "to record your verifiable consent with the registration")
            parent.grant_consent(child_id, consent_method)
            uow.save(parent)
        child = Child(id=ChildId(child_id), parent_id=parent_id, device_id=device_id, name=name, age=age, udid=udid)
        child.register_child()
        uow.save(child)
        return child.stream_id

    return run_command(actor, decide)
