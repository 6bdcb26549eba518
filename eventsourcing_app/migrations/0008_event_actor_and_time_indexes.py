"""Indexes for the compliance admin's event filters: by actor (newest first) and by time.

The time index is a BRIN index on PostgreSQL: events arrive in about the order of their
time, so a few pages of summaries per range serve "events between these dates", at next to
no cost per append (a B-tree would add a page write to every one)."""
from django.db import migrations, models

BRIN = "CREATE INDEX IF NOT EXISTS eventstore_event_occurred_brin ON eventstore_event USING brin (occurred_at)"
DROP_BRIN = "DROP INDEX IF EXISTS eventstore_event_occurred_brin"


def brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BRIN, params=None)


def drop_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_BRIN, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("eventsourcing_app", "0007_compliance_access_log"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="event",
            index=models.Index(condition=models.Q(("actor__isnull", False)), fields=["actor", "-position"],
                               name="eventstore_event_actor"),
        ),
        migrations.RunPython(brin, drop_brin),
    ]
