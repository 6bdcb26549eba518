from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.application import ApplicationError
from eventsourcing_app.application.accounts import create_parent_account
from eventsourcing_app.domain import DomainError
from eventsourcing_app.eventstore import EventStoreError, get_event_store


class Command(BaseCommand):
    help = ("Registers a new parent and makes its login: a user named by the email, linked to the parent, and an "
            "API token. Prints the parent id, the username and the token.")

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True, help="the parent's email; it is also the login")
        parser.add_argument("--password", required=True, help="the login's password (Django's password rules)")
        parser.add_argument("--name", help="the parent's name (default: the part of the email before the @)")
        parser.add_argument("--phone", help="the parent's phone number, e.g. +1 555 0100 123")

    def handle(self, *args, email, password, name, phone, **options):
        try:
            account = create_parent_account(email=email, password=password, name=name, phone=phone)
        except (ApplicationError, DomainError, EventStoreError) as exc:
            raise CommandError(str(exc)) from None
        get_event_store().flush(10)  # hand the registration to Kafka before this process ends
        self.stdout.write(self.style.SUCCESS(f"parent account created for {account.username}"))
        self.stdout.write(f"  parent id  {account.parent_id}\n"
                          f"  username   {account.username}\n"
                          f"  token      {account.token}")
