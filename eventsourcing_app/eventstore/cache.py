"""An optional Redis cache of hot aggregates, keyed by stream, holding state and version.

An entry is only a head start: the repository always checks the stream's current version
(and the subject's key) in the database, replays what came after the entry, and never lets an
entry win over a newer stream version. Personal fields are encrypted like a snapshot's, so
Redis holds no personal data in clear, and an erased subject's entries cannot be read. The
whole entry is sealed (a MAC bound to the stream, the version and the chain hash there): an
entry changed in Redis, e.g. a relaxed content filter, does not verify and is a miss.

Redis being down never fails or slows a caller for long: after a failure the cache is
skipped for a few seconds, then tried again.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from dataclasses import dataclass

import redis

from ..domain.aggregate import EventSourcedAggregate
from .configured import get_field_protection
from .errors import EventStoreError
from .ports import FieldProtection
from .records import KeyMaterial
from .serialization import canonical_json
from .snapshots import protected_state, seal_message

logger = logging.getLogger(__name__)

_SKIP_AFTER_FAILURE_SECONDS = 5.0


@dataclass(frozen=True)
class CachedAggregate:
    version: int
    schema_version: int
    subject: str | None
    state: dict  # sensitive fields still encrypted
    blob: bytes  # the canonical bytes the seal covers
    seal: bytes


def cache_context(stream_id: str, version: int) -> str:
    return f"cache:{stream_id}:{version}"


class AggregateCache:
    def __init__(self, redis_url: str, ttl_seconds: int, field_protection: FieldProtection | None = None) -> None:
        self.ttl_seconds = ttl_seconds
        self._client = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self.field_protection = field_protection or get_field_protection()
        self._skip_until = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def key(stream_id: str) -> str:
        return f"teddy:aggregate:{stream_id}"

    def _call(self, what: str, fn, default=None):
        """Runs one Redis call unless Redis failed a moment ago; a failure is logged, never raised."""
        if time.monotonic() < self._skip_until:
            return default
        try:
            return fn()
        except redis.RedisError as exc:
            with self._lock:
                first = time.monotonic() >= self._skip_until
                self._skip_until = time.monotonic() + _SKIP_AFTER_FAILURE_SECONDS
            if first:
                logger.warning("aggregate cache unavailable (%s: %s); loading from the store, retrying the cache in "
                               "%.0fs", what, exc, _SKIP_AFTER_FAILURE_SECONDS)
            return default

    def get(self, stream_id: str) -> CachedAggregate | None:
        """The entry as stored (not yet verified), or None; an unreadable entry is None."""
        raw = self._call("get", lambda: self._client.get(self.key(stream_id)))
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            state = entry["state"]
            return CachedAggregate(int(entry["version"]), int(entry["schema_version"]), entry["subject"], state,
                                   canonical_json(state), base64.b64decode(entry["seal"], validate=True))
        except (ValueError, KeyError, TypeError, binascii.Error):
            logger.warning("unreadable cache entry for %s is a miss", stream_id)
            return None

    def verifies(self, stream_id: str, entry: CachedAggregate, chain_hash: bytes | None) -> bool:
        if chain_hash is None:
            return False
        message = seal_message("cache", stream_id, entry.version, entry.schema_version, entry.subject, chain_hash,
                               entry.blob)
        return self.field_protection.verify_seal(message, entry.seal)

    def open(self, stream_id: str, entry: CachedAggregate, material: KeyMaterial | None) -> dict:
        if entry.subject is None:
            return entry.state
        return self.field_protection.open(entry.state, entry.subject, material,
                                          cache_context(stream_id, entry.version))

    def put(self, aggregate: EventSourcedAggregate, chain_hash: bytes, material: KeyMaterial | None) -> None:
        """Caches the aggregate as it is now, sealed; never fails the caller."""
        stream_id, version = aggregate.stream_id, aggregate.version
        if material is not None and material.erased:
            return  # nothing of an erased subject is cached
        try:
            state, subject = protected_state(self.field_protection, aggregate, aggregate.to_snapshot(),
                                             cache_context(stream_id, version), material)
        except EventStoreError:
            return  # nothing of an erased subject (or one without a key) is cached
        except Exception as exc:  # noqa: BLE001 - a cache never fails the caller
            logger.warning("not caching %s: %s", stream_id, exc)
            return
        schema = aggregate.snapshot_schema_version
        seal = self.field_protection.seal(seal_message("cache", stream_id, version, schema, subject, chain_hash,
                                                       canonical_json(state)))
        entry = json.dumps({"version": version, "schema_version": schema, "subject": subject, "state": state,
                            "seal": base64.b64encode(seal).decode()}, separators=(",", ":"))
        self._call("set", lambda: self._client.set(self.key(stream_id), entry, ex=self.ttl_seconds))

    def delete(self, stream_ids) -> bool:
        """Drops entries; False if Redis could not be reached (the caller logs it)."""
        keys = [self.key(s) for s in stream_ids]
        if not keys:
            return True
        return self._call("delete", lambda: self._client.delete(*keys) >= 0, default=False)
