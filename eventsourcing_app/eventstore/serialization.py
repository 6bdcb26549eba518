"""Turning domain events into stored bytes and back.

- Stream ids are `{aggregate_type}.{aggregate_id}` with a limited charset and length.
- The payload is the event's data as canonical JSON (sorted keys, no spaces, UTF-8); the
  metadata travels beside it (mirror columns, Kafka headers).
- The event type registry is the domain's list of event classes (type name + schema
  version) plus upcasters: a stored event of an older schema version is lifted step by step
  to the newest class on load, either by a registered dict upcaster or by the newer class's
  `from_v<n>(old_event)` classmethod (the guide's pattern).
"""
from __future__ import annotations

import dataclasses
import decimal
import enum
import json
import os
import re
import types
import typing
import uuid
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any, Callable

import orjson

from ..domain.events import DomainEvent, event_classes
from .errors import (
    EventSerializationError,
    EventStoreError,
    InvalidStreamIdError,
    MalformedEventError,
    UnknownEventTypeError,
)
from .records import StoredEvent

STREAM_ID_MAX_LENGTH = 200
_STREAM_ID = re.compile(r"(?P<type>[a-z][a-z0-9_]{0,39})\.(?P<id>[A-Za-z0-9][A-Za-z0-9_\-]*)")


def parse_stream_id(stream_id: object) -> tuple[str, str]:
    """Returns (aggregate_type, aggregate_id) or raises InvalidStreamIdError."""
    if not isinstance(stream_id, str):
        raise InvalidStreamIdError(f"stream id must be a string like 'child.child-123', not {type(stream_id).__name__}")
    if len(stream_id) > STREAM_ID_MAX_LENGTH:
        raise InvalidStreamIdError(
            f"stream id {stream_id[:40]!r}... is {len(stream_id)} characters long; the limit is {STREAM_ID_MAX_LENGTH}"
        )
    match = _STREAM_ID.fullmatch(stream_id)
    if match is None:
        raise InvalidStreamIdError(
            f"stream id {stream_id!r} is not of the form '{{aggregate_type}}.{{aggregate_id}}': the type is "
            "lower-case letters, digits and '_'; the id is letters, digits, '-' and '_' (e.g. 'child.child-123')"
        )
    return match.group("type"), match.group("id")


def subject_name(subject_type: str, subject_id: str) -> str:
    """The key name of a data subject: "child:child-123"."""
    return f"{subject_type}:{subject_id}"


def data_subject_of(event: DomainEvent) -> str:
    """"child:child-123": the subject whose key protects the event's personal data."""
    cls = type(event)
    if cls.data_subject is None:
        raise EventStoreError(f"{cls.event_type} has sensitive fields but no data_subject to encrypt them for")
    subject_type, field_name = cls.data_subject
    subject_id = getattr(event, field_name, None)
    if not subject_id or not isinstance(subject_id, str):
        raise EventStoreError(
            f"{cls.event_type}.{field_name} must name the {subject_type} whose key encrypts its personal data, "
            f"not {subject_id!r}")
    return subject_name(subject_type, subject_id)


# --- JSON encoding -----------------------------------------------------------------

MAX_NESTING = 32  # lists and dicts inside a payload; deeper is a mistake, not data


def _to_json_value(value: Any, path: str, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if depth >= MAX_NESTING and isinstance(value, (list, tuple, dict)):
        raise EventSerializationError(f"field {path} is nested more than {MAX_NESTING} levels deep; flatten it")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise EventSerializationError(f"field {path} is {value!r}, which JSON cannot hold")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise EventSerializationError(f"field {path} is a naive datetime; give it a time zone (UTC)")
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return _to_json_value(value.value, path)
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventSerializationError(f"field {path} has a key {key!r} that is not a string")
            out[key] = _to_json_value(item, f"{path}.{key}", depth + 1)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json_value(getattr(value, f.name), f"{path}.{f.name}", depth + 1)
                for f in dataclasses.fields(value)}
    raise EventSerializationError(
        f"field {path} holds a {type(value).__module__}.{type(value).__qualname__}, which cannot be stored as JSON; "
        "use str, int, float, bool, None, datetime, date, UUID, Decimal, Enum, list, dict or a dataclass"
    )


def json_data(event: DomainEvent) -> dict:
    """The event's data as JSON values."""
    return {name: _to_json_value(value, f"{event.event_type}.{name}") for name, value in event.data().items()}


# One encoder for every call: json.dumps with options builds a new encoder each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(data: dict, what: str = "payload") -> bytes:
    try:
        return _CANONICAL.encode(data).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: not valid Unicode
        where = _find_invalid_text(data, what) or what
        raise EventSerializationError(
            f"field {where} is not valid Unicode (a lone surrogate U+{ord(exc.object[exc.start]):04X}); "
            "decode the text properly before storing it") from None


def _find_invalid_text(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that cannot be encoded as UTF-8; only on errors."""
    def invalid(text: str) -> bool:
        try:
            text.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True

    if isinstance(value, str):
        return path if invalid(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if invalid(key):
                return f"{path} (a key)"
            found = _find_invalid_text(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_invalid_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


def encode_payload(event: DomainEvent) -> bytes:
    """The event's data as canonical JSON bytes (unencrypted)."""
    return canonical_json(json_data(event))


# --- Decoding and upcasting ----------------------------------------------------------

@lru_cache(maxsize=None)
def _field_converters(cls: type) -> dict[str, Callable[[Any], Any]]:
    """Per field, a function that turns its JSON value back into the declared Python type."""
    hints = typing.get_type_hints(cls)
    converters: dict[str, Callable[[Any], Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint
        if target is datetime:
            converters[f.name] = lambda v: v if v is None or isinstance(v, datetime) else datetime.fromisoformat(v)
        elif target is date:
            converters[f.name] = lambda v: v if v is None or isinstance(v, date) else date.fromisoformat(v)
        elif target is uuid.UUID:
            converters[f.name] = lambda v: v if v is None else uuid.UUID(str(v))
        elif target is decimal.Decimal:
            converters[f.name] = lambda v: v if v is None else decimal.Decimal(str(v))
        elif isinstance(target, type) and issubclass(target, enum.Enum):
            converters[f.name] = lambda v, t=target: v if v is None else t(v)
        elif isinstance(target, type) and issubclass(target, str) and target is not str:
            converters[f.name] = lambda v, t=target: v if v is None else t(v)
    return converters


@lru_cache(maxsize=None)
def _field_names(cls: type[DomainEvent]) -> frozenset[str]:
    return frozenset(cls.data_field_names())


def _where(meta) -> str:
    """Names a stored event in errors (built only when there is one)."""
    return f"stream {meta.stream_id} version {meta.version} ({meta.event_type} v{meta.schema_version})"


_DECODER = json.JSONDecoder()


def json_loads(data: bytes | str) -> Any:
    """Stored JSON read back: orjson, and the json module for what orjson refuses but json
    reads (integers beyond 64 bits, NaN); what neither reads raises ValueError (or
    UnicodeDecodeError for bytes that are not UTF-8)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _DECODER.decode(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)


class EventTypeRegistry:
    """Event classes by (type name, schema version), and the upcasters between versions."""

    def __init__(self) -> None:
        self._upcasters: dict[tuple[str, int], Callable[[dict], dict]] = {}
        # Opens encrypted fields (eventsourcing_app.privacy): the configured one of this
        # process (a forked child, e.g. a Celery worker, looks it up again).
        self._protection = None
        os.register_at_fork(after_in_child=self._forget_protection)

    def _forget_protection(self) -> None:
        self._protection = None

    @property
    def field_protection(self):
        if self._protection is None:
            from .configured import get_field_protection

            self._protection = get_field_protection()
        return self._protection

    @field_protection.setter
    def field_protection(self, protection) -> None:
        self._protection = protection

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
        """Registers `fn(data_at_from_version) -> data_at_from_version_plus_1`."""

        def register(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return register

    def current_version(self, event_type: str) -> int:
        versions = event_classes().get(event_type)
        if not versions:
            raise UnknownEventTypeError(self._unknown_message(event_type))
        return max(versions)

    def class_for(self, event_type: str, schema_version: int) -> type[DomainEvent] | None:
        return event_classes().get(event_type, {}).get(schema_version)

    def ensure_writable(self, event: object) -> type[DomainEvent]:
        """Refuses anything that is not a registered event class (an older schema version is
        accepted: code not yet upgraded may still write it; readers upcast it)."""
        if not isinstance(event, DomainEvent):
            raise UnknownEventTypeError(
                f"{event!r} is a {type(event).__name__}, not a DomainEvent; only domain events can be appended"
            )
        cls = type(event)
        if self.class_for(cls.event_type, cls.schema_version) is not cls:
            raise UnknownEventTypeError(f"{cls.__qualname__} is not registered as {cls.event_type} v{cls.schema_version}")
        return cls

    def decode(self, stored: StoredEvent) -> DomainEvent:
        meta = stored.metadata
        versions = event_classes().get(meta.event_type)
        if not versions:
            raise UnknownEventTypeError(f"{_where(meta)}: " + self._unknown_message(meta.event_type))
        target = max(versions)
        if meta.schema_version > target:
            raise UnknownEventTypeError(
                f"{_where(meta)}: written with schema version {meta.schema_version}, newer than this code knows "
                f"({target}); deploy the code that defines it"
            )
        try:
            data = json_loads(stored.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEventError(f"{_where(meta)}: payload is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MalformedEventError(f"{_where(meta)}: payload is a JSON {type(data).__name__}, expected an object")
        if meta.data_subject is not None:
            # Erased subject: the encrypted fields read as None.
            data = self.field_protection.open(data, meta.data_subject, stored.subject_key, meta.event_id)
        if meta.schema_version == target:
            return self._instantiate(versions[target], data, meta)

        # Lift the stored shape one schema version at a time, as a dict or as an object.
        where = _where(meta)
        version = meta.schema_version
        event: DomainEvent | None = None
        while version < target:
            step = self._upcasters.get((meta.event_type, version))
            newer = versions.get(version + 1)
            lift = getattr(newer, f"from_v{version}", None) if newer is not None else None
            if step is not None:
                data = step(dict(data) if event is None else event.data())
                event = None
            elif lift is not None and version in versions:
                if event is None:
                    event = self._instantiate(versions[version], data, meta)
                event = lift(event)
                event.event_id, event.occurred_at = meta.event_id, meta.timestamp
            else:
                raise UnknownEventTypeError(
                    f"{where}: no upcaster from schema version {version} to {version + 1}; register one "
                    f"with @registry.upcaster({meta.event_type!r}, from_version={version}) or give the "
                    f"newer class a from_v{version} classmethod"
                )
            version += 1
        return event if event is not None else self._instantiate(versions[target], data, meta)

    @staticmethod
    def _instantiate(cls: type[DomainEvent], data: dict, meta) -> DomainEvent:
        names, converters = _field_names(cls), _field_converters(cls)
        if not names.issuperset(data):
            raise MalformedEventError(f"{_where(meta)}: payload has fields {sorted(set(data) - names)} that "
                                      f"{cls.__qualname__} does not define")
        try:
            if converters:
                data = {name: converters[name](value) if name in converters else value for name, value in data.items()}
            return cls(event_id=meta.event_id, occurred_at=meta.timestamp, **data)
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise MalformedEventError(f"{_where(meta)}: payload does not fit {cls.__qualname__} ({exc})") from None

    @staticmethod
    def _unknown_message(event_type: str) -> str:
        return (
            f"unknown event type {event_type!r}: no DomainEvent subclass defines it; "
            "import the module that defines it before loading"
        )


registry = EventTypeRegistry()


def deserialize_event(stored_event: StoredEvent) -> DomainEvent:
    """The domain event of a stored event, upcast to the newest schema version."""
    return registry.decode(stored_event)
