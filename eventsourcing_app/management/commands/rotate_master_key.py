from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.privacy.keyring import MasterKeyError
from eventsourcing_app.privacy.fields import get_subject_keys


class Command(BaseCommand):
    help = ("Rewraps every data key under the first key of TEDDY_MASTER_KEYS (put the new key first, keep the old "
            "one after it until this has run). Events are not rewritten.")

    def handle(self, *args, **options):
        keys = get_subject_keys()
        self.stdout.write(f"current master key: {keys.keyring.current_id}")
        try:
            done = keys.rewrap_all(progress=lambda d, t: self.stdout.write(f"  ... {d}/{t} data keys rewrapped"))
        except MasterKeyError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(
            f"{done} data keys rewrapped; the other keys can now be removed from TEDDY_MASTER_KEYS"))
