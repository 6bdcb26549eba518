"""Safety alerts: every flag raised on a conversation, open until acknowledged (by whom, when).
Flags are numbered per conversation in the order raised, as the Conversation aggregate does."""
from __future__ import annotations

from ..engine import Projector
from ..models import SafetyAlert
from ..tables import Table


class AlertsProjector(Projector):
    name = "alerts"
    stream_types = ("conversation",)
    description = "safety alerts, open or acknowledged (by whom, when)"
    models = (SafetyAlert,)

    def __init__(self, generation, keyring) -> None:
        super().__init__(generation, keyring)
        self.alerts = Table(SafetyAlert, ("conversation_id", "flag_number"), generation)

    def prepare(self, events) -> None:
        self.alerts.load("conversation_id", (e.conversation_id for e in events))

    def flush(self) -> int:
        return self.alerts.flush()

    def on_SafetyFlagRaised(self, event, meta) -> None:
        number = 1 + max((r["flag_number"] for r in self.alerts.of("conversation_id", event.conversation_id)),
                         default=0)
        self.alerts.put({
            "conversation_id": event.conversation_id, "flag_number": number, "child_id": event.child_id,
            "category": event.category, "severity": event.severity, "message_sequence": event.message_sequence,
            "raised_at": meta.timestamp, "state": "open", "acknowledged_by": "", "acknowledged_at": None,
        })

    def on_SafetyFlagAcknowledged(self, event, meta) -> None:
        row = self.alerts.get(event.conversation_id, event.flag_number)
        if row is not None:
            row.update(state="acknowledged", acknowledged_by=event.acknowledged_by or "",
                       acknowledged_at=meta.timestamp)
            self.alerts.changed(row)
