"""What the parents' API reads, always from each projector's active generation, always scoped to
one parent, with personal values opened under the child's key at the time of the request (an
erased child's values read as None at once, whatever the read models still hold).

Functions return querysets (for the API's keyset pagination) or plain dicts; `present_*` turn
rows into what a parent sees. Rows of another family are never returned: a child that is not
the parent's is simply not found.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Q, Sum

from ..eventstore.serialization import parse_stream_id
from .engine import wait_for_version
from .models import (
    ChildProfile, ConversationView, FamilyChild, ProjectorState, SafetyAlert, TalkTime, TimelineEntry,
)
from .personal import SubjectKeyRing, child_subject

_GENERATIONS_TTL = 1.0  # a switch is seen within a second; the old rows outlive it by the grace period
_generations: tuple[float, dict[str, int]] = (0.0, {})


class NotFound(LookupError):
    """No such resource for this parent (never says whether it exists for another)."""


def generation(projector: str) -> int:
    global _generations
    fetched, known = _generations
    if time.monotonic() - fetched > _GENERATIONS_TTL or projector not in known:
        known = dict(ProjectorState.objects.values_list("name", "active_generation"))
        _generations = (time.monotonic(), known)
    return known.get(projector, 1)


# --- read-your-writes ---------------------------------------------------------------

@dataclass
class Freshness:
    stream_id: str | None = None
    wanted: int | None = None
    applied: int | None = None

    @property
    def stale(self) -> bool:
        return self.wanted is not None and (self.applied or 0) < self.wanted


def stream_is_mine(parent_id: str, stream_id: str) -> bool:
    """Whether the stream belongs to the parent's family: their own stream, a child of theirs or
    a conversation of one. Read models first; a stream they do not hold yet (just written) is
    checked in the event store, from its first event."""
    from ..domain import Child, Conversation
    from ..eventstore import get_event_sourcing_service
    from ..eventstore.errors import EventStoreError

    try:
        kind, aggregate_id = parse_stream_id(stream_id)
        if kind == "parent":
            return aggregate_id == parent_id
        if kind == "conversation":
            row = ConversationView.objects.filter(generation=generation("conversations"),
                                                  conversation_id=aggregate_id).values_list("child_id", flat=True)
            child_id = row.first()
            if child_id is None:
                conversation = get_event_sourcing_service().load_aggregate_sync(Conversation, aggregate_id, version=1)
                child_id = conversation.child_id
            kind, aggregate_id = "child", str(child_id)
        if kind == "child":
            if owns_child(parent_id, aggregate_id):
                return True
            child = get_event_sourcing_service().load_aggregate_sync(Child, aggregate_id, version=1)
            return child.parent_id == parent_id
    except (EventStoreError, LookupError, ValueError):
        return False
    return False


def wait_for(projector: str, stream_id: str | None, version: int | None) -> Freshness:
    """Waits, bounded, until the projector has applied `version` of the stream."""
    if stream_id is None or version is None:
        return Freshness()
    applied = wait_for_version(projector, generation(projector), stream_id, version,
                               settings.PROJECTIONS["READ_YOUR_WRITES_WAIT_SECONDS"])
    return Freshness(stream_id, version, applied)


# --- children ---------------------------------------------------------------------------

def family_children(parent_id: str):
    return FamilyChild.objects.filter(generation=generation("dashboard"), parent_id=parent_id,
                                      registered_at__isnull=False)


def owned_children(parent_id: str):
    """The ids of the parent's children, as a subquery (one statement with what uses it)."""
    return ChildProfile.objects.filter(generation=generation("profiles"), parent_id=parent_id).values("child_id")


def owns_child(parent_id: str, child_id: str) -> bool:
    return ChildProfile.objects.filter(generation=generation("profiles"), parent_id=parent_id,
                                       child_id=child_id).exists()


def present_family_children(rows) -> list[dict]:
    keys = SubjectKeyRing(child_subject(r.child_id) for r in rows)
    out = []
    for row in rows:
        subject = child_subject(row.child_id)
        personal = keys.open(row.personal, subject, f"{FamilyChild._meta.db_table}:{row.child_id}")
        erased = row.erased or keys.erased(subject)
        out.append({
            "child_id": row.child_id, "name": None if erased else personal.get("name"),
            "active": row.active and not erased, "erased": erased, "consent": row.consent,
            "consent_method": row.consent_method or None, "consent_changed_at": row.consent_changed_at,
            "open_alerts": row.open_alerts, "registered_at": row.registered_at,
            "last_activity_at": row.last_activity_at,
        })
    return out


def child_profile(parent_id: str, child_id: str) -> dict:
    row = ChildProfile.objects.filter(generation=generation("profiles"), parent_id=parent_id,
                                      child_id=child_id).first()
    if row is None:
        raise NotFound(f"you have no child {child_id}")
    subject = child_subject(child_id)
    keys = SubjectKeyRing([subject])
    personal = keys.open(row.personal, subject, f"{ChildProfile._meta.db_table}:{child_id}")
    erased = row.erased or keys.erased(subject)
    return {
        "child_id": row.child_id, "parent_id": row.parent_id,
        "name": None if erased else personal.get("name"), "age": None if erased else personal.get("age"),
        "interests": None if erased else personal.get("interests"),
        "language": None if erased else personal.get("language"),
        "device_id": row.device_id, "udid": None if erased else personal.get("udid"),
        "safety_settings": {"content_filter_level": row.content_filter_level,
                            "daily_time_limit_minutes": row.daily_time_limit_minutes},
        "active": row.active and not erased, "erased": erased, "registered_at": row.registered_at,
        "version": row.version, "updated_at": row.updated_at, "source": "read_model",
    }


def require_own_child(parent_id: str, child_id: str) -> None:
    if not owns_child(parent_id, child_id):
        raise NotFound(f"you have no child {child_id}")


def profile_from_aggregate(child) -> dict:
    """A child's profile as rebuilt from its events (`?version=` / `?as_of=`)."""
    erased = bool(child.erased)
    return {
        "child_id": str(child.id), "parent_id": child.parent_id, "name": child.name, "age": child.age,
        "interests": child.interests, "language": child.language, "device_id": child.device_id,
        "udid": child.udid,
        "safety_settings": {"content_filter_level": child.content_filter_level,
                            "daily_time_limit_minutes": child.daily_time_limit_minutes},
        "active": child.active and not erased, "erased": erased, "registered_at": child.registered_at,
        "version": child.version, "updated_at": None, "source": "events",
    }


# --- conversations ----------------------------------------------------------------------

def conversations_of(child_id: str, since: datetime | None = None, until: datetime | None = None):
    rows = ConversationView.objects.filter(generation=generation("conversations"), child_id=child_id)
    if since is not None:
        rows = rows.filter(started_at__gte=since)
    if until is not None:
        rows = rows.filter(started_at__lt=until)
    return rows


def conversation_row(parent_id: str, conversation_id: str) -> ConversationView:
    row = ConversationView.objects.filter(generation=generation("conversations"),
                                          conversation_id=conversation_id).first()
    if row is None or not owns_child(parent_id, row.child_id):
        raise NotFound(f"you have no conversation {conversation_id}")
    return row


def present_conversations(rows) -> list[dict]:
    keys = SubjectKeyRing(child_subject(r.child_id) for r in rows)
    out = []
    for row in rows:
        personal = keys.open(row.personal, child_subject(row.child_id),
                             f"{ConversationView._meta.db_table}:{row.conversation_id}")
        out.append({
            "conversation_id": row.conversation_id, "child_id": row.child_id, "device_id": row.device_id,
            "started_at": row.started_at, "ended_at": row.ended_at, "duration_seconds": row.duration_seconds,
            "messages": {"child": row.child_messages, "bear": row.bear_messages},
            "flags": row.flags, "summary": personal.get("summary"), "version": row.version,
        })
    return out


def talk_minutes(child_id: str, since=None, until=None) -> list[dict]:
    rows = TalkTime.objects.filter(generation=generation("conversations"), child_id=child_id)
    if since is not None:
        rows = rows.filter(day__gte=since.date())
    if until is not None:
        rows = rows.filter(day__lte=until.date())
    days = rows.values("day").annotate(seconds=Sum("seconds")).order_by("-day")
    return [{"day": d["day"], "minutes": round(d["seconds"] / 60, 1)} for d in days]


# --- alerts and timeline ----------------------------------------------------------------

def alerts_of(parent_id: str, state: str | None = None):
    rows = SafetyAlert.objects.filter(generation=generation("alerts"), child_id__in=owned_children(parent_id))
    if state is not None:
        rows = rows.filter(state=state)
    return rows


def alert_row(parent_id: str, alert_id: str) -> SafetyAlert:
    conversation_id, _, number = alert_id.rpartition(".")
    if not conversation_id or not re.fullmatch(r"[0-9]{1,9}", number):
        raise NotFound(f"you have no alert {alert_id} (alert ids are <conversation id>.<flag number>)")
    row = SafetyAlert.objects.filter(generation=generation("alerts"), conversation_id=conversation_id,
                                     flag_number=int(number)).first()
    if row is None or not owns_child(parent_id, row.child_id):
        raise NotFound(f"you have no alert {alert_id}")
    return row


def present_alert(row: SafetyAlert) -> dict:
    return {
        "alert_id": row.alert_id, "conversation_id": row.conversation_id, "flag_number": row.flag_number,
        "child_id": row.child_id, "category": row.category, "severity": row.severity,
        "message_sequence": row.message_sequence, "raised_at": row.raised_at, "state": row.state,
        "acknowledged_by": row.acknowledged_by or None, "acknowledged_at": row.acknowledged_at,
    }


def timeline_of(parent_id: str, child_id: str):
    """The child's entries; of parent streams only this parent's own (another parent may have
    consented for the same child id before it was registered)."""
    return (TimelineEntry.objects.filter(generation=generation("timeline"), child_id=child_id)
            .exclude(Q(stream_id__startswith="parent.") & ~Q(stream_id=f"parent.{parent_id}")))


def present_timeline(row: TimelineEntry) -> dict:
    return {"stream_id": row.stream_id, "version": row.version, "event_type": row.event_type,
            "occurred_at": row.occurred_at, "title": row.title}
