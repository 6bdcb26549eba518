from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.application import ApplicationError
from eventsourcing_app.application.demo import DEMO_PASSWORD, load_demo_family
from eventsourcing_app.domain import DomainError
from eventsourcing_app.eventstore import EventStoreError


class Command(BaseCommand):
    help = ("Loads the demo families (parents with logins, children, conversations, safety flags) through the "
            "commands (idempotent), and the compliance admin's demo logins; prints the logins and one API token.")

    def handle(self, *args, **options):
        try:
            report = load_demo_family()
        except (ApplicationError, DomainError, EventStoreError) as exc:
            raise CommandError(f"the demo data could not be loaded: {exc}") from None
        if report.created:
            self.stdout.write(f"demo data: {report.streams_created} streams and {report.accounts_created} "
                              "logins created")
        else:
            self.stdout.write("demo data: already loaded")
        for login in report.logins:
            self.stdout.write(f"  demo parent {login.parent_id}: {login.email} / {login.password}")
        for username, group in report.staff.items():
            self.stdout.write(f"  admin ({group}): {username} / {DEMO_PASSWORD}")
        with_token = next((login for login in report.logins if login.token), None)
        if with_token is not None:
            self.stdout.write(f"  API token of {with_token.email}: {with_token.token}")
