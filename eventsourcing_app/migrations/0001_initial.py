# The mirror tables: streams, events, snapshots and data subjects' keys.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='SubjectKey',
            fields=[
                ('subject', models.CharField(max_length=240, primary_key=True, serialize=False)),
                ('wrapped_key', models.BinaryField(null=True)),
                ('master_key_id', models.CharField(max_length=40, null=True)),
                ('created_at', models.DateTimeField()),
                ('destroyed_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'db_table': 'privacy_subject_key',
            },
        ),
        migrations.CreateModel(
            name='Stream',
            fields=[
                ('stream_id', models.CharField(max_length=200, primary_key=True, serialize=False)),
                ('stream_type', models.CharField(max_length=40)),
                ('version', models.BigIntegerField(default=0, help_text='Version of the last event (0: no events).')),
                ('published_version', models.BigIntegerField(default=0, help_text='Every event up to this version is acknowledged by Kafka.')),
                ('last_hash', models.BinaryField(help_text='Chain hash of the last event.', max_length=32)),
                ('created_at', models.DateTimeField()),
                ('updated_at', models.DateTimeField(help_text='When the last event was appended.')),
                ('migrated_to', models.CharField(blank=True, max_length=200, null=True)),
                ('migrated_from', models.CharField(blank=True, max_length=200, null=True)),
            ],
            options={
                'db_table': 'eventstore_stream',
                'indexes': [models.Index(fields=['stream_type'], name='eventstore_stream_type'), models.Index(condition=models.Q(('version__gt', models.F('published_version'))), fields=['stream_id'], name='eventstore_stream_unpublished')],
            },
        ),
        migrations.CreateModel(
            name='Snapshot',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('version', models.BigIntegerField()),
                ('aggregate_type', models.CharField(max_length=40)),
                ('schema_version', models.PositiveSmallIntegerField(help_text="The aggregate's snapshot schema version.")),
                ('state', models.BinaryField()),
                ('data_subject', models.CharField(blank=True, max_length=240, null=True)),
                ('created_at', models.DateTimeField()),
                ('kafka_topic', models.CharField(blank=True, max_length=249, null=True)),
                ('kafka_partition', models.IntegerField(blank=True, null=True)),
                ('kafka_offset', models.BigIntegerField(blank=True, null=True)),
                ('stream', models.ForeignKey(db_column='stream_id', db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='snapshots', to='eventsourcing_app.stream')),
            ],
            options={
                'db_table': 'eventstore_snapshot',
                'indexes': [models.Index(condition=models.Q(('data_subject__isnull', False)), fields=['data_subject'], name='eventstore_snapshot_subject')],
                'constraints': [models.UniqueConstraint(fields=('stream', 'version'), name='eventstore_snapshot_stream_version')],
            },
        ),
        migrations.CreateModel(
            name='Event',
            fields=[
                ('position', models.BigAutoField(help_text='Global sequence (may have gaps).', primary_key=True, serialize=False)),
                ('event_id', models.UUIDField(unique=True)),
                ('version', models.BigIntegerField()),
                ('event_type', models.CharField(max_length=200)),
                ('schema_version', models.PositiveSmallIntegerField()),
                ('occurred_at', models.DateTimeField()),
                ('correlation_id', models.CharField(blank=True, max_length=100, null=True)),
                ('causation_id', models.CharField(blank=True, max_length=100, null=True)),
                ('actor', models.CharField(blank=True, max_length=200, null=True)),
                ('data_subject', models.CharField(blank=True, max_length=240, null=True)),
                ('payload', models.BinaryField()),
                ('chain_hash', models.BinaryField(max_length=32)),
                ('kafka_topic', models.CharField(blank=True, max_length=249, null=True)),
                ('kafka_partition', models.IntegerField(blank=True, null=True)),
                ('kafka_offset', models.BigIntegerField(blank=True, null=True)),
                ('published_at', models.DateTimeField(blank=True, null=True)),
                ('stream', models.ForeignKey(db_column='stream_id', db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='eventsourcing_app.stream')),
            ],
            options={
                'db_table': 'eventstore_event',
                'indexes': [models.Index(fields=['event_type'], name='eventstore_event_type'), models.Index(condition=models.Q(('correlation_id__isnull', False)), fields=['correlation_id'], name='eventstore_event_correlation'), models.Index(condition=models.Q(('causation_id__isnull', False)), fields=['causation_id'], name='eventstore_event_causation')],
                'constraints': [models.UniqueConstraint(fields=('stream', 'version'), name='eventstore_event_stream_version')],
            },
        ),
        migrations.CreateModel(
            name='SubjectStream',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('subject', models.CharField(max_length=240)),
                ('stream', models.ForeignKey(db_column='stream_id', db_index=False, on_delete=django.db.models.deletion.PROTECT, to='eventsourcing_app.stream')),
            ],
            options={
                'db_table': 'privacy_subject_stream',
                'constraints': [models.UniqueConstraint(fields=('subject', 'stream'), name='privacy_subject_stream_unique')],
            },
        ),
    ]
