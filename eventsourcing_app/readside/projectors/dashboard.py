"""The parent dashboard: each family's children with their consent state and open alerts.

Consent (parent stream), registration (child stream) and alerts (conversation streams) arrive
in any order relative to each other: a row is made by whichever comes first."""
from __future__ import annotations

from datetime import datetime

from ..engine import Projector
from ..models import FamilyChild
from ..tables import Table


class DashboardProjector(Projector):
    name = "dashboard"
    stream_types = ("parent", "child", "conversation")
    description = "each family's children, consent state and open alerts count"
    models = (FamilyChild,)

    def __init__(self, generation, keyring) -> None:
        super().__init__(generation, keyring)
        self.children = Table(FamilyChild, ("child_id",), generation, keyring)

    def prepare(self, events) -> None:
        self.children.load("child_id", (getattr(e, "child_id", None) for e in events))

    def flush(self) -> int:
        return self.children.flush()

    def _row(self, child_id, meta) -> dict:
        row = self.children.get(child_id)
        if row is None:
            row = self.children.put({
                "child_id": child_id, "parent_id": None, "personal": {}, "registered_at": None, "active": False,
                "erased": False, "consent": "none", "consent_method": "", "consent_changed_at": None, "consents": {},
                "open_alerts": 0, "last_activity_at": None,
            })
        else:
            self.children.changed(row)
        if row["last_activity_at"] is None or meta.timestamp > row["last_activity_at"]:
            row["last_activity_at"] = meta.timestamp
        return row

    @staticmethod
    def _show_consent(row: dict) -> None:
        """The consent shown is the registered parent's own (none until the child is registered)."""
        own = row["consents"].get(row["parent_id"]) if row["parent_id"] else None
        if own is None:
            row.update(consent="none", consent_method="", consent_changed_at=None)
        else:
            row.update(consent=own["state"], consent_method=own["method"],
                       consent_changed_at=datetime.fromisoformat(own["at"]))

    def on_ParentalConsentGranted(self, event, meta) -> None:
        row = self._row(event.child_id, meta)
        row["consents"] = {**row["consents"], event.parent_id: {"state": "granted", "method": event.method,
                                                                "at": event.granted_at.isoformat()}}
        self._show_consent(row)

    def on_ParentalConsentWithdrawn(self, event, meta) -> None:
        row = self._row(event.child_id, meta)
        earlier = row["consents"].get(event.parent_id) or {"method": ""}
        row["consents"] = {**row["consents"], event.parent_id: {"state": "withdrawn", "method": earlier["method"],
                                                                "at": event.withdrawn_at.isoformat()}}
        self._show_consent(row)

    def on_ChildRegistered(self, event, meta) -> None:
        row = self._row(event.child_id, meta)
        row["parent_id"] = getattr(event, "parent_id", None) or row["parent_id"]
        row.update(registered_at=meta.timestamp, active=True, personal={"name": event.name})
        self._show_consent(row)

    def on_ChildDeactivated(self, event, meta) -> None:
        self._row(event.child_id, meta)["active"] = False

    def on_ChildDataErased(self, event, meta) -> None:
        row = self._row(event.child_id, meta)
        row.update(erased=True, active=False, personal={})

    def on_SafetyFlagRaised(self, event, meta) -> None:
        self._row(event.child_id, meta)["open_alerts"] += 1

    def on_SafetyFlagAcknowledged(self, event, meta) -> None:
        row = self._row(event.child_id, meta)
        row["open_alerts"] = max(0, row["open_alerts"] - 1)

    def on_ConversationStarted(self, event, meta) -> None:
        self._row(event.child_id, meta)
