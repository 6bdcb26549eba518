from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.application import Actor, ApplicationError, erase_child_data
from eventsourcing_app.domain import ERASURE_REASONS, DomainError
from eventsourcing_app.eventstore import EventStoreError


class Command(BaseCommand):
    help = ("Erases a child's personal data everywhere by destroying its data key (crypto-shredding); records the "
            "erasure as an event (who asked, why), drops the child's snapshots and cached aggregates. Cannot be "
            "undone.")

    def add_arguments(self, parser):
        parser.add_argument("child_id", help="the child's id (the part after 'child.' in its stream id)")
        parser.add_argument("--reason", required=True, choices=ERASURE_REASONS, help="why the data is erased")
        parser.add_argument("--actor", default="system:forget_child",
                            help="who asked for the erasure, 'user:<id>' (a staff member) or 'system:<name>' "
                                 "(audit trail)")

    def handle(self, *args, child_id, reason, actor, **options):
        try:
            report = erase_child_data(actor=Actor.operator(actor), child_id=child_id, reason=reason)
        except (ApplicationError, DomainError, EventStoreError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(str(report)))
