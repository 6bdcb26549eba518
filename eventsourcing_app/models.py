"""The mirror: streams and their immutable events, as Django models.

The mirror is the index for aggregate loads, the optimistic-concurrency guard (unique
stream + version, the stream row locked while appending), the outbox (events above a
stream's `published_version` are still to be published) and what the admin browses.

Event rows never change once written, except for the Kafka position columns that record
where the event was published. A database trigger enforces this (see migrations), and the
ORM refuses too.

Beside it, `ParentAccount`: which Django user logs in as which parent, and `AccessRecord`:
the compliance admin's access log.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models

from .eventstore.errors import ImmutableEventError

PUBLICATION_FIELDS = frozenset({"kafka_topic", "kafka_partition", "kafka_offset", "published_at"})
SNAPSHOT_PUBLICATION_FIELDS = frozenset({"kafka_topic", "kafka_partition", "kafka_offset"})


class Stream(models.Model):
    stream_id = models.CharField(max_length=200, primary_key=True)
    stream_type = models.CharField(max_length=40)
    version = models.BigIntegerField(default=0, help_text="Version of the last event (0: no events).")
    published_version = models.BigIntegerField(
        default=0, help_text="Every event up to this version is acknowledged by Kafka."
    )
    publication_epoch = models.IntegerField(
        default=0, db_default=0, help_text="Bumped when a refill republishes the stream: older acknowledgements no longer count."
    )
    last_hash = models.BinaryField(max_length=32, help_text="Chain hash of the last event.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(help_text="When the last event was appended.")
    # Stream migration (manage.py migrate_stream) records the link both ways.
    migrated_to = models.CharField(max_length=200, null=True, blank=True)
    migrated_from = models.CharField(max_length=200, null=True, blank=True)

    class Meta:
        db_table = "eventstore_stream"
        indexes = [
            models.Index(fields=["stream_type"], name="eventstore_stream_type"),
            models.Index(
                fields=["stream_id"],
                name="eventstore_stream_unpublished",
                condition=models.Q(version__gt=models.F("published_version")),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} (v{self.version})"


class EventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        changed = set(kwargs) - PUBLICATION_FIELDS
        if changed:
            raise ImmutableEventError(
                f"stored events are immutable: refusing to change {sorted(changed)}; append a new event instead"
            )
        return super().update(**kwargs)

    def delete(self):
        raise ImmutableEventError("stored events are immutable and cannot be deleted")

    delete.queryset_only = True


class Event(models.Model):
    position = models.BigAutoField(primary_key=True, help_text="Global sequence (may have gaps).")
    event_id = models.UUIDField(unique=True)
    # No index of its own: the unique (stream, version) index serves every lookup by stream.
    stream = models.ForeignKey(Stream, on_delete=models.PROTECT, db_column="stream_id", related_name="events",
                               db_index=False)
    version = models.BigIntegerField()
    event_type = models.CharField(max_length=200)
    schema_version = models.PositiveSmallIntegerField()
    occurred_at = models.DateTimeField(help_text="The domain's time, given by whoever appended the event.")
    recorded_at = models.DateTimeField(help_text="The store's time: when the database recorded the event.")
    correlation_id = models.CharField(max_length=100, null=True, blank=True)
    causation_id = models.CharField(max_length=100, null=True, blank=True)
    actor = models.CharField(max_length=200, null=True, blank=True)
    # "child:child-123": whose data key encrypts the payload's sensitive fields, if any.
    data_subject = models.CharField(max_length=240, null=True, blank=True)
    payload = models.BinaryField()
    chain_hash = models.BinaryField(max_length=32)
    kafka_topic = models.CharField(max_length=249, null=True, blank=True)
    kafka_partition = models.IntegerField(null=True, blank=True)
    kafka_offset = models.BigIntegerField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        db_table = "eventstore_event"
        constraints = [
            models.UniqueConstraint(fields=["stream", "version"], name="eventstore_event_stream_version"),
        ]
        # Every index costs each append; these serve the admin's filters and its
        # "follow the correlation / causation" links. (Meta indexes get no LIKE twins.)
        indexes = [
            models.Index(fields=["event_type"], name="eventstore_event_type"),
            models.Index(fields=["correlation_id"], name="eventstore_event_correlation",
                         condition=models.Q(correlation_id__isnull=False)),
            models.Index(fields=["causation_id"], name="eventstore_event_causation",
                         condition=models.Q(causation_id__isnull=False)),
            # "Everything this user did", newest first, as a keyset page.
            models.Index(fields=["actor", "position"], name="eventstore_event_actor",
                         condition=models.Q(actor__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version} {self.event_type}"

    def save(self, *args, **kwargs):
        raise ImmutableEventError("events are written only by the event store (append_events), never saved directly")

    def delete(self, *args, **kwargs):
        raise ImmutableEventError("stored events are immutable and cannot be deleted")


class SnapshotQuerySet(models.QuerySet):
    """Snapshots are written once and deleted only by pruning and erasure (the recorder's
    guarded delete); a database trigger enforces the same."""

    def update(self, **kwargs):
        changed = set(kwargs) - SNAPSHOT_PUBLICATION_FIELDS
        if changed:
            raise ImmutableEventError(f"snapshots are immutable: refusing to change {sorted(changed)}")
        return super().update(**kwargs)

    def delete(self):
        raise ImmutableEventError("snapshots are deleted only by pruning and erasure (the event store's recorder)")

    delete.queryset_only = True


class Snapshot(models.Model):
    """An aggregate's state at a version; its sensitive fields are encrypted like events', and
    the whole is sealed (a MAC bound to the stream, the version and the chain hash there)."""

    stream = models.ForeignKey(Stream, on_delete=models.PROTECT, db_column="stream_id", related_name="snapshots",
                               db_index=False)
    version = models.BigIntegerField()
    aggregate_type = models.CharField(max_length=40)
    schema_version = models.PositiveSmallIntegerField(help_text="The aggregate's snapshot schema version.")
    state = models.BinaryField()
    seal = models.BinaryField(null=True, help_text="HMAC of the snapshot, bound to the stream's chain hash.")
    data_subject = models.CharField(max_length=240, null=True, blank=True)
    created_at = models.DateTimeField()
    kafka_topic = models.CharField(max_length=249, null=True, blank=True)
    kafka_partition = models.IntegerField(null=True, blank=True)
    kafka_offset = models.BigIntegerField(null=True, blank=True)

    objects = SnapshotQuerySet.as_manager()

    class Meta:
        db_table = "eventstore_snapshot"
        constraints = [models.UniqueConstraint(fields=["stream", "version"], name="eventstore_snapshot_stream_version")]
        indexes = [models.Index(fields=["data_subject"], name="eventstore_snapshot_subject",
                                condition=models.Q(data_subject__isnull=False))]

    def __str__(self) -> str:
        return f"{self.stream_id} @ v{self.version}"

    def save(self, *args, **kwargs):
        raise ImmutableEventError("snapshots are written only by the snapshot store, never saved directly")

    def delete(self, *args, **kwargs):
        raise ImmutableEventError("snapshots are deleted only by pruning and erasure (the event store's recorder)")


class SnapshotDeletePermit(models.Model):
    """A row here, inside the deleting transaction only, lets the database trigger accept a
    snapshot DELETE: pruning and erasure insert one, delete, and remove it."""

    token = models.UUIDField(primary_key=True)

    class Meta:
        db_table = "eventstore_snapshot_delete_permit"


class PoisonEvent(models.Model):
    """An event Kafka refused for good (too large, unknown topic, ...): its stream is held at
    the version before it until the cause is fixed; the relay retries it now and then."""

    position = models.BigIntegerField(primary_key=True, help_text="The event's global position.")
    stream_id = models.CharField(max_length=200)
    version = models.BigIntegerField()
    error = models.TextField()
    attempts = models.IntegerField(default=1)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        db_table = "eventstore_poison_event"

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version}: {self.error}"


class Maintenance(models.Model):
    """Work in progress that must finish before normal operation resumes (a refill between
    marking streams for republication and emptying the topics): the relay waits while a row is
    here, so a crashed refill never lets it publish into topics that were to be emptied."""

    name = models.CharField(max_length=40, primary_key=True)
    started_at = models.DateTimeField()
    detail = models.TextField()

    class Meta:
        db_table = "eventstore_maintenance"

    def __str__(self) -> str:
        return f"{self.name} since {self.started_at:%Y-%m-%d %H:%M:%S} UTC"


class SubjectStream(models.Model):
    """Which streams hold data encrypted for a subject: found by erasure and export without an
    index over every event (one row per subject and stream, written by the append itself)."""

    subject = models.CharField(max_length=240)
    stream = models.ForeignKey(Stream, on_delete=models.PROTECT, db_column="stream_id", db_index=False)

    class Meta:
        db_table = "privacy_subject_stream"
        constraints = [models.UniqueConstraint(fields=["subject", "stream"], name="privacy_subject_stream_unique")]

    def __str__(self) -> str:
        return f"{self.subject} in {self.stream_id}"


class SubjectAlias(models.Model):
    """Two names of one data subject (after a stream migration to a new id): erasing either
    erases both. Stored in both directions."""

    subject = models.CharField(max_length=240)
    alias = models.CharField(max_length=240)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "privacy_subject_alias"
        constraints = [models.UniqueConstraint(fields=["subject", "alias"], name="privacy_subject_alias_unique")]

    def __str__(self) -> str:
        return f"{self.subject} = {self.alias}"


class SubjectKey(models.Model):
    """A data subject's data key, wrapped by a master key; NULL once destroyed (erased)."""

    subject = models.CharField(max_length=240, primary_key=True)
    wrapped_key = models.BinaryField(null=True)
    master_key_id = models.CharField(max_length=40, null=True)
    created_at = models.DateTimeField()
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "privacy_subject_key"
        verbose_name = "data subject"  # the admin lists subjects by their key; the key never shows

    def __str__(self) -> str:
        return f"{self.subject} ({'erased' if self.destroyed_at else 'active'})"


class ParentAccount(models.Model):
    """A parent's login: the Django user (and so its API token) that acts as parent `parent_id`.

    Only the link: who the parent is (email, name, phone) stays in the parent's stream,
    encrypted. Made by `application.accounts.create_parent_account`.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="parent_account")
    parent_id = models.CharField(max_length=200, unique=True, help_text="The parent's stream is parent.<parent_id>.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "accounts_parent_account"

    def __str__(self) -> str:
        return f"user {self.user_id} = parent {self.parent_id}"



class AccessRecordQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableEventError("the access log is append-only: its records cannot be changed")

    def delete(self):
        raise ImmutableEventError("the access log is append-only: its records cannot be deleted")

    delete.queryset_only = True


class AccessRecord(models.Model):
    """One use of the compliance admin that must be answerable later: a reveal of personal
    data, an export, an erasure, an integrity check, a user joining or leaving one of the two
    compliance groups. Append-only (a database trigger refuses
    UPDATE and DELETE); written by application/compliance.py only."""

    ACTIONS = [("reveal", "reveal"), ("export", "export"), ("erase", "erase"), ("verify", "verify"),
               ("role", "role change")]

    at = models.DateTimeField(db_index=True)
    user_id = models.BigIntegerField(help_text="The staff user (kept as a number: deleting a user keeps the record).")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=10, choices=ACTIONS)
    scope = models.CharField(max_length=20, help_text="event, stream, correlation, events (a filtered list), "
                                                      "subject or store")
    target = models.CharField(max_length=500, help_text="What was reached: an event, a stream, a child, a filter.")
    subject = models.CharField(max_length=240, blank=True, default="", db_index=True,
                               help_text="The data subject the record is about (child:<id>), where one is.")
    criteria = models.TextField(blank=True, default="",
                                help_text="The whole selection (every filter of an export), where the target is short.")
    reason = models.TextField()
    correlation_id = models.CharField(max_length=100)
    decrypted = models.BooleanField(default=False, help_text="Whether personal values were shown or exported in clear.")
    export_format = models.CharField(max_length=10, blank=True, default="")
    event_count = models.BigIntegerField(default=0)
    up_to_position = models.BigIntegerField(null=True, blank=True,
                                            help_text="The export covered the events matching the target up to here.")
    event_ids = models.JSONField(default=list, blank=True, help_text="The events revealed (reveals only).")
    outcome = models.TextField(blank=True, default="")

    objects = AccessRecordQuerySet.as_manager()

    class Meta:
        db_table = "compliance_access_record"
        verbose_name = "access log record"
        permissions = [
            ("reveal_personal_data", "Can reveal children's and parents' personal data in the audit trail"),
            ("export_audit_trail", "Can export events (personal fields masked unless also allowed to reveal)"),
            ("export_data_subject", "Can export everything held about a child"),
            ("erase_child", "Can erase a child's personal data"),
            ("verify_integrity", "Can run the integrity check"),
        ]
        # Serves "every record about child.x" (a prefix search) on PostgreSQL too.
        indexes = [models.Index(fields=["target"], name="compliance_access_target", opclasses=["varchar_pattern_ops"])]

    def __str__(self) -> str:
        return f"{self.action} {self.scope} {self.target} by {self.username} at {self.at:%Y-%m-%d %H:%M:%S} UTC"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ImmutableEventError("the access log is append-only: its records cannot be changed")
        super().save(*args, force_insert=True)

    def delete(self, *args, **kwargs):
        raise ImmutableEventError("the access log is append-only: its records cannot be deleted")


# The read side's tables live with their projectors; Django finds them through this module.
from .readside.models import (  # noqa: E402,F401
    ChildProfile, ConversationView, DeadLetter, FamilyChild, ProjectorCheckpoint, ProjectorState, SafetyAlert,
    StreamProgress, TalkTime, TimelineEntry,
)
