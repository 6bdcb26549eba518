from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.application import ApplicationError
from eventsourcing_app.application.compliance import recorded_erasure
from eventsourcing_app.domain import ERASURE_REASONS, DomainError
from eventsourcing_app.eventstore import EventStoreError
from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.operations.preflight import (OwnProcessAware, kafka_problem, redis_problem,
                                                    switch_off_publishing)

LEFT_UNDONE = {
    "kafka": ("{problem}. So: the erasure event waits in the outbox (the relay publishes it), and no snapshot "
              "tombstones were published (the child's snapshots in Kafka are unreadable: their key is destroyed). "
              "Run this command again once Kafka answers to publish them; a repeated erasure changes nothing else."),
    "redis": ("{problem}. So: other processes were not told (they drop the child's key from memory within two "
              "minutes) and cached aggregates were not dropped (they no longer open). Run this command again once "
              "Redis answers to tell them now."),
}


class Command(OwnProcessAware, BaseCommand):
    help = ("Erases a child's personal data everywhere by destroying its data key (crypto-shredding); records the "
            "erasure as an event (who asked, why), drops the child's snapshots and cached aggregates. Cannot be "
            "undone; recorded in the compliance access log (before and after). Needs the database. Kafka and Redis are checked first: the erasure goes ahead without them "
            "(it is complete once the key is destroyed in the database, which refuses new data for the child from "
            "then on), and the command then says, per service, what it could not do and that running it again "
            "once the service answers does it.")

    def add_arguments(self, parser):
        parser.add_argument("child_id", help="the child's id (the part after 'child.' in its stream id)")
        parser.add_argument("--reason", required=True, choices=ERASURE_REASONS, help="why the data is erased")
        parser.add_argument("--actor", default="system:forget_child",
                            help="who asked for the erasure, 'user:<id>' (a staff member) or 'system:<name>' "
                                 "(audit trail)")

    def handle(self, *args, child_id, reason, actor, **options):
        problems = {"kafka": kafka_problem(KafkaSettings.from_django().bootstrap_servers),
                    "redis": redis_problem(settings.REDIS_URL)}
        down = {name: problem for name, problem in problems.items() if problem}
        if "kafka" in down and self.runs_as_own_process:
            # The relay publishes the erasure event; nothing waits for, or logs about, an absent broker.
            switch_off_publishing()
        try:
            report = recorded_erasure(actor, child_id=child_id, reason_code=reason)
        except (ApplicationError, DomainError, EventStoreError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(str(report)))
        for name, problem in down.items():
            self.stderr.write(self.style.WARNING(LEFT_UNDONE[name].format(problem=problem)))
