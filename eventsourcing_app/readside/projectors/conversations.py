"""Conversations: start, end, duration, messages by speaker, flags, summary; and talk time per
child and day."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

from ..engine import Projector
from ..models import ConversationView, TalkTime
from ..tables import InsertOnly, Table


def seconds_per_day(start: datetime, end: datetime) -> list[tuple]:
    """(UTC day, seconds) of the span from start to end, split at midnight."""
    start, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    parts = []
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), time.min, tzinfo=timezone.utc)
        stop = min(end, midnight)
        parts.append((start.date(), round((stop - start).total_seconds())))
        start = stop
    return parts


class ConversationsProjector(Projector):
    name = "conversations"
    stream_types = ("conversation", "child")
    description = "per conversation: start, end, duration, messages by speaker, flags, summary; talk time per day"
    models = (ConversationView, TalkTime)
    clear_fields_only = frozenset({"MessageRecorded"})  # counted by speaker; the text is not needed

    def __init__(self, generation, keyring) -> None:
        super().__init__(generation, keyring)
        self.conversations = Table(ConversationView, ("conversation_id",), generation, keyring)
        self.talk = InsertOnly(TalkTime, generation)
        self.erased_children: list[str] = []

    def prepare(self, events) -> None:
        self.conversations.load("conversation_id", (getattr(e, "conversation_id", None) for e in events))

    def flush(self) -> int:
        written = self.conversations.flush() + self.talk.flush()
        if self.erased_children:  # purge the summaries' ciphertext (unreadable already)
            written += ConversationView.objects.filter(generation=self.generation,
                                                       child_id__in=self.erased_children).update(personal={})
        return written

    def _row(self, event, meta) -> dict | None:
        row = self.conversations.get(event.conversation_id)
        if row is not None:
            row["version"] = meta.version
            self.conversations.changed(row)
        return row

    def on_ConversationStarted(self, event, meta) -> None:
        self.conversations.put({
            "conversation_id": event.conversation_id, "child_id": event.child_id, "device_id": event.device_id,
            "started_at": meta.timestamp, "ended_at": None, "duration_seconds": None, "child_messages": 0,
            "bear_messages": 0, "flags": [], "personal": {}, "version": meta.version,
        })

    def on_MessageRecorded(self, event, meta) -> None:
        row = self._row(event, meta)
        if row is not None:
            row["child_messages" if event.speaker == "child" else "bear_messages"] += 1

    def on_SafetyFlagRaised(self, event, meta) -> None:
        row = self._row(event, meta)
        if row is not None:
            row["flags"] = [*row["flags"], {
                "number": len(row["flags"]) + 1, "category": event.category, "severity": event.severity,
                "message_sequence": event.message_sequence, "raised_at": meta.timestamp.isoformat(),
                "acknowledged": False,
            }]

    def on_SafetyFlagAcknowledged(self, event, meta) -> None:
        row = self._row(event, meta)
        if row is not None:
            row["flags"] = [{**f, "acknowledged": True} if f["number"] == event.flag_number else f
                            for f in row["flags"]]

    def on_ConversationEnded(self, event, meta) -> None:
        row = self._row(event, meta)
        if row is not None:
            row["ended_at"] = meta.timestamp
            row["duration_seconds"] = max(0, round((meta.timestamp - row["started_at"]).total_seconds()))
            for day, seconds in seconds_per_day(row["started_at"], meta.timestamp):
                self.talk.add(child_id=row["child_id"], day=day, conversation_id=row["conversation_id"],
                              seconds=seconds)

    def on_ConversationSummarized(self, event, meta) -> None:
        row = self._row(event, meta)
        if row is not None:
            row["personal"] = {"summary": event.summary}

    def on_ChildDataErased(self, event, meta) -> None:
        for row in self.conversations.of("child_id", event.child_id):
            row["personal"] = {}
            self.conversations.changed(row)
        self.erased_children.append(event.child_id)
