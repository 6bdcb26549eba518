"""The master keys (from TEDDY_MASTER_KEYS): wrapping data keys, and sealing state.

A data key is wrapped with AES-256-GCM under the current master key, bound to its subject (the
subject is the associated data, so a wrapped key cannot be moved to another subject). Every
master key has an id (a fingerprint), stored beside each wrapped key: rotation rewraps the
data keys under a new master key and never touches the events.

Sealing: snapshots and cache entries carry an HMAC-SHA256 under a key derived from the master
key (HKDF), so nobody who can write the database or Redis but lacks the master key can alter
them unnoticed. Seals made under an older master key still verify while that key is listed.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..eventstore.errors import EventStoreError

NONCE_BYTES = 12


class MasterKeyError(EventStoreError):
    """The master key needed is missing or wrong."""


def master_key_id(key: bytes) -> str:
    return "mk-" + hashlib.sha256(b"teddy-master-key-id" + key).hexdigest()[:16]


class MasterKeyring:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise MasterKeyError("TEDDY_MASTER_KEYS holds no key")
        self._keys = {master_key_id(key): key for key in keys}
        self._aeads = {key_id: AESGCM(key) for key_id, key in self._keys.items()}  # a few master keys
        self.current_id = master_key_id(keys[0])
        self._seal_keys = [_seal_key(key) for key in keys]  # the current one first

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes, subject: str) -> tuple[bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + self._aeads[self.current_id].encrypt(nonce, data_key, subject.encode())
        return wrapped, self.current_id

    def unwrap(self, wrapped: bytes, master_id: str, subject: str) -> bytes:
        key = self._keys.get(master_id)
        if key is None:
            raise MasterKeyError(
                f"the data key of {subject} is wrapped by master key {master_id}, which TEDDY_MASTER_KEYS does not "
                f"hold (it holds {', '.join(self._keys)}); add that key (after the current one) to TEDDY_MASTER_KEYS"
            )
        try:
            return self._aeads[master_id].decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], subject.encode())
        except InvalidTag:
            raise MasterKeyError(
                f"master key {master_id} does not open the data key of {subject}: the stored key was altered"
            ) from None

    def seal(self, message: bytes) -> bytes:
        return hmac.new(self._seal_keys[0], message, hashlib.sha256).digest()

    def verify_seal(self, message: bytes, seal: bytes) -> bool:
        return any(hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), seal)
                   for key in self._seal_keys)


def _seal_key(master: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"teddy state seal v1").derive(master)

