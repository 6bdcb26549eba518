"""Upkeep the store needs, run by Celery tasks and commands: snapshots when due."""
from __future__ import annotations

import logging

from ..domain import aggregate_classes
from ..eventstore import AggregateNotFoundError, get_event_sourcing_service
from ..eventstore.serialization import parse_stream_id

logger = logging.getLogger(__name__)


def snapshot_if_due(stream_id: str) -> int | None:
    """Snapshots a stream at its current version if it is due; returns the version."""
    stream_type, aggregate_id = parse_stream_id(stream_id)
    aggregate_class = aggregate_classes().get(stream_type)
    if aggregate_class is None:
        logger.warning("no aggregate class for %s; not snapshotting it", stream_id)
        return None
    service = get_event_sourcing_service()
    current = service.event_store.get_stream_version_sync(stream_id)
    if not service.snapshot_store.should_create_snapshot_sync(stream_id, current):
        return None
    try:
        return service.create_snapshot_sync(aggregate_class, aggregate_id).version
    except AggregateNotFoundError:
        return None
