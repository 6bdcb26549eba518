"""The shapes the parents' API reads and writes (they are also its OpenAPI schema)."""
from __future__ import annotations

from rest_framework import serializers

from ..domain.child import CONTENT_FILTER_LEVELS, MAX_DAILY_TIME_LIMIT_MINUTES, PROFILE_FIELDS
from ..domain.parent import CONSENT_METHODS

ID_FIELD = {"max_length": 100, "min_length": 1, "trim_whitespace": False}
ALERT_STATES = ("open", "acknowledged")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know (a typo is an error, not silently ignored)."""

    def validate(self, attrs):
        unknown = set(getattr(self, "initial_data", {}) or {}) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in sorted(unknown)})
        return attrs


# --- auth -------------------------------------------------------------------------------

class TokenRequestSerializer(StrictSerializer):
    username = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=200, trim_whitespace=False, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


# --- commands ---------------------------------------------------------------------------

class CommandResultSerializer(serializers.Serializer):
    stream_id = serializers.CharField(help_text="The stream the command changed, e.g. child.c-1.")
    version = serializers.IntegerField(help_text="Its version after the command; pass it as ?min_version= to "
                                                 "read your own write.")
    streams = serializers.DictField(child=serializers.IntegerField(), help_text="Every stream saved, with its version.")


class RegisterChildSerializer(StrictSerializer):
    child_id = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$", required=False,
                                      help_text="Your own id for the child; one is made if you leave it out.")
    name = serializers.CharField(max_length=200, trim_whitespace=False)
    age = serializers.IntegerField()
    consent_method = serializers.ChoiceField(CONSENT_METHODS, required=False,
                                             help_text="How you gave verifiable consent; needed unless consent "
                                                       "for this child_id is in force already.")
    device_id = serializers.CharField(required=False, **ID_FIELD)
    udid = serializers.CharField(required=False, max_length=200, trim_whitespace=False)


class ProfileChangesSerializer(StrictSerializer):
    name = serializers.CharField(required=False, max_length=200, trim_whitespace=False)
    age = serializers.IntegerField(required=False)
    interests = serializers.ListField(child=serializers.CharField(max_length=200, trim_whitespace=False),
                                      required=False, max_length=100)
    language = serializers.CharField(required=False, max_length=35)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": [f"give at least one of {', '.join(PROFILE_FIELDS)}"]})
        return attrs


class PairDeviceSerializer(StrictSerializer):
    device_id = serializers.CharField(**ID_FIELD)
    udid = serializers.CharField(max_length=200, trim_whitespace=False)


class ReasonSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_null=True, max_length=1000, trim_whitespace=False)


class SafetySettingsSerializer(StrictSerializer):
    content_filter_level = serializers.ChoiceField(CONTENT_FILTER_LEVELS)
    daily_time_limit_minutes = serializers.IntegerField(min_value=0, max_value=MAX_DAILY_TIME_LIMIT_MINUTES)


class GrantConsentSerializer(StrictSerializer):
    method = serializers.ChoiceField(CONSENT_METHODS)


# --- queries ----------------------------------------------------------------------------

class ReadOptionsSerializer(serializers.Serializer):
    min_version = serializers.IntegerField(required=False, min_value=1, max_value=2**62,
                                           help_text="Wait (bounded) until the read model has applied this version "
                                                     "of the resource's stream.")


class ProfileQuerySerializer(ReadOptionsSerializer):
    version = serializers.IntegerField(required=False, min_value=1, max_value=2**62,
                                       help_text="The profile as it was at this version, rebuilt from events.")
    as_of = serializers.DateTimeField(required=False, help_text="The profile as it was at this time (ISO 8601).")

    def validate(self, attrs):
        if "version" in attrs and "as_of" in attrs:
            raise serializers.ValidationError({"as_of": ["give version or as_of, not both"]})
        return attrs


class PeriodQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="Only conversations started at or after this time.")
    until = serializers.DateTimeField(required=False, help_text="Only conversations started before this time.")

    def validate(self, attrs):
        if "since" in attrs and "until" in attrs and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"until": ["until is before since"]})
        return attrs


class AlertQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(ALERT_STATES, required=False)


class FamilyChildSerializer(serializers.Serializer):
    child_id = serializers.CharField()
    name = serializers.CharField(allow_null=True, help_text="None once the child's data is erased.")
    active = serializers.BooleanField()
    erased = serializers.BooleanField()
    consent = serializers.ChoiceField(("none", "granted", "withdrawn"))
    consent_method = serializers.CharField(allow_null=True)
    consent_changed_at = serializers.DateTimeField(allow_null=True)
    open_alerts = serializers.IntegerField()
    registered_at = serializers.DateTimeField(allow_null=True)
    last_activity_at = serializers.DateTimeField(allow_null=True)


class SafetySettingsOutSerializer(serializers.Serializer):
    content_filter_level = serializers.CharField()
    daily_time_limit_minutes = serializers.IntegerField()


class ChildProfileSerializer(serializers.Serializer):
    child_id = serializers.CharField()
    parent_id = serializers.CharField()
    name = serializers.CharField(allow_null=True)
    age = serializers.IntegerField(allow_null=True)
    interests = serializers.ListField(child=serializers.CharField(), allow_null=True)
    language = serializers.CharField(allow_null=True)
    device_id = serializers.CharField(allow_null=True)
    udid = serializers.CharField(allow_null=True)
    safety_settings = SafetySettingsOutSerializer()
    active = serializers.BooleanField()
    erased = serializers.BooleanField()
    registered_at = serializers.DateTimeField(allow_null=True)
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField(allow_null=True)
    source = serializers.ChoiceField(("read_model", "events"),
                                     help_text="read_model: the current profile; events: rebuilt for ?version/?as_of.")


class FlagSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    category = serializers.CharField()
    severity = serializers.CharField()
    message_sequence = serializers.IntegerField(allow_null=True)
    raised_at = serializers.DateTimeField()
    acknowledged = serializers.BooleanField()


class MessageCountsSerializer(serializers.Serializer):
    child = serializers.IntegerField()
    bear = serializers.IntegerField()


class ConversationSerializer(serializers.Serializer):
    conversation_id = serializers.CharField()
    child_id = serializers.CharField()
    device_id = serializers.CharField()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.IntegerField(allow_null=True)
    messages = MessageCountsSerializer()
    flags = FlagSerializer(many=True)
    summary = serializers.CharField(allow_null=True)
    version = serializers.IntegerField()


class TalkDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    minutes = serializers.FloatField()


class AlertSerializer(serializers.Serializer):
    alert_id = serializers.CharField(help_text="<conversation id>.<flag number>")
    conversation_id = serializers.CharField()
    flag_number = serializers.IntegerField()
    child_id = serializers.CharField()
    category = serializers.CharField()
    severity = serializers.CharField()
    message_sequence = serializers.IntegerField(allow_null=True)
    raised_at = serializers.DateTimeField()
    state = serializers.ChoiceField(ALERT_STATES)
    acknowledged_by = serializers.CharField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)


class TimelineEntrySerializer(serializers.Serializer):
    stream_id = serializers.CharField()
    version = serializers.IntegerField()
    event_type = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    title = serializers.CharField()


def paginated(item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """A keyset page of `item`s: follow `next` (None on the last page)."""
    return type(f"Paginated{item.__name__.removesuffix('Serializer')}List", (serializers.Serializer,), {
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item(many=True),
    })


ConversationPageSerializer = paginated(ConversationSerializer)
AlertPageSerializer = paginated(AlertSerializer)
TimelinePageSerializer = paginated(TimelineEntrySerializer)
