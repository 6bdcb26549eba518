"""Indexes for the compliance admin: events by actor (a page of one user's events, read
backwards from the newest), events by the time the store recorded them, and stream ids by
prefix.

On PostgreSQL they are built CONCURRENTLY (appends go on while a large table is indexed; the
migration is not atomic for that reason). The time index is BRIN: rows lie in about the order
of recorded_at, so a few block summaries serve "events between these dates" at next to no
cost per append. The prefix index (varchar_pattern_ops, for LIKE 'child.abc%') is one entry
per stream, written once. What the two event indexes cost appends is measured by
`bash bench/run-audit-indexes` (README, Performance).

A CONCURRENTLY build that fails (a deadlock, a cancelled migration) leaves an INVALID index
that IF NOT EXISTS would skip: running the migration again drops such a leftover first.
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


NAMES = ["eventstore_event_actor", "eventstore_event_recorded_brin", "eventstore_stream_id_prefix"]


def create(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    if postgres:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE NOT i.indisvalid AND c.relname = ANY(%s)", [NAMES])
            leftovers = [name for (name,) in cursor.fetchall()]
        for name in leftovers:  # an earlier build that failed half-way
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}", params=None)
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
