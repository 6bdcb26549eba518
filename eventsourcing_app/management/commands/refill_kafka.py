from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError, get_event_store
from eventsourcing_app.operations.relay import RefillRefused, plan_refill, refill_kafka


class Command(BaseCommand):
    help = ("Publishes every stored event to Kafka again, in per-stream order, and records the new positions. "
            "For a broker that came back empty (a memory-only broker after a restart, a lost cluster). Refuses "
            "topics that already hold records unless told --recreate-topics or --force.")

    def add_arguments(self, parser):
        parser.add_argument("--stream-type", action="append", dest="stream_types",
                            help="refill only this stream type's topic (repeatable; default: all)")
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
        parser.add_argument("--recreate-topics", action="store_true",
                            help="delete and create the topics again first, empty (consumers start from offset 0)")
        parser.add_argument("--force", action="store_true",
                            help="publish after what the topics hold (duplicates, which consumers skip)")
        parser.add_argument("--settle", type=float, default=None,
                            help="seconds to wait for sends in flight before republishing (default: "
                                 "KAFKA_MESSAGE_TIMEOUT_MS; 0 when nothing else publishes, e.g. at start-up)")

    def handle(self, *args, stream_types, dry_run, recreate_topics, force, settle, **options):
        store = get_event_store()
        unknown = set(stream_types or ()) - set(store.stream_types)
        if unknown:
            raise CommandError(f"unknown stream type(s) {sorted(unknown)}; known: {sorted(store.stream_types)}")
        if settle is not None and settle < 0:
            raise CommandError("--settle must be 0 or more")
        self.stdout.write(f"Refilling Kafka at {store.kafka_settings.bootstrap_servers} from the mirror")
        try:
            if dry_run:
                self.stdout.write(f"would {plan_refill(store, stream_types)}")
                return
            report = refill_kafka(store, stream_types=stream_types, force=force, recreate_topics=recreate_topics,
                                  settle_seconds=settle, progress=lambda r: self.stdout.write(f"  ... {r}"),
                                  announce=lambda message: self.stdout.write(f"  {message}"))
        except RefillRefused as exc:
            raise CommandError(f"refused, nothing done: {exc}") from None
        except EventStoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(report))
        if report.remaining:
            raise CommandError(f"{report.remaining} events are still unpublished; run `manage.py relay_outbox`")
