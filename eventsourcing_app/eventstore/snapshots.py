"""The snapshot store of the guide, section 2: an aggregate's state at a version.

Snapshots live in the mirror table `eventstore_snapshot` (the index loads use) and in the
compacted Kafka topic `snapshots.<type>` (key = stream id, so Kafka keeps the latest one per
stream). Each carries the aggregate's snapshot schema version: a snapshot of an older shape is
never loaded, the aggregate is rebuilt from its events instead. Personal data in the state is
encrypted with the subject's key, as in events. Older snapshots are pruned: the latest few per
stream are kept.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.utils.dateparse import parse_datetime

from ..domain.aggregate import EventSourcedAggregate
from ..privacy.cipher import decrypt_fields
from ..privacy.fields import protected_state
from ..privacy.keys import get_subject_keys
from .errors import EventStoreError
from .records import KeyMaterial
from .serialization import canonical_json, parse_stream_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRecord:
    stream_id: str
    version: int
    aggregate_type: str
    schema_version: int
    state: dict  # decrypted; erased personal data reads as None
    created_at: datetime


_MAX_VERSION = 2**63 - 1
_LATEST_SQL = (
    "SELECT s.version, s.aggregate_type, s.schema_version, s.state, s.data_subject, s.created_at, "
    "k.wrapped_key, k.master_key_id "
    "FROM eventstore_snapshot s LEFT JOIN privacy_subject_key k ON k.subject = s.data_subject "
    "WHERE s.stream_id = %s AND s.version <= %s AND (s.schema_version = %s OR %s < 0) "
    "ORDER BY s.version DESC LIMIT 1"
)


def _context(stream_id: str, version: int) -> str:
    return f"snapshot:{stream_id}:{version}"


class SnapshotStore:
    def __init__(self, *, frequencies: dict[str, int], default_frequency: int = 10, keep: int = 2,
                 publisher=None, kafka_settings=None) -> None:
        self.frequencies = frequencies
        self.default_frequency = default_frequency
        self.keep = keep
        self.publisher = publisher
        self.kafka_settings = kafka_settings

    def frequency_for(self, stream_type: str) -> int:
        return self.frequencies.get(stream_type, self.default_frequency)

    def crosses_threshold(self, stream_id: str, before: int, after: int) -> bool:
        """True if appending moved the stream past a multiple of its snapshot frequency."""
        frequency = self.frequency_for(parse_stream_id(stream_id)[0])
        return frequency > 0 and before // frequency != after // frequency

    # --- the guide's API ---------------------------------------------------------------

    def should_create_snapshot_sync(self, stream_id: str, current_version: int) -> bool:
        """True if the stream is at least `frequency` events past its latest snapshot."""
        from ..models import Snapshot

        frequency = self.frequency_for(parse_stream_id(stream_id)[0])
        if frequency <= 0:
            return False
        latest = (Snapshot.objects.filter(stream_id=stream_id).order_by("-version")
                  .values_list("version", flat=True).first()) or 0
        return current_version - latest >= frequency

    def save_snapshot_sync(self, stream_id: str, aggregate: EventSourcedAggregate,
                           version: int | None = None) -> SnapshotRecord:
        from ..models import Snapshot, Stream

        stream_type, _ = parse_stream_id(stream_id)
        version = aggregate.version if version is None else version
        if aggregate.stream_id != stream_id:
            raise EventStoreError(f"the aggregate is stream {aggregate.stream_id}, not {stream_id}")
        if aggregate.has_uncommitted_events() or aggregate.version != version:
            raise EventStoreError(
                f"a snapshot of {stream_id} must be taken of a saved aggregate at version {version}; this one is at "
                f"version {aggregate.version} with {len(aggregate.get_domain_events())} unsaved events")
        if version < 1 or not Stream.objects.filter(pk=stream_id, version__gte=version).exists():
            raise EventStoreError(f"stream {stream_id} has no version {version} to snapshot")

        state = aggregate.to_snapshot()
        stored_state, subject = protected_state(aggregate, state, _context(stream_id, version), keep_if_erased=True)
        blob = canonical_json(stored_state)
        now = datetime.now(timezone.utc)
        Snapshot.objects.bulk_create([Snapshot(
            stream_id=stream_id, version=version, aggregate_type=stream_type,
            schema_version=aggregate.snapshot_schema_version, state=blob, data_subject=subject, created_at=now,
        )], ignore_conflicts=True)
        self._publish(stream_id, version, stream_type, aggregate.snapshot_schema_version, subject, blob)
        self.prune(stream_id)
        logger.info("snapshot of %s at version %d", stream_id, version)
        return SnapshotRecord(stream_id, version, stream_type, aggregate.snapshot_schema_version, state, now)

    def get_latest_snapshot_sync(self, stream_id: str, max_version: int | None = None,
                                 schema_version: int | None = None) -> SnapshotRecord | None:
        """The latest snapshot at or below `max_version`, of `schema_version` if given."""
        # One query (plain SQL: this is on every aggregate load): the snapshot and its subject's
        # key row. A snapshot of another schema version is ignored, not loaded.
        with connection.cursor() as cursor:
            cursor.execute(_LATEST_SQL, [stream_id, _MAX_VERSION if max_version is None else max_version,
                                         -1 if schema_version is None else schema_version,
                                         -1 if schema_version is None else schema_version])
            row = cursor.fetchone()
        if row is None:
            return None
        version, aggregate_type, schema, blob, subject, created_at, wrapped, master_id = row
        if isinstance(created_at, str):  # SQLite hands timestamps back as text
            created_at = parse_datetime(created_at).replace(tzinfo=timezone.utc)
        state = json.loads(bytes(blob))
        if subject is not None:
            if wrapped is None:
                return None  # erased (its snapshots should be gone already): rebuild from events, redacted
            key = get_subject_keys().key_for_reading(subject, KeyMaterial(bytes(wrapped), master_id))
            state = decrypt_fields(state, key, subject, _context(stream_id, version))
        return SnapshotRecord(stream_id, version, aggregate_type, schema, state, created_at)

    def prune(self, stream_id: str) -> int:
        """Deletes all but the latest `keep` snapshots of the stream (the latest always stays)."""
        from ..models import Snapshot

        keep = list(Snapshot.objects.filter(stream_id=stream_id).order_by("-version")
                    .values_list("version", flat=True)[:max(self.keep, 1)])
        if not keep:
            return 0
        deleted, _ = Snapshot.objects.filter(stream_id=stream_id, version__lt=min(keep)).delete()
        return deleted

    def delete_snapshots(self, stream_ids: Iterable[str]) -> int:
        """Drops every snapshot of these streams, here and in Kafka (tombstones)."""
        from ..models import Snapshot

        stream_ids = list(stream_ids)
        with transaction.atomic():
            deleted, _ = Snapshot.objects.filter(stream_id__in=stream_ids).delete()
        for stream_id in stream_ids:
            stream_type = parse_stream_id(stream_id)[0]
            self._publish(stream_id, None, stream_type, None, None, None)
        return deleted

    def _publish(self, stream_id, version, stream_type, schema_version, subject, blob) -> None:
        from ..models import Snapshot

        if self.publisher is None or self.kafka_settings is None:
            return
        headers = [("stream_id", stream_id.encode())]
        if version is not None:
            headers += [("version", str(version).encode()), ("schema_version", str(schema_version).encode())]
        if subject:
            headers.append(("data_subject", subject.encode()))
        position = self.publisher.publish_record(self.kafka_settings.snapshot_topic(stream_type), stream_id, blob,
                                                 headers)
        if position is None:
            logger.warning("Kafka did not take the snapshot %s of %s; the mirror copy is used",
                           "tombstone" if blob is None else f"v{version}", stream_id)
        elif version is not None:
            Snapshot.objects.filter(stream_id=stream_id, version=version).update(
                kafka_topic=position[0], kafka_partition=position[1], kafka_offset=position[2])

    # --- async twins (the guide's API) -----------------------------------------------------

    async def should_create_snapshot(self, stream_id: str, current_version: int) -> bool:
        return await sync_to_async(self.should_create_snapshot_sync, thread_sensitive=False)(stream_id, current_version)

    async def save_snapshot(self, stream_id: str, aggregate: EventSourcedAggregate,
                            version: int | None = None) -> SnapshotRecord:
        return await sync_to_async(self.save_snapshot_sync, thread_sensitive=False)(stream_id, aggregate, version)

    async def get_latest_snapshot(self, stream_id: str, max_version: int | None = None,
                                  schema_version: int | None = None) -> SnapshotRecord | None:
        return await sync_to_async(self.get_latest_snapshot_sync, thread_sensitive=False)(
            stream_id, max_version, schema_version)
