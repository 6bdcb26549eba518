"""Indexes for the compliance admin: events by actor (a page of one user's events, read
backwards from the newest), events by the time the store recorded them, and stream ids by
prefix.

On PostgreSQL they are built CONCURRENTLY (appends go on while a large table is indexed; the
migration is not atomic for that reason). The time index is BRIN: rows lie in about the order
of recorded_at, so a few block summaries serve "events between these dates" at next to no
cost per append. The prefix index (varchar_pattern_ops, for LIKE 'child.abc%') is one entry
per stream, written once. Measured append cost of the three: within the noise of alternating
runs with and without them (README, Performance).
"""
from django.db import migrations, models

ACTOR = ("CREATE INDEX {concurrently} IF NOT EXISTS eventstore_event_actor ON eventstore_event (actor, position) "
         "WHERE actor IS NOT NULL")
POSTGRES_ONLY = [
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS eventstore_event_recorded_brin ON eventstore_event "
    "USING brin (recorded_at) WITH (autosummarize = on)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS eventstore_stream_id_prefix ON eventstore_stream "
    "(stream_id varchar_pattern_ops)",
]
DROPS = ["DROP INDEX {concurrently} IF EXISTS eventstore_event_actor",
         "DROP INDEX {concurrently} IF EXISTS eventstore_event_recorded_brin",
         "DROP INDEX {concurrently} IF EXISTS eventstore_stream_id_prefix"]


def create(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    schema_editor.execute(ACTOR.format(concurrently="CONCURRENTLY" if postgres else ""), params=None)
    for statement in POSTGRES_ONLY if postgres else []:
        schema_editor.execute(statement, params=None)


def drop(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    for statement in DROPS:
        schema_editor.execute(statement.format(concurrently="CONCURRENTLY" if postgres else ""), params=None)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("eventsourcing_app", "0007_compliance_access_log"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(
                model_name="event",
                index=models.Index(condition=models.Q(("actor__isnull", False)), fields=["actor", "position"],
                                   name="eventstore_event_actor"))],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
