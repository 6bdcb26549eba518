"""The parent: registration, verifiable parental consent per child (COPPA), settings and
deactivation, as the `Parent` aggregate and the events of its stream (`parent.<id>`).

The parent's contact details and the free-text reasons for withdrawing consent and deactivating
are sensitive fields, encrypted with the parent's own key; after that key is destroyed they come
back as None, which every `_apply_*` accepts.
"""
from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from .aggregate import EventSourcedAggregate
from .errors import (
    AggregateDeactivated,
    AlreadyRegistered,
    ConsentError,
    InvalidName,
    InvalidValue,
    NotRegistered,
    UnknownSettingField,
    check_aware_datetime,
    check_bool,
    check_changes,
    check_choice,
    check_id,
    check_language,
    check_optional_text,
    check_text,
)
from .events import DomainEvent
from .ids import ChildId, ParentId, datetime_or_none, id_or_none, isoformat_or_none

NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 254
# The methods the FTC accepts as verifiable parental consent under COPPA (16 CFR 312.5(b)).
CONSENT_METHODS = ("email_plus", "credit_card", "signed_form", "video_call", "government_id")
# The same codes as the type of the event field (the tuple is what grant_consent checks against).
ConsentMethod = Literal["email_plus", "credit_card", "signed_form", "video_call", "government_id"]
assert get_args(ConsentMethod) == CONSENT_METHODS
DEFAULT_SETTINGS = {"notifications_enabled": True, "weekly_report": True, "language": "en", "timezone": "UTC"}

_PARENT_SUBJECT = ("parent", "parent_id")
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery is what proves an address.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_PHONE = re.compile(r"\+?[0-9 ()\-./]+")


# --- Events ------------------------------------------------------------------------

@dataclass
class ParentRegistered(DomainEvent):
    parent_id: ParentId
    email: str
    name: str
    phone: str | None = None

    data_subject = _PARENT_SUBJECT
    sensitive_fields = ("email", "name", "phone")


@dataclass
class ParentalConsentGranted(DomainEvent):
    """The parent gave verifiable consent for the platform to collect their child's data."""

    parent_id: ParentId
    child_id: ChildId
    method: ConsentMethod
    granted_at: datetime

    data_subject = _PARENT_SUBJECT


@dataclass
class ParentalConsentWithdrawn(DomainEvent):
    parent_id: ParentId
    child_id: ChildId
    withdrawn_at: datetime
    reason: str | None = None

    data_subject = _PARENT_SUBJECT
    sensitive_fields = ("reason",)


@dataclass
class ParentSettingsUpdated(DomainEvent):
    """Settings changed; `settings` holds only the settings whose value changed."""

    parent_id: ParentId
    settings: dict

    data_subject = _PARENT_SUBJECT
    # Keys are the known settings, values booleans, language tags and IANA zones (_SETTING_CHECKS).
    coded_fields = ("settings",)


@dataclass
class ParentDeactivated(DomainEvent):
    parent_id: ParentId
    reason: str | None = None

    data_subject = _PARENT_SUBJECT
    sensitive_fields = ("reason",)


# --- Value checks ------------------------------------------------------------------

def _check_email(value: object) -> str:
    email = check_text(value, "email", max_length=EMAIL_MAX_LENGTH)
    if not _EMAIL.fullmatch(email):
        raise InvalidValue(f"email {email!r} is not an email address (name@example.com)")
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"  # domains are case-insensitive; local parts may not be


def _check_phone(value: object) -> str | None:
    if value is None:
        return None
    phone = check_text(value, "phone", max_length=30)
    if not _PHONE.fullmatch(phone) or not 7 <= sum(c.isdigit() for c in phone) <= 15:
        raise InvalidValue(f"phone {phone!r} is not a phone number (7 to 15 digits, e.g. +1 555 0100 123)")
    return phone


def _check_timezone(value: object) -> str:
    if isinstance(value, str) and value:
        try:
            zoneinfo.ZoneInfo(value)
            return value
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    raise InvalidValue(f"timezone {value!r} is not an IANA time zone such as 'UTC' or 'Europe/Berlin'")


_SETTING_CHECKS = {
    "notifications_enabled": lambda value: check_bool(value, "notifications_enabled"),
    "weekly_report": lambda value: check_bool(value, "weekly_report"),
    "language": check_language,
    "timezone": _check_timezone,
}


@dataclass(frozen=True)
class Consent:
    """The latest consent a parent gave for one child, withdrawn or not."""

    child_id: ChildId
    method: str
    granted_at: datetime
    withdrawn_at: datetime | None = None
    withdrawal_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


# --- The aggregate -----------------------------------------------------------------

class Parent(EventSourcedAggregate):
    """A parent account: who they are, which children they consented for, their settings."""

    aggregate_type = "parent"
    # 2: withdrawal reasons moved out of "consents" into "withdrawal_reasons"; deactivated_reason
    # became sensitive.
    snapshot_schema_version = 2
    # "consents" (methods, times, child ids) is not personal; the reasons given are.
    snapshot_sensitive_fields = ("email", "name", "phone", "withdrawal_reasons", "deactivated_reason")

    def __init__(self, id: str) -> None:
        super().__init__(check_id(id, ParentId, "parent id"))
        self.email: str | None = None
        self.name: str | None = None
        self.phone: str | None = None
        self.registered_at: datetime | None = None
        self.consents: dict[ChildId, Consent] = {}
        self.settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
        self.active = False
        self.deactivated_reason: str | None = None

    @property
    def registered(self) -> bool:
        return self.registered_at is not None

    def has_consent(self, child_id: str) -> bool:
        """Whether consent for the child is in force (never for a deactivated parent)."""
        consent = self.consents.get(child_id)
        return self.active and consent is not None and consent.active

    # --- Commands ---

    def register(self, email: str, name: str, phone: str | None = None) -> None:
        if self.registered:
            raise AlreadyRegistered(f"parent {self.id} is registered already (since {self.registered_at.isoformat()})")
        email = _check_email(email)
        name = check_text(name, "name", max_length=NAME_MAX_LENGTH, error=InvalidName)
        phone = _check_phone(phone)
        self._raise_event(ParentRegistered(parent_id=self.id, email=email, name=name, phone=phone))

    def grant_consent(self, child_id: str, method: str, granted_at: datetime | None = None) -> None:
        """Records verifiable consent for a child, obtained by `method` (one of CONSENT_METHODS)."""
        self._require_active()
        child_id = check_id(child_id, ChildId, "child_id")
        method = check_choice(method, "consent method", CONSENT_METHODS)
        if granted_at is None:
            granted_at = datetime.now(timezone.utc)
        granted_at = check_aware_datetime(granted_at, "granted_at")
        if self.has_consent(child_id):
            consent = self.consents[child_id]
            raise ConsentError(
                f"parent {self.id} already consented for child {child_id} ({consent.method}, "
                f"{consent.granted_at.isoformat()}); withdraw it first to record a new one"
            )
        self._raise_event(ParentalConsentGranted(parent_id=self.id, child_id=child_id, method=method,
                                                 granted_at=granted_at))

    def withdraw_consent(self, child_id: str, reason: str | None = None) -> None:
        self._require_active()
        child_id = check_id(child_id, ChildId, "child_id")
        reason = check_optional_text(reason, "reason")
        if not self.has_consent(child_id):
            raise ConsentError(f"parent {self.id} has no consent in force for child {child_id}; nothing to withdraw")
        self._raise_event(ParentalConsentWithdrawn(parent_id=self.id, child_id=child_id,
                                                   withdrawn_at=datetime.now(timezone.utc), reason=reason))

    def update_settings(self, settings: dict[str, Any]) -> None:
        """Changes some settings; raises nothing if none differ."""
        self._require_active()
        check_changes(settings, "settings", _SETTING_CHECKS, UnknownSettingField)
        validated = {key: _SETTING_CHECKS[key](value) for key, value in settings.items()}
        changed = {key: value for key, value in validated.items() if self.settings.get(key) != value}
        if changed:
            self._raise_event(ParentSettingsUpdated(parent_id=self.id, settings=changed))

    def deactivate(self, reason: str | None = None) -> None:
        self._require_active()
        reason = check_optional_text(reason, "reason")
        self._raise_event(ParentDeactivated(parent_id=self.id, reason=reason))

    def _require_active(self) -> None:
        if not self.registered:
            raise NotRegistered(f"parent {self.id} is not registered; call register(email, name) first")
        if not self.active:
            # Not the reason: it may be personal data (it is stored encrypted), errors reach logs.
            raise AggregateDeactivated(f"parent {self.id} was deactivated; it takes no more commands")

    # --- Applying events (state changes only here; no checks, values may be None) ---

    def apply_event(self, event: DomainEvent) -> None:
        """Apply event for reconstruction"""
        if isinstance(event, ParentRegistered):
            self._apply_parent_registered(event)
        elif isinstance(event, ParentalConsentGranted):
            self._apply_consent_granted(event)
        elif isinstance(event, ParentalConsentWithdrawn):
            self._apply_consent_withdrawn(event)
        elif isinstance(event, ParentSettingsUpdated):
            self._apply_settings_updated(event)
        elif isinstance(event, ParentDeactivated):
            self._apply_parent_deactivated(event)
        else:
            raise TypeError(f"Parent cannot apply a {event.event_type} event")

    def _apply_parent_registered(self, event: ParentRegistered) -> None:
        self.email = event.email
        self.name = event.name
        self.phone = event.phone
        self.registered_at = event.occurred_at
        self.active = True

    def _apply_consent_granted(self, event: ParentalConsentGranted) -> None:
        self.consents[event.child_id] = Consent(child_id=event.child_id, method=event.method,
                                                granted_at=event.granted_at)

    def _apply_consent_withdrawn(self, event: ParentalConsentWithdrawn) -> None:
        consent = self.consents.get(event.child_id)
        if consent is not None:
            self.consents[event.child_id] = Consent(
                child_id=consent.child_id, method=consent.method, granted_at=consent.granted_at,
                withdrawn_at=event.withdrawn_at, withdrawal_reason=event.reason,
            )

    def _apply_settings_updated(self, event: ParentSettingsUpdated) -> None:
        self.settings.update({key: value for key, value in event.settings.items() if key in DEFAULT_SETTINGS})

    def _apply_parent_deactivated(self, event: ParentDeactivated) -> None:
        self.active = False
        self.deactivated_reason = event.reason

    # --- Snapshots ---

    def snapshot_subject(self) -> tuple[str, str] | None:
        return ("parent", str(self.id))

    def to_snapshot(self) -> dict:
        return {
            "email": self.email,
            "name": self.name,
            "phone": self.phone,
            "registered_at": isoformat_or_none(self.registered_at),
            "consents": [
                {
                    "child_id": str(consent.child_id),
                    "method": consent.method,
                    "granted_at": consent.granted_at.isoformat(),
                    "withdrawn_at": isoformat_or_none(consent.withdrawn_at),
                }
                for consent in self.consents.values()
            ],
            "withdrawal_reasons": {
                str(consent.child_id): consent.withdrawal_reason
                for consent in self.consents.values() if consent.withdrawal_reason is not None
            },
            "settings": dict(self.settings),
            "active": self.active,
            "deactivated_reason": self.deactivated_reason,
        }

    @classmethod
    def from_snapshot(cls, id: str, version: int, state: dict) -> "Parent":
        parent = cls(id)
        parent.email = state["email"]
        parent.name = state["name"]
        parent.phone = state["phone"]
        parent.registered_at = datetime_or_none(state["registered_at"])
        reasons = state["withdrawal_reasons"] or {}  # None: erased
        for item in state["consents"]:
            child_id = id_or_none(ChildId, item["child_id"])
            parent.consents[child_id] = Consent(
                child_id=child_id, method=item["method"], granted_at=datetime.fromisoformat(item["granted_at"]),
                withdrawn_at=datetime_or_none(item["withdrawn_at"]), withdrawal_reason=reasons.get(child_id),
            )
        parent.settings = dict(state["settings"])
        parent.active = state["active"]
        parent.deactivated_reason = state["deactivated_reason"]
        parent._version = version
        return parent
