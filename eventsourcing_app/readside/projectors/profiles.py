"""Child profiles: the current profile (personal values sealed), device and safety settings."""
from __future__ import annotations

from ...domain.child import DEFAULT_CONTENT_FILTER_LEVEL, DEFAULT_DAILY_TIME_LIMIT_MINUTES
from ..engine import Projector
from ..models import ChildProfile
from ..tables import Table

PERSONAL = ("name", "age", "interests", "language", "udid")


class ProfilesProjector(Projector):
    name = "profiles"
    stream_types = ("child",)
    description = "each child's current profile, device and safety settings"
    models = (ChildProfile,)

    def __init__(self, generation, keyring) -> None:
        super().__init__(generation, keyring)
        self.profiles = Table(ChildProfile, ("child_id",), generation, keyring)

    def prepare(self, events) -> None:
        self.profiles.load("child_id", (e.child_id for e in events))

    def flush(self) -> int:
        return self.profiles.flush()

    def _touch(self, event, meta) -> dict | None:
        row = self.profiles.get(event.child_id)
        if row is not None:
            row["version"] = meta.version
            row["updated_at"] = meta.timestamp
            self.profiles.changed(row)
        return row

    def on_ChildRegistered(self, event, meta) -> None:
        self.profiles.put({
            "child_id": event.child_id, "parent_id": getattr(event, "parent_id", None) or "",
            "personal": {"name": event.name, "age": event.age, "udid": getattr(event, "udid", None),
                         "interests": None, "language": None},
            "device_id": getattr(event, "device_id", None),
            "content_filter_level": DEFAULT_CONTENT_FILTER_LEVEL,
            "daily_time_limit_minutes": DEFAULT_DAILY_TIME_LIMIT_MINUTES,
            "registered_at": meta.timestamp, "active": True, "erased": False,
            "version": meta.version, "updated_at": meta.timestamp,
        })

    def on_ChildProfileUpdated(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None and event.changes:  # None once erased
            row["personal"].update({k: v for k, v in event.changes.items() if k in PERSONAL})

    def on_DevicePaired(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None:
            row["device_id"] = event.device_id
            row["personal"]["udid"] = event.udid

    def on_DeviceUnpaired(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None:
            row["device_id"] = None
            row["personal"]["udid"] = None

    def on_SafetySettingsChanged(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None:
            row["content_filter_level"] = event.content_filter_level
            row["daily_time_limit_minutes"] = event.daily_time_limit_minutes

    def on_ChildDeactivated(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None:
            row["active"] = False

    def on_ChildDataErased(self, event, meta) -> None:
        row = self._touch(event, meta)
        if row is not None:  # the key is gone already; this purges the ciphertext too
            row["erased"] = True
            row["active"] = False
            row["personal"] = {}
