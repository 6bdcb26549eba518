"""The guide's encryption API: `encrypt_sensitive_fields(event=..., sensitive_fields=[...],
encryption_key=get_encryption_key())`. The event store encrypts through the same function."""
from __future__ import annotations

from typing import Iterable

from ..domain.aggregate import EventSourcedAggregate
from ..domain.events import DomainEvent
from ..eventstore.errors import EventStoreError
from ..eventstore.serialization import json_data
from .cipher import encrypt_fields
from .keys import SubjectErasedError, SubjectKeys, get_subject_keys


def get_encryption_key() -> SubjectKeys:
    """The source of data keys: each event is encrypted with its own data subject's key."""
    return get_subject_keys()


def subject_name(subject_type: str, subject_id: str) -> str:
    """The key name of a data subject: "child:child-123"."""
    return f"{subject_type}:{subject_id}"


def protected_state(aggregate: EventSourcedAggregate, state: dict, context: str, *,
                    keep_if_erased: bool = False) -> tuple[dict, str | None]:
    """The aggregate's state (its to_snapshot()) with the personal fields encrypted under its
    subject's key, and that subject. For an erased subject: SubjectErasedError, unless
    `keep_if_erased` and nothing personal is left in the state (it is then kept as it is)."""
    owner = aggregate.snapshot_subject()
    if owner is None or not aggregate.snapshot_sensitive_fields:
        return state, None
    subject = subject_name(*owner)
    try:
        key = get_subject_keys().key_for_writing(subject)
    except SubjectErasedError:
        if not keep_if_erased or any(state.get(f) not in (None, [], {}, "") for f in aggregate.snapshot_sensitive_fields):
            raise
        return state, None
    return encrypt_fields(state, aggregate.snapshot_sensitive_fields, key, subject, context), subject


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
