"""Operators' view: /metrics counts what the store, its publisher, loads, snapshots,
projections and compliance actions did, across processes; the Grafana dashboard shows only
metrics the app exports; log lines carry the request's ids, as JSON when asked.

Proven here:
- appends, conflicts, idempotent re-appends, loads (by what they started from), snapshots,
  reveals, exports and erasures are counted once each, and an append rolled back with its
  caller's transaction is not counted;
- /metrics serves the database's gauges (outbox backlog, stream lengths, projection lag and
  dead letters per projector, erased subjects) and every metric operators are promised;
- every query of every panel of deploy/grafana/teddy-dashboard.json names a metric /metrics
  serves, and every promised metric is on some panel;
- in multiprocess mode, /metrics of one process adds up what other OS processes counted
  (a forked child included, as in a Celery or gunicorn pool);
- LOG_FORMAT=json writes one JSON object per line with the correlation id, causation id,
  stream id and actor of an event-store line, in a Django process and a Celery one; the
  default stays a readable line with the same ids.
"""
from __future__ import annotations

import json
import time
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import transaction
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from eventsourcing_app.domain import Child
from eventsourcing_app.eventstore import ConcurrencyError, EventSourcingRepositoryImpl, get_snapshot_store
from eventsourcing_app.metrics import REQUIRED_METRICS
from eventsourcing_app.operations import metrics as served
from eventsourcing_app.operations.metrics import refresh_gauges
from eventsourcing_app.readside.projectors import PROJECTORS
from tests.conftest import unique_stream
from tests.events import notes
from tests.integration.conftest import REPO, database_url, process_env
from tests.integration.helpers import new_child

DASHBOARD = REPO / "deploy" / "grafana" / "teddy-dashboard.json"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client: Client | None = None, fresh: bool = True) -> dict[str, list]:
    """/metrics as a user of it sees it: sample name -> [(labels, value)]; with `fresh`, the
    database's gauges read just before (a scrape serves them up to some seconds old)."""
    if fresh:
        refresh_gauges()
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


# --- counted in the process -----------------------------------------------------------

def test_appends_conflicts_and_re_appends_are_counted_once_each(store):
    stream = unique_stream("test")
    labels = {"stream_type": "test", "event_type": "test.NoteRecorded"}
    appended, conflicts = value("teddy_events_appended_total", **labels), value("teddy_append_conflicts_total",
                                                                                 stream_type="test")
    idempotent = value("teddy_append_idempotent_total", stream_type="test")
    calls = value("teddy_append_duration_seconds_count", stream_type="test")

    events = notes(3)
    store.append_events_sync(stream, events, expected_version=0)
    store.append_events_sync(stream, events, expected_version=0)  # a retry of the same events
    with pytest.raises(ConcurrencyError):
        store.append_events_sync(stream, notes(1), expected_version=0)
    with pytest.raises(RuntimeError), transaction.atomic():
        store.append_events_sync(stream, notes(2), expected_version=3)
        raise RuntimeError("the caller's transaction fails: nothing was appended")

    assert value("teddy_events_appended_total", **labels) == appended + 3
    assert value("teddy_append_idempotent_total", stream_type="test") == idempotent + 1
    assert value("teddy_append_conflicts_total", stream_type="test") == conflicts + 1
    assert value("teddy_append_duration_seconds_count", stream_type="test") == calls + 4


def test_loads_are_timed_by_what_they_started_from_and_snapshots_are_counted(store):
    repository = EventSourcingRepositoryImpl(Child, cache=False)
    child = new_child()
    for age in (7, 8, 9):
        child.update_profile({"age": age})
    repository.save_sync(child)

    def loads(started_from: str) -> tuple[float, float]:
        return (value("teddy_aggregate_load_duration_seconds_count", stream_type="child", started_from=started_from),
                value("teddy_aggregate_load_events_replayed_sum", stream_type="child", started_from=started_from))

    empty, from_snapshot = loads("empty"), loads("snapshot")
    snapshots = value("teddy_snapshots_created_total", stream_type="child")
    loaded = repository.load_sync(child.id)
    assert loads("empty") == (empty[0] + 1, empty[1] + loaded.version)

    get_snapshot_store().save_snapshot_sync(loaded.stream_id, loaded)
    get_snapshot_store().save_snapshot_sync(loaded.stream_id, loaded)  # stored already: not stored again
    assert value("teddy_snapshots_created_total", stream_type="child") == snapshots + 1
    loaded.update_profile({"age": 10})
    repository.save_sync(loaded)
    repository.load_sync(child.id)
    assert loads("snapshot") == (from_snapshot[0] + 1, from_snapshot[1] + 1)  # one event after the snapshot


def test_reveals_exports_and_erasures_are_counted():
    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.compliance import grant_export, reveal
    from eventsourcing_app.application.privacy import erase_child_data
    from eventsourcing_app.eventstore import get_event_store
    from tests.integration.compliance_helpers import make_family, staff_user

    family, officer = make_family("metrics"), staff_user("privacy-officer")
    before = (value("teddy_personal_data_reveals_total"), value("teddy_personal_data_exports_total", decrypted="true"),
              value("teddy_erasures_total"))
    stream = f"child.{family.child_id}"
    reveal(officer, get_event_store().load_events_sync(stream), scope="stream", target=stream, reason="metrics check")
    grant_export(officer, scope="stream", target=stream, export_format="csv", reason="metrics check", decrypted=True,
                 event_count=5, up_to_position=None)
    erase_child_data(actor=Actor.system("tests"), child_id=family.child_id, reason="parent_request")
    erase_child_data(actor=Actor.system("tests"), child_id=family.child_id, reason="parent_request")  # nothing left
    assert (value("teddy_personal_data_reveals_total"), value("teddy_personal_data_exports_total", decrypted="true"),
            value("teddy_erasures_total")) == (before[0] + 1, before[1] + 1, before[2] + 1)
    erased = scrape()["teddy_erased_subjects"][0][1]
    assert erased >= 1


# --- served -----------------------------------------------------------------------------

def test_metrics_serve_the_database_gauges_and_every_promised_metric(store):
    stream = unique_stream("test")
    store.append_events_sync(stream, notes(4), expected_version=0)
    store.flush(10)
    Client().get("/health/")  # a request by view and status
    samples = scrape()

    missing = [name for name in REQUIRED_METRICS if name not in samples]
    assert not missing, f"/metrics lacks {missing}"
    assert {labels["source"]: v for labels, v in samples["teddy_metrics_source_up"]} == {
        "outbox": 1, "streams": 1, "projections": 1, "personal_data": 1}
    assert {labels["projector"] for labels, _ in samples["teddy_projection_lag_events"]} == set(PROJECTORS)
    assert {labels["projector"] for labels, _ in samples["teddy_dead_letters"]} == set(PROJECTORS)
    # The stream-length buckets are cumulative and end with every stream of the type.
    buckets = {labels["le"]: v for labels, v in samples["teddy_stream_length_events_bucket"]
               if labels["stream_type"] == "test"}
    streams = dict((labels["stream_type"], v) for labels, v in samples["teddy_streams"])
    assert buckets["+Inf"] == streams["test"] >= 1
    ordered = [buckets[le] for le in sorted(buckets, key=lambda le: float(le))]
    assert ordered == sorted(ordered)
    assert samples["teddy_outbox_backlog_events"][0][1] == store.recorder.outbox_backlog()
    # Labels name kinds only, never a stream, a person or an event.
    for name, series in samples.items():
        for labels, _ in series:
            assert stream not in " ".join(labels.values()), name


def test_the_dashboard_shows_only_metrics_the_app_exports(store):
    store.append_events_sync(unique_stream("test"), notes(1), expected_version=0)
    Client().get("/health/")  # so that the request metrics have a view
    exported = set(scrape())
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert panels and all(p.get("targets") for p in panels), "every panel has queries"

    shown: set[str] = set()
    for panel in panels:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}, which /metrics does not serve"
            shown |= names
    families = {re.sub(r"_(bucket|total|count|sum)$", "", name) for name in shown} | shown
    not_shown = [name for name in REQUIRED_METRICS if name not in shown and
                 re.sub(r"_(bucket|total)$", "", name) not in families]
    assert not not_shown, f"the dashboard shows no panel of {not_shown}"


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names or label values (Grafana's $__variables are removed first)."""
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end():].lstrip()[:1]
        if following != "(" and match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_the_promql_reader_finds_the_metric_names():
    assert metric_names('histogram_quantile(0.99, sum by (le, view) (rate(x_bucket{a="b"}[$__rate_interval])))') \
        == {"x_bucket"}
    assert metric_names("topk(10, sum by (t) (rate(a_total[5m]))) / on (t) b") == {"a_total", "b"}


# --- across processes -------------------------------------------------------------------

APPENDER = r"""
import os, sys
import django
django.setup()
from eventsourcing_app.eventstore import get_event_store
from tests.events import notes
prefix, count, fork = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fork"
store = get_event_store()
store.append_events_sync(f"test.{prefix}-parent", notes(count), expected_version=0)
if fork:  # as a Celery or gunicorn pool makes its workers
    from django.db import connections
    connections.close_all()
    pid = os.fork()
    if pid == 0:
        get_event_store().append_events_sync(f"test.{prefix}-child", notes(count), expected_version=0)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
"""

SCRAPER = r"""
import django
django.setup()
from eventsourcing_app.operations.metrics import exposition
print(exposition()[0].decode())
"""


def _env(**extra) -> dict:
    return process_env(PYTHONPATH=str(REPO), **extra)


def test_metrics_of_several_processes_add_up_in_one_scrape(store, tmp_path):
    directory = tmp_path / "metrics"
    env = _env(PROMETHEUS_MULTIPROC_DIR=str(directory), LOG_LEVEL="WARNING")
    tag = uuid.uuid4().hex[:8]
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, f"mp-{tag}-{n}", str(5 + n), "fork" if n == 0 else "-"],
                                cwd=REPO, env=env) for n in range(3)]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    # 5 events in the first process and 5 in its forked child, 6 and 7 in the two others.
    files = sorted(p.name for p in directory.glob("*.db"))
    assert len({re.sub(r"^\w+?_", "", name) for name in files}) >= 4, files  # one set of files per process

    scraped = subprocess.run([sys.executable, "-c", SCRAPER], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
    assert scraped.returncode == 0, scraped.stderr[-2000:]
    appended = sum(sample.value for family in text_string_to_metric_families(scraped.stdout)
                   for sample in family.samples if sample.name == "teddy_events_appended_total"
                   and sample.labels.get("stream_type") == "test")
    assert appended == 5 + 5 + 6 + 7


# --- logs -------------------------------------------------------------------------------

LOGGER = r"""
import logging, sys
import django
django.setup()
if sys.argv[1].startswith("celery:"):  # as a worker configures logging: --loglevel, --logfile
    from teddy_project.celery import _use_django_logging
    _, level, logfile = sys.argv[1].split(":", 2)
    _use_django_logging(loglevel=getattr(logging, level), logfile=logfile)
from eventsourcing_app.eventstore import get_event_store
from eventsourcing_app.observability import event_context
from tests.events import notes
store, events = get_event_store(), notes(2)
with event_context(correlation_id="corr-log-1", causation_id="cause-log-1", actor="user:log-test"):
    store.append_events_sync(sys.argv[2], events, expected_version=0)
    store.append_events_sync(sys.argv[2], events, expected_version=0)  # a retry: the store logs it
store.flush(10)
"""


def _log_lines(kind: str, stream: str, **env) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOGGER, kind, stream], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    output = Path(kind.split(":", 2)[2]).read_text() if kind.startswith("celery:") else done.stderr
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("kind", ["django", "celery"])
def test_json_logs_carry_the_ids_of_each_event_store_line(store, kind, tmp_path):
    stream = unique_stream("test")
    if kind == "celery":  # a worker's --logfile, and LOG_LEVEL, apply to the app's configuration
        kind = f"celery:INFO:{tmp_path / 'worker.log'}"
        quiet = _log_lines(f"celery:INFO:{tmp_path / 'quiet.log'}", unique_stream("test"), LOG_FORMAT="json",
                           LOG_LEVEL="WARNING")
        assert not [line for line in quiet if "already stored" in line], quiet
    lines = _log_lines(kind, stream, LOG_FORMAT="json", LOG_LEVEL="INFO")
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:300]}")
    store_lines = [r for r in records if r["logger"] == "eventsourcing_app.eventstore.store"]
    assert store_lines, records
    line = store_lines[0]
    assert "already stored" in line["message"]
    assert (line["correlation_id"], line["causation_id"], line["stream_id"], line["actor"]) == (
        "corr-log-1", "cause-log-1", stream, "user:log-test")
    assert line["level"] == "INFO" and line["timestamp"].endswith("+00:00")
    assert all({"timestamp", "level", "logger", "message", "correlation_id", "stream_id"} <= set(r) for r in records)


def test_plain_logs_stay_readable_lines_with_the_same_ids(store):
    stream = unique_stream("test")
    lines = [line for line in _log_lines("django", stream, LOG_LEVEL="INFO") if "already stored" in line]
    assert len(lines) == 1 and not lines[0].startswith("{")
    assert f"[cid=corr-log-1 caused-by=cause-log-1 stream={stream} actor=user:log-test]" in lines[0]



def test_requests_are_logged_with_their_ids_when_asked(caplog):
    from django.test import override_settings

    with override_settings(LOG_REQUESTS=True), caplog.at_level("INFO", logger="eventsourcing_app.requests"):
        response = Client().get("/health/?q=Mila", HTTP_X_CORRELATION_ID="req-access-1")
    lines = [r for r in caplog.records if r.name == "eventsourcing_app.requests"]
    assert response.status_code == 200 and len(lines) == 1
    line = lines[0]
    assert (line.method, line.path, line.status, line.correlation_id) == ("GET", "/health/", 200, "req-access-1")
    assert "Mila" not in line.getMessage()  # the query string (search terms) is not logged
    with caplog.at_level("INFO", logger="eventsourcing_app.requests"):
        Client().get("/health/")
    assert len([r for r in caplog.records if r.name == "eventsourcing_app.requests"]) == 1  # off by default


def test_a_celery_worker_serves_its_pool_processes_metrics_on_its_own_port(store, tmp_path):
    """As each worker container is scraped in production: the task ran in a pool process, the
    main process serves its count (and none of the database's gauges, which the web server has)."""
    import time
    import urllib.request

    from devtools.embedded import free_port
    from teddy_project.celery import app
    from tests.conftest import LOG_DIR

    # Nothing else schedules this stream's snapshot (another worker of the session would take it).
    repository = EventSourcingRepositoryImpl(Child, cache=False, snapshot_scheduler=lambda stream_id: None)
    child = new_child()
    for age in (7, 8, 9, 10, 11, 7, 8, 9, 10):  # ten events: a snapshot is due
        child.update_profile({"age": age})
    repository.save_sync(child)

    port, queue, name = free_port(), f"metrics-{uuid.uuid4().hex[:8]}", f"metrics-{uuid.uuid4().hex[:6]}@localhost"
    env = _env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), WORKER_METRICS_PORT=str(port),
               PROJECTIONS_RUN_IN_WORKER="false", CELERY_TASK_DEFAULT_QUEUE=queue, LOG_FORMAT="json")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"celery-metrics-port-{queue}.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "teddy_project", "worker", "-n", name,
                                   "-Q", queue, "--concurrency=1", "--loglevel=INFO"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not app.control.ping(destination=[name], timeout=0.5):
            assert worker.poll() is None and time.monotonic() < deadline, f"the worker did not start; see {log.name}"
        app.send_task("eventsourcing_app.tasks.create_snapshot", args=[child.stream_id], queue=queue)
        samples: dict = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for family in text_string_to_metric_families(response.read().decode())
                           for s in family.samples}
            if samples.get(("teddy_snapshots_created_total", (("stream_type", "child"),))):
                break
            time.sleep(0.2)
        assert samples.get(("teddy_snapshots_created_total", (("stream_type", "child"),))) == 1, \
            "the worker's /metrics does not show the snapshot its pool process took"
        assert not any(name == "teddy_outbox_backlog_events" for name, _ in samples)
    finally:
        worker.terminate()
        worker.wait(30)
    # The worker logged through the app's configuration: JSON lines, the task's line with its id.
    records = [json.loads(line) for line in Path(log.name).read_text().splitlines() if line.startswith("{")]
    done = [r for r in records if r["logger"] == "celery.app.trace" and "succeeded" in r["message"]]
    assert done and done[0]["correlation_id"] and done[0]["actor"] == "system:eventsourcing_app.tasks.create_snapshot"


def test_a_locked_table_costs_the_gauges_not_the_scrape(store):
    """A scrape never waits on the database longer than a moment: with the streams table locked
    by someone else it answers with the last values and says which sources it could not read;
    once the lock is gone the next refresh reads them all again."""
    import psycopg

    scrape()  # values to fall back on
    locker = psycopg.connect(database_url().replace("postgres://", "postgresql://"), autocommit=False)
    try:
        locker.execute("LOCK TABLE eventstore_stream IN ACCESS EXCLUSIVE MODE")
        served._gauges._read_at = None  # stale: the scrape starts a refresh
        started = time.monotonic()
        samples = scrape(fresh=False)  # answers while the refresh waits on the lock
        waited = time.monotonic() - started
        assert "teddy_outbox_backlog_events" in samples  # the last values are still served
        refresh_gauges()  # this one meets the lock timeout
        up = {labels["source"]: v for labels, v in scrape(fresh=False)["teddy_metrics_source_up"]}
        assert up["outbox"] == 0 and up["projections"] == 0, up  # (stream lengths: read a minute ago, kept)
        assert "teddy_outbox_backlog_events" not in scrape(fresh=False)  # not served as if it were current
    finally:
        locker.rollback()
        locker.close()
    up = {labels["source"]: v for labels, v in scrape()["teddy_metrics_source_up"]}
    assert set(up.values()) == {1}, up
    print(f"scrape with the streams table locked answered in {waited:.2f}s")


def test_metrics_answer_only_the_monitoring_network():
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    for address in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "not-an-address"):
        assert Client(REMOTE_ADDR=address).get("/metrics").status_code == 404, address


def test_made_up_http_methods_make_no_new_series():
    for method in ("QWERTY", "ZXCVB"):
        Client().generic(method, "/health/")
    labels = {value for series in scrape(fresh=False).values() for labels, _ in series for value in labels.values()}
    assert "<invalid method>" in labels and not {"QWERTY", "ZXCVB"} & labels


def test_every_answer_is_logged_and_django_s_own_lines_keep_the_ids_but_not_the_query(caplog):
    from django.test import override_settings

    from eventsourcing_app.observability import LogContextFilter, json_formatter

    with override_settings(LOG_REQUESTS=True), caplog.at_level("INFO"):
        Client(HTTP_HOST="evil.example").get("/health/")  # refused before any view
        Client().get("/api/v1/children/?search=Mila%20Schmidt", HTTP_X_CORRELATION_ID="req-401")
        Client().get("/health/%0a2026-12-01 FORGED LINE")
    access = [r for r in caplog.records if r.name == "eventsourcing_app.requests"]
    assert [r.status for r in access] == [400, 401, 404]
    assert "\n" not in access[2].getMessage() and "\\x0a" in access[2].getMessage()

    refused = next(r for r in caplog.records if r.name == "django.request" and r.status_code == 401)
    LogContextFilter().filter(refused)
    line = json.loads(json_formatter().format(refused))
    assert (line["correlation_id"], line["http_method"], line["http_path"]) == ("req-401", "GET", "/api/v1/children/")
    assert "Mila" not in json.dumps(line)


def test_a_refresh_that_never_ends_is_given_up(monkeypatch):
    """A database that stops answering in the middle of a query (the server's timeouts cannot
    end that): the refresh is given up after its deadline, its sources are reported down, no
    second one piles up behind it, and once it ends refreshes go on. (The database is replaced
    by a function that blocks: what is tested is the collector's own logic.)"""
    import threading

    gauges, release, calls = served.StoreGauges(), threading.Event(), []

    def read_all():
        calls.append(threading.current_thread())
        if len(calls) == 1:
            release.wait(60)
        return {source: [] for source in served.SOURCES}

    def up() -> dict:
        family = next(f for f in gauges.collect() if f.name == "teddy_metrics_source_up")
        return {s.labels["source"]: s.value for s in family.samples}

    monkeypatch.setattr(gauges, "_read_all", read_all)
    monkeypatch.setattr(served, "GAUGES_WAIT_SECONDS", 0.05)
    monkeypatch.setattr(served, "GAUGES_REFRESH_DEADLINE_SECONDS", 0.3)
    assert set(up().values()) == {0}  # the first refresh hangs: nothing read yet
    time.sleep(0.4)
    assert set(up().values()) == {0} and len(calls) == 1  # given up; no second one behind it
    release.set()
    calls[0].join(10)
    up()  # starts a new refresh, which answers at once
    calls[-1].join(10)
    assert len(calls) == 2 and set(up().values()) == {1}


def test_a_worker_metrics_port_in_use_is_one_clear_line_and_the_worker_goes_on(caplog):
    import socket

    from eventsourcing_app.operations.metrics import serve_worker_metrics

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level("ERROR", logger="eventsourcing_app.operations.metrics"):
            serve_worker_metrics(port)  # returns: no exception reaches the worker's start-up
    assert [r.getMessage() for r in caplog.records] == [
        f"WORKER_METRICS_PORT={port} cannot be served (Address already in use): this worker's metrics are not "
        "scraped; free the port or choose another"]
