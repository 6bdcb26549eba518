from django.core.management.base import BaseCommand

from eventsourcing_app.application.demo import load_demo_family


class Command(BaseCommand):
    help = "Loads a small demo family (a parent, two children, a conversation) through the commands (idempotent)."

    def handle(self, *args, **options):
        created = load_demo_family()
        self.stdout.write(f"demo data: {created} streams created" if created else "demo data: already loaded")
