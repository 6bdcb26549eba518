"""What one refresh of the database's gauges (/metrics) costs as the store grows.

    bash bench/run-metrics-gauges [--quick] [--streams N [N ...]] [--repeat 5] [--keep]

For each size (default 100,000 and 1,000,000 streams) it makes a scratch database
(`teddy_bench_gauges`, dropped at the end unless --keep), migrates it and fills it with
set-based SQL (INSERT ... SELECT generate_series; about 3 events per stream, streams of the
types child/parent/conversation, a progress row per stream for every projector of its type,
a few held streams with their dead letters, a few erased data subjects), then ANALYZEs it and
measures, in each scenario:

- the wall time of `refresh_gauges()` (what the background refresh runs), median of
  --repeat after a warm-up: with the streams' lengths cached (most refreshes in production:
  they are re-read at most every 60 s) and with them re-read;
- the time of each part (the `StoreGauges` methods `_outbox`, `_streams` (lengths re-read),
  `_projections`, `_personal_data`), each run through the product's own `_read_all` (its
  transaction, snapshot, timeouts and savepoint) with the other parts left out;
- whether a part hit the statement timeout (`teddy_metrics_source_up` 0), or a statement the
  part swallows did (the age of a projector's oldest unapplied event, cancelled at its cap);
- every statement taking 100 ms or more, and the EXPLAIN (ANALYZE, BUFFERS) plan of those
  taking --explain-ms or more.

Scenarios: (a) caught up, (b) one projector (timeline) one event behind on 1 % of the
streams, (c) Kafka down: every stream's last event unpublished (the read side as in (a)),
(d) as (c), and every projector one event behind on every stream (projectors read Kafka, so
during a real outage they wait too), (e) live traffic: the 100 newest streams' last event
not yet published nor applied by any projector (a moment of normal operation under load:
the projectors are a little behind). The results go to bench/METRICS_GAUGES_RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DB = "teddy_bench_gauges"
MASTER_KEYS = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA="
PARTS = ("outbox", "streams", "projections", "personal_data")
SCENARIOS = {
    "a": "caught up",
    "b": "timeline 1 event behind on 1 % of streams",
    "c": "Kafka down: every stream's last event unpublished",
    "d": "Kafka down, and every projector 1 event behind on every stream",
    "e": "live traffic: the 100 newest streams' last event unpublished and unapplied",
}
# Per scenario: which streams' last event is unpublished, which progress rows are one behind.
STATES = {"a": (None, None), "b": (None, "one-percent"), "c": ("all", None), "d": ("all", "all"),
          "e": ("newest", "newest")}
NEWEST = "SELECT stream_id FROM eventstore_stream ORDER BY created_at DESC LIMIT 100"
LAGGING = "timeline"  # scenario (b)'s projector: it reads every stream type
SLOW_MS = 100.0  # statements listed in the results from this long


def log(message: str) -> None:
    print(message, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run-metrics-gauges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", help="store sizes in streams (default 100000 1000000; "
                        "--quick 20000)")
    parser.add_argument("--quick", action="store_true", help="one small store (20,000 streams): a smoke run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measure after a warm-up (default 5)")
    parser.add_argument("--explain-ms", type=float, default=1000.0,
                        help="EXPLAIN (ANALYZE, BUFFERS) the statements taking this long (default 1000)")
    parser.add_argument("--scenarios", default="abcde", help="which scenarios, in order (default abcde)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (the last size's) at the end")
    parser.add_argument("--db", default=DB, help=f"scratch database name (default {DB})")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432", help="PostgreSQL server")
    parser.add_argument("--out", default=str(REPO / "bench" / "METRICS_GAUGES_RESULTS.md"),
                        help="markdown report to write (default bench/METRICS_GAUGES_RESULTS.md)")
    args = parser.parse_args()
    sizes = args.streams or ([20_000] if args.quick else [100_000, 1_000_000])
    if any(size < 1000 for size in sizes):
        parser.error("--streams: at least 1000 streams")
    if not set(args.scenarios) <= set(SCENARIOS) or not args.scenarios:
        parser.error(f"--scenarios: letters of {''.join(SCENARIOS)}")
    if not args.db.startswith("teddy_bench"):
        parser.error("--db: the scratch database's name must start with teddy_bench")

    import psycopg

    def recreate() -> None:
        with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {args.db}")

    recreate()
    os.environ.update(DATABASE_URL=f"{args.pg}/{args.db}", KAFKA_PUBLISH_ENABLED="false", LOG_LEVEL="WARNING",
                      DJANGO_SETTINGS_MODULE="teddy_project.settings", TEDDY_MASTER_KEYS=MASTER_KEYS,
                      EVENTSTORE_STREAM_TYPES="child,parent,conversation")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started = time.monotonic()
    try:
        import logging

        import django

        django.setup()
        from eventsourcing_app.operations import metrics  # noqa: F401 - imported now: the code measured
        from eventsourcing_app.readside import operations  # noqa: F401

        args.code = product_code()
        # The refresh's warnings (a part or a lag age left out) are recorded and reported here.
        for name in ("eventsourcing_app.operations.metrics", "eventsourcing_app.readside.operations"):
            logging.getLogger(name).setLevel(logging.ERROR)
        load_before = os.getloadavg()
        results = []
        for number, size in enumerate(sizes):
            if number:
                from django.db import connections

                connections.close_all()
                recreate()
            results.append(run_size(size, args))
        write_report(args, sizes, results, load_before, os.getloadavg(), time.monotonic() - started)
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            log(f"kept database {args.db}")
        else:
            with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
            log(f"dropped database {args.db}")


# --- the fill ------------------------------------------------------------------------------

def _sql(statement: str, params=None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def _step(label: str, statement: str, params=None) -> int:
    started = time.monotonic()
    rows = _sql(statement, params)
    log(f"  {label}: {rows:,} rows in {time.monotonic() - started:.1f} s")
    return rows


def fill(size: int) -> dict:
    """The store, through SQL: streams 1..size, one in 10 a parent's, 2 in 10 a child's, the
    rest conversations; 1 to 5 events each (3 on average), recorded over 30 days; everything
    published and applied."""
    from django.core.management import call_command
    from django.db import connection

    from eventsourcing_app.readside.projectors import PROJECTORS

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    log(f"  migrated in {time.monotonic() - started:.1f} s")
    tables = ("eventstore_event", "readside_stream_progress")
    with connection.cursor() as cursor:
        # Secondary indexes are built after the fill (faster than row by row), exactly as the
        # migrations made them; the FK and immutability triggers are off for this session only.
        cursor.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
                       "AND indexname NOT IN (SELECT conname FROM pg_constraint)", [list(tables)])
        secondary = cursor.fetchall()
        for _, name, _ in secondary:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("SET session_replication_role = replica; SET synchronous_commit = off; "
                       "SET maintenance_work_mem = '512MB'; SET work_mem = '64MB'")
    span = "interval '30 days'"
    _step("streams", f"""
        INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, publication_epoch,
                                       last_hash, created_at, updated_at)
        SELECT t.type || '.b' || lpad(i::text, 8, '0'), t.type, t.v, t.v, 0, sha256(int8send(i)),
               t.created, t.created + (t.v - 1) * interval '1 minute'
        FROM generate_series(1, %s) i,
        LATERAL (SELECT CASE WHEN i %% 10 = 0 THEN 'parent' WHEN i %% 10 IN (1, 2) THEN 'child'
                             ELSE 'conversation' END AS type,
                        1 + (i / 10) %% 5 AS v,
                        now() - {span} - interval '10 minutes' + {span} * i / %s AS created) t""", [size, size])
    # A child's and its conversations' events are about the child (its data subject); a
    # parent's are about the parent.
    _step("events", """
        INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version, occurred_at,
                                      recorded_at, actor, data_subject, payload, chain_hash, kafka_topic,
                                      kafka_partition, kafka_offset, published_at)
        SELECT gen_random_uuid(), s.stream_id, g.v,
               CASE s.stream_type WHEN 'parent' THEN 'ParentRegistered' WHEN 'child' THEN 'ChildProfileUpdated'
                                  ELSE 'MessageRecorded' END,
               1, s.created_at + (g.v - 1) * interval '1 minute', s.created_at + (g.v - 1) * interval '1 minute',
               'user:17',
               CASE s.stream_type WHEN 'parent' THEN 'parent:p' || n.n WHEN 'child' THEN 'child:c' || n.n
                                  ELSE 'child:c' || (n.n - mod(n.n, 10) + 1) END,
               convert_to(repeat('x', 100), 'UTF8'), sha256(convert_to(s.stream_id || g.v, 'UTF8')),
               s.stream_type, mod(abs(hashtext(s.stream_id)), 12), g.v - 1,
               s.created_at + (g.v - 1) * interval '1 minute' + interval '50 milliseconds'
        FROM eventstore_stream s, LATERAL (SELECT substring(s.stream_id FROM '[0-9]+$')::int AS n) n,
             generate_series(1, s.version) g(v)""")
    erased = max(3, size // 100_000)
    _step("data subjects", """
        INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at, destroyed_at)
        SELECT 'child:c' || i, CASE WHEN i %% 10 = 1 AND i / 10 < %s THEN NULL ELSE sha256(int8send(i)) END,
               CASE WHEN i %% 10 = 1 AND i / 10 < %s THEN NULL ELSE 'k1' END, now() - interval '30 days',
               CASE WHEN i %% 10 = 1 AND i / 10 < %s THEN now() - interval '1 day' END
        FROM generate_series(1, %s) i WHERE i %% 10 IN (1, 2)""", [erased, erased, erased, size])
    for name, cls in PROJECTORS.items():
        _sql("INSERT INTO readside_projector_state (name, active_generation, building_source) VALUES (%s, 1, '')",
             [name])
        _sql("INSERT INTO readside_checkpoint (projector, generation, offsets, events_applied, revision, "
             "caught_up_at, updated_at) SELECT %s, 1, '{}', COALESCE(SUM(version), 0), 1, now(), now() "
             "FROM eventstore_stream WHERE stream_type = ANY(%s)", [name, list(cls.stream_types)])
        _step(f"progress of {name} ({', '.join(cls.stream_types)})", """
            INSERT INTO readside_stream_progress (projector, generation, stream_id, version)
            SELECT %s, 1, stream_id, version FROM eventstore_stream WHERE stream_type = ANY(%s)""",
              [name, list(cls.stream_types)])
    with connection.cursor() as cursor:
        cursor.execute("RESET session_replication_role")
        for table, name, definition in secondary:
            begun = time.monotonic()
            cursor.execute(definition)
            log(f"  index {name} rebuilt in {time.monotonic() - begun:.1f} s")
        # The measures run with the server's settings.
        cursor.execute("RESET synchronous_commit; RESET maintenance_work_mem; RESET work_mem")
    # A few streams held behind a dead letter (three per projector: the event after their
    # progress failed), and a few dead letters resolved since.
    held = 0
    for number, (name, cls) in enumerate(PROJECTORS.items()):
        held += _sql("""
            WITH picked AS (
                SELECT p.id FROM readside_stream_progress p JOIN eventstore_stream s ON s.stream_id = p.stream_id
                WHERE p.projector = %s AND p.generation = 1 AND s.version >= 2 ORDER BY p.stream_id
                LIMIT 3 OFFSET %s)
            UPDATE readside_stream_progress p SET version = p.version - 1, held_at_version = p.version
            FROM picked WHERE p.id = picked.id""", [name, 1 + 7 * number])
        _sql("""
            INSERT INTO readside_dead_letter (projector, generation, stream_id, version, event_id, event_type, error,
                                              attempts, first_failed_at, last_failed_at, resolved_at)
            SELECT p.projector, 1, p.stream_id, e.version, e.event_id::text, e.event_type,
                   'KeyError: ''child_id'' (bench)', 3, now() - interval '2 hours', now() - interval '10 minutes', NULL
            FROM readside_stream_progress p
            JOIN eventstore_event e ON e.stream_id = p.stream_id AND e.version = p.held_at_version
            WHERE p.projector = %s AND p.held_at_version IS NOT NULL""", [name])
        _sql("""
            INSERT INTO readside_dead_letter (projector, generation, stream_id, version, event_id, event_type, error,
                                              attempts, first_failed_at, last_failed_at, resolved_at)
            SELECT %s, 1, e.stream_id, e.version, e.event_id::text, e.event_type, 'TimeoutError (bench)', 1,
                   now() - interval '3 days', now() - interval '3 days', now() - interval '2 days'
            FROM eventstore_event e JOIN eventstore_stream s ON s.stream_id = e.stream_id
            WHERE s.stream_type = ANY(%s) AND e.version = 1 ORDER BY e.stream_id DESC LIMIT 2""",
             [name, list(cls.stream_types)])
    log(f"  {held} held progress rows with their dead letters, {erased} erased subjects")
    vacuum()
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT COUNT(*) FROM eventstore_stream), (SELECT COUNT(*) FROM eventstore_event), "
                       "(SELECT COUNT(*) FROM readside_stream_progress), "
                       "pg_database_size(current_database())")
        streams, events, progress, size_bytes = cursor.fetchone()
    log(f"  filled in {time.monotonic() - started:.0f} s: {streams:,} streams, {events:,} events, "
        f"{progress:,} progress rows, {size_bytes / 2**20:,.0f} MiB")
    return {"streams": streams, "events": events, "progress": progress, "mib": size_bytes / 2**20,
            "held": held, "erased": erased, "fill_seconds": time.monotonic() - started}


def vacuum() -> None:
    """VACUUM (ANALYZE) the tables the gauges read, as autovacuum would have by the time a
    scrape comes (statistics current, visibility map set)."""
    started = time.monotonic()
    for table in ("eventstore_stream", "eventstore_event", "readside_stream_progress", "readside_dead_letter",
                  "readside_checkpoint", "readside_projector_state", "privacy_subject_key", "eventstore_poison_event"):
        _sql(f"VACUUM (ANALYZE) {table}")
    log(f"  VACUUM (ANALYZE) in {time.monotonic() - started:.1f} s")


def enter_scenario(key: str, previous: str | None) -> None:
    """Moves the store into scenario `key` (from `previous`), with set-based updates: what
    the previous one unpublished or left unapplied is published and applied again first."""
    started = time.monotonic()
    (outbox_was, behind_was), (outbox, behind) = STATES[previous or "a"], STATES[key]
    if behind_was != behind and behind_was is not None:
        rows = _sql("""UPDATE readside_stream_progress p SET version = s.version FROM eventstore_stream s
                       WHERE s.stream_id = p.stream_id AND p.held_at_version IS NULL AND p.version < s.version""")
        log(f"  {rows:,} progress rows caught up again")
    if outbox_was != outbox and outbox_was is not None:
        rows = _sql("UPDATE eventstore_stream SET published_version = version WHERE published_version < version")
        log(f"  {rows:,} streams published again")
    if outbox != outbox_was and outbox == "all":
        rows = _sql("UPDATE eventstore_stream SET published_version = version - 1")
        log(f"  {rows:,} streams with their last event unpublished")
    if outbox != outbox_was and outbox == "newest":
        rows = _sql(f"""UPDATE eventstore_stream SET published_version = version - 1
                        WHERE stream_id IN ({NEWEST})""")
        log(f"  {rows:,} streams (the newest) with their last event unpublished")
    if behind != behind_was and behind == "one-percent":
        rows = _sql("""UPDATE readside_stream_progress SET version = version - 1 WHERE projector = %s
                       AND held_at_version IS NULL AND id %% 100 = 0""", [LAGGING])
        log(f"  {LAGGING}: {rows:,} streams one event behind")
    if behind != behind_was and behind == "all":
        rows = _sql("""UPDATE readside_stream_progress p SET version = s.version - 1 FROM eventstore_stream s
                       WHERE s.stream_id = p.stream_id AND p.held_at_version IS NULL""")
        log(f"  {rows:,} progress rows one event behind")
    if behind != behind_was and behind == "newest":
        rows = _sql(f"""UPDATE readside_stream_progress SET version = version - 1
                        WHERE held_at_version IS NULL AND stream_id IN ({NEWEST})""")
        log(f"  {rows:,} progress rows (of the newest streams) one event behind")
    if (outbox, behind) != (outbox_was, behind_was):
        vacuum()
        caught_up_at()
        log(f"  scenario set up in {time.monotonic() - started:.1f} s")


def caught_up_at() -> None:
    """Each checkpoint's caught_up_at as the runner would have left it: now for a projector
    with nothing left to apply, else just before its oldest unapplied event (held streams
    aside), which the product may serve as the upper bound of the projector's lag age."""
    from eventsourcing_app.readside.projectors import PROJECTORS

    for name, cls in PROJECTORS.items():
        _sql("""UPDATE readside_checkpoint c SET caught_up_at = COALESCE(
                    (SELECT MIN(e.recorded_at) - interval '1 second' FROM eventstore_stream s
                     LEFT JOIN readside_stream_progress p ON p.stream_id = s.stream_id AND p.projector = %s
                          AND p.generation = 1
                     JOIN eventstore_event e ON e.stream_id = s.stream_id AND e.version = COALESCE(p.version, 0) + 1
                     WHERE s.stream_type = ANY(%s) AND s.version > COALESCE(p.version, 0)
                          AND p.held_at_version IS NULL), now())
                WHERE c.projector = %s AND c.generation = 1""", [name, list(cls.stream_types), name])


# --- the measures --------------------------------------------------------------------------

class Statements:
    """Every statement run while active (connection.execute_wrapper): its time and whether it
    failed (a statement timeout), by part and (SQL, parameters)."""

    def __init__(self) -> None:
        self.part = ""
        self.runs: dict[tuple, list[list[float]]] = {}  # (part, sql, params) -> per run, its durations
        self.sql: dict[tuple, tuple[str, object]] = {}
        self.failures: dict[tuple, str] = {}
        self._run: dict[tuple, list[float]] = {}

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        key = (self.part, sql, repr(params))
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            self.failures[key] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise
        finally:
            self._run.setdefault(key, []).append((time.perf_counter() - started) * 1000)
            self.sql[key] = (sql, params)

    def end_run(self) -> None:
        for key, durations in self._run.items():
            self.runs.setdefault(key, []).append(durations)
        self._run = {}

    def slow(self, threshold_ms: float) -> list[tuple[tuple, float]]:
        """(key, median per run of its summed time) of the statements at or over the threshold."""
        out = []
        for key, runs in self.runs.items():
            median = statistics.median(sum(run) for run in runs)
            if median >= threshold_ms:
                out.append((key, median))
        return sorted(out, key=lambda item: -item[1])


def measure_refresh(repeat: int, lengths_cached: bool, statements: Statements) -> tuple[list[float], set[str]]:
    """Wall times of refresh_gauges(), and the sources it found down in any run."""
    from eventsourcing_app.operations import metrics as gauges_module

    gauges = gauges_module._gauges
    times, down = [], set()
    statements.part = "refresh"
    for number in range(repeat + 1):  # the first is the warm-up
        if not lengths_cached:
            gauges._lengths = None
        started = time.perf_counter()
        gauges_module.refresh_gauges()
        elapsed = (time.perf_counter() - started) * 1000
        down |= {source for source, up in gauges._up.items() if not up}
        if number:
            times.append(elapsed)
    return times, down


def measure_part(source: str, repeat: int, statements: Statements) -> tuple[list[float], bool]:
    """Times one part of the refresh inside the product's own `_read_all` (its transaction,
    isolation, timeouts and savepoint, whatever they are), the other parts left out: (times,
    whether the part failed, i.e. a timeout made it `source_up` 0)."""
    from eventsourcing_app.operations.metrics import SOURCES, StoreGauges

    gauges = StoreGauges()
    part = getattr(gauges, f"_{source}")
    timing: dict[str, float] = {}

    def timed(now):
        statements.part = source
        started = time.perf_counter()
        try:
            yield from part(now)
        finally:
            timing["ms"] = (time.perf_counter() - started) * 1000
            statements.part = ""

    for other in SOURCES:
        setattr(gauges, f"_{other}", timed if other == source else (lambda now: iter(())))
    times, failed = [], False
    for number in range(repeat + 1):
        gauges._lengths = None  # the streams' lengths really read
        timing.clear()
        results = gauges._read_all()
        failed |= results.get(source) is None
        if number:
            times.append(timing.get("ms", float("nan")))
            statements.end_run()
        else:
            statements._run = {}  # the warm-up's statements are not counted
    return times, failed


def gauge_values() -> dict:
    """What the last refresh read: the backlog, the projectors' lag, held streams and the like."""
    from eventsourcing_app.operations.metrics import _gauges

    values: dict = {"down": sorted(source for source, up in _gauges._up.items() if not up)}
    for families in _gauges._families.values():
        for family in families:
            for sample in family.samples:
                label = sample.labels.get("projector") or sample.labels.get("stream_type")
                if sample.name.endswith(("_bucket", "_gsum", "_gcount")):
                    continue
                values.setdefault(sample.name, {})[label] = sample.value
    return values


def explain(sql: str, params) -> str:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def run_scenario(key: str, args, statements: Statements) -> dict:
    cached, down_cached = measure_refresh(args.repeat, True, statements)
    reread, down_reread = measure_refresh(args.repeat, False, statements)
    values = gauge_values()
    parts, failed = {}, {}
    for source in PARTS:
        parts[source], failed[source] = measure_part(source, args.repeat, statements)
    refresh_failures = {key: message for key, message in statements.failures.items() if key[0] == "refresh"}
    part_failures = {key: message for key, message in statements.failures.items() if key[0] != "refresh"}
    slow = statements.slow(SLOW_MS)
    plans = []
    for statement_key, median in slow:
        if median >= args.explain_ms and statement_key[0] != "refresh":
            sql, params = statements.sql[statement_key]
            log(f"    EXPLAIN (ANALYZE, BUFFERS) of a {median:,.0f} ms statement of {statement_key[0]}")
            plans.append((statement_key[0], median, sql, params, explain(sql, params)))
    return {"refresh_cached": statistics.median(cached), "refresh_reread": statistics.median(reread),
            "down": down_cached | down_reread, "parts": {s: statistics.median(t) for s, t in parts.items()},
            "parts_failed": {s for s, f in failed.items() if f}, "statement_failures": part_failures,
            "refresh_failures": refresh_failures, "values": values,
            "slow": [(k, m, statements.sql[k]) for k, m in slow], "plans": plans}


def run_size(size: int, args) -> dict:
    from django.db import connection

    log(f"\n== {size:,} streams: filling {args.db}")
    stats = fill(size)
    scenarios = {}
    previous = None
    for key in args.scenarios:
        log(f"-- {size:,} streams, scenario ({key}) {SCENARIOS[key]}")
        enter_scenario(key, previous)
        previous = key
        statements = Statements()
        with connection.execute_wrapper(statements):
            result = run_scenario(key, args, statements)
        scenarios[key] = result
        parts = ", ".join(f"{s} {result['parts'][s]:,.0f} ms" for s in PARTS)
        log(f"  refresh {result['refresh_cached']:,.0f} ms (lengths cached), {result['refresh_reread']:,.0f} ms "
            f"(re-read); {parts}; down: {', '.join(sorted(result['down'])) or 'none'}")
        log(f"  gauges: {summary(result['values'])}")
        for (part, sql, _), median, (_, params) in result["slow"][:6]:
            log(f"    {median:8,.0f} ms  {part:13} {short(sql, params)}")
    return {"size": size, "stats": stats, "scenarios": scenarios}


# --- the report ----------------------------------------------------------------------------

def short(sql: str, params, width: int = 150) -> str:
    text = " ".join(sql.split())
    if params:  # first: they name the projector
        text = f"[{', '.join(str(p) for p in params)}] {text}"
    return text if len(text) <= width else text[:width - 1] + "…"


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.0f} s"


def summary(values: dict) -> str:
    def one(name):
        return values.get(name, {})

    lag = one("teddy_projection_lag_events")
    lag_s = one("teddy_projection_lag_seconds")
    behind = {p: v for p, v in lag.items() if v}
    unknown = sorted(p for p, v in behind.items() if p not in lag_s)
    held = sum(one("teddy_projection_held_streams").values())
    dead = sum(one("teddy_dead_letters").values())
    ages = [lag_s[p] for p in behind if p in lag_s]
    outbox = ("outbox not read (timeout)" if "outbox" in values.get("down", ()) else
              f"backlog {one('teddy_outbox_backlog_events').get(None, 0):,.0f} events "
              f"(oldest {age(one('teddy_outbox_oldest_unpublished_age_seconds').get(None, 0))})")
    text = (f"{outbox}; "
            f"projection lag {', '.join(f'{p} {v:,.0f}' for p, v in behind.items()) or '0'}"
            f"{f' (oldest {age(max(ages))})' if ages else ''}"
            f"{'; lag age unknown: ' + ', '.join(unknown) if unknown else ''}; "
            f"{held:,.0f} held, {dead:,.0f} dead letters; streams {sum(one('teddy_streams').values()):,.0f}; "
            f"erased {one('teddy_erased_subjects').get(None, 0):,.0f}")
    return text


def write_report(args, sizes, results, load_before, load_after, seconds) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('shared_buffers'), current_setting('work_mem'), "
                       "current_setting('max_parallel_workers_per_gather')")
        version, shared_buffers, work_mem, parallel = cursor.fetchone()
    from eventsourcing_app.operations import metrics as gauges_module
    from eventsourcing_app.readside import operations as readside_operations

    GAUGES_STATEMENT_TIMEOUT_MS = gauges_module.GAUGES_STATEMENT_TIMEOUT_MS
    cap = getattr(readside_operations, "OLDEST_UNAPPLIED_TIMEOUT_MS", None)
    lag_cap = f"its {cap:,} ms cap" if cap else f"the {GAUGES_STATEMENT_TIMEOUT_MS / 1000:.0f} s timeout"

    code = args.code
    command = "bash bench/run-metrics-gauges" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    lines = [
        "# What one refresh of the database's gauges costs (/metrics)", "",
        (f"Run {now} with `{command}` ({took}) on a **2-core shared machine** "
        f"({platform.machine()}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} at the start, "
        f"{load_after[0]:.2f} at the end; other work shares it, so times move by ±30 %). "
        f"{version.split(' on ')[0]}, shared_buffers {shared_buffers}, work_mem {work_mem}, "
        f"max_parallel_workers_per_gather {parallel}; Python {platform.python_version()}. "
        "What it measures and how the store is filled: bench/README.md and the docstring of "
        f"bench/bench_metrics_gauges.py. Measured: {code}."), "",
        (f"Medians of {args.repeat} runs after a warm-up, in ms. *Refresh* is `refresh_gauges()` (one transaction, "
        f"the {GAUGES_STATEMENT_TIMEOUT_MS / 1000:.0f} s statement timeout): with the streams' lengths cached (most "
        f"refreshes in production) and re-read (at most every {gauges_module.STREAM_LENGTHS_MAX_AGE_SECONDS:.0f} s). The parts are the `StoreGauges` "
        "methods timed one by one as the refresh runs them, `_streams` with its lengths re-read. *Timeouts*: "
        "the sources a refresh served as `teddy_metrics_source_up` 0, and the projectors whose lag age query "
        f"was cancelled (at {lag_cap}) inside a part that stays up. The gauges are refreshed at most every "
        f"{gauges_module.GAUGES_MAX_AGE_SECONDS:.0f} s."), "",
        "Scenarios: " + "; ".join(f"({k}) {SCENARIOS[k]}" for k in args.scenarios) + ".", "",
        ("| streams | events | scenario | refresh, lengths cached | refresh, lengths re-read | outbox | streams "
        "| projections | personal_data | timeouts |"),
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        stats = result["stats"]
        for key, s in result["scenarios"].items():
            timeouts = []
            if s["down"]:
                timeouts.append("source_up 0: " + ", ".join(sorted(s["down"])))
            if s["parts_failed"] - s["down"]:
                timeouts.append("timed out when timed alone: " + ", ".join(sorted(s["parts_failed"] - s["down"])))
            ages = sorted({_params_label(params) for (_, sql, params) in [*s["refresh_failures"],
                                                                         *s["statement_failures"]]
                           if "MIN(e.recorded_at)" in sql})
            if ages:
                timeouts.append(f"lag age query cancelled at {lag_cap}, the bound served instead: "
                                + ", ".join(ages))
            lines.append(
                f"| {stats['streams']:,} | {stats['events']:,} | ({key}) {SCENARIOS[key]} | "
                f"{s['refresh_cached']:,.0f} | {s['refresh_reread']:,.0f} | "
                + " | ".join(f"{s['parts'][p]:,.0f}" + (" ⚠" if p in s["parts_failed"] else "") for p in PARTS)
                + f" | {'; '.join(timeouts) or 'none'} |")
    lines += ["", "## What the gauges read (the scenario is set up as meant)", "",
              "| streams | scenario | gauges |", "| ---: | --- | --- |"]
    for result in results:
        for key, s in result["scenarios"].items():
            lines.append(f"| {result['stats']['streams']:,} | ({key}) | {summary(s['values'])} |")
    lines += ["", "## The store", "", "| streams | events | progress rows | database | fill (SQL, indexes, VACUUM) |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        st = result["stats"]
        lines.append(f"| {st['streams']:,} | {st['events']:,} | {st['progress']:,} | {st['mib']:,.0f} MiB | "
                     f"{st['fill_seconds']:.0f} s |")
    lines += ["", f"## Statements of {SLOW_MS:.0f} ms or more (median per part run)", "",
              "| streams | scenario | part | ms | statement |", "| ---: | --- | --- | ---: | --- |"]
    for result in results:
        for key, s in result["scenarios"].items():
            for (part, sql, _), median, (_, params) in s["slow"]:
                if part == "refresh":
                    continue
                statement = short(sql, params, 200).replace("|", "\\|")
                lines.append(f"| {result['stats']['streams']:,} | ({key}) | {part} | {median:,.0f} | `{statement}` |")
    plans = [(result["stats"]["streams"], key, plan) for result in results
             for key, s in result["scenarios"].items() for plan in s["plans"]]
    if plans:
        lines += ["", f"## Plans of the statements of {args.explain_ms:,.0f} ms or more",
                  "", "EXPLAIN (ANALYZE, BUFFERS), run once after the scenario's measures, without the timeout."]
        for streams, key, (part, median, sql, params, plan) in plans:
            summary_line = short(sql, params, 140).replace("<", "&lt;")
            lines += ["", (f"<details><summary>{streams:,} streams, ({key}), {part}, {median:,.0f} ms: "
                      f"<code>{summary_line}</code></summary>"), "", "```", plan, "```", "", "</details>"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    table_end = next(i for i, line in enumerate(lines) if line.startswith("## What the gauges read"))
    log("\n" + "\n".join(lines[lines.index(next(line for line in lines if line.startswith("| streams | events"))):
                                table_end]))
    log(f"wrote {args.out}")


def product_code() -> str:
    """Which product code runs: the commit, and the product files changed since (others edit
    the tree meanwhile)."""
    import subprocess

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "eventsourcing_app", "teddy_project")
             .splitlines() if line.strip()]
    return f"the product at commit {git('rev-parse', '--short', 'HEAD').strip() or '?'}" + (
        f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")


def _params_label(params_repr: str) -> str:
    """The projector named in a statement's parameters."""
    from eventsourcing_app.readside.projectors import PROJECTORS

    return next((name for name in PROJECTORS if f"'{name}'" in params_repr), params_repr[:40])


if __name__ == "__main__":
    sys.exit(main())
