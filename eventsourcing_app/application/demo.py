"""The demo family of the one-command run, written through the command handlers: a parent with
consent for two children, one of whom has had a conversation with the bear. Idempotent: what
exists is left alone."""
from __future__ import annotations

from ..eventstore import get_event_store
from ..observability import event_context
from .actors import Actor
from .children import change_safety_settings, register_child
from .conversations import end_conversation, record_message, start_conversation, summarize_conversation
from .parents import grant_consent, register_parent

PARENT = "demo-parent-1"
CHILDREN = [("demo-child-1", "Mia", 6, "demo-bear-1"), ("demo-child-2", "Noah", 9, "demo-bear-2")]
CONVERSATION = "demo-conversation-1"
ACTOR = Actor.system("load_demo_data")


def load_demo_family() -> int:
    """Creates what is missing of the demo family; returns how many streams it created."""
    store = get_event_store()
    exists = store.get_stream_version_sync
    created = 0
    with event_context(correlation_id="demo-data"):
        if not exists(f"parent.{PARENT}"):
            register_parent(actor=ACTOR, parent_id=PARENT, email="sam.parent@example.com", name="Sam Parent",
                            phone="+1-555-0100")
            for child_id, *_ in CHILDREN:
                grant_consent(actor=ACTOR, parent_id=PARENT, child_id=child_id, method="signed_form")
            created += 1
        for child_id, name, age, device in CHILDREN:
            if not exists(f"child.{child_id}"):
                register_child(actor=ACTOR, child_id=child_id, parent_id=PARENT, name=name, age=age,
                               device_id=device, udid=f"udid-{device}")
                change_safety_settings(actor=ACTOR, child_id=child_id, content_filter_level="moderate",
                                       daily_time_limit_minutes=45)
                created += 1
        if not exists(f"conversation.{CONVERSATION}"):
            start_conversation(actor=ACTOR, conversation_id=CONVERSATION, child_id=CHILDREN[0][0])
            for speaker, text in [("child", "Hello Teddy! Can you tell me a story about a dragon?"),
                                  ("bear", "Once upon a time, a friendly dragon learned to share..."),
                                  ("child", "Did the dragon have a name?"),
                                  ("bear", "Her name was Ember, and she loved warm cocoa.")]:
                record_message(actor=ACTOR, conversation_id=CONVERSATION, speaker=speaker, text=text)
            end_conversation(actor=ACTOR, conversation_id=CONVERSATION, reason="bedtime")
            summarize_conversation(actor=ACTOR, conversation_id=CONVERSATION,
                                   summary="Mia asked for a dragon story; Teddy told a story about sharing.")
            created += 1
    store.flush(10)
    return created
