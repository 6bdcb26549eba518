"""The outbox relay: publishes every committed event Kafka has not acknowledged yet.

The outbox is implicit: a stream whose `version` is above its `published_version` has
events to publish, from `published_version + 1` on, in version order. The relay hands them
to the producer in that order (so per-stream order holds), waits for the acknowledgements,
and the publisher records the positions; it repeats until nothing is left or no progress is
made (Kafka unreachable).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

from django.db import transaction
from django.db.models import F

from ..eventstore.errors import EventStoreError
from ..eventstore.recorders import LOAD_COLUMNS, row_to_stored_event
from ..eventstore.store import EventStore
from ..models import Event, Stream

logger = logging.getLogger(__name__)


class KafkaUnavailableError(EventStoreError):
    pass


@dataclass
class RelayReport:
    published: int = 0
    streams: int = 0
    remaining: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"published {self.published} events of {self.streams} streams in {self.seconds:.2f}s; "
                f"{self.remaining} still waiting")


def outbox_backlog(stream_types: Sequence[str] | None = None) -> int:
    """How many committed events Kafka has not acknowledged yet."""
    lagging = Stream.objects.filter(version__gt=F("published_version"))
    if stream_types:
        lagging = lagging.filter(stream_type__in=stream_types)
    lagging = lagging.values_list("version", "published_version")
    return sum(version - published for version, published in lagging)


def _published_total(stream_ids: list[str]) -> int:
    return sum(Stream.objects.filter(stream_id__in=stream_ids).values_list("published_version", flat=True))


def relay_outbox(store: EventStore, *, grace_seconds: float = 0.0, batch_size: int = 5000,
                 progress: Callable[[RelayReport], None] | None = None, flush_timeout: float = 60.0,
                 force_new_producer: bool = False, stream_types: Sequence[str] | None = None) -> RelayReport:
    """Publishes the backlog (of the given stream types, or all) until none is left or no progress."""
    if store.publisher is None:
        raise KafkaUnavailableError("publishing is switched off (KAFKA_PUBLISH_ENABLED=false)")
    started = time.monotonic()
    report = RelayReport()
    if not store.publisher.ensure_connected(force=force_new_producer):
        report.remaining = outbox_backlog(stream_types)
        raise KafkaUnavailableError(
            f"cannot publish to Kafka at {store.kafka_settings.bootstrap_servers}; {report.remaining} events wait "
            "in the outbox. Check the broker and run `manage.py provision_topics`."
        )
    seen_streams: set[str] = set()
    while True:
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=grace_seconds)
        # Streams whose first unacknowledged event is older than the grace period.
        heads = Event.objects.filter(stream__version__gt=F("stream__published_version"),
                                     version=F("stream__published_version") + 1, occurred_at__lt=cutoff)
        if stream_types:
            heads = heads.filter(stream__stream_type__in=stream_types)
        heads = heads.order_by("stream_id").values_list("stream_id", flat=True)[:batch_size]
        stream_ids = list(heads)
        if not stream_ids:
            break
        rows = (Event.objects.filter(stream_id__in=stream_ids, version__gt=F("stream__published_version"))
                .order_by("stream_id", "version").values_list("stream_id", *LOAD_COLUMNS)[:batch_size])
        events = [row_to_stored_event(row[0], row[1:]) for row in rows]
        before = _published_total(stream_ids)
        if not store.publisher.publish_backlog(events) or not store.publisher.flush(flush_timeout):
            break
        if _published_total(stream_ids) <= before:
            logger.warning("the relay made no progress (Kafka did not acknowledge); stopping this run")
            break
        report.published += len(events)
        seen_streams.update(stream_ids)
        report.streams = len(seen_streams)
        if progress:
            report.remaining = outbox_backlog(stream_types)
            progress(report)
    report.remaining = outbox_backlog(stream_types)
    report.seconds = time.monotonic() - started
    if report.published:
        logger.info("outbox relay: %s", report)
    return report


def refill_kafka(store: EventStore, *, progress: Callable[[RelayReport], None] | None = None,
                 batch_size: int = 5000, stream_types: Sequence[str] | None = None) -> RelayReport:
    """Publishes every stored event again, in per-stream order, and records the new positions.

    For a broker that came back empty (Tansu after a restart, a lost cluster). Topics are
    provisioned first, so that nothing is auto-created with another partition count.
    """
    from ..kafka.topics import check_topics

    check_topics(store.kafka_settings)
    streams, events = Stream.objects.all(), Event.objects.filter(published_at__isnull=False)
    if stream_types:
        streams, events = streams.filter(stream_type__in=stream_types), events.filter(stream__stream_type__in=stream_types)
    with transaction.atomic():
        streams.update(published_version=0)
        events.update(kafka_topic=None, kafka_partition=None, kafka_offset=None, published_at=None)
    # A producer that knew the old broker never recovers (UNKNOWN_PRODUCER_ID): start afresh.
    return relay_outbox(store, grace_seconds=0.0, batch_size=batch_size, progress=progress, force_new_producer=True,
                        stream_types=stream_types)
