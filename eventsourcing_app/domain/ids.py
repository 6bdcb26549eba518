"""Typed identifiers of the domain, and the JSON forms that aggregate snapshots give to ids and
datetimes.

Each id type is a `str` subclass, so an id compares equal to its plain string (`ChildId("c-1") == "c-1"`),
is stored and sent as a JSON string, and the event store turns it back into the declared type
on load (by the event field's type hint). The type only documents which kind of id a value is;
it does not validate it: the aggregates check the ids they are given.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import TypeVar

_Id = TypeVar("_Id", bound=str)


class _TypedId(str):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str.__repr__(self)})"


class ParentId(_TypedId):
    __slots__ = ()


class ChildId(_TypedId):
    __slots__ = ()


class DeviceId(_TypedId):
    __slots__ = ()


class ConversationId(_TypedId):
    __slots__ = ()


# "user:<id>" or "system:<name>": who did something, as the audit trail names them.
ACTOR_ID = re.compile(r"(user|system):[A-Za-z0-9._\-]{1,100}")


class ActorId(_TypedId):
    """Who did something, as the audit trail names them: "user:<id>" or "system:<name>"
    (Child.erase_personal_data checks that form), never a person's name or free text."""

    __slots__ = ()


# Snapshots are JSON: ids become plain strings and datetimes ISO 8601 strings, and come back.

def id_or_none(id_type: type[_Id], value: str | None) -> _Id | None:
    return None if value is None else id_type(value)


def isoformat_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def datetime_or_none(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
