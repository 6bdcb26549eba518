"""Personal values in read-model rows, encrypted under the data subject's own key.

A row's `personal` column holds envelopes made with the same key as the subject's events, bound
to the row (table and key), so that destroying the key makes them unreadable at once, before
any projector has seen the erasure event, and a row's ciphertext cannot be moved to another row.
Keys are read once per batch (projector) or per response (API), not once per value.
"""
from __future__ import annotations

from typing import Iterable

from ..privacy.cipher import decrypt_fields, encrypt_fields
from ..privacy.fields import get_subject_keys


def child_subject(child_id: str) -> str:
    return f"child:{child_id}"


class SubjectKeyRing:
    """The current keys of some subjects (None: erased or never had one), read in one query."""

    def __init__(self, subjects: Iterable[str]) -> None:
        self._keys_store = get_subject_keys()
        self.materials = {}
        self._keys = {}
        self._read(sorted(set(subjects)))

    def _read(self, subjects: list[str]) -> None:
        materials = self._keys_store.read_materials(subjects) if subjects else {}
        self.materials.update(materials)
        for subject in subjects:
            material = materials.get(subject)
            self._keys[subject] = None if material is None else self._keys_store.key_for_reading(subject, material)

    def key(self, subject: str):
        if subject not in self._keys:
            self._read([subject])
        return self._keys[subject]

    def material(self, subject: str):
        self.key(subject)
        return self.materials.get(subject)

    def erased(self, subject: str) -> bool:
        return self.key(subject) is None

    def seal(self, values: dict, subject: str, context: str) -> dict:
        """`values` encrypted for the row; with no key (erased) every value is dropped."""
        key = self.key(subject)
        if key is None:
            return {}
        present = {name: value for name, value in values.items() if value is not None}
        return encrypt_fields(present, present.keys(), key, subject, context)

    def open(self, sealed: dict, subject: str, context: str) -> dict:
        """The row's personal values; None for each once the subject's key is gone."""
        if not sealed:
            return {}
        return decrypt_fields(sealed, self.key(subject), subject, context)
