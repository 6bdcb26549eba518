"""An index of the streams a projector holds behind a dead letter or a gap: few rows (none,
usually), so counting them for /metrics and `projections status` no longer reads every stream's
progress row. Built CONCURRENTLY on PostgreSQL (projectors go on writing meanwhile); a build
that failed half-way is dropped first when the migration runs again."""
from django.db import migrations, models

NAME = "readside_progress_held"
CREATE = (f"CREATE INDEX {{concurrently}} IF NOT EXISTS {NAME} ON readside_stream_progress (projector, generation) "
          "WHERE held_at_version IS NOT NULL")


def create(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    if postgres:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE NOT i.indisvalid AND c.relname = %s", [NAME])
            if cursor.fetchone():
                schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}", params=None)
    schema_editor.execute(CREATE.format(concurrently="CONCURRENTLY" if postgres else ""), params=None)


def drop(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    schema_editor.execute(f"DROP INDEX {'CONCURRENTLY' if postgres else ''} IF EXISTS {NAME}", params=None)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("eventsourcing_app", "0009_subject_key_named_data_subject"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(
                model_name="streamprogress",
                index=models.Index(condition=models.Q(("held_at_version__isnull", False)),
                                   fields=["projector", "generation"], name=NAME))],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
