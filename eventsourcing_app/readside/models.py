"""The read models the parents' API serves, and the bookkeeping of the projectors that feed them.

Every read-model row belongs to a *generation* of its projector. The API reads the projector's
active generation; a rebuild fills a new generation beside it and switches when it has caught
up (blue/green), then deletes the old rows. Personal values (a child's name, age, a summary)
are kept in the `personal` JSON column, encrypted under the child's data key (see
readside/personal.py): once the key is destroyed they cannot be read, whichever generation.
"""
from __future__ import annotations

from django.db import models


# --- Bookkeeping ---------------------------------------------------------------------

class ProjectorState(models.Model):
    """Which generation of a projector the API reads, and which one a rebuild is filling."""

    name = models.CharField(max_length=40, primary_key=True)
    active_generation = models.IntegerField(default=1)
    building_generation = models.IntegerField(null=True, blank=True)
    building_source = models.CharField(max_length=10, blank=True, default="")
    switched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "readside_projector_state"

    def __str__(self) -> str:
        building = f", building {self.building_generation}" if self.building_generation else ""
        return f"{self.name} (generation {self.active_generation}{building})"


class ProjectorCheckpoint(models.Model):
    """Where one generation of a projector is in the topics: the next offset per partition,
    written in the same transaction as the read-model changes it follows (exactly-once effect)."""

    projector = models.CharField(max_length=40)
    generation = models.IntegerField()
    offsets = models.JSONField(default=dict, help_text='{"<topic>:<partition>": next offset}')
    events_applied = models.BigIntegerField(default=0)
    # Moved by every batch: a batch writes only if the revision is still the one it started
    # from (another process wrote meanwhile: it is refused, and re-reads its positions).
    revision = models.BigIntegerField(default=0)
    caught_up_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "readside_checkpoint"
        constraints = [models.UniqueConstraint(fields=["projector", "generation"], name="readside_checkpoint_unique")]

    def __str__(self) -> str:
        return f"{self.projector} generation {self.generation}: {self.events_applied} events"


class StreamProgress(models.Model):
    """The last version of a stream a projector generation has applied: duplicates are skipped
    by it, a gap after it is filled from the mirror, and read-your-writes waits on it."""

    projector = models.CharField(max_length=40)
    generation = models.IntegerField()
    stream_id = models.CharField(max_length=200)
    version = models.BigIntegerField()
    held_at_version = models.BigIntegerField(null=True, blank=True,
                                             help_text="A dead letter stopped the stream before this version.")

    class Meta:
        db_table = "readside_stream_progress"
        constraints = [models.UniqueConstraint(fields=["projector", "generation", "stream_id"],
                                               name="readside_stream_progress_unique")]
        # The held streams (few): counted without reading every stream's row (migration 0010).
        indexes = [models.Index(fields=["projector", "generation"], condition=models.Q(held_at_version__isnull=False),
                                name="readside_progress_held")]


class DeadLetter(models.Model):
    """An event a projector could not apply. Its stream waits behind it (per-stream order is
    kept); `projections retry-dead-letters` applies it and what followed, from the mirror."""

    projector = models.CharField(max_length=40)
    generation = models.IntegerField()
    stream_id = models.CharField(max_length=200)
    version = models.BigIntegerField()
    event_id = models.CharField(max_length=36)
    event_type = models.CharField(max_length=200)
    error = models.TextField()
    attempts = models.IntegerField(default=1)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "readside_dead_letter"
        constraints = [models.UniqueConstraint(fields=["projector", "generation", "stream_id", "version"],
                                               name="readside_dead_letter_unique")]

    def __str__(self) -> str:
        return f"{self.projector}: {self.stream_id} v{self.version} ({self.event_type})"


# --- Read models -----------------------------------------------------------------------

class FamilyChild(models.Model):
    """The parent dashboard: one row per child of a family, with consent and open alerts."""

    generation = models.IntegerField()
    child_id = models.CharField(max_length=100)
    parent_id = models.CharField(max_length=100, null=True, blank=True)
    personal = models.JSONField(default=dict)  # name
    registered_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=False)
    erased = models.BooleanField(default=False)
    consent = models.CharField(max_length=10, default="none")  # none | granted | withdrawn
    consent_method = models.CharField(max_length=40, blank=True, default="")
    consent_changed_at = models.DateTimeField(null=True, blank=True)
    # Every parent's consent for this child id, by parent id: a parent may consent for an id
    # before registering it, so another parent's consent for the same id must not show here.
    consents = models.JSONField(default=dict)
    open_alerts = models.IntegerField(default=0)
    last_activity_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "readside_family_child"
        constraints = [models.UniqueConstraint(fields=["generation", "child_id"], name="readside_family_child_unique")]
        indexes = [models.Index(fields=["generation", "parent_id"], name="readside_family_parent")]


class ChildProfile(models.Model):
    """A child's current profile, device and safety settings."""

    generation = models.IntegerField()
    child_id = models.CharField(max_length=100)
    parent_id = models.CharField(max_length=100)
    personal = models.JSONField(default=dict)  # name, age, interests, language, udid
    device_id = models.CharField(max_length=100, null=True, blank=True)
    content_filter_level = models.CharField(max_length=20)
    daily_time_limit_minutes = models.IntegerField()
    registered_at = models.DateTimeField()
    active = models.BooleanField(default=True)
    erased = models.BooleanField(default=False)
    version = models.BigIntegerField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "readside_child_profile"
        constraints = [models.UniqueConstraint(fields=["generation", "child_id"], name="readside_child_profile_unique")]
        indexes = [models.Index(fields=["generation", "parent_id"], name="readside_profile_parent")]


class ConversationView(models.Model):
    """One conversation: when, how long, who said how much, its flags and summary."""

    generation = models.IntegerField()
    conversation_id = models.CharField(max_length=100)
    child_id = models.CharField(max_length=100)
    device_id = models.CharField(max_length=100)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.IntegerField(null=True, blank=True)
    child_messages = models.IntegerField(default=0)
    bear_messages = models.IntegerField(default=0)
    flags = models.JSONField(default=list)  # [{number, category, severity, message_sequence, raised_at, acknowledged}]
    personal = models.JSONField(default=dict)  # summary
    version = models.BigIntegerField()

    class Meta:
        db_table = "readside_conversation"
        constraints = [models.UniqueConstraint(fields=["generation", "conversation_id"],
                                               name="readside_conversation_unique")]
        indexes = [models.Index(fields=["generation", "child_id", "-started_at"], name="readside_conv_child")]


class TalkTime(models.Model):
    """Seconds a child talked on one day (UTC) in one conversation; a day's talk minutes are
    their sum. Written once when the conversation ends, split at midnight."""

    generation = models.IntegerField()
    child_id = models.CharField(max_length=100)
    day = models.DateField()
    conversation_id = models.CharField(max_length=100)
    seconds = models.IntegerField()

    class Meta:
        db_table = "readside_talk_time"
        constraints = [models.UniqueConstraint(fields=["generation", "conversation_id", "day"],
                                               name="readside_talk_time_unique")]
        indexes = [models.Index(fields=["generation", "child_id", "day"], name="readside_talk_child_day")]


class SafetyAlert(models.Model):
    """A safety flag raised on a conversation, open until a parent acknowledges it."""

    generation = models.IntegerField()
    conversation_id = models.CharField(max_length=100)
    flag_number = models.IntegerField()
    child_id = models.CharField(max_length=100)
    category = models.CharField(max_length=40)
    severity = models.CharField(max_length=20)
    message_sequence = models.IntegerField(null=True, blank=True)
    raised_at = models.DateTimeField()
    state = models.CharField(max_length=12, default="open")  # open | acknowledged
    acknowledged_by = models.CharField(max_length=120, blank=True, default="")
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "readside_safety_alert"
        constraints = [models.UniqueConstraint(fields=["generation", "conversation_id", "flag_number"],
                                               name="readside_safety_alert_unique")]
        indexes = [models.Index(fields=["generation", "child_id", "state", "-raised_at"], name="readside_alert_child")]

    @property
    def alert_id(self) -> str:
        return f"{self.conversation_id}.{self.flag_number}"


class TimelineEntry(models.Model):
    """What happened to a child, newest first: one row per event, with no personal data in it
    (field names changed, codes, counts; never the values a parent typed)."""

    generation = models.IntegerField()
    child_id = models.CharField(max_length=100)
    stream_id = models.CharField(max_length=200)
    version = models.BigIntegerField()
    event_type = models.CharField(max_length=200)
    occurred_at = models.DateTimeField()
    title = models.CharField(max_length=300)
    actor = models.CharField(max_length=120, blank=True, default="")

    class Meta:
        db_table = "readside_timeline"
        constraints = [models.UniqueConstraint(fields=["generation", "stream_id", "version"],
                                               name="readside_timeline_unique")]
        indexes = [models.Index(fields=["generation", "child_id", "-occurred_at", "-id"], name="readside_timeline_child")]


PROJECTION_MODELS = (FamilyChild, ChildProfile, ConversationView, TalkTime, SafetyAlert, TimelineEntry)
