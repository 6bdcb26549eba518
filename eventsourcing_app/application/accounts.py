"""Parent accounts: the login (a Django user and its API token) through which a parent acts as
their Parent aggregate.

`create_parent_account` registers a new parent through `register_parent` (the domain's checks;
the email, name and phone encrypted in the parent's stream) and makes its login: a user named
by the email, the `ParentAccount` link and a DRF token. Everything is checked before anything
is written, and everything is written in one database transaction, the registration first: a
failure anywhere leaves neither a parent without a login nor a login without a parent, so the
same call can simply be run again. One account per email, compared without regard to case.

`open_parent_account` gives a parent registered already (without an account) its login.
`parent_actor(user)` is how an entry point acts for a logged-in user: as their parent, or None
for a user without a parent account (staff, compliance officers).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from rest_framework.authtoken.models import Token

from ..domain import AggregateDeactivated, InvalidValue, Parent, ParentId
from ..domain.parent import NAME_MAX_LENGTH
from ..models import ParentAccount
from .actors import Actor
from .errors import AccountExists, InvalidPassword, Unavailable
from .parents import register_parent
from .unit_of_work import UnitOfWork

USERNAME_MAX_LENGTH = 150  # Django's User.username; the login is the email


@dataclass(frozen=True)
class ParentAccountResult:
    user_id: int
    username: str
    parent_id: str
    token: str


def new_parent_id() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def create_parent_account(*, email: str, password: str, name: str | None = None, phone: str | None = None,
                          actor: Actor = Actor.system("create_parent_account")) -> ParentAccountResult:
    """Registers a new parent and makes its login; returns the login and its API token.

    Without a name, the email's part before the "@" stands in (the domain needs one).
    """
    parent_id = new_parent_id()
    if name is None and isinstance(email, str) and "@" in email:
        name = email.strip().rsplit("@", 1)[0][:NAME_MAX_LENGTH]
    # The domain's own checks, on a parent that is never saved: a bad email, name or phone is
    # refused here, before the password is looked at or anything is written.
    probe = Parent(ParentId(parent_id))
    probe.register(email=email, name=name, phone=phone)
    email = probe.email
    _check_login(email, password)
    _refuse_taken(email)
    try:
        with transaction.atomic():
            register_parent(actor=actor, parent_id=parent_id, email=email, name=name, phone=phone)
            return _make_login(email, password, parent_id)
    except DatabaseError as exc:
        if isinstance(exc, IntegrityError):
            _refuse_taken(email)  # a concurrent call took the email meanwhile
        raise Unavailable(f"the account for {email} was not created ({exc}); the parent and its login are written "
                          "together, so neither was stored: run the same command again") from exc


def open_parent_account(*, parent_id: str, password: str,
                        actor: Actor = Actor.system("open_parent_account")) -> ParentAccountResult:
    """Makes the login of a parent registered already; the login is the parent's registered email."""
    parent = UnitOfWork(actor).load_own_parent(parent_id)
    if not parent.active:
        raise AggregateDeactivated(f"parent {parent_id} is deactivated; a deactivated parent gets no login")
    if parent.email is None:
        raise InvalidValue(f"parent {parent_id} has no readable email to log in with")
    _check_login(parent.email, password)
    _refuse_taken(parent.email, parent_id)
    try:
        with transaction.atomic():
            return _make_login(parent.email, password, parent_id)
    except DatabaseError as exc:
        if isinstance(exc, IntegrityError):
            _refuse_taken(parent.email, parent_id)
        raise Unavailable(f"the login of parent {parent_id} was not created ({exc}); nothing of it was stored: "
                          "run the same command again") from exc


def parent_actor(user) -> Actor | None:
    """The actor a logged-in user acts as: their parent; None for a user who is no parent."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    try:
        account = user.parent_account
    except ObjectDoesNotExist:
        return None
    return Actor.user(user.pk, parent_id=account.parent_id)


def _check_login(email: str, password: object) -> None:
    if len(email) > USERNAME_MAX_LENGTH:
        raise InvalidValue(f"email is {len(email)} characters long; an email to log in with is at most "
                           f"{USERNAME_MAX_LENGTH}")
    if not isinstance(password, str):
        raise InvalidPassword(f"password must be a string, not {type(password).__name__}")
    try:
        validate_password(password, user=get_user_model()(username=email, email=email))
    except ValidationError as exc:
        raise InvalidPassword(f"the password is not accepted: {' '.join(exc.messages)} Choose another one.") from None


def _refuse_taken(email: str, parent_id: str | None = None) -> None:
    users = get_user_model().objects
    if users.filter(username__iexact=email).exists() or users.filter(email__iexact=email).exists():
        raise AccountExists(f"email {email} already logs in to an account; log in with it or use another email")
    if parent_id is not None and ParentAccount.objects.filter(parent_id=parent_id).exists():
        raise AccountExists(f"parent {parent_id} has an account already")


def _make_login(email: str, password: str, parent_id: str) -> ParentAccountResult:
    user = get_user_model().objects.create_user(username=email, email=email, password=password)
    ParentAccount.objects.create(user=user, parent_id=parent_id)
    token = Token.objects.create(user=user)
    return ParentAccountResult(user_id=user.pk, username=user.username, parent_id=parent_id, token=token.key)
