from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError, get_event_store
from eventsourcing_app.operations.relay import refill_kafka


class Command(BaseCommand):
    help = ("Publishes every stored event to Kafka again, in per-stream order, and records the new positions. "
            "For a broker that came back empty (a memory-only broker after a restart, a lost cluster).")

    def add_arguments(self, parser):
        parser.add_argument("--stream-type", action="append", dest="stream_types",
                            help="refill only this stream type's topic (repeatable; default: all)")

    def handle(self, *args, stream_types, **options):
        store = get_event_store()
        unknown = set(stream_types or ()) - set(store.stream_types)
        if unknown:
            raise CommandError(f"unknown stream type(s) {sorted(unknown)}; known: {sorted(store.stream_types)}")
        self.stdout.write(f"Refilling Kafka at {store.kafka_settings.bootstrap_servers} from the mirror")
        try:
            report = refill_kafka(store, stream_types=stream_types,
                                  progress=lambda r: self.stdout.write(f"  ... {r}"))
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(report))
        if report.remaining:
            raise CommandError(f"{report.remaining} events are still unpublished; run the command again")
