"""The child: registration, profile, the paired teddy bear, safety settings, deactivation and
erasure of personal data, as the `Child` aggregate and the events of its stream (`child.<id>`).

The child's personal data (name, age, interests, language, the device's udid, the free-text
reasons for unpairing and deactivating) travels only in sensitive event fields, encrypted with
the child's own key. Erasure destroys that key: stored events then come back with those fields
as None, so every `_apply_*` accepts None there, and the `ChildDataErased` event clears the same
fields, so that replaying an erased stream gives the same state as the aggregate that was erased.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from .aggregate import EventSourcedAggregate
from .errors import (
    AggregateDeactivated,
    AlreadyRegistered,
    DevicePairingError,
    InvalidAge,
    InvalidName,
    InvalidValue,
    NotRegistered,
    PersonalDataErased,
    UnknownProfileField,
    check_actor_id,
    check_changes,
    check_choice,
    check_id,
    check_int,
    check_language,
    check_optional_text,
    check_text,
)
from .events import DomainEvent
from .ids import ActorId, ChildId, DeviceId, ParentId, datetime_or_none, id_or_none, isoformat_or_none

MIN_AGE, MAX_AGE = 3, 13
NAME_MAX_LENGTH = 100
UDID_MAX_LENGTH = 200
MAX_INTERESTS = 20
INTEREST_MAX_LENGTH = 50
PROFILE_FIELDS = ("name", "age", "interests", "language")
CONTENT_FILTER_LEVELS = ("strict", "moderate", "relaxed")
# Why a child's data was erased: codes only, as ChildDataErased must stay readable once the
# child's key is destroyed (in the same transaction), so it holds nothing encrypted.
ERASURE_REASONS = ("parent_request", "child_request", "regulator_order", "retention_expired", "account_closed",
                   "consent_withdrawn")
DEFAULT_CONTENT_FILTER_LEVEL = "strict"
DEFAULT_DAILY_TIME_LIMIT_MINUTES = 60
MAX_DAILY_TIME_LIMIT_MINUTES = 24 * 60

_CHILD_SUBJECT = ("child", "child_id")

# The codes as types of event fields (the tuples above are what the commands check against).
ContentFilterLevel = Literal["strict", "moderate", "relaxed"]
ErasureReason = Literal["parent_request", "child_request", "regulator_order", "retention_expired",
                        "account_closed", "consent_withdrawn"]
assert get_args(ContentFilterLevel) == CONTENT_FILTER_LEVELS
assert get_args(ErasureReason) == ERASURE_REASONS


# --- Events ------------------------------------------------------------------------

@dataclass
class ChildRegisteredV1(DomainEvent):
    """Schema 1 of ChildRegistered, from before children had a parent; kept to read old events."""

    child_id: ChildId
    name: str
    age: int

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("name", "age")


@dataclass
class ChildRegisteredV2(DomainEvent):
    """A child was registered by their parent, possibly with their teddy bear already paired."""

    child_id: ChildId
    parent_id: ParentId
    name: str
    age: int
    device_id: DeviceId | None = None
    udid: str | None = None
    # None: the event's occurred_at is the registration time.
    registered_at: datetime | None = None

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("name", "age", "udid")

    @classmethod
    def from_v1(cls, v1_event: ChildRegisteredV1) -> "ChildRegisteredV2":
        """Migrate from V1 to V2: the parent of a V1 child is not known."""
        return cls(
            child_id=v1_event.child_id,
            parent_id=ParentId("unknown"),
            name=v1_event.name,
            age=v1_event.age,
            event_id=v1_event.event_id,
            occurred_at=v1_event.occurred_at,
        )


# The current schema: new registrations are written as V2.
ChildRegistered = ChildRegisteredV2


@dataclass
class ChildProfileUpdated(DomainEvent):
    """Profile fields changed; `changes` holds only the fields whose value changed."""

    child_id: ChildId
    changes: dict

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("changes",)


@dataclass
class DevicePaired(DomainEvent):
    child_id: ChildId
    device_id: DeviceId
    udid: str

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("udid",)


@dataclass
class DeviceUnpaired(DomainEvent):
    child_id: ChildId
    device_id: DeviceId
    reason: str | None = None

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("reason",)


@dataclass
class SafetySettingsChanged(DomainEvent):
    """The parent changed the content filter or the daily time limit (both values are given)."""

    child_id: ChildId
    content_filter_level: ContentFilterLevel
    daily_time_limit_minutes: int

    data_subject = _CHILD_SUBJECT


@dataclass
class ChildDeactivated(DomainEvent):
    child_id: ChildId
    reason: str | None = None

    data_subject = _CHILD_SUBJECT
    sensitive_fields = ("reason",)


@dataclass
class ChildDataErased(DomainEvent):
    """The child's personal data was erased (its key destroyed); the stream takes no more events.

    Recorded in the transaction that destroys the key, and read after it, so it has no
    sensitive fields: who asked is an actor id and why is a code (both None in events from
    before they were checked).
    """

    child_id: ChildId
    erased_by: ActorId | None = None
    reason: ErasureReason | None = None

    data_subject = _CHILD_SUBJECT


# --- Value checks ------------------------------------------------------------------

def _check_name(value: object) -> str:
    return check_text(value, "name", max_length=NAME_MAX_LENGTH, error=InvalidName)


def _check_age(value: object) -> int:
    return check_int(value, "age", MIN_AGE, MAX_AGE, error=InvalidAge)


def _check_interests(value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise InvalidValue(f"interests must be a list of strings, not {type(value).__name__}")
    if len(value) > MAX_INTERESTS:
        raise InvalidValue(f"interests has {len(value)} entries; the limit is {MAX_INTERESTS}")
    return [check_text(item, f"interests[{i}]", max_length=INTEREST_MAX_LENGTH) for i, item in enumerate(value)]


_PROFILE_CHECKS = {"name": _check_name, "age": _check_age, "interests": _check_interests, "language": check_language}


# --- The aggregate -----------------------------------------------------------------

class Child(EventSourcedAggregate):
    """A child of a parent, talking to one paired teddy bear.

    `Child(id=..., parent_id=..., name=..., age=..., device_id=..., udid=...)` only notes what
    `register_child()` will register; until then the state is empty (`registered` is False).
    """

    aggregate_type = "child"
    # 2: deactivated_reason became sensitive.
    snapshot_schema_version = 2
    snapshot_sensitive_fields = ("name", "age", "udid", "interests", "language", "deactivated_reason")

    def __init__(self, id: str, parent_id: str | None = None, device_id: str | None = None,
                 name: str | None = None, age: int | None = None, udid: str | None = None) -> None:
        super().__init__(check_id(id, ChildId, "child id"))
        # Validated by register_child(), which raises the event that makes them state.
        self._intended_registration = {
            "parent_id": parent_id, "device_id": device_id, "name": name, "age": age, "udid": udid,
        }
        self.parent_id: ParentId | None = None
        self.device_id: DeviceId | None = None
        self.udid: str | None = None
        self.name: str | None = None
        self.age: int | None = None
        self.interests: list[str] | None = []
        self.language: str | None = None
        self.registered_at: datetime | None = None
        self.content_filter_level = DEFAULT_CONTENT_FILTER_LEVEL
        self.daily_time_limit_minutes = DEFAULT_DAILY_TIME_LIMIT_MINUTES
        self.active = False
        self.deactivated_reason: str | None = None
        self.erased = False

    @property
    def registered(self) -> bool:
        return self.registered_at is not None

    # --- Commands ---

    def register_child(self) -> None:
        """Registers the child with the values given to the constructor."""
        self._require_not_erased()
        if self.registered:
            raise AlreadyRegistered(f"child {self.id} is registered already (since {self.registered_at.isoformat()})")
        intended = self._intended_registration
        if intended["parent_id"] is None:
            raise InvalidValue(
                f"child {self.id} has no parent_id; give Child(..., parent_id=ParentId(...)) to register it"
            )
        parent_id = check_id(intended["parent_id"], ParentId, "parent_id")
        name = _check_name(intended["name"])
        age = _check_age(intended["age"])
        device_id = udid = None
        if intended["device_id"] is not None or intended["udid"] is not None:
            device_id, udid = self._check_device(intended["device_id"], intended["udid"])
        self._raise_event(ChildRegistered(child_id=self.id, parent_id=parent_id, name=name, age=age,
                                          device_id=device_id, udid=udid))

    def update_profile(self, changes: dict[str, Any]) -> None:
        """Changes some of name, age, interests and language; raises nothing if none differ."""
        self._require_active()
        check_changes(changes, "profile changes", PROFILE_FIELDS, UnknownProfileField)
        validated = {key: _PROFILE_CHECKS[key](value) for key, value in changes.items()}
        changed = {key: value for key, value in validated.items() if getattr(self, key) != value}
        if changed:
            self._raise_event(ChildProfileUpdated(child_id=self.id, changes=changed))

    def pair_device(self, device_id: str, udid: str) -> None:
        """Pairs a teddy bear. A child has one device at a time: unpair the old one first."""
        self._require_active()
        device_id, udid = self._check_device(device_id, udid)
        if self.device_id is not None and self.device_id != device_id:
            raise DevicePairingError(
                f"child {self.id} already has device {self.device_id} paired; unpair it before pairing {device_id}"
            )
        if self.device_id == device_id and self.udid == udid:
            return  # paired already, nothing happened
        self._raise_event(DevicePaired(child_id=self.id, device_id=device_id, udid=udid))

    def unpair_device(self, reason: str | None = None) -> None:
        self._require_active()
        reason = check_optional_text(reason, "reason")
        if self.device_id is None:
            raise DevicePairingError(f"child {self.id} has no device paired; there is nothing to unpair")
        self._raise_event(DeviceUnpaired(child_id=self.id, device_id=self.device_id, reason=reason))

    def change_safety_settings(self, content_filter_level: str, daily_time_limit_minutes: int) -> None:
        """Sets the content filter and the daily time limit; raises nothing if both are unchanged."""
        self._require_active()
        level = check_choice(content_filter_level, "content_filter_level", CONTENT_FILTER_LEVELS)
        minutes = check_int(daily_time_limit_minutes, "daily_time_limit_minutes", 0, MAX_DAILY_TIME_LIMIT_MINUTES)
        if (level, minutes) == (self.content_filter_level, self.daily_time_limit_minutes):
            return
        self._raise_event(SafetySettingsChanged(child_id=self.id, content_filter_level=level,
                                                daily_time_limit_minutes=minutes))

    def deactivate(self, reason: str | None = None) -> None:
        self._require_active()
        reason = check_optional_text(reason, "reason")
        self._raise_event(ChildDeactivated(child_id=self.id, reason=reason))

    def erase_personal_data(self, erased_by: str | None = None, reason: str | None = None) -> None:
        """Marks the child's personal data erased (the store destroys the child's key with it).

        `erased_by` is the actor id of who asked ("user:17", "system:retention"), `reason` one
        of ERASURE_REASONS. Allowed in any state, deactivated or not even registered, but only once.
        """
        self._require_not_erased()
        if erased_by is not None:
            erased_by = check_actor_id(erased_by, "erased_by")
        if reason is not None:
            reason = check_choice(reason, "erasure reason", ERASURE_REASONS)
        self._raise_event(ChildDataErased(child_id=self.id, erased_by=erased_by, reason=reason))

    # --- Guards ---

    def _require_not_erased(self) -> None:
        if self.erased:
            raise PersonalDataErased(f"child {self.id}'s personal data was erased; the child takes no more commands")

    def _require_active(self) -> None:
        self._require_not_erased()
        if not self.registered:
            raise NotRegistered(f"child {self.id} is not registered; call register_child() first")
        if not self.active:
            # Not the reason: it may be personal data (it is stored encrypted), errors reach logs.
            raise AggregateDeactivated(f"child {self.id} was deactivated; it takes no more commands")

    @staticmethod
    def _check_device(device_id: object, udid: object) -> tuple[DeviceId, str]:
        if device_id is None or udid is None:
            raise DevicePairingError("a device is paired with both its device_id and its udid; one of them is missing")
        return check_id(device_id, DeviceId, "device_id"), check_text(udid, "udid", max_length=UDID_MAX_LENGTH)

    # --- Applying events (state changes only here; no checks, values may be None) ---

    def apply_event(self, event: DomainEvent) -> None:
        """Apply event for reconstruction"""
        if isinstance(event, ChildRegisteredV1):
            event = ChildRegisteredV2.from_v1(event)
        if isinstance(event, ChildRegistered):
            self._apply_child_registered(event)
        elif isinstance(event, ChildProfileUpdated):
            self._apply_profile_updated(event)
        elif isinstance(event, DevicePaired):
            self._apply_device_paired(event)
        elif isinstance(event, DeviceUnpaired):
            self._apply_device_unpaired(event)
        elif isinstance(event, SafetySettingsChanged):
            self._apply_safety_settings_changed(event)
        elif isinstance(event, ChildDeactivated):
            self._apply_child_deactivated(event)
        elif isinstance(event, ChildDataErased):
            self._apply_child_data_erased(event)
        else:
            raise TypeError(f"Child cannot apply a {event.event_type} event")

    def _apply_child_registered(self, event: ChildRegistered) -> None:
        self.parent_id = event.parent_id
        self.name = event.name
        self.age = event.age
        self.device_id = event.device_id
        self.udid = event.udid
        self.registered_at = event.registered_at or event.occurred_at
        self.active = True

    def _apply_profile_updated(self, event: ChildProfileUpdated) -> None:
        for key, value in (event.changes or {}).items():
            if key in PROFILE_FIELDS:  # a field later code dropped is ignored, not fatal
                setattr(self, key, list(value) if isinstance(value, list) else value)

    def _apply_device_paired(self, event: DevicePaired) -> None:
        self.device_id = event.device_id
        self.udid = event.udid

    def _apply_device_unpaired(self, event: DeviceUnpaired) -> None:
        self.device_id = None
        self.udid = None

    def _apply_safety_settings_changed(self, event: SafetySettingsChanged) -> None:
        self.content_filter_level = event.content_filter_level
        self.daily_time_limit_minutes = event.daily_time_limit_minutes

    def _apply_child_deactivated(self, event: ChildDeactivated) -> None:
        self.active = False
        self.deactivated_reason = event.reason

    def _apply_child_data_erased(self, event: ChildDataErased) -> None:
        # Exactly the state that came from sensitive fields, so a replay of the (now
        # unreadable) stream ends in the same state.
        self.name = self.age = self.udid = self.interests = self.language = self.deactivated_reason = None
        self.erased = True
        self.active = False

    # --- Snapshots ---

    def snapshot_subject(self) -> tuple[str, str] | None:
        return ("child", str(self.id))

    def to_snapshot(self) -> dict:
        return {
            "parent_id": None if self.parent_id is None else str(self.parent_id),
            "device_id": None if self.device_id is None else str(self.device_id),
            "udid": self.udid,
            "name": self.name,
            "age": self.age,
            "interests": None if self.interests is None else list(self.interests),
            "language": self.language,
            "registered_at": isoformat_or_none(self.registered_at),
            "content_filter_level": self.content_filter_level,
            "daily_time_limit_minutes": self.daily_time_limit_minutes,
            "active": self.active,
            "deactivated_reason": self.deactivated_reason,
            "erased": self.erased,
        }

    @classmethod
    def from_snapshot(cls, id: str, version: int, state: dict) -> "Child":
        child = cls(id)
        child.parent_id = id_or_none(ParentId, state["parent_id"])
        child.device_id = id_or_none(DeviceId, state["device_id"])
        child.udid = state["udid"]
        child.name = state["name"]
        child.age = state["age"]
        child.interests = None if state["interests"] is None else list(state["interests"])
        child.language = state["language"]
        child.registered_at = datetime_or_none(state["registered_at"])
        child.content_filter_level = state["content_filter_level"]
        child.daily_time_limit_minutes = state["daily_time_limit_minutes"]
        child.active = state["active"]
        child.deactivated_reason = state["deactivated_reason"]
        child.erased = state["erased"]
        child._version = version
        return child
