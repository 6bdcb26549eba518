"""The store's field protection (eventstore.ports.FieldProtection), built on the data keys.

The composition root hands one `PersonalDataProtection` to the event store, the snapshot
store, the cache and the decoder; the store never imports this package.
"""
from __future__ import annotations

import logging
from typing import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..eventstore.errors import MalformedEventError, SubjectErasedError
from ..eventstore.records import KeyMaterial, NewKey
from .cipher import decrypt_fields, encrypt_fields, has_envelopes
from .keys import SubjectKeys

logger = logging.getLogger(__name__)


class AppendSession:
    """The keys of one append (eventstore.ports.AppendKeys)."""

    def __init__(self, keys: SubjectKeys, *, allow_new: bool = True, uncached: frozenset[str] = frozenset()) -> None:
        self.keys = keys
        self.allow_new = allow_new
        self.uncached = uncached  # subjects whose cached key the statement refused
        self.new_key: NewKey | None = None
        self._new_aead: AESGCM | None = None
        self._chosen: dict[str, AESGCM] = {}  # one lookup per subject and append, not per event

    def _aead_for(self, subject: str) -> AESGCM:
        aead = self._chosen.get(subject)
        if aead is None:
            aead = self._chosen[subject] = self._choose(subject)
        return aead

    def _choose(self, subject: str) -> AESGCM:
        if subject not in self.uncached:
            cached = self.keys.cached_for_writing(subject)
            if cached is not None:
                return cached
        if self.new_key is not None and self.new_key.subject == subject:
            return self._new_aead
        if self.allow_new and self.new_key is None:
            self.new_key, self._new_aead = self.keys.new_key(subject)
            return self._new_aead
        return self.keys.key_for_writing(subject)  # the stored key (a second subject in one batch)

    def encrypt(self, data: dict, fields: Sequence[str], subject: str, context: str, label: str = "") -> dict:
        return encrypt_fields(data, fields, self._aead_for(subject), subject, context, label)

    def retry(self, outcome: str, subject: str | None) -> "AppendSession":
        if subject is not None:
            self.keys.forget(subject)
        if outcome == "key_exists":  # another process stored a key first: use that one
            return AppendSession(self.keys, allow_new=False, uncached=self.uncached | {subject})
        # key_missing: a key this process made was rolled back with its transaction
        return AppendSession(self.keys, allow_new=True, uncached=self.uncached | {subject})

    def stored(self) -> None:
        if self.new_key is not None:
            self.keys.remember(self.new_key.subject, self._new_aead, self.new_key.wrapped)


class PersonalDataProtection:
    def __init__(self, keys: SubjectKeys, on_erased=None) -> None:
        self.keys = keys
        self.on_erased = on_erased  # tells other processes (a broadcast); set by the composition root

    def for_append(self) -> AppendSession:
        return AppendSession(self.keys)

    def open(self, data: dict, subject: str, material: KeyMaterial | None, context: str) -> dict:
        if not has_envelopes(data):
            return data
        return decrypt_fields(data, self.keys.key_for_reading(subject, material), subject, context)

    def protect(self, data: dict, fields: Sequence[str], subject: str, material: KeyMaterial, context: str) -> dict:
        aead = self.keys.key_for_reading(subject, material)
        if aead is None:
            raise SubjectErasedError(f"the personal data of {subject} was erased; it cannot be stored again")
        return encrypt_fields(data, fields, aead, subject, context)

    def seal(self, message: bytes) -> bytes:
        return self.keys.keyring.seal(message)

    def verify_seal(self, message: bytes, seal: bytes) -> bool:
        return self.keys.keyring.verify_seal(message, seal)

    def forget(self, subject: str) -> None:
        self.keys.forget(subject)

    def destroy_keys(self, subjects: Sequence[str]) -> list[str]:
        """Destroys the subjects' keys in the caller's transaction; returns those that had one.
        Call `announce_erasure` after the commit."""
        return [subject for subject in subjects if self.keys.destroy(subject)]

    def announce_erasure(self, subjects: Sequence[str]) -> bool:
        """Tells every other process to drop the subjects' keys now (best effort: the append
        statement refuses their data anyway, and cached keys expire within minutes)."""
        for subject in subjects:
            self.keys.forget(subject)
        if self.on_erased is None:
            return True
        try:
            return bool(self.on_erased(list(subjects)))
        except Exception as exc:  # noqa: BLE001 - the erasure stands; the broadcast is a speed-up
            logger.warning("could not announce the erasure of %s to other processes: %s", ", ".join(subjects), exc)
            return False


__all__ = ["AppendSession", "MalformedEventError", "PersonalDataProtection"]
