"""The application layer: the commands that entry points (API, admin, management commands,
Celery tasks, demo data) call. Each takes its inputs and an `Actor`, loads aggregates through
the repository, enforces the rules that span aggregates (consent before a child is registered
or anything is recorded about it; a parent acts only on their own family), saves in one
transaction and returns the saved streams' versions.

Parent accounts (Django users, tokens) are in `application.accounts`, the demo data in
`application.demo`: both need Django's models, so they are imported from there."""
from .actors import Actor
from .children import (
    change_safety_settings,
    deactivate_child,
    pair_device,
    register_child,
    unpair_device,
    update_child_profile,
)
from .conversations import (
    acknowledge_safety_flag,
    end_conversation,
    raise_safety_flag,
    record_message,
    start_conversation,
    summarize_conversation,
)
from .errors import (
    AccountExists,
    ApplicationError,
    Conflict,
    ConsentRequired,
    Gone,
    InvalidActor,
    InvalidPassword,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from .parents import deactivate_parent, grant_consent, register_parent, update_parent_settings, withdraw_consent
from .privacy import ErasureReport, erase_child_data, export_child_data
from .unit_of_work import CommandResult

__all__ = [
    "AccountExists", "Actor", "ApplicationError", "CommandResult", "Conflict", "ConsentRequired", "ErasureReport",
    "Gone", "InvalidActor", "InvalidPassword", "NotFound", "PermissionDenied", "Unavailable",
    "acknowledge_safety_flag", "change_safety_settings", "deactivate_child", "deactivate_parent", "end_conversation",
    "erase_child_data", "export_child_data", "grant_consent", "pair_device", "raise_safety_flag", "record_message",
    "register_child", "register_parent", "start_conversation", "summarize_conversation", "unpair_device",
    "update_child_profile", "update_parent_settings", "withdraw_consent",
]
