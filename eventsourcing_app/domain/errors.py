"""The errors a command can raise when it breaks a rule of the domain, and the value checks
the aggregates share to raise them.

Every error is a `DomainError`: the command was refused and the aggregate did not change (no
state change, no pending event). Each error takes one message that names what was wrong and,
where it helps, what to do; keeping to a single message argument keeps them picklable, so
they survive a trip through Celery.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from .events import DomainError
from .ids import ACTOR_ID, ActorId


# --- Invalid input -----------------------------------------------------------------

class InvalidValue(DomainError):
    """A command argument has the wrong type, is empty, too long or outside its range."""


class InvalidName(InvalidValue):
    """A name is not a non-empty string of at most 100 characters."""


class InvalidAge(InvalidValue):
    """A child's age is not a whole number from 3 to 13."""


class UnknownField(InvalidValue):
    """A change names a field that cannot be changed that way."""


class UnknownProfileField(UnknownField):
    """A child profile change names a field other than the allowed ones."""


class UnknownSettingField(UnknownField):
    """A parent settings change names a setting other than the allowed ones."""


# --- Commands that do not fit the aggregate's state --------------------------------

class AlreadyRegistered(DomainError):
    """The parent or child is registered already."""


class NotRegistered(DomainError):
    """The command needs a registered parent or child."""


class AggregateDeactivated(DomainError):
    """The parent or child was deactivated; it takes no more commands."""


class PersonalDataErased(DomainError):
    """The child's personal data was erased; the child takes no more commands."""


class DevicePairingError(DomainError):
    """Pairing or unpairing a device does not fit the child's current device."""


class ConsentError(DomainError):
    """Granting or withdrawing parental consent does not fit the consents on record."""


class ConversationNotStarted(DomainError):
    """The command needs a started conversation."""


class ConversationAlreadyStarted(DomainError):
    """The conversation was started already."""


class ConversationAlreadyEnded(DomainError):
    """The conversation ended; nothing more is recorded in it."""


class ConversationNotEnded(DomainError):
    """The command (summarizing) needs an ended conversation."""


# --- Value checks shared by the aggregates -----------------------------------------
# Each returns the value to store (e.g. stripped) or raises the error given.

_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}")
# What text must not hold: control characters (category Cc: U+0000-U+001F, U+007F-U+009F) and
# surrogates (U+D800-U+DFFF; in a str they are always lone, and UTF-8 cannot encode them).
# Multi-line text may hold tab, line feed and carriage return.
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_MULTILINE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(value: object, what: str, *, max_length: int, error: type[DomainError] = InvalidValue,
               strip: bool = True, multiline: bool = False) -> str:
    """A non-blank string of at most `max_length` characters (stripped unless strip=False),
    valid Unicode without control characters (tab and line breaks allowed if multiline=True).

    Checked after stripping: the surrounding whitespace removed is not stored.
    """
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise error(f"{what} must not be empty")
    text = value.strip() if strip else value
    if len(text) > max_length:
        raise error(f"{what} is {len(text)} characters long; the limit is {max_length}")
    if not text.isprintable():  # fast path: printable text has neither; else find the culprit
        found = (_NOT_MULTILINE_TEXT if multiline else _NOT_TEXT).search(text)
        if found:
            # The position in the value as given (before stripping), so the caller can find it.
            char, position = found.group(), found.start() + (len(value) - len(value.lstrip()) if strip else 0)
            if "\ud800" <= char <= "\udfff":
                raise error(f"{what} is not valid Unicode (a lone surrogate U+{ord(char):04X} at position {position})")
            raise error(f"{what} contains a control character (U+{ord(char):04X}) at position {position}; remove it")
    return text


def check_optional_text(value: object, what: str, *, max_length: int = 500) -> str | None:
    """None, or a non-blank string of at most `max_length` characters (stripped)."""
    return None if value is None else check_text(value, what, max_length=max_length)


def check_id(value: object, id_type: type[str], what: str) -> str:
    """A non-empty id without surrounding whitespace, as `id_type` (e.g. ChildId)."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise InvalidValue(f"{what} must be a non-empty string without surrounding spaces, not {value!r}")
    return id_type(value)


def check_int(value: object, what: str, low: int, high: int, *, error: type[DomainError] = InvalidValue) -> int:
    """An int (not a bool) from `low` to `high` inclusive."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be a whole number, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise error(f"{what} {value} is outside {low}..{high}")
    return value


def check_actor_id(value: object, what: str) -> ActorId:
    """Who did something, as the audit trail names them: never a person's name or free text."""
    if not isinstance(value, str) or not ACTOR_ID.fullmatch(value):
        raise InvalidValue(
            f"{what} {value!r} is not an actor id; give 'user:<id>' or 'system:<name>' "
            "(at most 100 letters, digits, '.', '_' or '-' after the colon), not a name or free text"
        )
    return ActorId(value)


def check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{what} must be true or false, not {type(value).__name__} {value!r}")
    return value


def check_choice(value: object, what: str, choices: Iterable[str]) -> str:
    """One of `choices` (exactly as written)."""
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        raise InvalidValue(f"{what} {value!r} is not one of {', '.join(choices)}")
    return value


def check_aware_datetime(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidValue(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(f"{what} {value.isoformat()} has no time zone; give it one (e.g. UTC)")
    return value


def check_changes(changes: object, what: str, allowed: Iterable[str], unknown_error: type[UnknownField]) -> dict:
    """A non-empty dict whose keys are all among `allowed`."""
    allowed = sorted(allowed)
    if not isinstance(changes, dict):
        raise InvalidValue(f"{what} must be a dict of field -> new value, not {type(changes).__name__}")
    if not changes:
        raise InvalidValue(f"{what} is empty; give at least one of {', '.join(allowed)}")
    for key in changes:
        if key not in allowed:
            raise unknown_error(f"{what} has unknown field {key!r}; allowed fields are {', '.join(allowed)}")
    return changes


def check_language(value: object, what: str = "language") -> str:
    """A language tag such as 'en', 'ar' or 'pt-BR'."""
    if not isinstance(value, str) or not _LANGUAGE_TAG.fullmatch(value):
        raise InvalidValue(f"{what} {value!r} is not a language tag such as 'en', 'ar' or 'pt-BR'")
    return value
