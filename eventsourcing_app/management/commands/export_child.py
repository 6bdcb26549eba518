import json
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.application import ApplicationError
from eventsourcing_app.application.compliance import recorded_subject_export
from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.operations.preflight import PublishesNothing


class Command(PublishesNothing, BaseCommand):
    help = ("Writes everything held about a child, decrypted, as JSON (a data subject access request). Reads the "
            "database only: it works with Kafka and Redis unreachable. Recorded in the compliance access log.")

    def add_arguments(self, parser):
        parser.add_argument("child_id")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--actor", default="system:export_child",
                            help="who asked for the export, 'user:<id>' (a staff member) or 'system:<name>'")

    def handle(self, *args, child_id, output, actor, **options):
        # Checked first: the access log records an export only once it can be handed over.
        if output and not _writable(output):
            raise CommandError(f"cannot write {output}: no such folder or no permission; choose another --output")
        try:
            export = recorded_subject_export(actor, child_id=child_id, destination=output or "standard output")
        except (ApplicationError, EventStoreError) as exc:
            raise CommandError(str(exc)) from None
        text = json.dumps(export, indent=2, ensure_ascii=False, default=str)
        if output:
            # Decrypted personal data: readable by its owner only (not the umask's 0644).
            descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.chmod(output, 0o600)  # also when the file was there already
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            events = sum(len(v) for v in export["streams"].values())
            self.stderr.write(f"wrote {events} events of {len(export['streams'])} streams to {output}")
        else:
            sys.stdout.write(text + "\n")


def _writable(path: str) -> bool:
    if os.path.exists(path):
        return os.path.isfile(path) and os.access(path, os.W_OK)
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and os.access(folder, os.W_OK)
