# The store's own clock on every event (recorded_at), publication epochs, sealed snapshots,
# poison events, subject aliases, the maintenance marker and the permit table of guarded
# snapshot deletes.

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [("eventsourcing_app", "0002_immutability_and_append")]

    operations = [
        # Rows recorded before this migration get the migration's time: an upper bound of when
        # they were recorded (PostgreSQL adds the column without rewriting the table).
        migrations.AddField(
            model_name="event",
            name="recorded_at",
            field=models.DateTimeField(default=django.utils.timezone.now,
                                       help_text="The store's time: when the database recorded the event."),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="stream",
            name="publication_epoch",
            field=models.IntegerField(default=0, db_default=0, help_text="Bumped when a refill republishes the stream: older "
                                                           "acknowledgements no longer count."),
        ),
        migrations.AlterField(
            model_name="event",
            name="occurred_at",
            field=models.DateTimeField(help_text="The domain's time, given by whoever appended the event."),
        ),
        migrations.AddField(
            model_name="snapshot",
            name="seal",
            field=models.BinaryField(help_text="HMAC of the snapshot, bound to the stream's chain hash.", null=True),
        ),
        migrations.CreateModel(
            name="SnapshotDeletePermit",
            fields=[("token", models.UUIDField(primary_key=True, serialize=False))],
            options={"db_table": "eventstore_snapshot_delete_permit"},
        ),
        migrations.CreateModel(
            name="PoisonEvent",
            fields=[
                ("position", models.BigIntegerField(help_text="The event's global position.", primary_key=True,
                                                    serialize=False)),
                ("stream_id", models.CharField(max_length=200)),
                ("version", models.BigIntegerField()),
                ("error", models.TextField()),
                ("attempts", models.IntegerField(default=1)),
                ("first_seen", models.DateTimeField()),
                ("last_seen", models.DateTimeField()),
            ],
            options={"db_table": "eventstore_poison_event"},
        ),
        migrations.CreateModel(
            name="Maintenance",
            fields=[
                ("name", models.CharField(max_length=40, primary_key=True, serialize=False)),
                ("started_at", models.DateTimeField()),
                ("detail", models.TextField()),
            ],
            options={"db_table": "eventstore_maintenance"},
        ),
        migrations.CreateModel(
            name="SubjectAlias",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("subject", models.CharField(max_length=240)),
                ("alias", models.CharField(max_length=240)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": "privacy_subject_alias",
                "constraints": [models.UniqueConstraint(fields=("subject", "alias"),
                                                        name="privacy_subject_alias_unique")],
            },
        ),
    ]
