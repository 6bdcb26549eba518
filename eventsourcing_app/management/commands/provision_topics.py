from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.eventstore.errors import KafkaTopicError
from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.kafka.topics import provision_topics


class Command(BaseCommand):
    help = "Creates the event store's Kafka topics (idempotent) and reports those that already exist."

    def handle(self, *args, **options):
        settings = KafkaSettings.from_django()
        self.stdout.write(f"Kafka at {settings.bootstrap_servers}, {settings.partitions} partitions per topic")
        try:
            reports = provision_topics(settings)
        except KafkaTopicError as exc:
            raise CommandError(str(exc)) from None
        for report in reports:
            self.stdout.write(str(report))
        mismatches = [r for r in reports if r.action == "mismatch"]
        if mismatches:
            raise CommandError(
                f"{len(mismatches)} topic(s) have another partition count than KAFKA_TOPIC_PARTITIONS="
                f"{settings.partitions}; publishing to them is refused"
            )
