from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError, get_event_store
from eventsourcing_app.operations.relay import refill_kafka


class Command(BaseCommand):
    help = ("Publishes every stored event to Kafka again, in per-stream order, and records the new positions. "
            "For a broker that came back empty (a memory-only broker after a restart, a lost cluster).")

    def handle(self, *args, **options):
        store = get_event_store()
        self.stdout.write(f"Refilling Kafka at {store.kafka_settings.bootstrap_servers} from the mirror")
        try:
            report = refill_kafka(store, progress=lambda r: self.stdout.write(f"  ... {r}"))
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(report))
        if report.remaining:
            raise CommandError(f"{report.remaining} events are still unpublished; run the command again")
