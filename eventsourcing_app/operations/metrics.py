"""What /metrics shows: the counters and histograms every process keeps (eventsourcing_app/
metrics.py, added up over all processes in multiprocess mode) and the gauges read from the
database at scrape time, which no single process knows: the outbox backlog and its oldest
event, the streams' lengths, each projector's lag and dead letters, erased subjects.

A part that cannot be read (the database is down, say) is left out of that scrape and
`teddy_metrics_source_up{source=...}` says 0: the rest is still served, and readiness says why.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily

from .. import metrics
from ..eventstore import get_event_store

logger = logging.getLogger(__name__)

STREAM_LENGTH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000)
# The streams' lengths are one scan of the streams table: read at most this often.
STREAM_LENGTHS_MAX_AGE_SECONDS = 60.0


class StoreCollector:
    """Gauges read from the database when scraped."""

    def __init__(self) -> None:
        self._lengths: tuple[float, list] | None = None
        self._lock = threading.Lock()

    def collect(self):
        up = GaugeMetricFamily("teddy_metrics_source_up", "Whether this scrape could read each source of gauges "
                               "(1) or not (0).", labels=["source"])
        for source, part in (("outbox", self._outbox), ("streams", self._streams),
                             ("projections", self._projections), ("personal_data", self._personal_data)):
            try:
                families = list(part())
            except Exception as exc:  # noqa: BLE001 - one part down must not fail the scrape
                logger.warning("metrics: could not read %s (%s)", source, exc)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _outbox(self):
        recorder = get_event_store().recorder
        held = recorder.held_streams()
        oldest = recorder.oldest_unpublished(exclude=held)
        age = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily("teddy_outbox_backlog_events", "Committed events Kafka has not acknowledged yet.",
                                value=recorder.outbox_backlog())
        yield GaugeMetricFamily("teddy_outbox_oldest_unpublished_age_seconds", "How long the oldest event not yet "
                                "acknowledged by Kafka has waited (streams held by a poison event aside).", value=age)
        yield GaugeMetricFamily("teddy_streams_held_by_poison_events", "Streams whose publication waits behind an "
                                "event Kafka refused for good (`manage.py relay_outbox --poison`).", value=len(held))

    def _streams(self):
        with self._lock:
            if self._lengths is None or time.monotonic() - self._lengths[0] > STREAM_LENGTHS_MAX_AGE_SECONDS:
                rows = get_event_store().recorder.stream_length_distribution(STREAM_LENGTH_BOUNDS)
                self._lengths = (time.monotonic(), rows)
            rows = self._lengths[1]
        lengths = GaugeHistogramMetricFamily("teddy_stream_length_events", "Streams by their number of events "
                                             f"(read at most every {STREAM_LENGTHS_MAX_AGE_SECONDS:.0f}s).",
                                             labels=["stream_type"])
        streams = GaugeMetricFamily("teddy_streams", "Streams in the store.", labels=["stream_type"])
        events = GaugeMetricFamily("teddy_stored_events", "Events in the store.", labels=["stream_type"])
        for stream_type, (cumulative, count, total) in sorted(rows.items()):
            buckets = [(str(bound), value) for bound, value in zip(STREAM_LENGTH_BOUNDS, cumulative)]
            lengths.add_metric([stream_type], buckets + [("+Inf", count)], gsum_value=total)
            streams.add_metric([stream_type], count)
            events.add_metric([stream_type], total)
        yield from (lengths, streams, events)

    def _projections(self):
        from ..readside.operations import projection_status

        lag_events = GaugeMetricFamily("teddy_projection_lag_events", "Events of the store the projector's served "
                                       "generation has not applied yet.", labels=["projector"])
        lag_seconds = GaugeMetricFamily("teddy_projection_lag_seconds", "Age of the oldest event the projector has "
                                        "not applied yet (0 when caught up).", labels=["projector"])
        dead = GaugeMetricFamily("teddy_dead_letters", "Unresolved dead letters (events a projector could not "
                                 "apply; `manage.py projections retry-dead-letters`).", labels=["projector"])
        held = GaugeMetricFamily("teddy_projection_held_streams", "Streams a projector holds behind a dead letter or "
                                 "a gap.", labels=["projector"])
        seen = GaugeMetricFamily("teddy_projection_last_seen_age_seconds", "Time since the projector's runner last "
                                 "wrote a batch or a heartbeat.", labels=["projector"])
        now = datetime.now(timezone.utc)
        for status in projection_status():
            lag_events.add_metric([status.name], status.lag_events)
            lag_seconds.add_metric([status.name], status.lag_seconds or 0.0)
            dead.add_metric([status.name], status.dead_letters)
            held.add_metric([status.name], status.held_streams)
            if status.last_seen is not None:
                seen.add_metric([status.name], max(0.0, (now - status.last_seen).total_seconds()))
        yield from (lag_events, lag_seconds, dead, held, seen)

    def _personal_data(self):
        yield GaugeMetricFamily("teddy_erased_subjects", "Data subjects whose data key was destroyed (erased).",
                                value=get_event_store().recorder.erased_subjects())


_store_registry = CollectorRegistry(auto_describe=False)
_store_registry.register(StoreCollector())


def process_registry() -> CollectorRegistry:
    """The values counted by the processes of this host: all that write to the multiprocess
    directory, or this process alone."""
    if not metrics.MULTIPROCESS_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROCESS_DIR)
    return registry


def exposition() -> tuple[bytes, str]:
    """The text the web server's /metrics serves (the processes' values and the database's
    gauges), and its content type."""
    return generate_latest(process_registry()) + generate_latest(_store_registry), CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int) -> None:
    """A Celery worker's /metrics: its processes' values only (the database's gauges come from
    the web server; served twice, a sum over targets would count them twice)."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=process_registry())
    logger.info("worker metrics on port %d (/metrics)", port)
