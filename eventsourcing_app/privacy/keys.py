"""Data keys, one per data subject ("child:child-123", "parent:p-1"), kept wrapped in the database.

- Writing: the subject's key is created by the first append that needs it (the append
  statement stores it) and kept in memory for a short while. The append statement refuses
  personal data for a subject whose key row is destroyed or missing, so a key held here can
  never put data under a destroyed key, whatever this process believes.
- Reading: the wrapped key comes fresh from the database with the data (loads join it), so a
  key destroyed by an erasure is never used to decrypt again, in any process.
- Memory: unwrapped keys (as AES-GCM contexts) sit in one cache bounded in size and time; an
  erasure drops them here at once and, by a broadcast, in every other process.
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
from typing import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import connections, transaction

from ..eventstore.errors import EventStoreError, SubjectErasedError
from ..eventstore.records import KeyMaterial, NewKey
from ..eventstore.recorders import SUBJECT_LOCK_CLASS, recorder_for
from .keyring import MasterKeyError, MasterKeyring

KEY_CACHE_SECONDS = 120.0
KEY_CACHE_SIZE = 10_000


@dataclass(slots=True)
class _CachedKey:
    aead: AESGCM
    wrapped: bytes  # the stored wrapped key it belongs to
    expires: float


class SubjectKeys:
    def __init__(self, keyring: MasterKeyring, *, ttl_seconds: float = KEY_CACHE_SECONDS,
                 max_keys: int = KEY_CACHE_SIZE, alias: str = "default",
                 read_materials: Callable[[list[str]], dict[str, KeyMaterial]] | None = None) -> None:
        """`read_materials(subjects)` reads key rows (the store's recorder, by default the ORM)."""
        self.keyring = keyring
        self.read_materials = read_materials or recorder_for(alias).key_materials
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self.alias = alias
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, _CachedKey] = OrderedDict()

    # --- the bounded cache -------------------------------------------------------------

    def _cached(self, subject: str) -> _CachedKey | None:
        with self._lock:
            entry = self._cache.get(subject)
            if entry is None:
                return None
            if entry.expires <= time.monotonic():
                del self._cache[subject]
                return None
            self._cache.move_to_end(subject)
            return entry

    def remember(self, subject: str, aead: AESGCM, wrapped: bytes) -> None:
        with self._lock:
            self._cache[subject] = _CachedKey(aead, wrapped, time.monotonic() + self.ttl_seconds)
            self._cache.move_to_end(subject)
            while len(self._cache) > self.max_keys:
                self._cache.popitem(last=False)

    def forget(self, subject: str) -> None:
        with self._lock:
            self._cache.pop(subject, None)

    def holds(self, subject: str) -> bool:
        """Whether this process holds the subject's key in memory now."""
        return self._cached(subject) is not None

    def __len__(self) -> int:
        return len(self._cache)

    # --- writing ---------------------------------------------------------------------

    def cached_for_writing(self, subject: str) -> tuple[AESGCM, bytes] | None:
        """The cached key and the stored wrapped key it came from (the append statement checks
        that it is still the stored one)."""
        entry = self._cached(subject)
        return (entry.aead, entry.wrapped) if entry is not None else None

    def new_key(self, subject: str) -> tuple[NewKey, AESGCM]:
        """A fresh key for the subject, wrapped for storage (by the append that uses it)."""
        key = os.urandom(32)
        wrapped, master_id = self.keyring.wrap(key, subject)
        return NewKey(subject, wrapped, master_id), AESGCM(key)

    def key_for_writing(self, subject: str) -> AESGCM:
        """The subject's stored key, made now if there is none (one round trip); refuses an
        erased subject. For encryption outside an append (the guide's encrypt_sensitive_fields)."""
        return self.stored_key(subject)[0]

    def stored_key(self, subject: str) -> tuple[AESGCM, bytes]:
        """The subject's stored key and its wrapped form, read from (or made in) the database."""
        cached = self._cached(subject)
        if cached is not None:
            return cached.aead, cached.wrapped
        # Insert a new key, or get the existing row (also when another writer inserted it
        # first). The no-op update makes RETURNING give the stored row either way.
        wrapped, master_id = self.keyring.wrap(os.urandom(32), subject)
        db = connections[self.alias]
        with db.cursor() as cursor:
            if db.vendor == "postgresql":
                # The subject's lock first (shared), then the row, the order an erasure takes them.
                cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s))", [SUBJECT_LOCK_CLASS, subject])
            cursor.execute(
                "INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject "
                "RETURNING wrapped_key, master_key_id, destroyed_at, wrapped_key = %s",
                [subject, wrapped, master_id, datetime.now(timezone.utc), wrapped])
            row = cursor.fetchone()
        if row[2] is not None or row[0] is None:
            self.forget(subject)
            raise SubjectErasedError(f"the personal data of {subject} was erased; no new personal data can be stored "
                                     "for it")
        material = KeyMaterial(bytes(row[0]), row[1])
        aead = AESGCM(self.keyring.unwrap(material.wrapped, material.master_key_id, subject))
        if row[3] and db.in_atomic_block:  # a key made now: kept only once its transaction committed
            transaction.on_commit(lambda: self.remember(subject, aead, material.wrapped), using=self.alias,
                                  robust=True)
        else:
            self.remember(subject, aead, material.wrapped)
        return aead, material.wrapped

    # --- reading ---------------------------------------------------------------------

    def key_for_reading(self, subject: str, material: KeyMaterial | None = None) -> AESGCM | None:
        """The subject's key, or None if it was erased. Without material, reads the row."""
        if material is None:
            material = self.read_materials([subject]).get(subject)
            if material is None:
                raise EventStoreError(f"no data key is recorded for {subject}: its encrypted data cannot be read")
        if material.erased:
            self.forget(subject)
            return None
        return self._unwrap(subject, material)

    def _unwrap(self, subject: str, material: KeyMaterial) -> AESGCM:
        entry = self._cached(subject)
        if entry is not None and entry.wrapped == material.wrapped:
            return entry.aead
        aead = AESGCM(self.keyring.unwrap(material.wrapped, material.master_key_id, subject))
        self.remember(subject, aead, material.wrapped)
        return aead

    # --- erasing and rotating -----------------------------------------------------------

    def destroy(self, subject: str) -> bool:
        """Destroys the subject's key in the caller's transaction; True if there was one. An
        append in flight for the subject holds a share lock on the row: this waits for it."""
        now = datetime.now(timezone.utc)
        db = connections[self.alias]
        with transaction.atomic(using=self.alias), db.cursor() as cursor:
            if db.vendor == "postgresql":
                # The subject's lock, exclusively (appends hold it shared: the erasure waits for
                # those in flight, later ones wait for the commit and then see the key gone), then
                # the time from the database's clock: every append that held it committed earlier.
                cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [SUBJECT_LOCK_CLASS, subject])
                cursor.execute("UPDATE privacy_subject_key SET wrapped_key = NULL, master_key_id = NULL, "
                               "destroyed_at = clock_timestamp() WHERE subject = %s AND wrapped_key IS NOT NULL",
                               [subject])
            else:  # SQLite: one writer at a time anyway
                cursor.execute("UPDATE privacy_subject_key SET wrapped_key = NULL, master_key_id = NULL, "
                               "destroyed_at = %s WHERE subject = %s AND wrapped_key IS NOT NULL", [now, subject])
            had_key = cursor.rowcount > 0
            if not had_key:  # no key yet: a destroyed row, so that none can ever be made
                cursor.execute("INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at, "
                               "destroyed_at) VALUES (%s, NULL, NULL, %s, %s) ON CONFLICT (subject) DO NOTHING",
                               [subject, now, now])
        self.forget(subject)
        return had_key

    def rewrap_all(self, progress: Callable[[int, int], None] | None = None, batch: int = 1000) -> int:
        """Rewraps every data key not yet under the current master key; events stay untouched."""
        from ..models import SubjectKey

        pending = SubjectKey.objects.using(self.alias).filter(wrapped_key__isnull=False).exclude(
            master_key_id=self.keyring.current_id)
        total, done = pending.count(), 0
        while True:
            rows = list(pending.values_list("subject", "wrapped_key", "master_key_id")[:batch])
            if not rows:
                return done
            with transaction.atomic(using=self.alias):
                for subject, wrapped, master_id in rows:
                    key = self.keyring.unwrap(bytes(wrapped), master_id, subject)
                    new_wrapped, new_id = self.keyring.wrap(key, subject)
                    SubjectKey.objects.using(self.alias).filter(pk=subject, master_key_id=master_id).update(
                        wrapped_key=new_wrapped, master_key_id=new_id)
            done += len(rows)
            if progress:
                progress(done, total)

    def check_master_keys(self) -> None:
        """Fails if a stored data key is wrapped by a master key that is absent or wrong."""
        from ..models import SubjectKey

        keys = SubjectKey.objects.using(self.alias)
        for master_id in keys.filter(wrapped_key__isnull=False).values_list("master_key_id", flat=True).distinct():
            sample = keys.filter(master_key_id=master_id).values_list("subject", "wrapped_key").first()
            self.keyring.unwrap(bytes(sample[1]), master_id, sample[0])


__all__ = ["KeyMaterial", "MasterKeyError", "NewKey", "SubjectErasedError", "SubjectKeys"]
