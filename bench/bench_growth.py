"""Growth benchmark: what appends and loads cost as the store grows, ours and the library's.

    bash bench/run-growth [--quick] [--sizes 100k,1m,5m] [--out PATH] [--chart PATH] [--keep]

One run makes two scratch databases (`teddy_bench_growth` for our store,
`teddy_bench_growth_es` for the `eventsourcing` library; dropped at the end unless --keep),
an embedded Tansu broker (our store publishes to Kafka, as in bench/run), and one worker
process per side built exactly as bench/workers.py builds it (imported from there: ours with
Kafka publishing, hash chains and encryption on; the library's Application with
PERSISTENCE_MODULE=eventsourcing.postgres). For each store size (stored events; default
100,000, 1,000,000 and 5,000,000) it grows both stores to that size with set-based SQL, runs
VACUUM (ANALYZE), then measures, alternating which side goes first:

- single-event saves of new streams, one thread (--singles, 1,000): appends/s, p50, p99;
- 10-event saves to existing streams picked at random among the filler streams (--saves,
  200; one save per stream): saves/s, p50, p99. Untimed before each save: ours makes sure the
  subject's data key is in memory (a web process appending to a child's streams has it), the
  library loads the aggregate (its repository needs it to save);
- the load of a 1,000-event aggregate appended at that size (3 warm-ups, then --loads, 20):
  median, p90;
- the load of a small (5-event) stream picked at random among the old ones, each stream once
  (--loads of them: their pages are cold-ish): median, p90; and one EXPLAIN (ANALYZE, BUFFERS)
  of each side's load statement, prepared and executed 6 times first as the drivers prepare it
  (so that the plan is the one a long-running process gets), on another such stream;
- pg_total_relation_size of the tables (and their indexes) each side writes, the levels of
  their B-trees, the heap pages holding the 1,000-event stream and how its rows came to be (as
  inserted, HOT-updated or moved by the update that records ours' Kafka positions), read with
  pageinspect in the scratch databases.

The filler. Streams of 2 to 300 events (three in four of 2-10, one in five of 11-50, one in
twenty of 51-300; 19 on average), the events of a chunk's streams interleaved (ordered by
version, then stream) as concurrent writers would leave them. Every filler event's payload
(ours) or state (the library) is a copy of one real event of the benchmark's shape, so rows
have the real size; ours' filler rows are published (Kafka position set, the stream's
published_version = version: the outbox is empty), their chain hashes arbitrary but consistent
(the stream's last_hash is its last event's chain_hash), every 4 streams one data subject (a
child and its conversations) with a real data key row (wrapped under the master key by the
worker, as the append would) and the subject-to-stream rows the append writes: a new append on
a filler stream is an ordinary append. Nothing decodes filler payloads (they
are copies, encrypted for another event), so the small streams that are loaded are real ones:
each chunk of filler is inserted in 5 slices, and after slice k the workers append event k of
the chunk's 25 small streams (one event per append, through each side's own API), so that
their events lie among the filler like any old stream's. Secondary indexes stay in place (the
fill is timed and reported); the two sides' slices are inserted at the same time, each on its
own connection, whose session skips the foreign-key triggers (the rows are consistent by
construction), commits asynchronously and compresses full-page images in the WAL.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
DB = "teddy_bench_growth"
STREAMS_PER_SUBJECT = 4  # ours' filler: a data subject (a child) has several streams
TEMPLATE_STREAM = "bench.template"  # ours: the real event every filler row copies
SMALL_EVENTS = 5  # the small streams that are loaded cold
SLICES = SMALL_EVENTS  # one event of each small stream after each slice of a chunk
SIDES = ("ours", "library")
ROUNDS = 4  # the append measures run in this many parts, the side going first alternating


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- options -------------------------------------------------------------------------------

@dataclass
class Plan:
    sizes: list[int]
    singles: int
    saves: int
    save_events: int
    load_events: int
    loads: int
    chunk_rows: int
    small_per_chunk: int


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = float(text[:-1] if factor > 1 else text)
    return int(number * factor)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash bench/run-growth", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help='store sizes in stored events, ascending (default "100k,1m,5m"; --quick '
                        '"20k,100k")')
    parser.add_argument("--quick", action="store_true", help="small sizes and counts: a smoke run of about a minute")
    parser.add_argument("--singles", type=int, help="single-event saves of new streams per size (default 1000)")
    parser.add_argument("--saves", type=int, help="10-event saves to existing streams per size (default 200)")
    parser.add_argument("--loads", type=int, help="timed loads of the 1,000-event stream, and small streams loaded, "
                        "per size (default 20)")
    parser.add_argument("--chunk", type=int, default=250_000, help="filler rows per chunk (default 250000)")
    parser.add_argument("--seed", type=int, default=20261201, help="seed of the filler's shape and the picks")
    parser.add_argument("--out", default=str(REPO / "bench" / "GROWTH_RESULTS.md"),
                        help="markdown report (default bench/GROWTH_RESULTS.md)")
    parser.add_argument("--chart", default=str(REPO / "bench" / "growth.png"),
                        help="PNG chart (default bench/growth.png; needs matplotlib)")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432",
                        help="PostgreSQL server URL without database (default postgres://postgres@localhost:5432)")
    parser.add_argument("--db", default=DB, help=f"our scratch database; the library's is <db>_es (default {DB})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases at the end")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    try:
        sizes = [parse_size(s) for s in (args.sizes or ("20k,100k" if args.quick else "100k,1m,5m")).split(",")]
    except (ValueError, IndexError):
        parser.error("--sizes: a comma-separated list like 100k,1m,5m")
    if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 10_000:
        parser.error("--sizes: ascending, the smallest at least 10k")
    if not args.db.startswith("teddy_bench_growth"):
        parser.error("--db: the scratch database's name must start with teddy_bench_growth")
    quick = args.quick
    args.plan = Plan(sizes=sizes, singles=args.singles or (300 if quick else 1000),
                     saves=args.saves or (100 if quick else 200), save_events=10, load_events=1000,
                     loads=args.loads or (10 if quick else 20), chunk_rows=args.chunk, small_per_chunk=25)
    for name in ("singles", "saves", "loads", "chunk"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


# --- the workers (one process per side) -------------------------------------------------------

def _timed(calls) -> tuple[list[float], float]:
    """(latency of each call, wall time of them all) for an iterable of (prepare, act) pairs:
    `prepare` runs untimed before its `act`."""
    latencies, total = [], 0.0
    for prepare, act in calls:
        if prepare is not None:
            prepare()
        started = time.perf_counter()
        act()
        elapsed = time.perf_counter() - started
        latencies.append(elapsed)
        total += elapsed
    return latencies, total


def _make_worker_classes():
    """The sides of bench/workers.py with this benchmark's operations added (imported late:
    the orchestrator does not need Django or the library)."""
    from bench.workers import TEXT, Library, Ours

    class GrowthOurs(Ours):
        def op_setup(self) -> dict:
            info = self.setup()
            self.store.append_events_sync(TEMPLATE_STREAM, [self._event("template", 0)], expected_version=0)
            self.flush()  # the template's Kafka position recorded: the filler copies it
            from eventsourcing_app.eventstore.configured import get_field_protection

            self.keys = get_field_protection().keys
            return {**info, "template_stream": TEMPLATE_STREAM}

        def op_make_keys(self, first: int, last: int) -> dict:
            """Real data keys (wrapped under the master key, bound to their subject) for the
            filler's subjects fs-<first>..fs-<last>: appends to filler streams use them."""
            from django.db import connection

            subjects = [f"bench:fs-{i}" for i in range(first, last + 1)]
            wrapped = [self.keys.keyring.wrap(os.urandom(32), subject) for subject in subjects]
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                    "SELECT s, w, %s, now() FROM unnest(%s::text[], %s::bytea[]) AS x(s, w) "
                    "ON CONFLICT (subject) DO NOTHING",
                    [self.keys.keyring.current_id, subjects, [w for w, _ in wrapped]])
            return {"subjects": len(subjects)}

        def _event(self, subject: str, n: int):
            return self.BenchEvent(subject=subject, n=n, text=TEXT)

        def op_singles(self, tag: str, count: int) -> dict:
            def save(i: int):
                return lambda: self.store.append_events_sync(f"bench.single{tag}-{i}",
                                                             [self._event(f"single{tag}-{i}", i)], expected_version=0)
            latencies, total = _timed((None, save(i)) for i in range(count))
            return {"latencies": latencies, "elapsed_s": total, "flush_s": self.flush()}

        def op_saves(self, targets: list, events: int) -> dict:
            def calls():
                for stream_id, version, subject in targets:
                    batch = [self._event(subject, version + k) for k in range(events)]
                    yield ((lambda s=subject: self.keys.stored_key(f"bench:{s}")),
                           (lambda sid=stream_id, b=batch, v=version:
                            self.store.append_events_sync(sid, b, expected_version=v)))
            latencies, total = _timed(calls())
            return {"latencies": latencies, "elapsed_s": total, "flush_s": self.flush()}

        def op_plant(self, streams: list, k: int) -> dict:
            for stream_id in streams:
                self.store.append_events_sync(stream_id, [self._event(stream_id.split(".", 1)[1], k)],
                                              expected_version=k - 1)
            return {"ids": {}}

        def op_load_big(self, tag: str, events: int, loads: int) -> dict:
            stream_id = self.make_load_stream(events, name=f"load{tag}")
            for _ in range(3):  # warm-up: the stream's pages, the code path
                assert self.load_aggregate(stream_id) == events
            latencies, _ = _timed((None, lambda: self.load_aggregate(stream_id)) for _ in range(loads))
            return {"latencies": latencies, "stream": stream_id}

        def op_load_small(self, streams: list, events: int) -> dict:
            self.load_aggregate(TEMPLATE_STREAM)  # the code path warm; not the streams measured

            def load(stream_id):
                def act():
                    if self.load_aggregate(stream_id) != events:
                        raise RuntimeError(f"{stream_id} did not load {events} events")
                return act
            latencies, _ = _timed((None, load(s)) for s in streams)
            return {"latencies": latencies}

        def op_explain_load(self, warm: list, stream_id: str) -> dict:
            import psycopg
            from django.db import connection

            # The statement the recorder runs for a load, and its parameters, as it runs them
            # (caught on the way to psycopg: the product's SQL is its own business), then
            # prepared, executed a few times (the server may switch to its generic plan) and
            # explained on a stream not read yet.
            captured, original = [], psycopg.Cursor.execute

            def execute(cursor, query, params=None, *args, **kwargs):
                captured.append((query, list(params or ())))
                return original(cursor, query, params, *args, **kwargs)
            psycopg.Cursor.execute = execute
            try:
                self.load_aggregate(warm[0])
            finally:
                psycopg.Cursor.execute = original
            query, params = next((q, p) for q, p in captured if "FROM eventstore_event" in q and warm[0] in p)

            def params_for(stream: str) -> list:
                return [stream if value == warm[0] else value for value in params]
            with connection.cursor() as cursor:
                return {"plan": explain_prepared(cursor, query, [params_for(s) for s in warm], params_for(stream_id),
                                                 lambda row: row[0]),
                        "statement": query}

        def op_finish(self) -> dict:
            self.close()
            return {}

    class GrowthLibrary(Library):
        def op_setup(self) -> dict:
            info = self.setup()
            # The template of the filler's rows: one aggregate of two events (created, added).
            template = self.BenchAggregate(n=0, text=TEXT)
            template.add(n=1, text=TEXT)
            self.app.save(template)
            self.small: dict[str, object] = {}
            return {**info, "table": self.app.recorder.events_table_name, "template_id": str(template.id)}

        def op_singles(self, tag: str, count: int) -> dict:
            latencies, total = _timed((None, lambda i=i: self.app.save(self.BenchAggregate(n=i, text=TEXT)))
                                      for i in range(count))
            return {"latencies": latencies, "elapsed_s": total, "flush_s": None}

        def op_saves(self, targets: list, events: int) -> dict:
            def calls():
                for originator_id in targets:
                    holder = {"id": uuid.UUID(originator_id)}

                    def prepare(h=holder):
                        aggregate = self.app.repository.get(h["id"])
                        for k in range(events):
                            aggregate.add(n=aggregate.count + k, text=TEXT)
                        h["aggregate"] = aggregate
                    yield prepare, (lambda h=holder: self.app.save(h["aggregate"]))
            latencies, total = _timed(calls())
            return {"latencies": latencies, "elapsed_s": total, "flush_s": None}

        def op_plant(self, streams: list, k: int) -> dict:
            ids = {}
            for key in streams:
                if k == 1:
                    aggregate = self.small[key] = self.BenchAggregate(n=k, text=TEXT)
                    ids[key] = str(aggregate.id)
                else:
                    aggregate = self.small[key]
                    aggregate.add(n=k, text=TEXT)
                self.app.save(aggregate)
            return {"ids": ids}

        def op_load_big(self, tag: str, events: int, loads: int) -> dict:
            handle = self.make_load_stream(events)
            for _ in range(3):
                assert self.load_aggregate(handle) == events
            latencies, _ = _timed((None, lambda: self.load_aggregate(handle)) for _ in range(loads))
            return {"latencies": latencies, "stream": str(handle)}

        def op_load_small(self, streams: list, events: int) -> dict:
            self.load_aggregate(next(iter(self.small.values())).id)  # the code path warm

            def load(originator_id):
                def act():
                    if self.load_aggregate(originator_id) != events:
                        raise RuntimeError(f"{originator_id} did not load {events} events")
                return act
            latencies, _ = _timed((None, load(uuid.UUID(s))) for s in streams)
            return {"latencies": latencies}

        def op_explain_load(self, warm: list, stream_id: str) -> dict:
            recorder = self.app.recorder
            # What repository.get runs (select_events without bounds).
            statement = recorder.select_events_statement.as_string() + " ORDER BY originator_version ASC"
            from psycopg import ClientCursor
            from psycopg.rows import tuple_row

            # Client-side binding: EXECUTE takes no server-side parameters.
            with recorder.datastore.get_connection() as conn, ClientCursor(conn, row_factory=tuple_row) as cursor:
                return {"plan": explain_prepared(cursor, statement, [[uuid.UUID(s)] for s in warm],
                                                 [uuid.UUID(stream_id)], lambda row: row[0])}

        def op_finish(self) -> dict:
            self.close()
            return {}

    return GrowthOurs, GrowthLibrary


def explain_prepared(cursor, sql: str, warm: list[list], params: list, column) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of `sql` as a prepared statement (PREPARE/EXECUTE), after
    executing it with each of `warm`: the plan a prepared statement gets once the server
    may have chosen its generic plan (after five executions)."""
    numbered, count = sql, 0
    while "%s" in numbered or "%b" in numbered:  # psycopg's text and binary placeholders
        count += 1
        mark = min((m for m in ("%s", "%b") if m in numbered), key=numbered.index)
        numbered = numbered.replace(mark, f"${count}", 1)
    cursor.execute(f"PREPARE growth_explained AS {numbered}")
    try:
        marks = ", ".join(["%s"] * count)
        for values in warm:
            cursor.execute(f"EXECUTE growth_explained({marks})", values)
            cursor.fetchall()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE growth_explained({marks})", params)
        return "\n".join(column(row) for row in cursor.fetchall())
    finally:
        cursor.execute("DEALLOCATE growth_explained")


def serve(which: str) -> None:
    """The worker's loop: one JSON command per line on stdin, one JSON answer per line on the
    original stdout (anything else the process prints goes to stderr)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, str(REPO))
    GrowthOurs, GrowthLibrary = _make_worker_classes()
    system = GrowthOurs() if which == "ours" else GrowthLibrary()
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            answer = getattr(system, f"op_{op}")(**command)
        except Exception:  # noqa: BLE001 - handed to the orchestrator, which stops the run
            answer = {"error": traceback.format_exc()}
        protocol.write(json.dumps(answer) + "\n")
        if op == "finish":
            break


def growth_worker(which: str, env: dict[str, str]):
    """A side's worker process (the orchestrator's end of the protocol is bench_eventstore's)."""
    from bench.bench_eventstore import WorkerProcess

    return WorkerProcess(which, env, module="bench.bench_growth", stop_timeout=60)


# --- the filler ------------------------------------------------------------------------------

def stream_lengths(rng: random.Random, rows: int) -> list[int]:
    """Lengths of new filler streams adding up to exactly `rows` events."""
    lengths, total = [], 0
    while total < rows:
        draw = rng.random()
        length = rng.randint(2, 10) if draw < 0.75 else rng.randint(11, 50) if draw < 0.95 else rng.randint(51, 300)
        length = min(length, rows - total)
        lengths.append(length)
        total += length
    return lengths


def subject_of(n: int) -> int:
    """The number of ours' filler stream n's data subject (bench:fs-<number>), as the SQL makes it."""
    return (n + STREAMS_PER_SUBJECT - 1) // STREAMS_PER_SUBJECT


def library_uuid(n: int) -> str:
    """The library's id of filler stream n: md5('growth-<n>')::uuid, as the SQL makes it."""
    return str(uuid.UUID(hashlib.md5(f"growth-{n}".encode()).hexdigest()))


OURS_SLICE_SQL = [
    # Stream rows consistent with their events: all published, last_hash = the last event's hash.
    """INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, publication_epoch,
                                      last_hash, created_at, updated_at)
       SELECT 'bench.f' || x.n, 'bench', x.len, x.len, 0,
              sha256(convert_to('bench.f' || x.n || ':' || x.len, 'UTF8')), now(), now()
       FROM unnest(%(numbers)s::int[], %(lengths)s::int[]) AS x(n, len)""",
    # What the append statement writes for a stream's data subjects.
    """INSERT INTO privacy_subject_stream (subject, stream_id)
       SELECT 'bench:fs-' || ((x.n + %(per_subject)s - 1) / %(per_subject)s), 'bench.f' || x.n
       FROM unnest(%(numbers)s::int[]) AS x(n)""",
    # The events, interleaved as concurrent writers leave them; each one a copy of the template's
    # columns (payload, type, metadata), published (a Kafka position), its own chain hash.
    """INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version, occurred_at,
                                     recorded_at, correlation_id, causation_id, actor, data_subject, payload,
                                     chain_hash, kafka_topic, kafka_partition, kafka_offset, published_at)
       SELECT gen_random_uuid(), 'bench.f' || x.n, g.v, t.event_type, t.schema_version, clock_timestamp(),
              clock_timestamp(), t.correlation_id, t.causation_id, t.actor,
              'bench:fs-' || ((x.n + %(per_subject)s - 1) / %(per_subject)s),
              t.payload, sha256(convert_to('bench.f' || x.n || ':' || g.v, 'UTF8')), t.kafka_topic,
              mod(abs(hashtext('bench.f' || x.n)), 12), x.n::bigint * 1000 + g.v, clock_timestamp()
       FROM unnest(%(numbers)s::int[], %(lengths)s::int[]) AS x(n, len)
            CROSS JOIN LATERAL generate_series(1, x.len) AS g(v)
            CROSS JOIN (SELECT * FROM eventstore_event WHERE stream_id = %(template)s AND version = 1) AS t
       ORDER BY g.v, x.n""",
]

LIBRARY_SLICE_SQL = """
    INSERT INTO {table} (originator_id, originator_version, topic, state)
    SELECT md5('growth-' || x.n)::uuid, g.v, CASE WHEN g.v = 1 THEN t1.topic ELSE t2.topic END,
           CASE WHEN g.v = 1 THEN t1.state ELSE t2.state END
    FROM unnest(%(numbers)s::int[], %(lengths)s::int[]) AS x(n, len)
         CROSS JOIN LATERAL generate_series(1, x.len) AS g(v)
         CROSS JOIN (SELECT topic, state FROM {table} WHERE originator_id = %(template)s AND originator_version = 1) t1
         CROSS JOIN (SELECT topic, state FROM {table} WHERE originator_id = %(template)s AND originator_version = 2) t2
    ORDER BY g.v, x.n"""


class Store:
    """One side's scratch database, seen from the orchestrator (fills, counts, sizes)."""

    def __init__(self, side: str, url: str) -> None:
        import psycopg

        self.side = side
        self.conn = psycopg.connect(url, autocommit=True)
        # The fill only: the rows are consistent by construction (no FK triggers), a crash
        # would lose a scratch database (asynchronous commit), sorts stay in memory.
        self.conn.execute("SET session_replication_role = replica")
        self.conn.execute("SET synchronous_commit = off")
        self.conn.execute("SET work_mem = '256MB'")
        self.conn.execute("SET maintenance_work_mem = '512MB'")
        try:  # fewer bytes of full-page images in the WAL, so fewer checkpoints during the fill
            self.conn.execute("SET wal_compression = lz4")
        except Exception as exc:  # noqa: BLE001 - a server built without lz4: its default
            log(f"growth: {side}: wal_compression stays as it is ({exc})")
        try:  # bt_metap: how many levels a B-tree has (a load descends all of them)
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
            self.pageinspect = True
        except Exception as exc:  # noqa: BLE001 - the levels are left out of the report
            log(f"growth: {side}: no pageinspect, B-tree levels not reported ({exc})")
            self.pageinspect = False
        self.fill_seconds = 0.0

    def events(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.events_table}").fetchone()[0]

    def insert_slice(self, numbers: list[int], lengths: list[int]) -> None:
        started = time.perf_counter()
        with self.conn.transaction():
            for statement in self.slice_sql:
                self.conn.execute(statement, {"numbers": numbers, "lengths": lengths,
                                              "per_subject": STREAMS_PER_SUBJECT, "template": self.template})
        self.fill_seconds += time.perf_counter() - started

    def vacuum(self) -> float:
        started = time.perf_counter()
        for table in self.tables:
            self.conn.execute(f"VACUUM (ANALYZE) {table}")
        return time.perf_counter() - started

    def sizes(self) -> dict[str, dict[str, int]]:
        out = {}
        for table in self.tables:
            total, heap, indexes = self.conn.execute(
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
                [table, table, table]).fetchone()
            rows = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            each = self.conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid), a.amname = 'btree' FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "WHERE i.indrelid = %s::regclass ORDER BY c.relname", [table]).fetchall()
            levels = {}
            if self.pageinspect:
                for name, _, btree in each:
                    if btree:  # bt_metap's level is the root's: the levels are one more
                        levels[name] = self.conn.execute("SELECT level + 1 FROM bt_metap(%s)", [name]).fetchone()[0]
            out[table] = {"total": total, "heap": heap, "indexes": indexes, "rows": rows,
                          "each": {name: size for name, size, _ in each}, "levels": levels}
        return out

    def heap_pages(self, stream: str) -> int:
        """How many heap pages hold the stream's live rows (a load visits at least these)."""
        return self.conn.execute(f"SELECT count(DISTINCT (ctid::text::point)[0]) FROM {self.events_table} "
                                 f"WHERE {self.stream_column} = %s", [stream]).fetchone()[0]

    def row_versions(self, stream: str) -> dict[str, int]:
        """How the stream's live rows came to be, read from their tuple headers (pageinspect):
        as inserted, by a HOT update (same page, no new index entries) or by another update (a
        new place, and a new entry in every index of the table). Ours records each event's
        Kafka position on its row after the acknowledgement."""
        if not self.pageinspect:
            return {}
        heap_only, updated = 0x8000, 0x2000  # t_infomask2 HEAP_ONLY_TUPLE, t_infomask HEAP_UPDATED
        row = self.conn.execute(
            f"""SELECT count(*) FILTER (WHERE h.t_infomask & {updated} = 0),
                       count(*) FILTER (WHERE h.t_infomask2 & {heap_only} <> 0),
                       count(*) FILTER (WHERE h.t_infomask & {updated} <> 0 AND h.t_infomask2 & {heap_only} = 0)
                FROM (SELECT (ctid::text::point)[0]::int AS page, (ctid::text::point)[1]::int AS item
                      FROM {self.events_table} WHERE {self.stream_column} = %s) r
                CROSS JOIN LATERAL heap_page_items(get_raw_page(%s, r.page)) h
                WHERE h.lp = r.item""", [stream, self.events_table]).fetchone()
        return dict(zip(("as_inserted", "hot_updated", "moved"), row))

    def close(self) -> None:
        self.conn.close()


class OursStore(Store):
    events_table = "eventstore_event"
    stream_column = "stream_id"
    tables = ("eventstore_event", "eventstore_stream", "privacy_subject_stream", "privacy_subject_key")
    slice_sql = OURS_SLICE_SQL

    def __init__(self, url: str, template: str) -> None:
        super().__init__("ours", url)
        self.template = template


class LibraryStore(Store):
    def __init__(self, url: str, table: str, template: str) -> None:
        super().__init__("library", url)
        self.events_table = table
        self.stream_column = "originator_id"
        self.tables = (table,)
        self.template = template
        self.slice_sql = [LIBRARY_SLICE_SQL.format(table=table)]


class Growth:
    """Grows both stores chunk by chunk (the same filler shape on both sides) and plants the
    small streams that the cold loads read."""

    def __init__(self, plan: Plan, stores: dict[str, Store], workers: dict[str, Any], seed: int) -> None:
        self.plan, self.stores, self.workers = plan, stores, workers
        self.rng = random.Random(seed)
        self.filler_streams = 0  # filler streams are numbered 1..filler_streams
        self.lengths: dict[int, int] = {}
        self.chunks = 0
        self.small: list[dict[str, str]] = []  # per small stream: its chunk, ours' stream id, the library's id
        self.used_small: set[str] = set()  # each small stream is loaded once in a run: its pages stay cold
        self.used_filler: set[int] = set()  # each filler stream gets one 10-event save in a run
        self.flip = False

    def grow_to(self, target: int) -> dict:
        counts = {side: store.events() for side, store in self.stores.items()}
        missing = target - counts["ours"]
        fill0 = {side: store.fill_seconds for side, store in self.stores.items()}
        started = time.perf_counter()
        done = 0
        while done < missing:
            rows = min(self.plan.chunk_rows, missing - done)
            self._chunk(rows)
            done += rows
            for side in SIDES:
                filled = counts[side] + done
                seconds = self.stores[side].fill_seconds - fill0[side]
                log(f"growth: {side:7} {filled:,}/{target:,} rows ({done / seconds if seconds else 0:,.0f} rows/s "
                    f"so far in this step, {time.perf_counter() - started:.0f} s)")
        vacuum = {}
        for side in SIDES:
            vacuum[side] = self.stores[side].vacuum()
            log(f"growth: {side:7} VACUUM (ANALYZE) in {vacuum[side]:.1f} s")
        # A checkpoint now rather than one started by the fill's WAL during the measurements.
        started_checkpoint = time.perf_counter()
        self.stores["ours"].conn.execute("CHECKPOINT")
        log(f"growth: CHECKPOINT in {time.perf_counter() - started_checkpoint:.1f} s")
        return {"added": max(missing, 0), "fill_s": {s: self.stores[s].fill_seconds - fill0[s] for s in self.stores},
                "vacuum_s": vacuum}

    def _chunk(self, rows: int) -> None:
        self.chunks += 1
        chunk = self.chunks
        lengths = stream_lengths(self.rng, rows)
        first = self.filler_streams + 1
        self.filler_streams += len(lengths)
        numbers = list(range(first, first + len(lengths)))
        self.lengths.update(zip(numbers, lengths))
        started = time.perf_counter()
        self.workers["ours"].call("make_keys", first=subject_of(numbers[0]), last=subject_of(numbers[-1]))
        self.stores["ours"].fill_seconds += time.perf_counter() - started
        # Slices of about equal rows; the chunk's small streams get one event after each.
        slices, current, current_rows = [], ([], []), 0
        per_slice = rows / SLICES
        for n, length in zip(numbers, lengths):
            current[0].append(n)
            current[1].append(length)
            current_rows += length
            if current_rows >= per_slice * (len(slices) + 1) and len(slices) < SLICES - 1:
                slices.append(current)
                current = ([], [])
        slices.append(current)
        while len(slices) < SLICES:
            slices.append(([], []))
        keys = [f"{chunk}-{j}" for j in range(self.plan.small_per_chunk)]
        ours_ids = [f"bench.small-{key}" for key in keys]
        library_ids: dict[str, str] = {}
        for k, (slice_numbers, slice_lengths) in enumerate(slices, start=1):
            if slice_numbers:
                # Both sides' slices at once, on their own connections (the server has the cores
                # and disks to share; each side's time is its own statements' time).
                with ThreadPoolExecutor(len(SIDES)) as pool:
                    for done in [pool.submit(self.stores[side].insert_slice, slice_numbers, slice_lengths)
                                 for side in SIDES]:
                        done.result()
            self.flip = not self.flip
            for side in (SIDES[::-1] if self.flip else SIDES):
                answer = self.workers[side].call("plant", streams=ours_ids if side == "ours" else keys, k=k)
                library_ids.update(answer["ids"])
        self.small += [{"chunk": chunk, "ours": ours_id, "library": library_ids[key]}
                       for key, ours_id in zip(keys, ours_ids)]

    def old_small_streams(self, count: int, rng: random.Random) -> list[dict[str, str]]:
        """`count` small streams at random among those of earlier chunks than the last (all, at
        the first size, when there are too few), never the same twice in a run."""
        used = self.used_small
        candidates = [s for s in self.small if s["chunk"] < self.chunks and s["ours"] not in used]
        if len(candidates) < count:
            candidates = [s for s in self.small if s["ours"] not in used]
        picked = rng.sample(candidates, min(count, len(candidates)))
        used.update(s["ours"] for s in picked)
        return picked

    def filler_targets(self, count: int, rng: random.Random) -> list[int]:
        used = self.used_filler
        picked: list[int] = []
        while len(picked) < count:
            n = rng.randint(1, self.filler_streams)
            if n not in used:
                used.add(n)
                picked.append(n)
        return picked


# --- the run -----------------------------------------------------------------------------------

def summary(latencies_s: list[float]) -> dict[str, float]:
    from bench.workers import percentile

    ms = [x * 1000 for x in latencies_s]
    return {"p50_ms": statistics.median(ms), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms), "count": len(ms)}


def measure_size(size: int, plan: Plan, growth: Growth, stores, workers, rng: random.Random, flip: list) -> dict:
    from bench.bench_eventstore import loadavg

    tag = f"{size // 1000}k"
    result: dict = {"size": size, "sides": {side: {} for side in SIDES}, "load_before": loadavg()}
    started = time.perf_counter()

    def step(name: str, params_for, rounds: int = 1) -> None:
        """Runs one measure on both sides, in `rounds` parts (round r gets params_for(side, r))
        with the side that goes first alternating, so that a burst of the machine's other
        work is shared out; the parts' latencies and times are added up."""
        for round_number in range(rounds):
            flip[0] = not flip[0]
            for side in (SIDES[::-1] if flip[0] else SIDES):
                answer = workers[side].call(name, **params_for(side, round_number))
                merged = result["sides"][side].setdefault(name, {"latencies": [], "elapsed_s": 0.0, "flush_s": 0.0})
                merged["latencies"] += answer["latencies"]
                if "stream" in answer:
                    merged["stream"] = answer["stream"]
                for key in ("elapsed_s", "flush_s"):
                    merged[key] = (merged[key] or 0.0) + (answer.get(key) or 0.0)
        for side in SIDES:
            log(f"  {side:7} {name}: {describe(result['sides'][side][name])}")

    log(f"measure: {size:,} stored events: {plan.singles:,} single-event saves of new streams")
    rounds = ROUNDS
    step("singles", lambda side, r: {"tag": f"{tag}r{r}", "count": share(plan.singles, rounds, r)}, rounds)

    numbers = growth.filler_targets(plan.saves, rng)
    ours_ids = [f"bench.f{n}" for n in numbers]
    versions = dict(stores["ours"].conn.execute(
        "SELECT stream_id, version FROM eventstore_stream WHERE stream_id = ANY(%s)", [ours_ids]).fetchall())
    ours_targets = [[sid, versions[sid], f"fs-{subject_of(n)}"] for sid, n in zip(ours_ids, numbers)]
    lengths = [growth.lengths[n] for n in numbers]
    log(f"measure: {size:,} stored events: {plan.saves} saves of {plan.save_events} events to existing streams "
        f"(filler streams of {min(lengths)} to {max(lengths)} events, median {statistics.median(lengths):.0f})")
    library_targets = [library_uuid(n) for n in numbers]

    def saves(side: str, r: int) -> dict:
        part = slice(r * plan.saves // rounds, (r + 1) * plan.saves // rounds)
        return {"targets": (ours_targets if side == "ours" else library_targets)[part], "events": plan.save_events}
    step("saves", saves, rounds)

    log(f"measure: {size:,} stored events: a {plan.load_events:,}-event stream appended, loaded {plan.loads} times")
    step("load_big", lambda side, r: {"tag": tag, "events": plan.load_events, "loads": plan.loads})

    small = growth.old_small_streams(plan.loads + 1, rng)
    timed, explained = small[:-1], small[-1]
    chunks = sorted({s["chunk"] for s in timed})
    log(f"measure: {size:,} stored events: {len(timed)} small streams of {SMALL_EVENTS} events loaded once each "
        f"(from chunks {chunks[0]}-{chunks[-1]} of {growth.chunks})")
    step("load_small", lambda side, r: {"streams": [s[side] for s in timed], "events": SMALL_EVENTS})
    result["measure_s"], result["load_after"] = time.perf_counter() - started, loadavg()
    for side in SIDES:
        result["sides"][side]["explain"] = workers[side].call(
            "explain_load", warm=[s[side] for s in timed[:6]], stream_id=explained[side])["plan"]
        big = result["sides"][side]["load_big"]["stream"]
        result["sides"][side]["explain_big"] = workers[side].call("explain_load", warm=[big] * 6,
                                                                  stream_id=big)["plan"]
        result["sides"][side]["sizes"] = stores[side].sizes()
        result["sides"][side]["big_pages"] = stores[side].heap_pages(big)
        result["sides"][side]["row_versions"] = stores[side].row_versions(big)
    result["events"] = {side: stores[side].events() for side in SIDES}
    return result


def share(total: int, parts: int, index: int) -> int:
    """The size of part `index` when `total` is cut into `parts` nearly equal parts."""
    return (index + 1) * total // parts - index * total // parts


def describe(answer: dict) -> str:
    if "latencies" not in answer:
        return "done"
    s = summary(answer["latencies"])
    text = f"p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms"
    if answer.get("elapsed_s"):
        text = f"{len(answer['latencies']) / answer['elapsed_s']:,.0f}/s, " + text
    if answer.get("flush_s"):
        text += f", then flush() {answer['flush_s'] * 1000:.0f} ms"
    return text


def run(args: argparse.Namespace) -> int:
    from bench.bench_eventstore import drop_database, loadavg, recreate_database, server_version, worker_env
    from bench.bench_metrics_gauges import product_code

    plan: Plan = args.plan
    args.code = product_code()  # now: the workers import the product as it is when they start
    lib_db = f"{args.db}_es"
    started_wall = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    load_start = loadavg()
    log(f"growth: sizes {', '.join(f'{s:,}' for s in plan.sizes)} stored events; load average {load_start} on "
        f"{os.cpu_count()} CPUs")
    log(f"growth: creating databases {args.db} and {lib_db}")
    recreate_database(args.pg, args.db)
    recreate_database(args.pg, lib_db)
    pg_version = server_version(args.pg)
    sys.path.insert(0, str(REPO))
    from devtools.embedded import start_tansu

    pg = urlparse(args.pg)
    broker_log = Path(tempfile.gettempdir()) / f"bench-growth-tansu-{os.getpid()}.log"
    broker = None
    workers: dict[str, Any] = {}
    stores: dict[str, Store] = {}
    results: list[dict] = []
    fills: list[dict] = []
    setup_info: dict = {}
    try:
        broker = start_tansu(log_path=broker_log)
        log(f"growth: Tansu broker on {broker.address} (pid {broker.process.pid})")
        env = {**worker_env(args.pg, args.db, lib_db, broker.address),
               "BENCH_PG_HOST": pg.hostname or "localhost", "BENCH_PG_PORT": str(pg.port or 5432),
               "BENCH_PG_USER": pg.username or "postgres", "BENCH_PG_PASSWORD": pg.password or ""}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for side in SIDES:
            workers[side] = growth_worker(side, env)
        for side in SIDES:
            t0 = time.perf_counter()
            setup_info[side] = workers[side].call("setup")
            log(f"growth: {side} worker ready in {time.perf_counter() - t0:.1f} s")
        stores["ours"] = OursStore(f"{args.pg}/{args.db}", setup_info["ours"]["template_stream"])
        stores["library"] = LibraryStore(f"{args.pg}/{lib_db}", setup_info["library"]["table"],
                                         setup_info["library"]["template_id"])
        growth = Growth(plan, stores, workers, args.seed)
        rng = random.Random(args.seed + 1)
        flip = [False]
        for size in plan.sizes:
            log(f"growth: growing both stores to {size:,} stored events")
            t0 = time.perf_counter()
            fill = growth.grow_to(size)
            fill["size"], fill["wall_s"] = size, time.perf_counter() - t0
            fills.append(fill)
            log(f"growth: {size:,} reached in {fill['wall_s']:.0f} s ({fill['added']:,} filler rows per side)")
            results.append(measure_size(size, plan, growth, stores, workers, rng, flip))
        for side in SIDES:
            workers[side].call("finish")
    finally:
        for store in stores.values():
            store.close()
        for worker in workers.values():
            worker.stop()
        if broker is not None:
            broker.stop()
        if args.keep:
            log(f"growth: keeping databases {args.db} and {lib_db} (--keep)")
        else:
            log(f"growth: dropping databases {args.db} and {lib_db}")
            for name in (args.db, lib_db):
                try:
                    drop_database(args.pg, name)
                except Exception as exc:  # noqa: BLE001 - reported; the results still count
                    log(f"growth: could not drop {name}: {exc}")
    broker_log.unlink(missing_ok=True)
    seconds = time.monotonic() - started_wall
    report = render(args, plan, results, fills, setup_info, pg_version, started, seconds, load_start, loadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # --out into a directory not made yet
    Path(args.out).write_text(report)
    log(f"growth: wrote {args.out}")
    chart(args.chart, results)
    log(f"growth: done in {seconds:.0f} s")
    return 0


# --- the report ------------------------------------------------------------------------------

def metrics_of(result: dict) -> dict[str, dict[str, float]]:
    """The measures of one size, per side."""
    out = {}
    for side in SIDES:
        r = result["sides"][side]
        singles, saves = summary(r["singles"]["latencies"]), summary(r["saves"]["latencies"])
        big, small = summary(r["load_big"]["latencies"]), summary(r["load_small"]["latencies"])
        events_table = next(iter(r["sizes"].values()))
        out[side] = {
            "singles_rate": len(r["singles"]["latencies"]) / r["singles"]["elapsed_s"],
            "singles_p50": singles["p50_ms"], "singles_p99": singles["p99_ms"],
            "saves_rate": len(r["saves"]["latencies"]) / r["saves"]["elapsed_s"],
            "saves_p50": saves["p50_ms"], "saves_p99": saves["p99_ms"],
            "big_p50": big["p50_ms"], "big_p90": big["p90_ms"],
            "small_p50": small["p50_ms"], "small_p90": small["p90_ms"],
            "table_mib": events_table["total"] / 2**20,
            "all_mib": sum(t["total"] for t in r["sizes"].values()) / 2**20,
            "bytes_per_event": events_table["total"] / events_table["rows"],
        }
    return out


METRICS = [
    # key, title, unit, higher is better
    ("singles_rate", "Single-event saves of new streams (one thread): appends/s", "/s", True),
    ("singles_p50", "... latency of one save, p50", "ms", False),
    ("singles_p99", "... latency of one save, p99", "ms", False),
    ("saves_rate", "10-event saves to existing streams (one thread): saves/s", "/s", True),
    ("saves_p50", "... latency of one save, p50", "ms", False),
    ("saves_p99", "... latency of one save, p99", "ms", False),
    ("big_p50", "Load of a 1,000-event aggregate appended at this size: median", "ms", False),
    ("big_p90", "... p90", "ms", False),
    ("small_p50", "Load of an old 5-event aggregate (each stream once, cold-ish pages): median", "ms", False),
    ("small_p90", "... p90", "ms", False),
    ("table_mib", "Events table with its indexes (pg_total_relation_size)", "MiB", False),
    ("bytes_per_event", "... per stored event", "B", False),
]


def fmt(value: float, unit: str) -> str:
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}"
    return f"{text}{unit}" if unit == "/s" else f"{text} {unit}"


def render(args, plan: Plan, results, fills, setup_info, pg_version, started, seconds, load_start, load_end) -> str:
    from bench.bench_eventstore import machine, versions

    m = machine()
    command = os.environ.get("BENCH_COMMAND") or "python -m bench.bench_growth " + shlex.join(sys.argv[1:])
    took = f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
    per_size = [metrics_of(r) for r in results]
    lib_table = setup_info["library"]["table"]
    lines = [
        "# Growth: appends and loads as the store grows, ours vs the eventsourcing library", "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC ({took})",
        f"- command: `{command}`",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']}; load average "
        f"{load_start} at the start, {load_end} at the end (shared machine: compare within one run)",
        f"- PostgreSQL: {pg_version.split(' on ')[0]}, localhost, one scratch database per side "
        f"(`{args.db}`, `{args.db}_es`); " + server_settings(args.pg),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items() if v != "-") + f"; {args.code}",
        "- ours: bench/workers.py's store (`build_event_store(kafka_settings=...)`, PostgresRecorder), Kafka "
        "publishing ON to an embedded Tansu broker, hash chain and encryption of the text on; the library: "
        f"bench/workers.py's `Application` with `PERSISTENCE_MODULE=eventsourcing.postgres` (table `{lib_table}`)",
        f"- per size: {plan.singles:,} single-event saves of new streams; {plan.saves} saves of "
        f"{plan.save_events} events, each to a different existing (filler) stream picked at random; a "
        f"{plan.load_events:,}-event stream appended then loaded {plan.loads} times after 3 warm-ups; {plan.loads} "
        f"old {SMALL_EVENTS}-event streams loaded once each; both sides in alternating order. How the store is "
        "filled: the docstring of bench/bench_growth.py and docs/scaling.md",
        "",
        "Ratio = ours / library (for rates above 1 means ours is faster; for times and sizes below 1 means ours "
        "is smaller). **flat?** = the measure at this size divided by the same side's measure at the smallest "
        "size (1.00× = no change with the store's size; rates fall below 1, times rise above 1 when growth costs).",
    ]
    lines += ["", "The machine's load while each size was measured (the measures of one size take about "
              f"{statistics.median(r['measure_s'] for r in results):.0f} s; other work shares the machine, and a "
              "size measured under more load looks slower: read **flat?** with this in mind):", "",
              "| stored events | load average (1, 5, 15 min) before the measures | after |", "| ---: | --- | --- |"]
    lines += [f"| {r['size']:,} | {r['load_before']} | {r['load_after']} |" for r in results]
    for key, title, unit, _ in METRICS:
        lines += ["", f"### {title}", "",
                  "| stored events | ours | library | ratio | flat? ours | flat? library |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = per_size[0]
        for result, values in zip(results, per_size):
            o, l = values["ours"][key], values["library"][key]
            lines.append(f"| {result['size']:,} | {fmt(o, unit)} | {fmt(l, unit)} | {o / l:.2f}× | "
                         f"{o / base['ours'][key]:.2f}× | {l / base['library'][key]:.2f}× |")
    lines += ["", "### Every table each side writes, with indexes (MiB)", "",
              "| stored events | ours: events | ours: streams | ours: subject-stream rows | ours: all | library |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    def mib(table: dict) -> float:
        return table["total"] / 2**20

    for result in results:
        ours = result["sides"]["ours"]["sizes"]
        lib = result["sides"]["library"]["sizes"]
        lines.append(f"| {result['size']:,} | {mib(ours['eventstore_event']):,.0f} | "
                     f"{mib(ours['eventstore_stream']):,.0f} | {mib(ours['privacy_subject_stream']):,.0f} | "
                     f"{sum(mib(t) for t in ours.values()):,.0f} | {sum(mib(t) for t in lib.values()):,.0f} |")
    last = results[-1]
    lines += ["", f"Index sizes at {last['size']:,} stored events (MiB):", ""]
    for side in SIDES:
        for table, info in last["sides"][side]["sizes"].items():
            if info["each"]:
                levels = info.get("levels", {})

                def described(name: str, size: int, levels=levels) -> str:
                    depth = levels.get(name)
                    return f"{name} {size / 2**20:,.0f}" + (
                        f" ({depth} level{'s' * (depth != 1)})" if depth is not None else "")
                lines.append(f"- {side}, `{table}` ({info['rows']:,} rows, heap {info['heap'] / 2**20:,.0f}): "
                             + ", ".join(described(name, size) for name, size in info["each"].items()))
    lines += ["", "B-tree levels (root to leaf) of the indexes a load walks, at each size:", "",
              "| stored events | ours: `eventstore_event_stream_version` | ours: `privacy_subject_key_pkey` | "
              "library: primary key |", "| ---: | ---: | ---: | ---: |"]
    for result in results:
        ours, lib = result["sides"]["ours"]["sizes"], result["sides"]["library"]["sizes"]
        events_levels = ours["eventstore_event"].get("levels", {})
        key_levels = ours["privacy_subject_key"].get("levels", {})
        lib_levels = next(iter(lib.values())).get("levels", {})
        lines.append(f"| {result['size']:,} | {events_levels.get('eventstore_event_stream_version', '–')} | "
                     f"{key_levels.get('privacy_subject_key_pkey', '–')} | "
                     f"{next((v for k, v in lib_levels.items() if k.endswith('_pkey')), '–')} |")
    lines += ["", "Where the 1,000-event stream's live rows lie when it is loaded: the heap pages holding them, "
              "and how each row came to be, from its tuple header (ours records each event's Kafka position on "
              "its row after the acknowledgement: a HOT update stays in its page and adds no index entries, any "
              "other update moves the row and adds an entry to every index of the table; until VACUUM the old "
              "versions stay, and an index scan passes them):", "",
              "| stored events | heap pages: ours | heap pages: library | ours: rows as inserted | "
              "HOT-updated | moved by an update | library: rows as inserted |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        ours, lib = result["sides"]["ours"], result["sides"]["library"]
        versions, lib_versions = ours["row_versions"], lib["row_versions"]
        lines.append(f"| {result['size']:,} | {ours['big_pages']:,} | {lib['big_pages']:,} | "
                     f"{versions.get('as_inserted', '–')} | {versions.get('hot_updated', '–')} | "
                     f"{versions.get('moved', '–')} | {lib_versions.get('as_inserted', '–')} |")
    lines += ["", "### The fill", "",
              "| stored events | filler rows added per side | ours: insert | library: insert | "
              "VACUUM (ANALYZE) ours / library | step's wall time (fill, small streams, VACUUM, CHECKPOINT) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]

    def rate(fill: dict, side: str) -> float:
        return fill["added"] / fill["fill_s"][side] if fill["fill_s"][side] else 0

    for fill in fills:
        lines.append(f"| {fill['size']:,} | {fill['added']:,} | {fill['fill_s']['ours']:.0f} s "
                     f"({rate(fill, 'ours'):,.0f} rows/s) | {fill['fill_s']['library']:.0f} s "
                     f"({rate(fill, 'library'):,.0f} rows/s) | "
                     f"{fill['vacuum_s']['ours']:.0f} / {fill['vacuum_s']['library']:.0f} s | {fill['wall_s']:.0f} s |")
    lines += ["", "Stored events when measured (filler, small streams, and what the measures of the earlier sizes "
              "appended): " + "; ".join(f"{r['size']:,}: ours {r['events']['ours']:,}, library "
                                        f"{r['events']['library']:,}" for r in results)]
    for key, what in (("explain", "an old 5-event stream"), ("explain_big", "the 1,000-event stream")):
        lines += ["", f"### The load statement of {what}, EXPLAIN (ANALYZE, BUFFERS)", "",
                  "Prepared and executed 6 times first (the plan a long-running process gets), then explained; "
                  "ours: the recorder's load statement (the events joined with their subject's key row), the "
                  "library: `select_events` as `repository.get` runs it.", "",
                  "| stored events | ours | library |", "| ---: | --- | --- |"]
        for result in results:
            cells = [plan_summary(result["sides"][side][key]) for side in SIDES]
            lines.append(f"| {result['size']:,} | {cells[0]} | {cells[1]} |")
        for side in SIDES:
            lines += ["", f"<details><summary>{side}, {what}, at {last['size']:,} stored events</summary>", "",
                      "```", last["sides"][side][key], "```", "", "</details>"]
    raw = [{"size": r["size"], "events": r["events"],
            "sides": {side: {op: {k: (summary(v) if k == "latencies" else v) for k, v in answer.items()}
                             for op, answer in r["sides"][side].items() if isinstance(answer, dict) and op != "sizes"}
                      for side in SIDES}} for r in results]
    lines += ["", "Raw numbers (latency summaries in ms, times in s):", "", "```json",
              json.dumps({"plan": plan.__dict__, "fills": fills, "measures": raw}, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def plan_summary(plan: str) -> str:
    """The first node, its buffers and the execution time of an EXPLAIN (ANALYZE, BUFFERS)."""
    lines = [line.strip() for line in plan.splitlines()]
    node = lines[0].split("  (")[0] if lines else "?"
    buffers = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Buffers:")), "")
    execution = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Execution Time")), "")
    return f"{node}; buffers {buffers or '-'}; {execution}".replace("|", "\\|")


def server_settings(pg_url: str) -> str:
    import psycopg

    with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                            "('shared_buffers', 'work_mem', 'effective_cache_size', 'max_wal_size') "
                            "ORDER BY name").fetchall()
    return ", ".join(f"{name} {value}" for name, value in rows)


def chart(path: str, results: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("growth: matplotlib is not installed: no chart (pip install matplotlib into .venv)")
        return
    sizes = [r["size"] for r in results]
    per_size = [metrics_of(r) for r in results]
    figure, (rates, big, small) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    styles = {"ours": ("tab:blue", "ours"), "library": ("tab:orange", "library")}
    for side, (colour, label) in styles.items():
        rates.plot(sizes, [v[side]["singles_rate"] for v in per_size], marker="o", color=colour,
                   label=f"{label}: single-event saves/s")
        rates.plot(sizes, [v[side]["saves_rate"] for v in per_size], marker="s", linestyle="--", color=colour,
                   label=f"{label}: 10-event saves/s")
        big.plot(sizes, [v[side]["big_p50"] for v in per_size], marker="o", color=colour, label=f"{label}: median")
        big.plot(sizes, [v[side]["big_p90"] for v in per_size], marker=".", linestyle=":", color=colour,
                 label=f"{label}: p90")
        small.plot(sizes, [v[side]["small_p50"] for v in per_size], marker="s", color=colour,
                   label=f"{label}: median")
        small.plot(sizes, [v[side]["small_p90"] for v in per_size], marker=".", linestyle=":", color=colour,
                   label=f"{label}: p90")
    for axis, title, ylabel in ((rates, "Append rate (one thread)", "saves per second"),
                                (big, "Load of a 1,000-event aggregate", "ms"),
                                (small, "Load of an old 5-event aggregate", "ms")):
        axis.set_xscale("log")
        axis.set_xlabel("stored events")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.set_xticks(sizes, [f"{s / 1e6:g}M" if s >= 1e6 else f"{s / 1e3:g}k" for s in sizes])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    # The machine is shared: the load while each size was measured is part of the picture.
    loads = ", ".join(f"{r['size'] / 1e6:g}M: {r['load_before'].split()[0]}" if r["size"] >= 1e6 else
                      f"{r['size'] / 1e3:g}k: {r['load_before'].split()[0]}" for r in results)
    figure.text(0.01, 0.01, f"bench/run-growth; 1-minute load average when each size was measured: {loads}",
                fontsize=7, color="0.4")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    log(f"growth: wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        serve(args.worker)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
