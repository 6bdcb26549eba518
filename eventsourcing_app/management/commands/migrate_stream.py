from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.operations.migration import migrate_stream


class Command(BaseCommand):
    help = ("Copies stream OLD to the new stream NEW with the registered event transformations, closes OLD (its "
            "appends are refused from then on) and records the link both ways. Refuses to overwrite a stream.")

    def add_arguments(self, parser):
        parser.add_argument("old_stream")
        parser.add_argument("new_stream")
        parser.add_argument("--chunk", type=int, default=1000, help="events read and appended at a time")

    def handle(self, *args, old_stream, new_stream, chunk, **options):
        if chunk < 1:
            raise CommandError("--chunk must be 1 or more")
        try:
            report = migrate_stream(old_stream, new_stream, actor="system:migrate_stream", chunk=chunk,
                                    progress=lambda done, total: self.stdout.write(f"  ... {done}/{total} events"))
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(str(report)))
