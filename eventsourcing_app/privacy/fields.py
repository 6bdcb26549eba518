"""The guide's encryption API: `encrypt_sensitive_fields(event=..., sensitive_fields=[...],
encryption_key=get_encryption_key())`. The event store encrypts with the same cipher."""
from __future__ import annotations

from typing import Iterable

from ..domain.events import DomainEvent
from ..eventstore.errors import EventStoreError
from ..eventstore.serialization import data_subject_of, json_data, subject_name
from .cipher import encrypt_fields
from .keys import SubjectKeys


def get_subject_keys() -> SubjectKeys:
    """The process's data keys (those of the configured field protection)."""
    from ..eventstore.configured import get_field_protection

    return get_field_protection().keys


def get_encryption_key() -> SubjectKeys:
    """The source of data keys: each event is encrypted with its own data subject's key."""
    return get_subject_keys()


def encrypt_sensitive_fields(event: DomainEvent, sensitive_fields: Iterable[str] | None = None,
                             encryption_key: SubjectKeys | None = None, *, subject: str | None = None) -> dict:
    """The event's data as stored: JSON values, the sensitive fields replaced by ciphertext
    envelopes under the event's data subject's key (default: the event class's own list)."""
    if sensitive_fields is None:
        fields = type(event).sensitive_fields
    else:
        fields = tuple(sensitive_fields)
        unknown = set(fields) - set(event.data_field_names())
        if unknown:
            raise EventStoreError(f"{event.event_type} has no fields {sorted(unknown)}")
    data = json_data(event)
    if not fields:
        return data
    subject = subject or data_subject_of(event)
    key = (encryption_key or get_encryption_key()).key_for_writing(subject)
    return encrypt_fields(data, fields, key, subject, str(event.event_id))


__all__ = ["data_subject_of", "encrypt_sensitive_fields", "get_encryption_key", "get_subject_keys", "subject_name"]
