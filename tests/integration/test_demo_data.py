"""The demo data (`manage.py load_demo_data`), against the real store and database.

Proven here: it writes the demo families through the command handlers (parents with logins and
tokens, consent, children, conversations, one safety flag acknowledged by the parent's own
login and one open); a demo written before logins existed gets its logins without its streams
changing; and a second run creates nothing at all.
"""
from __future__ import annotations

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from eventsourcing_app.application import Actor, grant_consent, register_parent
from eventsourcing_app.application.demo import CONVERSATIONS, DEMO_PASSWORD, DEMO_STAFF, PARENTS, load_demo_family
from eventsourcing_app.domain import Child, Conversation, Parent
from eventsourcing_app.eventstore import EventSourcingRepositoryImpl, get_event_sourcing_service
from eventsourcing_app.models import Event, ParentAccount, Stream

User = get_user_model()


def load(cls, aggregate_id):
    return EventSourcingRepositoryImpl(cls, cache=False).load_sync(aggregate_id)


def stored() -> tuple:
    return (Event.objects.count(), Stream.objects.count(), User.objects.count(),
            sorted(ParentAccount.objects.values_list("parent_id", "user_id")), sorted(Token.objects.values_list("key")))


def test_the_demo_data_is_written_once_with_logins_and_flags(store):
    event_store = get_event_sourcing_service().event_store
    first = PARENTS[0]
    old_demo = not event_store.get_stream_version_sync(f"parent.{first.parent_id}")
    if old_demo:  # the demo parent as the loader wrote it before parents had logins
        register_parent(actor=Actor.system("load_demo_data"), parent_id=first.parent_id, email=first.email,
                        name=first.name, phone=first.phone)
        for child in first.children:
            grant_consent(actor=Actor.system("load_demo_data"), parent_id=first.parent_id, child_id=child.child_id,
                          method="signed_form")
    parent_version = event_store.get_stream_version_sync(f"parent.{first.parent_id}")

    out = StringIO()
    call_command("load_demo_data", stdout=out)

    text = out.getvalue()
    assert event_store.get_stream_version_sync(f"parent.{first.parent_id}") == parent_version
    for parent in PARENTS:
        account = ParentAccount.objects.select_related("user").get(parent_id=parent.parent_id)
        user = account.user
        assert (user.username, user.is_staff) == (parent.email, False) and user.check_password(DEMO_PASSWORD)
        assert Token.objects.filter(user=user).exists()
        assert f"demo parent {parent.parent_id}: {parent.email} / {DEMO_PASSWORD}" in text
        assert load(Parent, parent.parent_id).email == parent.email
        for child in parent.children:
            assert load(Parent, parent.parent_id).has_consent(child.child_id)
            assert (load(Child, child.child_id).name, load(Child, child.child_id).parent_id) == (child.name,
                                                                                                 parent.parent_id)
    sam = ParentAccount.objects.get(parent_id=first.parent_id).user
    assert f"API token of {sam.username}: {Token.objects.get(user=sam).key}" in text
    # The compliance admin's demo logins, one per role, and they can log in.
    from django.test import Client

    for username, group in DEMO_STAFF.items():
        assert f"admin ({group}): {username} / {DEMO_PASSWORD}" in text
        client = Client()
        assert client.post("/admin/login/", {"username": username, "password": DEMO_PASSWORD}).status_code == 302
        assert client.get("/admin/eventsourcing_app/event/").status_code == 200

    flags = {}
    for demo in CONVERSATIONS:
        conversation = load(Conversation, demo.conversation_id)
        assert [m.text for m in conversation.messages] == [said for _, said in demo.messages]
        assert conversation.ended and conversation.summary == demo.summary
        flags[demo.conversation_id] = [(f.number, f.category, f.acknowledged_by) for f in conversation.safety_flags]
    assert flags == {"demo-conversation-1": [],
                     "demo-conversation-2": [(1, "bullying", f"user:{sam.pk}")],
                     "demo-conversation-3": [(1, "stranger_contact", None)]}
    acknowledgement = event_store.load_events_sync("conversation.demo-conversation-2")[-1]
    assert (acknowledgement.event_type, acknowledgement.metadata.actor) == ("SafetyFlagAcknowledged",
                                                                            f"user:{sam.pk}")

    # again: nothing is created, and the logins are still printed
    before = stored()
    again = StringIO()
    call_command("load_demo_data", stdout=again)
    assert stored() == before
    assert again.getvalue().startswith("demo data: already loaded")
    assert f"demo parent {first.parent_id}: {first.email} / {DEMO_PASSWORD}" in again.getvalue()
    report = load_demo_family()
    assert (report.streams_created, report.accounts_created) == (0, 0)
    assert [login.parent_id for login in report.logins] == [p.parent_id for p in PARENTS]
    assert all(login.token for login in report.logins)
    assert stored() == before
