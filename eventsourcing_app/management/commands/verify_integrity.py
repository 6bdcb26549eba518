from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.operations.preflight import PublishesNothing, Unreachable, require_kafka
from eventsourcing_app.operations.verify import verify_integrity


class Command(PublishesNothing, BaseCommand):
    help = ("Recomputes the hash chains of one stream (or all) and compares the mirror with the Kafka copy; "
            "names the first stream and version that differ. Needs the database and Kafka (not with --no-kafka); "
            "an unreachable Kafka is an error, said at once. Events that Kafka's retention removed are counted, "
            "not treated as differences.")

    def add_arguments(self, parser):
        parser.add_argument("stream", nargs="?", help="a stream id such as child.child-123 (default: every stream)")
        parser.add_argument("--no-kafka", action="store_true", help="check the hash chains only")

    def handle(self, *args, stream, no_kafka, **options):
        kafka = None if no_kafka else KafkaSettings.from_django()
        try:
            if kafka is not None:
                require_kafka(kafka.bootstrap_servers)
            report = verify_integrity(stream, kafka_settings=kafka, progress=lambda r: self.stdout.write(
                f"  ... {r.streams} streams, {r.events} events checked"))
        except (EventStoreError, Unreachable) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{report.streams} streams, {report.events} events: hash chains "
                          f"{'OK' if not report.chain_breaks else f'BROKEN in {len(report.chain_breaks)} stream(s)'}")
        self.stdout.write(f"{report.snapshots} snapshots: "
                          f"{'OK' if not report.snapshot_problems else f'{len(report.snapshot_problems)} do not verify'}")
        if kafka is not None:
            expired = (f", {report.kafka_expired} no longer in Kafka (removed by the topics' retention; the mirror "
                       "keeps them)" if report.kafka_expired else "")
            self.stdout.write(f"Kafka copy: {report.kafka_checked} events compared, "
                              f"{len(report.kafka_differences)} differ, {report.unpublished} not yet published{expired}")
        for problem in report.problems[:20]:
            self.stdout.write(f"  {problem}")
        if not report.ok:
            raise CommandError(f"integrity check failed; first difference: {report.first_problem}")
        self.stdout.write(self.style.SUCCESS("integrity verified"))
