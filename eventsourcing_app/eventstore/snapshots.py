"""The snapshot store: an aggregate's state at a version.

Snapshots live in the mirror table `eventstore_snapshot` (the index loads use) and in the
compacted Kafka topic `snapshots.<type>` (key = stream id, so Kafka keeps the latest one per
stream). Each carries the aggregate's snapshot schema version: a snapshot of an older shape is
never loaded, the aggregate is rebuilt from its events instead. Personal data in the state is
encrypted with the subject's key, as in events, and the whole snapshot is sealed: a MAC under
the store's sealing key over the stream, the version, the stream's chain hash at that version
and the stored bytes. A snapshot that does not verify (altered, forged, moved to another
stream or another history) is a miss: the aggregate is rebuilt from its events, with a
warning. Snapshot rows are never updated; they are deleted only by pruning (the latest few
per stream are kept) and by erasure, through the recorder's guarded delete.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from asgiref.sync import sync_to_async
from django.db import transaction

from .. import metrics
from ..domain.aggregate import EventSourcedAggregate
from ..observability import stream_context
from .errors import EventStoreError, MalformedEventError, SubjectErasedError
from .ports import FieldProtection, Publisher
from .records import KeyMaterial
from .configured import get_field_protection
from .recorders import DjangoRecorder, SnapshotRow, recorder_for
from .serialization import canonical_json, json_loads, parse_stream_id, subject_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRecord:
    stream_id: str
    version: int
    aggregate_type: str
    schema_version: int
    state: dict  # decrypted; erased personal data reads as None
    created_at: datetime
    subject_key: KeyMaterial | None = field(default=None, compare=False, repr=False)  # as read with it


def seal_message(kind: str, stream_id: str, version: int, schema_version: int, subject: str | None,
                 chain_hash: bytes, blob: bytes) -> bytes:
    """What a snapshot's or a cache entry's seal covers: where it belongs (stream, version and
    the chain hash there, i.e. the exact history), its shape and its stored bytes."""
    head = "\x1f".join([kind, stream_id, str(version), str(schema_version), subject or ""]).encode()
    return head + b"\x1f" + chain_hash + b"\n" + blob


def protected_state(protection: FieldProtection, aggregate: EventSourcedAggregate, state: dict, context: str,
                    material: KeyMaterial | None) -> tuple[dict, str | None]:
    """The aggregate's state with its personal fields encrypted under its subject's key (read
    from the database: nothing here creates a key), and that subject. For an erased subject,
    or one without a key: SubjectErasedError / EventStoreError, unless nothing personal is left
    in the state (it is then kept as it is)."""
    owner = aggregate.snapshot_subject()
    fields = aggregate.snapshot_sensitive_fields
    if owner is None or not fields:
        return state, None
    subject = subject_name(*owner)
    if material is None or material.erased:
        if any(state.get(f) not in (None, [], {}, "") for f in fields):
            if material is None:
                raise EventStoreError(f"no data key is recorded for {subject}: its personal data cannot be stored")
            raise SubjectErasedError(f"the personal data of {subject} was erased; it cannot be stored again")
        return state, None
    return protection.protect(state, fields, subject, material, context), subject


def _context(stream_id: str, version: int) -> str:
    return f"snapshot:{stream_id}:{version}"


class SnapshotStore:
    def __init__(self, *, frequencies: dict[str, int], default_frequency: int = 10, keep: int = 2,
                 publisher: Publisher | None = None, kafka_settings=None, recorder: DjangoRecorder | None = None,
                 field_protection: FieldProtection | None = None) -> None:
        self.frequencies = frequencies
        self.default_frequency = default_frequency
        self.keep = keep
        self.publisher = publisher
        self.kafka_settings = kafka_settings
        self.recorder = recorder or recorder_for()
        self.field_protection = field_protection or get_field_protection()

    def frequency_for(self, stream_type: str) -> int:
        return self.frequencies.get(stream_type, self.default_frequency)

    def crosses_threshold(self, stream_id: str, before: int, after: int) -> bool:
        """True if appending moved the stream past a multiple of its snapshot frequency."""
        frequency = self.frequency_for(parse_stream_id(stream_id)[0])
        return frequency > 0 and before // frequency != after // frequency

    # --- the guide's API ---------------------------------------------------------------

    def should_create_snapshot_sync(self, stream_id: str, current_version: int) -> bool:
        """True if the stream is at least `frequency` events past its latest snapshot."""
        frequency = self.frequency_for(parse_stream_id(stream_id)[0])
        if frequency <= 0:
            return False
        versions = self.recorder.snapshot_versions(stream_id)
        return current_version - (versions[0] if versions else 0) >= frequency

    def save_snapshot_sync(self, stream_id: str, aggregate: EventSourcedAggregate,
                           version: int | None = None, *, material: KeyMaterial | None = None) -> SnapshotRecord:
        with stream_context(stream_id):
            return self._save_snapshot(stream_id, aggregate, version, material)

    def _save_snapshot(self, stream_id: str, aggregate: EventSourcedAggregate, version: int | None,
                       material: KeyMaterial | None) -> SnapshotRecord:
        stream_type, _ = parse_stream_id(stream_id)
        version = aggregate.version if version is None else version
        if aggregate.stream_id != stream_id:
            raise EventStoreError(f"the aggregate is stream {aggregate.stream_id}, not {stream_id}")
        if aggregate.has_uncommitted_events() or aggregate.version != version:
            raise EventStoreError(
                f"a snapshot of {stream_id} must be taken of a saved aggregate at version {version}; this one is at "
                f"version {aggregate.version} with {len(aggregate.get_domain_events())} unsaved events")
        chain = self.recorder.chain_hash_at(stream_id, version) if version >= 1 else None
        if chain is None:
            raise EventStoreError(f"stream {stream_id} has no version {version} to snapshot")

        state = aggregate.to_snapshot()
        owner = aggregate.snapshot_subject()
        if material is None and owner is not None:
            subject = subject_name(*owner)
            material = self.recorder.key_materials([subject]).get(subject)
        stored_state, subject = protected_state(self.field_protection, aggregate, state, _context(stream_id, version),
                                                material)
        blob = canonical_json(stored_state)
        schema = aggregate.snapshot_schema_version
        seal = self.field_protection.seal(seal_message("snapshot", stream_id, version, schema, subject, chain, blob))
        created_at, stored = self.recorder.insert_snapshot(stream_id, version, stream_type, schema, blob, seal, subject)
        if not stored:  # another process took it first: that one is the snapshot, here and on Kafka
            logger.info("snapshot of %s at version %d was stored already", stream_id, version)
            return SnapshotRecord(stream_id, version, stream_type, schema, state, created_at)
        transaction.on_commit(metrics.SNAPSHOTS_CREATED.labels(stream_type).inc, using=self.recorder.alias,
                              robust=True)  # counted once committed
        self._publish(stream_id, version, stream_type, schema, subject, blob, seal)
        self.prune(stream_id)
        logger.info("snapshot of %s at version %d", stream_id, version)
        return SnapshotRecord(stream_id, version, stream_type, schema, state, created_at)

    def get_latest_snapshot_sync(self, stream_id: str, max_version: int | None = None,
                                 schema_version: int | None = None) -> SnapshotRecord | None:
        """The latest snapshot at or below `max_version`, of `schema_version` if given; None
        if there is none, or if it does not verify (then the caller replays events)."""
        row = self.recorder.latest_snapshot(stream_id, max_version, schema_version)
        if row is None:
            return None
        problem = self.check(row)
        if problem is not None:
            logger.warning("snapshot of %s at version %d is not used (%s); rebuilding from events",
                           stream_id, row.version, problem)
            return None
        if row.data_subject is not None and (row.subject_key is None or row.subject_key.erased):
            return None  # erased (its snapshots should be gone already): rebuild from events, redacted
        try:
            state = json_loads(row.state)
            if row.data_subject is not None:
                state = self.field_protection.open(state, row.data_subject, row.subject_key,
                                                   _context(stream_id, row.version))
        except (ValueError, MalformedEventError) as exc:
            logger.warning("snapshot of %s at version %d does not open (%s); rebuilding from events",
                           stream_id, row.version, exc)
            return None
        return SnapshotRecord(stream_id, row.version, row.aggregate_type, row.schema_version, state, row.created_at,
                              row.subject_key)

    def check(self, row: SnapshotRow) -> str | None:
        """Why a stored snapshot cannot be trusted, or None if its seal verifies."""
        if row.chain_hash is None:
            return f"the stream has no event at version {row.version}"
        if row.seal is None:
            return "it has no seal"
        message = seal_message("snapshot", row.stream_id, row.version, row.schema_version, row.data_subject,
                               row.chain_hash, row.state)
        if not self.field_protection.verify_seal(message, row.seal):
            return "its seal does not verify: altered, forged, or made for another stream or history"
        return None

    def prune(self, stream_id: str) -> int:
        """Deletes all but the latest `keep` snapshots of the stream (the latest always stays)."""
        versions = self.recorder.snapshot_versions(stream_id)
        keep = max(self.keep, 1)
        if len(versions) <= keep:
            return 0
        return self.recorder.delete_snapshots([stream_id], below_version=versions[keep - 1])

    def delete_snapshots(self, stream_ids: Iterable[str]) -> int:
        """Drops every snapshot of these streams from the mirror (in the caller's transaction);
        call `publish_tombstones` after the commit to drop them from Kafka too."""
        return self.recorder.delete_snapshots(list(stream_ids))

    def publish_tombstones(self, stream_ids: Iterable[str]) -> None:
        """Tombstones in the compacted snapshot topics (best effort: a missed one is logged)."""
        for stream_id in stream_ids:
            self._publish(stream_id, None, parse_stream_id(stream_id)[0], None, None, None, None)

    def _publish(self, stream_id, version, stream_type, schema_version, subject, blob, seal) -> None:
        if self.publisher is None or self.kafka_settings is None:
            return
        headers = [("stream_id", stream_id.encode())]
        if version is not None:
            headers += [("version", str(version).encode()), ("schema_version", str(schema_version).encode()),
                        ("seal", seal.hex().encode())]
        if subject:
            headers.append(("data_subject", subject.encode()))
        tombstone = version is None
        try:
            # A tombstone is not waited for (an erasure must not hang on Kafka); a failed one is logged.
            position = self.publisher.publish_record(self.kafka_settings.snapshot_topic(stream_type), stream_id, blob,
                                                     headers, wait=not tombstone)
        except Exception as exc:  # noqa: BLE001 - the mirror copy is the one loads use
            logger.warning("publishing the snapshot of %s failed: %s", stream_id, exc)
            position = None
        if position is None and not tombstone:
            logger.warning("Kafka did not take the snapshot v%s of %s; the mirror copy is used", version, stream_id)
        elif position is not None and not tombstone:
            self.recorder.record_snapshot_position(stream_id, version, position)

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
