"""The base of every domain event, and the list of event classes the domain defines.

An event class is named by `event_type` (its class name, without a trailing `V<n>`) and a
`schema_version` (the `<n>` of that suffix, else 1). Both may be given explicitly:

    class ChildRegistered(DomainEvent, event_type="ChildRegistered", schema_version=2): ...

The newest schema version of a type is the one new events are written with; older ones are
kept so that stored events can be read and upcast (see the event store's serializer).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar

_VERSION_SUFFIX = re.compile(r"^(?P<name>.+?)V(?P<version>\d+)$")
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,199}")

# event_type -> {schema_version: class}
_event_classes: dict[str, dict[int, type["DomainEvent"]]] = {}


class DomainError(Exception):
    """A command broke a rule of the domain; nothing was changed."""


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(kw_only=True)
class DomainEvent:
    """Something that happened. Fields other than `event_id` and `occurred_at` are its data."""

    event_id: str = field(default_factory=_new_event_id)
    occurred_at: datetime = field(default_factory=_utc_now)

    event_type: ClassVar[str] = "DomainEvent"
    schema_version: ClassVar[int] = 1
    # Personal data: these fields are stored encrypted with the data subject's own key, so
    # that destroying the key erases them everywhere (crypto-shredding).
    sensitive_fields: ClassVar[tuple[str, ...]] = ()
    # Fields stored in clear although their type (str, dict) could hold anything: their values
    # are checked against a closed set or a strict format by the aggregate, never free text
    # (e.g. setting names and values). Every other field is typed so that it cannot hold
    # personal data (numbers, times, typed ids, Literal codes) or is sensitive; a unit test
    # (tests/unit/test_event_field_classification.py) holds every event class to that.
    coded_fields: ClassVar[tuple[str, ...]] = ()
    # (subject type, name of the field holding the subject's id), e.g. ("child", "child_id").
    data_subject: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, event_type: str | None = None, schema_version: int | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        suffix = _VERSION_SUFFIX.match(cls.__name__)
        if event_type is None:
            event_type = suffix.group("name") if suffix else cls.__name__
        if schema_version is None:
            schema_version = int(suffix.group("version")) if suffix else 1
        if not _EVENT_TYPE.fullmatch(event_type):
            raise TypeError(f"event type {event_type!r} of {cls.__qualname__} must match {_EVENT_TYPE.pattern}")
        if schema_version < 1:
            raise TypeError(f"schema version of {cls.__qualname__} must be 1 or more, not {schema_version}")
        cls.event_type = event_type
        cls.schema_version = schema_version
        versions = _event_classes.setdefault(event_type, {})
        known = versions.get(schema_version)
        if known is not None and f"{known.__module__}.{known.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} and {known.__module__}.{known.__qualname__} "
                f"both claim event type {event_type!r} version {schema_version}; give one another name or version"
            )
        versions[schema_version] = cls

    @classmethod
    def data_field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_data_field_names")
        if names is None:  # computed once per class, after @dataclass has run
            names = tuple(f.name for f in fields(cls) if f.name not in ("event_id", "occurred_at"))
            cls._data_field_names = names
        return names

    def data(self) -> dict[str, Any]:
        """The event's own fields (not its id or time), as Python values."""
        return {name: getattr(self, name) for name in self.data_field_names()}


def event_classes() -> dict[str, dict[int, type[DomainEvent]]]:
    """Every event class defined so far: event_type -> {schema_version: class}."""
    return _event_classes
