"""The admin names subject keys "data subjects" (options only: no schema change)."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('eventsourcing_app', '0008_event_actor_and_time_indexes'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='subjectkey',
            options={'verbose_name': 'data subject'},
        ),
    ]
