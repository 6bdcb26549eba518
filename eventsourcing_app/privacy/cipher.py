"""Encrypted fields inside JSON payloads (events and snapshots).

A sensitive field's JSON value is replaced by an envelope

    {"$enc": 1, "n": <nonce, base64>, "c": <AES-256-GCM ciphertext of the value's JSON, base64>}

under the subject's data key. The associated data binds the ciphertext to its subject, to the
event (or snapshot) and to the field name, so it cannot be moved elsewhere unnoticed. Once
the subject's key is destroyed, the field reads as None (redacted) wherever the bytes are:
mirror, Kafka, snapshots, caches, backups.

Keys are passed as AES-GCM contexts (made once per key by the key store, which bounds how many
it keeps and for how long); raw key bytes are accepted too, for one-off use.
"""
from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..eventstore.errors import EventSerializationError, MalformedEventError
from ..eventstore.serialization import json_loads

ENVELOPE_MARK = "$enc"
NONCE_BYTES = 12
_NONCE_POOL_BYTES = NONCE_BYTES * 4096
_nonces = threading.local()
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _nonce() -> bytes:
    """A fresh random 96-bit nonce, from a per-thread pool filled by one os.urandom call."""
    pool = getattr(_nonces, "pool", b"")
    if len(pool) < NONCE_BYTES:
        pool = os.urandom(_NONCE_POOL_BYTES)
    _nonces.pool = pool[NONCE_BYTES:]
    return pool[:NONCE_BYTES]


def _aead(key: AESGCM | bytes) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


def is_envelope(value: Any) -> bool:
    return isinstance(value, dict) and value.get(ENVELOPE_MARK) == 1


def _aad(subject: str, context: str, field: str) -> bytes:
    return f"{subject}\x1f{context}\x1f{field}".encode()


def encrypt_fields(data: dict, fields: Iterable[str], key: AESGCM | bytes, subject: str, context: str,
                   label: str = "") -> dict:
    """A copy of `data` with the given fields (those present) replaced by envelopes; `label`
    (e.g. the event type) prefixes the field's name in errors."""
    out = dict(data)
    aead = _aead(key)
    for field in fields:
        if field in out and out[field] is not None:
            nonce = _nonce()
            try:
                plaintext = _COMPACT.encode(out[field]).encode()
            except UnicodeEncodeError:  # a lone surrogate; the message must not echo personal data
                raise EventSerializationError(
                    f"field {label + '.' if label else ''}{field} is not valid Unicode (it holds a lone surrogate); "
                    "decode the text properly "
                    "before storing it") from None
            out[field] = {
                ENVELOPE_MARK: 1,
                "n": base64.b64encode(nonce).decode(),
                "c": base64.b64encode(aead.encrypt(nonce, plaintext, _aad(subject, context, field))).decode(),
            }
    return out


def sealed_fields(data: dict) -> list[str]:
    """The fields of `data` that hold envelopes."""
    return [field for field, value in data.items() if is_envelope(value)]


def decrypt_fields(data: dict, key: AESGCM | bytes | None, subject: str, context: str,
                   fields: list[str] | None = None) -> dict:
    """A copy of `data` with envelopes opened (those of `fields`, if the caller found them
    already); with no key (erased subject) they read as None."""
    out = dict(data)
    aead = _aead(key) if key is not None else None
    for field in sealed_fields(data) if fields is None else fields:
        value = data[field]
        if aead is None:
            out[field] = None
            continue
        try:
            plaintext = aead.decrypt(base64.b64decode(value["n"]), base64.b64decode(value["c"]),
                                     _aad(subject, context, field))
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise MalformedEventError(
                f"{context}: field {field} of {subject} does not decrypt with the subject's key (altered bytes, "
                "or data moved from another record)"
            ) from None
        out[field] = json_loads(plaintext)
    return out

