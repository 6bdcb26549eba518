from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.operations.migration import migrate_stream


class Command(BaseCommand):
    help = ("Copies stream OLD to the new stream NEW with the registered event transformations, and records the "
            "link both ways. Refuses to overwrite an existing stream.")

    def add_arguments(self, parser):
        parser.add_argument("old_stream")
        parser.add_argument("new_stream")

    def handle(self, *args, old_stream, new_stream, **options):
        try:
            report = migrate_stream(old_stream, new_stream, actor="system:migrate_stream")
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(str(report)))
