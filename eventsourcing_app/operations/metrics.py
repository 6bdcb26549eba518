"""What /metrics shows: the counters and histograms every process keeps (eventsourcing_app/
metrics.py, added up over the processes that share a multiprocess directory) and the gauges
read from the database, which no single process knows: the outbox backlog and its oldest
event, the streams' lengths, each projector's lag and dead letters, erased subjects.

The database is never read on the scrape's time: a scrape that finds the gauges older than
GAUGES_MAX_AGE_SECONDS starts one refresh in a thread of its own (never two at once) and waits
for it at most GAUGES_WAIT_SECONDS, then serves the last values it has, with their age
(`teddy_metrics_gauges_age_seconds`). Each statement of a refresh may take
GAUGES_STATEMENT_TIMEOUT_MS at most (PostgreSQL), so a locked table or a hung database costs
a refresh, not the web server's workers. A part that could not be read is left out and
`teddy_metrics_source_up{source=...}` says 0; the rest is served.
"""
from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError, connections, transaction
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily

from .. import metrics
from ..eventstore import get_event_store
from ..eventstore.errors import first_line

logger = logging.getLogger(__name__)

STREAM_LENGTH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000)
GAUGES_MAX_AGE_SECONDS = 15.0  # Prometheus's usual scrape interval
GAUGES_WAIT_SECONDS = 1.5
GAUGES_STATEMENT_TIMEOUT_MS = 3000
# A refresh still running after this long is given up (a database that stopped answering in the
# middle of a query: the server's timeouts cannot end that): its sources count as down, and a
# new refresh may start once it ends or is itself given up (never more than one abandoned).
GAUGES_REFRESH_DEADLINE_SECONDS = 15.0
# The streams' lengths are one scan of the streams table: read at most this often.
STREAM_LENGTHS_MAX_AGE_SECONDS = 60.0
SOURCES = ("outbox", "streams", "projections", "personal_data")


class StoreGauges:
    """The database's gauges, refreshed off the scrape (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refreshing: threading.Thread | None = None
        self._started_at = 0.0
        self._abandoned: threading.Thread | None = None
        self._families: dict[str, list] = {}  # source -> its metric families; absent: its last read failed
        self._read_at: float | None = None  # monotonic time of the last refresh's end
        self._lengths: tuple[float, dict] | None = None
        self._failures_logged: dict[str, float] = {}

    def collect(self):
        started = None
        with self._lock:
            now = time.monotonic()
            if self._refreshing is not None and now - self._started_at > GAUGES_REFRESH_DEADLINE_SECONDS:
                logger.warning("metrics: a refresh of the database's gauges has run %.0fs; given up, its gauges are "
                               "left out", now - self._started_at)
                self._abandoned, self._refreshing = self._refreshing, None
                self._families.clear()
            stale = self._read_at is None or now - self._read_at > GAUGES_MAX_AGE_SECONDS
            if stale and self._refreshing is None and not (self._abandoned and self._abandoned.is_alive()):
                started = self._refreshing = threading.Thread(target=self._refresh, name="metrics-gauges", daemon=True)
                self._started_at = now
                started.start()
        if started is not None:  # only the scrape that started it waits, and only a moment
            started.join(GAUGES_WAIT_SECONDS)
        with self._lock:
            read = dict(self._families)
            read_at = self._read_at
        families = [f for source in SOURCES for f in read.get(source, [])]
        yield from families
        sources = GaugeMetricFamily("teddy_metrics_source_up", "Whether the last refresh could read each source of "
                                    "the database's gauges (1) or not (0).", labels=["source"])
        for source in SOURCES:
            sources.add_metric([source], int(source in read))
        yield sources
        yield GaugeMetricFamily("teddy_metrics_gauges_age_seconds", "How old the database's gauges served are "
                                "(-1: never read yet).", value=-1.0 if read_at is None else time.monotonic() - read_at)

    def refresh_now(self) -> None:
        """Reads the gauges in the calling thread (a test, a command), after any refresh under way."""
        with self._lock:
            running = self._refreshing
        if running is not None:
            running.join()
        self._store(self._read_all())

    def _refresh(self) -> None:
        try:
            self._store(self._read_all(), only_if_current=True)
        finally:
            connections.close_all()  # this thread's own connection
            with self._lock:
                if self._refreshing is threading.current_thread():
                    self._refreshing = None

    def _store(self, results: dict[str, list | None], only_if_current: bool = False) -> None:
        with self._lock:
            if only_if_current and self._refreshing is not threading.current_thread():
                return  # given up meanwhile: what it read is too old to serve
            for source, families in results.items():
                if families is not None:
                    self._families[source] = families
                else:
                    self._families.pop(source, None)
            self._read_at = time.monotonic()

    def _read_all(self) -> dict[str, list | None]:
        results: dict[str, list | None] = {source: None for source in SOURCES}
        try:
            db = get_event_store().recorder.connection()
            with transaction.atomic(using=db.alias):
                if db.vendor == "postgresql":
                    with db.cursor() as cursor:
                        # One snapshot for every statement: totals read one after the other agree
                        # (a projector's applied events never run ahead of the stored ones).
                        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        cursor.execute(f"SET LOCAL statement_timeout = {GAUGES_STATEMENT_TIMEOUT_MS}; "
                                       f"SET LOCAL lock_timeout = {GAUGES_STATEMENT_TIMEOUT_MS // 2}")
                now = get_event_store().recorder.database_now()
                for source in SOURCES:
                    try:
                        with transaction.atomic(using=db.alias):  # a savepoint: one part's failure is its own
                            results[source] = list(getattr(self, f"_{source}")(now))
                    except DatabaseError as exc:
                        self._log_failure(source, exc)
        except Exception as exc:  # noqa: BLE001 - no connection at all: every part is down
            self._log_failure("database", exc)
        return results

    def _log_failure(self, source: str, exc: Exception) -> None:
        # One line per source and minute, not one per scrape.
        now = time.monotonic()
        if now - self._failures_logged.get(source, -60.0) >= 60.0:
            self._failures_logged[source] = now
            logger.warning("metrics: could not read %s from the database (%s); its gauges are left out", source,
                           first_line(exc))

    def _outbox(self, now):
        recorder = get_event_store().recorder
        held = recorder.held_streams()
        yield GaugeMetricFamily("teddy_outbox_backlog_events", "Committed events Kafka has not acknowledged yet.",
                                value=recorder.outbox_backlog())
        yield GaugeMetricFamily("teddy_streams_held_by_poison_events", "Streams whose publication waits behind an "
                                "event Kafka refused for good (`manage.py relay_outbox --poison`).", value=len(held))
        try:  # the costly one, with every stream unpublished: its timeout leaves the backlog served
            with transaction.atomic(using=recorder.alias):
                oldest = recorder.oldest_unpublished(exclude=held)
        except DatabaseError as exc:
            self._log_failure("outbox age", exc)
            return
        age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily("teddy_outbox_oldest_unpublished_age_seconds", "How long the oldest event not yet "
                                "acknowledged by Kafka has waited (streams held by a poison event aside).", value=age)

    def _streams(self, now):
        if self._lengths is None or time.monotonic() - self._lengths[0] > STREAM_LENGTHS_MAX_AGE_SECONDS:
            self._lengths = (time.monotonic(),
                             get_event_store().recorder.stream_length_distribution(STREAM_LENGTH_BOUNDS))
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

    def _projections(self, now):
        from ..readside.operations import projection_gauges

        lag_events = GaugeMetricFamily("teddy_projection_lag_events", "Events of the store the projector's served "
                                       "generation has not applied yet (held streams aside).", labels=["projector"])
        lag_seconds = GaugeMetricFamily("teddy_projection_lag_seconds", "Age of the oldest event the projector has "
                                        "not applied yet (0 when caught up; held streams aside; when too costly to "
                                        "read, the time since it last reached the end of Kafka; +Inf if it never "
                                        "did).", labels=["projector"])
        dead = GaugeMetricFamily("teddy_dead_letters", "Unresolved dead letters (events a projector could not "
                                 "apply; `manage.py projections retry-dead-letters`).", labels=["projector"])
        held = GaugeMetricFamily("teddy_projection_held_streams", "Streams a projector holds behind a dead letter or "
                                 "a gap.", labels=["projector"])
        seen = GaugeMetricFamily("teddy_projection_last_seen_age_seconds", "Time since the projector's runner last "
                                 "wrote a batch or a heartbeat.", labels=["projector"])
        for row in projection_gauges(now):
            lag_events.add_metric([row["name"]], row["lag_events"])
            lag_seconds.add_metric([row["name"]], float("inf") if row["lag_seconds"] is None else row["lag_seconds"])
            dead.add_metric([row["name"]], row["dead_letters"])
            held.add_metric([row["name"]], row["held_streams"])
            if row["last_seen_seconds"] is not None:
                seen.add_metric([row["name"]], row["last_seen_seconds"])
        yield from (lag_events, lag_seconds, dead, held, seen)

    def _personal_data(self, now):
        yield GaugeMetricFamily("teddy_erased_subjects", "Data subjects whose data key was destroyed (erased).",
                                value=get_event_store().recorder.erased_subjects())


_gauges = StoreGauges()
_store_registry = CollectorRegistry(auto_describe=False)
_store_registry.register(_gauges)


def refresh_gauges() -> None:
    """The database's gauges read now, for the next scrape to serve (tests, commands)."""
    _gauges.refresh_now()


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

    try:
        start_http_server(port, registry=process_registry())
    except OSError as exc:  # the worker's work matters more than its metrics: it goes on
        logger.error("WORKER_METRICS_PORT=%d cannot be served (%s): this worker's metrics are not scraped; "
                     "free the port or choose another", port, exc.strerror or exc)
        return
    logger.info("worker metrics on port %d (/metrics)", port)
