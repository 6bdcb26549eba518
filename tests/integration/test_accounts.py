"""Parent accounts, against the real store and database.

Proven here:
- `manage.py create_parent_account` makes a usable account: a user named by the email (no staff
  flag) whose password and DRF token work, the ParentAccount link, and the parent's stream
  `parent.<id>` with ParentRegistered (contact details encrypted); the user acts as that parent;
- a bad email, name, phone or password, or an email already in use (in any case), is refused
  with a message naming what is wrong, and nothing is stored: no user, link, token or event;
- when the login cannot be stored after the parent was registered (here: another session takes
  the email in between), the registration is rolled back with it, and a rerun refuses cleanly;
- `open_parent_account` gives a parent registered already its login, once;
- `parent_actor` acts as the parent for a parent's login, and for no one otherwise.
"""
from __future__ import annotations

import re
import threading
import uuid
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test import RequestFactory
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from eventsourcing_app.application import AccountExists, Actor, NotFound, grant_consent, register_parent
from eventsourcing_app.application.accounts import (
    ParentAccountResult,
    create_parent_account,
    open_parent_account,
    parent_actor,
)
from eventsourcing_app.domain import Parent
from eventsourcing_app.eventstore import EventSourcingRepositoryImpl, get_event_sourcing_service
from eventsourcing_app.models import Event, ParentAccount, Stream
from tests.integration.helpers import wait_until

PASSWORD = "correct-horse-battery"
User = get_user_model()


def uid() -> str:
    return uuid.uuid4().hex[:10]


def stored_counts() -> tuple[int, ...]:
    return (User.objects.count(), ParentAccount.objects.count(), Token.objects.count(), Event.objects.count(),
            Stream.objects.count())


def events_of(stream_id: str):
    return get_event_sourcing_service().event_store.load_events_sync(stream_id)


def load_parent(parent_id: str) -> Parent:
    return EventSourcingRepositoryImpl(Parent, cache=False).load_sync(parent_id)


def run_command(**options) -> dict[str, str]:
    """What the command printed: {"parent id": ..., "username": ..., "token": ...}."""
    out = StringIO()
    call_command("create_parent_account", stdout=out, **options)
    assert out.getvalue().startswith("parent account created for ")
    return dict(re.findall(r"^  (parent id|username|token) +(\S+)$", out.getvalue(), re.M))


def test_the_command_creates_a_usable_account(store):
    email = f"Robin.{uid()}@Example.ORG"

    shown = run_command(email=email, password=PASSWORD, name="Robin Parent", phone="+1 555 0100 123")

    username = email.split("@")[0] + "@example.org"  # the domain part is case-insensitive
    assert shown["username"] == username
    parent_id, token = shown["parent id"], shown["token"]
    assert parent_id.startswith("p-") and len(parent_id) == 14
    user = User.objects.get(username=username)
    assert user.email == username and user.check_password(PASSWORD)
    assert user.is_active and not user.is_staff and not user.is_superuser
    assert ParentAccount.objects.get(user=user).parent_id == parent_id
    assert Token.objects.get(user=user).key == token

    stream = events_of(f"parent.{parent_id}")
    assert [(e.version, e.event_type, e.metadata.actor) for e in stream] == [
        (1, "ParentRegistered", "system:create_parent_account")]
    assert b"Robin" not in stream[0].payload and b"555" not in stream[0].payload  # encrypted
    parent = load_parent(parent_id)
    assert (parent.email, parent.name, parent.phone, parent.active) == (username, "Robin Parent", "+1 555 0100 123",
                                                                        True)

    # the token authenticates the user through DRF, and the user acts as the parent
    request = RequestFactory().get("/", headers={"Authorization": f"Token {token}"})
    authenticated, _ = TokenAuthentication().authenticate(request)
    assert authenticated == user
    actor = parent_actor(authenticated)
    assert actor == Actor.user(user.pk, parent_id=parent_id)
    child_id = f"child-{uid()}"
    grant_consent(actor=actor, parent_id=parent_id, child_id=child_id, method="email_plus")
    assert load_parent(parent_id).has_consent(child_id)
    assert events_of(f"parent.{parent_id}")[-1].metadata.actor == f"user:{user.pk}"


def test_without_a_name_the_email_stands_in():
    account = create_parent_account(email=f"sam.{uid()}@example.org", password=PASSWORD)
    assert isinstance(account, ParentAccountResult)
    assert load_parent(account.parent_id).name == account.username.split("@")[0]
    assert load_parent(account.parent_id).phone is None


@pytest.mark.parametrize("options, message", [
    ({"email": "not-an-email"}, r"email 'not-an-email' is not an email address \(name@example.com\)"),
    ({"email": "   "}, "email must not be empty"),
    ({"email": f"{'x' * 150}@example.org"}, "email is 162 characters long; an email to log in with is at most 150"),
    ({"name": "  "}, "name must not be empty"),
    ({"phone": "call me"}, r"phone 'call me' is not a phone number \(7 to 15 digits"),
    ({"password": "short"}, "the password is not accepted: This password is too short. It must contain at least 8 "
                            "characters. Choose another one."),
    ({"password": "password123"}, "the password is not accepted: This password is too common."),
    ({"password": ""}, "the password is not accepted: This password is too short"),
], ids=["email", "blank-email", "long-email", "name", "phone", "short-password", "common-password",
        "empty-password"])
def test_bad_input_is_refused_naming_what_is_wrong_and_stores_nothing(options, message):
    before = stored_counts()
    with pytest.raises(CommandError, match=message):
        call_command("create_parent_account", **{"email": f"nia.{uid()}@example.org", "password": PASSWORD,
                                                 **options})
    assert stored_counts() == before


def test_an_email_in_use_is_refused_in_any_case_and_stores_nothing():
    email = f"nia.{uid()}@example.org"
    create_parent_account(email=email, password=PASSWORD)
    before = stored_counts()
    for again in (email, email.upper(), f"  {email}  "):
        with pytest.raises(CommandError, match="email .* already logs in to an account; log in with it or use "
                                               "another email"):
            call_command("create_parent_account", email=again, password="another-long-passphrase")
    assert stored_counts() == before


def test_a_login_that_cannot_be_stored_takes_the_parent_registration_with_it(store):
    """Another session inserts a user with the same name after the email was checked free and
    commits while the registration waits to insert its user: the insert fails, and the parent
    registered just before in the same transaction is rolled back too."""
    email = f"race.{uid()}@example.org"
    held, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def other_session() -> None:
        try:
            with transaction.atomic():
                User.objects.create_user(username=email, password=None)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    outcome["pid"] = cursor.fetchone()[0]
                held.set()
                release.wait(timeout=30)
        finally:
            held.set()
            connections.close_all()

    def create() -> None:
        try:
            outcome["result"] = create_parent_account(email=email, password=PASSWORD)
        except Exception as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc
        finally:
            connections.close_all()

    parents_before = Stream.objects.filter(stream_type="parent").count()
    events_before = Event.objects.count()
    threads = [threading.Thread(target=other_session), threading.Thread(target=create)]
    try:
        threads[0].start()
        assert held.wait(timeout=30) and "pid" in outcome
        threads[1].start()
        wait_until(lambda: _someone_waits_for(outcome["pid"]), timeout=20)  # the registration's user insert
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=60)

    assert isinstance(outcome.get("error"), AccountExists), outcome
    assert "already logs in" in str(outcome["error"])
    assert Stream.objects.filter(stream_type="parent").count() == parents_before
    assert Event.objects.count() == events_before
    assert not ParentAccount.objects.filter(user__username=email).exists()
    assert not Token.objects.filter(user__username=email).exists()
    # a rerun refuses cleanly: the email is taken now
    with pytest.raises(AccountExists):
        create_parent_account(email=email, password=PASSWORD)
    assert Event.objects.count() == events_before


def _someone_waits_for(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [pid])
        return cursor.fetchone()[0] > 0


def test_a_parent_registered_already_gets_its_login_once():
    parent_id, email = f"parent-{uid()}", f"olu.{uid()}@example.org"
    register_parent(actor=Actor.system("onboarding"), parent_id=parent_id, email=email, name="Olu")
    version = get_event_sourcing_service().event_store.get_stream_version_sync(f"parent.{parent_id}")

    account = open_parent_account(parent_id=parent_id, password=PASSWORD)

    assert (account.parent_id, account.username) == (parent_id, email)
    assert User.objects.get(pk=account.user_id).check_password(PASSWORD)
    assert Token.objects.get(user_id=account.user_id).key == account.token
    assert get_event_sourcing_service().event_store.get_stream_version_sync(f"parent.{parent_id}") == version
    before = stored_counts()
    with pytest.raises(AccountExists, match="already logs in"):
        open_parent_account(parent_id=parent_id, password=PASSWORD)
    with pytest.raises(NotFound, match=f"parent nobody-{parent_id} does not exist"):
        open_parent_account(parent_id=f"nobody-{parent_id}", password=PASSWORD)
    assert stored_counts() == before


def test_parent_actor_is_none_for_users_who_are_no_parent():
    staff = User.objects.create_user(username=f"officer-{uid()}", password=None, is_staff=True)
    account = create_parent_account(email=f"pia.{uid()}@example.org", password=PASSWORD)
    parent = User.objects.get(pk=account.user_id)

    assert parent_actor(staff) is None
    assert parent_actor(AnonymousUser()) is None
    assert parent_actor(None) is None
    assert parent_actor(parent) == Actor.user(parent.pk, parent_id=account.parent_id)
    parent.is_active = False
    assert parent_actor(parent) is None

