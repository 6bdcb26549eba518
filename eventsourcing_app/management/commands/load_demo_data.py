"""Demo data for the one-command run: a parent with consent for two children, one of whom has
had a conversation with the bear. Idempotent: streams that exist are left alone."""
from django.core.management.base import BaseCommand

from eventsourcing_app.domain import Child, ChildId, Conversation, ConversationId, DeviceId, Parent, ParentId
from eventsourcing_app.eventstore import get_event_sourcing_service
from eventsourcing_app.observability import event_context

PARENT = ParentId("demo-parent-1")
CHILDREN = [(ChildId("demo-child-1"), "Mia", 6, DeviceId("demo-bear-1")),
            (ChildId("demo-child-2"), "Noah", 9, DeviceId("demo-bear-2"))]
CONVERSATION = ConversationId("demo-conversation-1")


class Command(BaseCommand):
    help = "Loads a small demo family (idempotent)."

    def handle(self, *args, **options):
        service = get_event_sourcing_service()
        version = service.event_store.get_stream_version_sync
        created = 0
        with event_context(correlation_id="demo-data", actor="system:load_demo_data"):
            if not version(f"parent.{PARENT}"):
                parent = Parent(PARENT)
                parent.register(email="sam.parent@example.com", name="Sam Parent", phone="+1-555-0100")
                for child_id, *_ in CHILDREN:
                    parent.grant_consent(child_id, "signed_form")
                service.save_aggregate_sync(parent)
                created += 1
            for child_id, name, age, device in CHILDREN:
                if not version(f"child.{child_id}"):
                    child = Child(id=child_id, parent_id=PARENT, device_id=device, name=name, age=age,
                                  udid=f"udid-{device}")
                    child.register_child()
                    child.change_safety_settings("moderate", 45)
                    service.save_aggregate_sync(child)
                    created += 1
            if not version(f"conversation.{CONVERSATION}"):
                child_id, _, _, device = CHILDREN[0]
                talk = Conversation(CONVERSATION)
                talk.start(child_id, device)
                for speaker, text in [("child", "Hello Teddy! Can you tell me a story about a dragon?"),
                                      ("bear", "Once upon a time, a friendly dragon learned to share..."),
                                      ("child", "Did the dragon have a name?"),
                                      ("bear", "Her name was Ember, and she loved warm cocoa.")]:
                    talk.record_message(speaker, text)
                talk.end("bedtime")
                talk.summarize("Mia asked for a dragon story; Teddy told a story about sharing.")
                service.save_aggregate_sync(talk)
                created += 1
        service.event_store.flush(10)
        self.stdout.write(f"demo data: {created} streams created" if created else "demo data: already loaded")
