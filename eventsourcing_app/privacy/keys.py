"""Data keys, one per data subject ("child:child-123", "parent:p-1"), kept wrapped in the database.

- Writing: the subject's key is created on first use and kept in memory for a short while.
- Reading: the wrapped key comes fresh from the database with the data (the event load joins
  it), so a key destroyed by an erasure is never used to decrypt again, in any process.
- Erasing: the wrapped key is replaced by NULL and the row stays, so that no new key can be
  made for the subject and the erasure itself stays on record.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from django.conf import settings
from django.db import connection, transaction

from ..eventstore.errors import EventStoreError
from ..eventstore.records import KeyMaterial
from .keyring import MasterKeyError, MasterKeyring

# Writing with a key cached a little longer than its erasure is harmless: decryption always
# reads the key row afresh, so data written after an erasure is unreadable too.
_WRITE_CACHE_SECONDS = 600.0
_UNWRAPPED_CACHE_SIZE = 10_000


class SubjectErasedError(EventStoreError):
    """The subject's personal data was erased; nothing new may be stored under its key."""


@dataclass(frozen=True, slots=True)
class NewKey:
    """A data key made for a subject that had none in this process; the append that first
    uses it stores it in the same statement (or learns that another key exists)."""

    subject: str
    key: bytes
    wrapped: bytes
    master_key_id: str


class SubjectKeys:
    def __init__(self, keyring: MasterKeyring) -> None:
        self.keyring = keyring
        self._lock = threading.Lock()
        self._for_writing: dict[str, tuple[bytes, float]] = {}
        self._unwrapped: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    # --- writing ---------------------------------------------------------------------

    def cached_key_for_writing(self, subject: str) -> bytes | None:
        cached = self._for_writing.get(subject)
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def new_key(self, subject: str) -> NewKey:
        key = os.urandom(32)
        wrapped, master_id = self.keyring.wrap(key, subject)
        return NewKey(subject, key, wrapped, master_id)

    def remember(self, subject: str, key: bytes) -> None:
        self._for_writing[subject] = (key, time.monotonic() + _WRITE_CACHE_SECONDS)

    def key_for_writing(self, subject: str) -> bytes:
        now = time.monotonic()
        cached = self._for_writing.get(subject)
        if cached is not None and cached[1] > now:
            return cached[0]
        # One round trip: insert a new key, or get the existing row (also when another writer
        # inserted it first). The no-op update makes RETURNING give the stored row either way.
        wrapped, master_id = self.keyring.wrap(os.urandom(32), subject)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject "
                "RETURNING wrapped_key, master_key_id, destroyed_at",
                [subject, wrapped, master_id, datetime.now(timezone.utc)])
            row = cursor.fetchone()
        if row[2] is not None or row[0] is None:
            raise SubjectErasedError(f"the personal data of {subject} was erased; no new personal data can be stored "
                                     "for it")
        key = self._unwrap(subject, KeyMaterial(bytes(row[0]), row[1]))
        # Kept for later appends only once committed: a key row rolled back with the caller's
        # transaction must never encrypt anything.
        transaction.on_commit(lambda: self.remember(subject, key))
        return key

    # --- reading ---------------------------------------------------------------------

    def key_for_reading(self, subject: str, material: KeyMaterial | None = None) -> bytes | None:
        """The subject's key, or None if it was erased. Without material, reads the row."""
        if material is None:
            material = key_materials([subject]).get(subject)
            if material is None:
                raise EventStoreError(f"no data key is recorded for {subject}: its encrypted data cannot be read")
        return None if material.erased else self._unwrap(subject, material)

    def _unwrap(self, subject: str, material: KeyMaterial) -> bytes:
        cache_key = (subject, material.wrapped)
        with self._lock:
            key = self._unwrapped.get(cache_key)
            if key is not None:
                self._unwrapped.move_to_end(cache_key)
                return key
        key = self.keyring.unwrap(material.wrapped, material.master_key_id, subject)
        with self._lock:
            self._unwrapped[cache_key] = key
            if len(self._unwrapped) > _UNWRAPPED_CACHE_SIZE:
                self._unwrapped.popitem(last=False)
        return key

    # --- erasing and rotating -----------------------------------------------------------

    def destroy(self, subject: str) -> bool:
        """Destroys the subject's key; True if there was one to destroy."""
        from ..models import SubjectKey

        now = datetime.now(timezone.utc)
        with transaction.atomic():
            had_key = SubjectKey.objects.filter(pk=subject, wrapped_key__isnull=False).update(
                wrapped_key=None, master_key_id=None, destroyed_at=now) > 0
            if not had_key:
                SubjectKey.objects.bulk_create([SubjectKey(subject=subject, created_at=now, destroyed_at=now)],
                                               ignore_conflicts=True)
        self.forget_cached(subject)
        return had_key

    def forget_cached(self, subject: str) -> None:
        with self._lock:
            self._for_writing.pop(subject, None)
            for cache_key in [k for k in self._unwrapped if k[0] == subject]:
                del self._unwrapped[cache_key]

    def rewrap_all(self, progress: Callable[[int, int], None] | None = None, batch: int = 1000) -> int:
        """Rewraps every data key not yet under the current master key; events stay untouched."""
        from ..models import SubjectKey

        pending = SubjectKey.objects.filter(wrapped_key__isnull=False).exclude(master_key_id=self.keyring.current_id)
        total, done = pending.count(), 0
        while True:
            rows = list(pending.values_list("subject", "wrapped_key", "master_key_id")[:batch])
            if not rows:
                return done
            with transaction.atomic():
                for subject, wrapped, master_id in rows:
                    key = self.keyring.unwrap(bytes(wrapped), master_id, subject)
                    new_wrapped, new_id = self.keyring.wrap(key, subject)
                    SubjectKey.objects.filter(pk=subject, master_key_id=master_id).update(
                        wrapped_key=new_wrapped, master_key_id=new_id)
            done += len(rows)
            if progress:
                progress(done, total)

    def check_master_keys(self) -> None:
        """Fails if a stored data key is wrapped by a master key that is absent or wrong."""
        from ..models import SubjectKey

        for master_id in SubjectKey.objects.filter(wrapped_key__isnull=False).values_list(
                "master_key_id", flat=True).distinct():
            sample = SubjectKey.objects.filter(master_key_id=master_id).values_list("subject", "wrapped_key").first()
            self.keyring.unwrap(bytes(sample[1]), master_id, sample[0])


def key_materials(subjects: Iterable[str], alias: str = "default") -> dict[str, KeyMaterial]:
    """The key rows of these subjects, in one query."""
    from ..models import SubjectKey

    subjects = set(subjects)
    if not subjects:
        return {}
    rows = SubjectKey.objects.using(alias).filter(pk__in=subjects).values_list("subject", "wrapped_key",
                                                                               "master_key_id")
    return {subject: KeyMaterial(bytes(wrapped) if wrapped is not None else None, master_id)
            for subject, wrapped, master_id in rows}


_subject_keys: SubjectKeys | None = None
_subject_keys_lock = threading.Lock()


def get_subject_keys() -> SubjectKeys:
    global _subject_keys
    with _subject_keys_lock:
        if _subject_keys is None:
            _subject_keys = SubjectKeys(MasterKeyring(settings.TEDDY_MASTER_KEYS))
        return _subject_keys


__all__ = ["KeyMaterial", "MasterKeyError", "NewKey", "SubjectErasedError", "SubjectKeys", "get_subject_keys",
           "key_materials"]
