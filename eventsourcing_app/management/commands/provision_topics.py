from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore.errors import KafkaTopicError
from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.kafka.topics import provision_topics
from eventsourcing_app.operations.preflight import Unreachable, require_kafka


class Command(BaseCommand):
    help = ("Creates the event store's Kafka topics and sets the configured retention and cleanup "
            "(KAFKA_EVENT_RETENTION_MS, KAFKA_SNAPSHOT_RETENTION_MS) on existing ones, reporting each change; "
            "idempotent. A configuration the broker does not allow changing is reported and left as it is "
            "(exit 0); a topic with another partition count is an error.")

    def handle(self, *args, **options):
        settings = KafkaSettings.from_django()
        try:
            require_kafka(settings.bootstrap_servers)
            self.stdout.write(f"Kafka at {settings.bootstrap_servers}, {settings.partitions} partitions per topic")
            reports = provision_topics(settings)
        except (Unreachable, KafkaTopicError) as exc:
            raise CommandError(str(exc)) from None
        for report in reports:
            self.stdout.write(str(report))
        differs = [r for r in reports if r.action == "differs"]
        if differs:
            self.stderr.write(self.style.WARNING(
                f"{len(differs)} topic(s) keep a configuration other than the settings': the broker did not allow "
                "changing it (see above). Kafka then keeps records for another time than configured; the mirror "
                "keeps every event regardless."))
        mismatches = [r for r in reports if r.action == "mismatch"]
        if mismatches:
            raise CommandError(
                f"{len(mismatches)} topic(s) have another partition count than KAFKA_TOPIC_PARTITIONS="
                f"{settings.partitions}; publishing to them is refused"
            )
