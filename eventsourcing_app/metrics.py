"""The Prometheus metrics that the event store, the publisher, the snapshots, the projectors
and the compliance actions count as they work.

With PROMETHEUS_MULTIPROC_DIR set, every process (gunicorn workers, Celery pool processes,
beat, commands) writes its values to files there and /metrics adds them up, so one scrape of
the web server shows the whole deployment. Each process's files are named after its host and
pid: containers sharing the directory never write to one another's files. Without the
variable the values live in the process, as for a test or a one-off command.

Labels carry kinds (stream type, event type, projector), never a stream id or anything about a
person: a label value makes a time series, and the metrics leave the privacy boundary.
What is counted from the database at scrape time (backlogs, lag, lengths) is in
operations/metrics.py.
"""
from __future__ import annotations

import os
import re
import socket

from prometheus_client import Counter, Histogram, values

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# No "_": prometheus_client reads the pid back from file names split on "_".
_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


def _process_identifier() -> str:
    return f"{_HOST}-{os.getpid()}"


if MULTIPROCESS_DIR:
    # Read again after a fork (Celery's and gunicorn's children get files of their own).
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_EVENT_COUNT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000)

# --- appends
EVENTS_APPENDED = Counter("teddy_events_appended", "Events committed to the store.", ["stream_type", "event_type"])
APPEND_SECONDS = Histogram("teddy_append_duration_seconds", "Time of one append call, from the checks to the "
                           "database's answer (successful or not).", ["stream_type"], buckets=_LATENCY_BUCKETS)
APPEND_CONFLICTS = Counter("teddy_append_conflicts", "Appends refused because the stream had moved past the "
                           "expected version (optimistic concurrency).", ["stream_type"])
APPEND_IDEMPOTENT = Counter("teddy_append_idempotent", "Appends of events already stored (a retry): "
                            "answered with the stored version, nothing written.", ["stream_type"])
APPEND_FAILURES = Counter("teddy_append_failures", "Appends that failed for another reason than a conflict "
                          "(database unavailable, deadlock, refused value).", ["stream_type", "reason"])

# --- publication
EVENTS_PUBLISHED = Counter("teddy_events_published", "Kafka acknowledgements of events recorded (an event sent "
                           "twice, by a retry or a refill, counts twice).")
PUBLISH_ERRORS = Counter("teddy_publish_errors", "Sends that Kafka did not take or acknowledge (the outbox relay "
                         "sends them again).", ["reason"])
PRODUCER_REPLACEMENTS = Counter("teddy_kafka_producer_replacements", "Kafka producers replaced after a fault.")
POISON_EVENTS = Counter("teddy_poison_events", "Times Kafka refused an event for good (the stream is held).")

# --- snapshots and loads
SNAPSHOTS_CREATED = Counter("teddy_snapshots_created", "Snapshots stored.", ["stream_type"])
LOAD_SECONDS = Histogram("teddy_aggregate_load_duration_seconds", "Time of one aggregate load, by what it started "
                         "from (empty: every event replayed; snapshot; cache).", ["stream_type", "started_from"],
                         buckets=_LATENCY_BUCKETS)
LOAD_EVENTS_REPLAYED = Histogram("teddy_aggregate_load_events_replayed", "Events replayed by one aggregate load.",
                                 ["stream_type", "started_from"], buckets=_EVENT_COUNT_BUCKETS)

# --- projections
PROJECTION_EVENTS_APPLIED = Counter("teddy_projection_events_applied", "Events applied to read models.",
                                    ["projector"])
PROJECTION_BATCH_SECONDS = Histogram("teddy_projection_batch_duration_seconds", "Time of one projector batch "
                                     "(read-model rows and checkpoint in one transaction).", ["projector"],
                                     buckets=_LATENCY_BUCKETS)
DEAD_LETTERS_CREATED = Counter("teddy_dead_letters_created", "Events a projector could not apply (kept as dead "
                               "letters; their streams wait).", ["projector"])

# --- personal data
PERSONAL_DATA_REVEALS = Counter("teddy_personal_data_reveals", "Personal data shown unmasked to staff (each reveal "
                                "is also in the access log).")
PERSONAL_DATA_EXPORTS = Counter("teddy_personal_data_exports", "Exports of audit data, by whether personal data "
                                "was decrypted.", ["decrypted"])
ERASURES = Counter("teddy_erasures", "Children whose personal data was erased (data key destroyed).")


def initialise(stream_types, projectors) -> None:
    """Makes every series that may be counted exist from the start at 0, so that a dashboard
    and an alert see "none yet" rather than "no data" (and rate() sees the first increase)."""
    for stream_type in stream_types:
        for family in (APPEND_CONFLICTS, APPEND_IDEMPOTENT, SNAPSHOTS_CREATED, APPEND_SECONDS):
            family.labels(stream_type)
        for started_from in ("empty", "snapshot", "cache"):
            LOAD_SECONDS.labels(stream_type, started_from)
            LOAD_EVENTS_REPLAYED.labels(stream_type, started_from)
        for reason in ("StoreUnavailableError", "TransientStoreError", "EventStoreError"):
            APPEND_FAILURES.labels(stream_type, reason)
    for reason in ("produce", "not_acknowledged", "refused", "purged"):
        PUBLISH_ERRORS.labels(reason)
    for projector in projectors:
        PROJECTION_EVENTS_APPLIED.labels(projector)
        PROJECTION_BATCH_SECONDS.labels(projector)
        DEAD_LETTERS_CREATED.labels(projector)
    for decrypted in ("true", "false"):
        PERSONAL_DATA_EXPORTS.labels(decrypted)


# What /metrics shows as soon as the stack has done some work (the dashboard shows each; the
# run command's --check and the tests hold it to that). Sample names, as scraped.
REQUIRED_METRICS = (
    "teddy_events_appended_total",
    "teddy_append_duration_seconds_bucket",
    "teddy_append_conflicts_total",
    "teddy_append_idempotent_total",
    "teddy_append_failures_total",
    "teddy_outbox_backlog_events",
    "teddy_outbox_oldest_unpublished_age_seconds",
    "teddy_events_published_total",
    "teddy_publish_errors_total",
    "teddy_kafka_producer_replacements_total",
    "teddy_poison_events_total",
    "teddy_streams_held_by_poison_events",
    "teddy_snapshots_created_total",
    "teddy_aggregate_load_duration_seconds_bucket",
    "teddy_aggregate_load_events_replayed_bucket",
    "teddy_stream_length_events_bucket",
    "teddy_streams",
    "teddy_stored_events",
    "teddy_projection_lag_events",
    "teddy_projection_lag_seconds",
    "teddy_projection_events_applied_total",
    "teddy_projection_batch_duration_seconds_bucket",
    "teddy_dead_letters",
    "teddy_dead_letters_created_total",
    "teddy_personal_data_reveals_total",
    "teddy_personal_data_exports_total",
    "teddy_erasures_total",
    "teddy_erased_subjects",
    "teddy_metrics_source_up",
    "django_http_requests_latency_seconds_by_view_method_bucket",
    "django_http_responses_total_by_status_view_method_total",
)
