import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import get_event_store
from eventsourcing_app.operations.relay import KafkaUnavailableError, poison_report, relay_outbox


class Command(BaseCommand):
    help = "Publishes every committed event that Kafka has not acknowledged yet, in per-stream order."

    def add_arguments(self, parser):
        parser.add_argument("--grace", type=float, default=0.0,
                            help="leave events recorded less than this many seconds ago to their own publisher "
                                 "(default 0)")
        parser.add_argument("--batch-size", type=int, default=settings.EVENTSTORE["RELAY_BATCH_SIZE"])
        parser.add_argument("--loop", action="store_true", help="keep relaying every second until interrupted")
        parser.add_argument("--poison", action="store_true",
                            help="list the events Kafka refused for good (and the streams they hold), then stop")

    def handle(self, *args, grace, batch_size, loop, poison, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be 1 or more")
        if grace < 0:
            raise CommandError("--grace must be 0 or more")
        store = get_event_store()
        if poison:
            rows = poison_report(store)
            for row in rows:
                self.stdout.write(f"{row['stream_id']} v{row['version']} (position {row['position']}): {row['error']}; "
                                  f"{row['attempts']} attempts since {row['first_seen']:%Y-%m-%d %H:%M:%S} UTC")
            self.stdout.write(f"{len(rows)} poison events hold their streams")
            return
        while True:
            try:
                report = relay_outbox(store, grace_seconds=grace, batch_size=batch_size,
                                      progress=lambda r: self.stdout.write(f"  ... {r}"))
            except KafkaUnavailableError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(str(report))
            if not loop:
                if report.remaining:
                    raise CommandError(f"{report.remaining} events are still unpublished; see the log for why")
                return
            time.sleep(1.0)
