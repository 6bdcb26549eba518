from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.operations.privacy import forget_child


class Command(BaseCommand):
    help = ("Erases a child's personal data everywhere by destroying its data key (crypto-shredding); drops its "
            "snapshots and cached aggregates and records the erasure as an event. Cannot be undone.")

    def add_arguments(self, parser):
        parser.add_argument("child_id", help="the child's id (the part after 'child.' in its stream id)")
        parser.add_argument("--actor", default="system:forget_child", help="who asked for the erasure (audit trail)")

    def handle(self, *args, child_id, actor, **options):
        try:
            report = forget_child(child_id, actor=actor)
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(str(report)))
