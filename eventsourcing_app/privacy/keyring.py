"""The master keys (from TEDDY_MASTER_KEYS) and the wrapping of data keys with them.

A data key is wrapped with AES-256-GCM under the current master key, bound to its subject (the
subject is the associated data, so a wrapped key cannot be moved to another subject). Every
master key has an id (a fingerprint), stored beside each wrapped key: rotation rewraps the
data keys under a new master key and never touches the events.
"""
from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
        self.current_id = master_key_id(keys[0])

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes, subject: str) -> tuple[bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + AESGCM(self._keys[self.current_id]).encrypt(nonce, data_key, subject.encode())
        return wrapped, self.current_id

    def unwrap(self, wrapped: bytes, master_id: str, subject: str) -> bytes:
        key = self._keys.get(master_id)
        if key is None:
            raise MasterKeyError(
                f"the data key of {subject} is wrapped by master key {master_id}, which TEDDY_MASTER_KEYS does not "
                f"hold (it holds {', '.join(self._keys)}); add that key (after the current one) to TEDDY_MASTER_KEYS"
            )
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], subject.encode())
        except InvalidTag:
            raise MasterKeyError(
                f"master key {master_id} does not open the data key of {subject}: the stored key was altered"
            ) from None
