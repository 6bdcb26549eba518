"""An optional Redis cache of hot aggregates, keyed by stream, holding state and version.

An entry is only a head start: the repository always checks the stream's current version
(and the subject's key) in the database, replays what came after the entry, and never lets an
entry win over a newer stream version. The state is encrypted like a snapshot's, so Redis
holds no personal data in clear, and an erased subject's entries cannot be read.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import redis

from ..domain.aggregate import EventSourcedAggregate
from ..privacy.fields import protected_state
from ..privacy.keys import SubjectErasedError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedAggregate:
    version: int
    schema_version: int
    subject: str | None
    state: dict  # sensitive fields still encrypted


def cache_context(stream_id: str, version: int) -> str:
    return f"cache:{stream_id}:{version}"


class AggregateCache:
    def __init__(self, redis_url: str, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds
        self._client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    @staticmethod
    def key(stream_id: str) -> str:
        return f"teddy:aggregate:{stream_id}"

    def get(self, stream_id: str) -> CachedAggregate | None:
        try:
            raw = self._client.get(self.key(stream_id))
        except redis.RedisError as exc:
            logger.warning("aggregate cache unavailable (%s); loading from the store", exc)
            return None
        if raw is None:
            return None
        entry = json.loads(raw)
        return CachedAggregate(entry["version"], entry["schema_version"], entry["subject"], entry["state"])

    def entry_for(self, aggregate: EventSourcedAggregate) -> str | None:
        """The cache entry of the aggregate as it is now (encrypted), or None if it has none."""
        try:
            state, subject = protected_state(aggregate, aggregate.to_snapshot(),
                                             cache_context(aggregate.stream_id, aggregate.version))
        except SubjectErasedError:
            return None  # nothing of an erased subject is cached
        except Exception as exc:  # noqa: BLE001 - a cache never fails the caller
            logger.warning("not caching %s: %s", aggregate.stream_id, exc)
            return None
        return json.dumps({"version": aggregate.version, "schema_version": aggregate.snapshot_schema_version,
                           "subject": subject, "state": state}, separators=(",", ":"))

    def store(self, stream_id: str, entry: str | None) -> None:
        if entry is None:
            return
        try:
            self._client.set(self.key(stream_id), entry, ex=self.ttl_seconds)
        except redis.RedisError as exc:
            logger.warning("could not cache %s: %s", stream_id, exc)

    def put(self, aggregate: EventSourcedAggregate) -> None:
        self.store(aggregate.stream_id, self.entry_for(aggregate))

    def delete(self, stream_ids) -> None:
        keys = [self.key(s) for s in stream_ids]
        if keys:
            self._client.delete(*keys)
