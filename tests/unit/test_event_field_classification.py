"""Every field of every event of the product is classified, so that no personal data reaches
the immutable event log in clear text.

A field is classified when its type cannot hold free text (numbers, booleans, times, UUIDs,
decimals, enums, typed ids, Literal codes), or when it is a sensitive field (encrypted with its
data subject's key), or when it is a coded field (checked by the aggregate against a closed set
or a strict format). A new str, dict, list or Any field that is none of these fails here, naming
it: decide which it is before it is stored for ever.
"""
from __future__ import annotations

import decimal
import enum
import types
import typing
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pytest

from eventsourcing_app.domain import ChildId, DomainEvent, event_classes
from eventsourcing_app.domain import child, conversation, parent

CLEAR_TYPES = (int, float, bool, datetime, date, uuid.UUID, decimal.Decimal)


def product_event_classes() -> list[type[DomainEvent]]:
    """Every schema version of every event class defined by the product (not by tests)."""
    return sorted(
        (cls for versions in event_classes().values() for cls in versions.values()
         if cls.__module__.startswith("eventsourcing_app.")),
        key=lambda cls: (cls.event_type, cls.schema_version),
    )


def _without_none(hint: object) -> object:
    """`X | None` and `Optional[X]` as X; anything else as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_clear_type(hint: object) -> bool:
    if typing.get_origin(hint) is typing.Literal:
        return True
    if not isinstance(hint, type):
        return False  # str | int, list[str], dict[str, Any], Any, ...
    if issubclass(hint, CLEAR_TYPES) or issubclass(hint, enum.Enum):
        return True
    return issubclass(hint, str) and hint is not str  # the typed ids


def _type_name(hint: object) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def unclassified_fields(cls: type[DomainEvent]) -> list[str]:
    """One message ("Class.field ...") per data field of `cls` that is not classified and per
    sensitive_fields or coded_fields entry that names no field; empty when all is well.

    event_id and occurred_at are not checked: the domain sets them (a uuid4, a time), never a person.
    """
    hints = typing.get_type_hints(cls)
    names = cls.data_field_names()
    problems = [
        f"{cls.__qualname__}.{attribute} names {name!r}, which is not a field of the event"
        for attribute in ("sensitive_fields", "coded_fields")
        for name in getattr(cls, attribute) if name not in names
    ]
    for name in names:
        if name in cls.sensitive_fields or name in cls.coded_fields:
            continue
        if not _is_clear_type(_without_none(hints[name])):
            problems.append(
                f"{cls.__qualname__}.{name} ({_type_name(hints[name])}) may hold free text in clear: type it "
                f"(a typed id, a Literal of codes, ...), or list it in sensitive_fields or in coded_fields"
            )
    return problems


# Made-up events for the tests of the check itself. Their event types are test-only and their
# module is not the product's, so no other test (and not the walk above) sees them.

@dataclass
class _UnclassifiedNote(DomainEvent, event_type="test.classification.UnclassifiedNote"):
    note: str
    count: int = 0


class _Colour(enum.Enum):
    RED = "red"


@dataclass
class _ClearFields(DomainEvent, event_type="test.classification.ClearFields"):
    child_id: ChildId
    count: int
    ratio: float
    flag: bool
    at: datetime
    day: date
    token: uuid.UUID
    amount: decimal.Decimal
    colour: _Colour
    level: typing.Literal["low", "high"]
    maybe_at: datetime | None = None
    maybe_level: typing.Optional[typing.Literal["low", "high"]] = None


@dataclass
class _FreeTextFields(DomainEvent, event_type="test.classification.FreeTextFields"):
    text: str
    mapping: dict
    items: list
    anything: Any
    thing: object
    texts: list[str]
    either: str | int
    maybe_text: str | None = None
    classified_text: str | None = None
    classified_mapping: dict | None = None

    sensitive_fields = ("classified_text",)
    coded_fields = ("classified_mapping",)


@dataclass
class _Misnamed(DomainEvent, event_type="test.classification.Misnamed"):
    value: int

    sensitive_fields = ("vaule",)
    coded_fields = ("settings",)


def test_the_product_defines_events_of_every_aggregate():
    classes = product_event_classes()
    assert {"ChildRegistered", "ParentRegistered", "MessageRecorded", "ChildDataErased"} <= {
        cls.event_type for cls in classes}
    assert {cls.schema_version for cls in classes if cls.event_type == "ChildRegistered"} == {1, 2}
    assert not {_UnclassifiedNote, _ClearFields, _FreeTextFields, _Misnamed} & set(classes)


@pytest.mark.parametrize("cls", product_event_classes(), ids=lambda cls: f"{cls.event_type}-v{cls.schema_version}")
def test_every_event_field_is_classified(cls):
    problems = unclassified_fields(cls)
    assert not problems, "\n".join(problems)


def test_an_unclassified_text_field_is_caught_naming_class_and_field():
    assert unclassified_fields(_UnclassifiedNote) == [
        "_UnclassifiedNote.note (str) may hold free text in clear: type it (a typed id, a Literal of "
        "codes, ...), or list it in sensitive_fields or in coded_fields"
    ]


def test_types_that_cannot_hold_free_text_are_classified():
    assert unclassified_fields(_ClearFields) == []


def test_types_that_can_hold_free_text_are_not_unless_sensitive_or_coded():
    problems = unclassified_fields(_FreeTextFields)

    assert [problem.split(" ")[0] for problem in problems] == [
        f"_FreeTextFields.{name}" for name in ("text", "mapping", "items", "anything", "thing", "texts", "either",
                                               "maybe_text")]


def test_sensitive_and_coded_entries_must_name_fields():
    assert unclassified_fields(_Misnamed) == [
        "_Misnamed.sensitive_fields names 'vaule', which is not a field of the event",
        "_Misnamed.coded_fields names 'settings', which is not a field of the event",
    ]


@pytest.mark.parametrize("alias, choices", [
    (child.ContentFilterLevel, child.CONTENT_FILTER_LEVELS),
    (child.ErasureReason, child.ERASURE_REASONS),
    (parent.ConsentMethod, parent.CONSENT_METHODS),
    (conversation.Speaker, conversation.SPEAKERS),
    (conversation.SafetyCategory, conversation.SAFETY_CATEGORIES),
    (conversation.Severity, conversation.SEVERITIES),
])
def test_literal_types_list_the_same_codes_the_commands_check(alias, choices):
    assert typing.get_args(alias) == choices
