"""The compliance admin: its append-only access log and the two roles."""

from django.db import migrations, models

POSTGRES = """
CREATE OR REPLACE FUNCTION compliance_access_record_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the access log is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER compliance_access_record_no_update BEFORE UPDATE ON compliance_access_record
    FOR EACH ROW EXECUTE FUNCTION compliance_access_record_append_only();
CREATE TRIGGER compliance_access_record_no_delete BEFORE DELETE ON compliance_access_record
    FOR EACH ROW EXECUTE FUNCTION compliance_access_record_append_only();
CREATE TRIGGER compliance_access_record_no_truncate BEFORE TRUNCATE ON compliance_access_record
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_access_record_append_only();
"""
POSTGRES_REVERSE = """
DROP TRIGGER IF EXISTS compliance_access_record_no_update ON compliance_access_record;
DROP TRIGGER IF EXISTS compliance_access_record_no_delete ON compliance_access_record;
DROP TRIGGER IF EXISTS compliance_access_record_no_truncate ON compliance_access_record;
DROP FUNCTION IF EXISTS compliance_access_record_append_only();
"""
SQLITE = [
    """CREATE TRIGGER compliance_access_record_no_update BEFORE UPDATE ON compliance_access_record
       BEGIN SELECT RAISE(ABORT, 'the access log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER compliance_access_record_no_delete BEFORE DELETE ON compliance_access_record
       BEGIN SELECT RAISE(ABORT, 'the access log is append-only: DELETE refused'); END""",
]
SQLITE_REVERSE = ["DROP TRIGGER IF EXISTS compliance_access_record_no_update",
                  "DROP TRIGGER IF EXISTS compliance_access_record_no_delete"]

# The same lists as application/compliance.py (a migration keeps its own copy: it must
# give the same result later, whatever the code then says).
AUDIT_MODELS = ("stream", "event", "snapshot", "subjectkey", "accessrecord", "deadletter", "projectorstate")
COMPLIANCE = [f"view_{model}" for model in AUDIT_MODELS] + ["export_audit_trail", "verify_integrity"]
GROUPS = {
    "compliance": COMPLIANCE,
    "privacy-officer": COMPLIANCE + ["reveal_personal_data", "export_data_subject", "erase_child"],
}


def guards(apps, schema_editor):
    _run(schema_editor, POSTGRES, SQLITE)


def drop_guards(apps, schema_editor):
    _run(schema_editor, POSTGRES_REVERSE, SQLITE_REVERSE)


def _run(schema_editor, postgres, sqlite):
    vendor = schema_editor.connection.vendor
    statements = [postgres] if vendor == "postgresql" else sqlite if vendor == "sqlite" else []
    for statement in statements:
        schema_editor.execute(statement, params=None)


def roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally made after all migrations; the groups need them now.
    app_config = apps.get_app_config("eventsourcing_app")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        found = list(Permission.objects.filter(content_type__app_label="eventsourcing_app", codename__in=codenames))
        missing = set(codenames) - {p.codename for p in found}
        if missing:
            raise RuntimeError(f"permissions {sorted(missing)} do not exist; cannot make group {name}")
        group.permissions.set(found)


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(GROUPS)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('eventsourcing_app', '0006_read_models'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.CreateModel(
            name='AccessRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('at', models.DateTimeField(db_index=True)),
                ('user_id', models.BigIntegerField(help_text='The staff user (kept as a number: deleting a user keeps the record).')),
                ('username', models.CharField(max_length=150)),
                ('action', models.CharField(choices=[('reveal', 'reveal'), ('export', 'export'), ('erase', 'erase'), ('verify', 'verify'), ('role', 'role change')], max_length=10)),
                ('scope', models.CharField(help_text='event, stream, correlation, events (a filtered list), subject or store', max_length=20)),
                ('target', models.CharField(help_text='What was reached: an event, a stream, a child, a filter.', max_length=500)),
                ('subject', models.CharField(blank=True, db_index=True, default='', help_text='The data subject the record is about (child:<id>), where one is.', max_length=240)),
                ('criteria', models.TextField(blank=True, default='', help_text='The whole selection (every filter of an export), where the target is short.')),
                ('reason', models.TextField()),
                ('correlation_id', models.CharField(max_length=100)),
                ('decrypted', models.BooleanField(default=False, help_text='Whether personal values were shown or exported in clear.')),
                ('export_format', models.CharField(blank=True, default='', max_length=10)),
                ('event_count', models.BigIntegerField(default=0)),
                ('up_to_position', models.BigIntegerField(blank=True, help_text='The export covered the events matching the target up to here.', null=True)),
                ('event_ids', models.JSONField(blank=True, default=list, help_text='The events revealed (reveals only).')),
                ('outcome', models.TextField(blank=True, default='')),
            ],
            options={
                'verbose_name': 'access log record',
                'db_table': 'compliance_access_record',
                'permissions': [('reveal_personal_data', "Can reveal children's and parents' personal data in the audit trail"), ('export_audit_trail', 'Can export events (personal fields masked unless also allowed to reveal)'), ('export_data_subject', 'Can export everything held about a child'), ('erase_child', "Can erase a child's personal data"), ('verify_integrity', 'Can run the integrity check')],
                'indexes': [models.Index(fields=['target'], name='compliance_access_target', opclasses=['varchar_pattern_ops'])],
            },
        ),
        migrations.RunPython(guards, drop_guards),
        migrations.RunPython(roles, drop_roles),
    ]
