"""A child's activity timeline: one entry per event about the child, in words without personal
data (which fields changed, codes and counts; never the values themselves)."""
from __future__ import annotations

from ..engine import Projector
from ..models import TimelineEntry
from ..tables import InsertOnly


def _title(event, meta) -> str:
    kind = meta.event_type
    if kind == "ChildRegistered":
        return "Registered"
    if kind == "ChildProfileUpdated":
        return "Profile updated: " + ", ".join(sorted(event.changes or ())) if event.changes else "Profile updated"
    if kind == "DevicePaired":
        return f"Teddy bear {event.device_id} paired"
    if kind == "DeviceUnpaired":
        return f"Teddy bear {event.device_id} unpaired"
    if kind == "SafetySettingsChanged":
        return (f"Safety settings: content filter {event.content_filter_level}, "
                f"{event.daily_time_limit_minutes} minutes a day")
    if kind == "ChildDeactivated":
        return "Deactivated"
    if kind == "ChildDataErased":
        return "Personal data erased"
    if kind == "ParentalConsentGranted":
        return f"Consent granted ({event.method})"
    if kind == "ParentalConsentWithdrawn":
        return "Consent withdrawn"
    if kind == "ConversationStarted":
        return f"Conversation {event.conversation_id} started"
    if kind == "ConversationEnded":
        return f"Conversation {event.conversation_id} ended"
    if kind == "ConversationSummarized":
        return f"Conversation {event.conversation_id} summarized"
    if kind == "SafetyFlagRaised":
        return f"Safety flag raised: {event.category} ({event.severity})"
    if kind == "SafetyFlagAcknowledged":
        return f"Safety flag {event.flag_number} of conversation {event.conversation_id} acknowledged"
    return kind


class TimelineProjector(Projector):
    name = "timeline"
    stream_types = ("child", "parent", "conversation")
    description = "each child's activity timeline"
    models = (TimelineEntry,)

    def __init__(self, generation, keyring) -> None:
        super().__init__(generation, keyring)
        self.entries = InsertOnly(TimelineEntry, generation)

    def prepare(self, events) -> None:
        pass

    def flush(self) -> int:
        return self.entries.flush()

    def _add(self, event, meta) -> None:
        self.entries.add(child_id=event.child_id, stream_id=meta.stream_id, version=meta.version,
                         event_type=meta.event_type, occurred_at=meta.timestamp, title=_title(event, meta)[:300],
                         actor=(meta.actor or "")[:120])

    on_ChildRegistered = on_ChildProfileUpdated = on_DevicePaired = on_DeviceUnpaired = _add
    on_SafetySettingsChanged = on_ChildDeactivated = on_ChildDataErased = _add
    on_ParentalConsentGranted = on_ParentalConsentWithdrawn = _add
    on_ConversationStarted = on_ConversationEnded = on_ConversationSummarized = _add
    on_SafetyFlagRaised = on_SafetyFlagAcknowledged = _add
