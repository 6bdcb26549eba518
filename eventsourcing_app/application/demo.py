"""The demo data of the one-command run, written through the command handlers: two families,
each parent with a login (password DEMO_PASSWORD) and consent for their children, and
conversations with the bear, two of them with a safety flag: one acknowledged by the parent,
one still open; and two staff logins for the compliance admin, one per role. Idempotent:
what exists (a stream, a login) is left alone.

For local runs only: the demo logins have a published password.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rest_framework.authtoken.models import Token

from ..eventstore import get_event_store
from ..models import ParentAccount
from ..observability import event_context
from .accounts import open_parent_account, parent_actor
from .actors import Actor
from .children import change_safety_settings, register_child
from .compliance import COMPLIANCE_GROUP, OFFICER_GROUP, ensure_staff_member
from .conversations import (
    acknowledge_safety_flag,
    end_conversation,
    raise_safety_flag,
    record_message,
    start_conversation,
    summarize_conversation,
)
from .parents import grant_consent, register_parent

DEMO_PASSWORD = "teddy-demo-2026"
# The compliance admin's demo logins: user name -> group.
DEMO_STAFF = {"compliance.demo": COMPLIANCE_GROUP, "officer.demo": OFFICER_GROUP}
ACTOR = Actor.system("load_demo_data")


@dataclass(frozen=True)
class DemoChild:
    child_id: str
    name: str
    age: int
    device_id: str


@dataclass(frozen=True)
class DemoParent:
    parent_id: str
    email: str
    name: str
    phone: str
    children: tuple[DemoChild, ...]


@dataclass(frozen=True)
class DemoConversation:
    conversation_id: str
    child_id: str
    messages: tuple[tuple[str, str], ...]  # (speaker, text)
    summary: str
    flag: tuple[str, str, int] | None = None  # (category, severity, message sequence)
    acknowledged: bool = False  # the flag, by the parent's own login


PARENTS = (
    DemoParent("demo-parent-1", "sam.parent@example.com", "Sam Parent", "+1-555-0100", (
        DemoChild("demo-child-1", "Mia", 6, "demo-bear-1"),
        DemoChild("demo-child-2", "Noah", 9, "demo-bear-2"),
    )),
    DemoParent("demo-parent-2", "lina.parent@example.com", "Lina Parent", "+1-555-0101", (
        DemoChild("demo-child-3", "Yara", 7, "demo-bear-3"),
    )),
)

CONVERSATIONS = (
    DemoConversation("demo-conversation-1", "demo-child-1", (
        ("child", "Hello Teddy! Can you tell me a story about a dragon?"),
        ("bear", "Once upon a time, a friendly dragon learned to share..."),
        ("child", "Did the dragon have a name?"),
        ("bear", "Her name was Ember, and she loved warm cocoa."),
    ), summary="Mia asked for a dragon story; Teddy told a story about sharing."),
    DemoConversation("demo-conversation-2", "demo-child-2", (
        ("child", "Some kids at school keep calling me names."),
        ("bear", "I'm sorry, that sounds hard. Telling a grown-up you trust is a brave thing to do."),
        ("child", "Maybe I'll tell my mum tonight."),
    ), summary="Noah said other children call him names; Teddy encouraged him to tell a grown-up.",
        flag=("bullying", "medium", 1), acknowledged=True),
    DemoConversation("demo-conversation-3", "demo-child-3", (
        ("child", "A man at the park asked me where I live."),
        ("bear", "Thank you for telling me. We never tell strangers where we live; let's tell a grown-up."),
    ), summary="Yara said a stranger asked where she lives; Teddy told her to tell a grown-up.",
        flag=("stranger_contact", "high", 1)),
)


@dataclass(frozen=True)
class DemoLogin:
    parent_id: str
    email: str
    password: str
    token: str | None


@dataclass
class DemoLoad:
    streams_created: int = 0
    accounts_created: int = 0
    logins: list[DemoLogin] = field(default_factory=list)
    staff: dict[str, str] = field(default_factory=dict)  # user name -> group

    @property
    def created(self) -> int:
        return self.streams_created + self.accounts_created


def load_demo_family() -> DemoLoad:
    """Creates what is missing of the demo data; says what it created and the demo logins."""
    store = get_event_store()
    exists = store.get_stream_version_sync
    report = DemoLoad()
    with event_context(correlation_id="demo-data"):
        for parent in PARENTS:
            if not exists(f"parent.{parent.parent_id}"):
                register_parent(actor=ACTOR, parent_id=parent.parent_id, email=parent.email, name=parent.name,
                                phone=parent.phone)
                for child in parent.children:
                    grant_consent(actor=ACTOR, parent_id=parent.parent_id, child_id=child.child_id,
                                  method="signed_form")
                report.streams_created += 1
            if not ParentAccount.objects.filter(parent_id=parent.parent_id).exists():
                open_parent_account(parent_id=parent.parent_id, password=DEMO_PASSWORD, actor=ACTOR)
                report.accounts_created += 1
            for child in parent.children:
                if not exists(f"child.{child.child_id}"):
                    register_child(actor=ACTOR, child_id=child.child_id, parent_id=parent.parent_id, name=child.name,
                                   age=child.age, device_id=child.device_id, udid=f"udid-{child.device_id}")
                    change_safety_settings(actor=ACTOR, child_id=child.child_id, content_filter_level="moderate",
                                           daily_time_limit_minutes=45)
                    report.streams_created += 1
        for conversation in CONVERSATIONS:
            if not exists(f"conversation.{conversation.conversation_id}"):
                _conversation(conversation)
                report.streams_created += 1
    for username, group in DEMO_STAFF.items():
        _, created = ensure_staff_member(username, DEMO_PASSWORD, group)
        report.accounts_created += created
    report.staff = dict(DEMO_STAFF)
    store.flush(10)
    report.logins = demo_logins()
    return report


def _conversation(demo: DemoConversation) -> None:
    conversation_id = demo.conversation_id
    start_conversation(actor=ACTOR, conversation_id=conversation_id, child_id=demo.child_id)
    for speaker, text in demo.messages:
        record_message(actor=ACTOR, conversation_id=conversation_id, speaker=speaker, text=text)
    if demo.flag is not None:
        category, severity, sequence = demo.flag
        raise_safety_flag(actor=ACTOR, conversation_id=conversation_id, category=category, severity=severity,
                          message_sequence=sequence)
    end_conversation(actor=ACTOR, conversation_id=conversation_id, reason="bedtime")
    summarize_conversation(actor=ACTOR, conversation_id=conversation_id, summary=demo.summary)
    if demo.acknowledged:
        parent = next(p for p in PARENTS if any(c.child_id == demo.child_id for c in p.children))
        user = ParentAccount.objects.select_related("user").get(parent_id=parent.parent_id).user
        acknowledge_safety_flag(actor=parent_actor(user), conversation_id=conversation_id, flag_number=1)


def demo_logins() -> list[DemoLogin]:
    """The demo parents' logins that exist, with their API tokens."""
    accounts = {a.parent_id: a for a in ParentAccount.objects.select_related("user")
                .filter(parent_id__in=[p.parent_id for p in PARENTS])}
    tokens = dict(Token.objects.filter(user__in=[a.user for a in accounts.values()]).values_list("user_id", "key"))
    return [DemoLogin(p.parent_id, accounts[p.parent_id].user.get_username(), DEMO_PASSWORD,
                      tokens.get(accounts[p.parent_id].user_id))
            for p in PARENTS if p.parent_id in accounts]
