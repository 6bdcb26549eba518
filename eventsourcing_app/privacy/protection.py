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
from .cipher import decrypt_fields, encrypt_fields, sealed_fields
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
        # subject -> (key, the stored wrapped key it is, or None for the new key): one lookup per
        # subject and append, not per event; the statement checks the wrapped key is the stored one.
        self._chosen: dict[str, tuple[AESGCM, bytes | None]] = {}

    @property
    def subject_keys(self) -> dict[str, bytes | None]:
        return {subject: wrapped for subject, (_, wrapped) in self._chosen.items()}

    def _aead_for(self, subject: str) -> AESGCM:
        chosen = self._chosen.get(subject)
        if chosen is None:
            chosen = self._chosen[subject] = self._choose(subject)
        return chosen[0]

    def _choose(self, subject: str) -> tuple[AESGCM, bytes | None]:
        if subject not in self.uncached:
            cached = self.keys.cached_for_writing(subject)
            if cached is not None:
                return cached
        if self.allow_new and self.new_key is None:
            self.new_key, self._new_aead = self.keys.new_key(subject)
            return self._new_aead, None
        return self.keys.stored_key(subject)  # a round trip: the stored key (made if there is none)

    def encrypt(self, data: dict, fields: Sequence[str], subject: str, context: str, label: str = "") -> dict:
        return encrypt_fields(data, fields, self._aead_for(subject), subject, context, label)

    def retry(self, outcome: str, subject: str | None) -> "AppendSession":
        if subject is not None:
            self.keys.forget(subject)
        # key_exists: another process stored a key first; key_changed: the stored key is not the
        # one cached here. Both: use the stored key. key_missing: the cached key's row is not
        # there (rolled back with its transaction): a new key.
        allow_new = outcome == "key_missing"
        return AppendSession(self.keys, allow_new=allow_new, uncached=self.uncached | {subject})

    def stored(self) -> None:
        """Called once the append's transaction committed: its new key may encrypt again."""
        if self.new_key is not None:
            self.keys.remember(self.new_key.subject, self._new_aead, self.new_key.wrapped)


class PersonalDataProtection:
    def __init__(self, keys: SubjectKeys, on_erased=None) -> None:
        self.keys = keys
        self.on_erased = on_erased  # tells other processes (a broadcast); set by the composition root
        # The key of the last key row opened: a load hands every event of a subject the same row
        # object, so its events after the first skip the key cache and its lock. (The same key as
        # key_for_reading gives for that row: a row read before an erasure opens as it did.)
        self._last_opened: tuple[KeyMaterial, AESGCM] | None = None

    def for_append(self) -> AppendSession:
        return AppendSession(self.keys)

    def open(self, data: dict, subject: str, material: KeyMaterial | None, context: str) -> dict:
        sealed = sealed_fields(data)
        if not sealed:
            return data
        last = self._last_opened
        if last is not None and material is not None and last[0] is material:
            aead = last[1]
        else:
            aead = self.keys.key_for_reading(subject, material)
            self._last_opened = (material, aead) if material is not None and aead is not None else None
        return decrypt_fields(data, aead, subject, context, sealed)

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

    def destroy_keys(self, subjects: Sequence[str]) -> list[str]:  # eventstore.ports.ErasurePort
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
