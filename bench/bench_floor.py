"""The bare PostgreSQL floor of the event store's hot paths, measured with psycopg 3 directly.

    bash bench/run-floor [--quick] [--out bench/FLOOR_RESULTS.md] [--keep] [--pg URL]

What a performance goal of the store can reach is bounded by the database work its hot paths
do. This measures that work with no product or library Python around it (prepared statements,
binary parameters and results, arguments built before the timer), next to the same work done the way
the eventsourcing library (9.5.6, PostgreSQL persistence) does it, on the same server:

1. round trip floor: prepared `SELECT 1`; a durable one-row INSERT into a one-column table in
   autocommit (one round trip and one WAL flush); the same INSERT with synchronous_commit off
   (what the flush costs);
2. single-event append: `eventstore_append(...)` called as PostgresRecorder.append calls it
   (new stream, existing stream; a data subject whose key row exists), the same rows written by
   plain statements in one transaction sent as one pipeline, the library's save SQL (its lock
   table + notify + insert, in a pipelined transaction, as its recorder sends it) on its table;
3. 500-event append: the same three, plus the plain INSERT into a copy of the events table
   without its secondary indexes (event_type, correlation, causation, actor, BRIN);
4. recording Kafka positions of 500 just-inserted events: the product's UPDATE ... FROM unnest
   with a FOR EACH ROW BEFORE UPDATE trigger (0004's form) and with `BEFORE UPDATE OF <the
   immutable columns>` (two otherwise identical copies of the events table); an INSERT into a
   narrow side table; one row per run of consecutive versions (1 run of 500, 500 runs of 1);
5. loading a 1,000-event stream: the recorder's load SQL (the key row joined to every event, and
   to the first event only) vs the library's select, fetched into
   tuples (binary and text); the Python floor of decoding an aggregate's payloads: AES-GCM
   decryption of 1,000 ~100-byte fields, json.loads of 1,000 ~300-byte payloads;
6. reading the whole log in position order: keyset pages of 5,000 rows, a server-side cursor,
   the library's select_notifications SQL.

Reference rows run the library's own code (recorder.insert_events, Application.save,
repository.get, recorder.select_events, recorder.select_notifications) in the same rounds,
so the goals' denominators are measured at the same moment as the floors.

Everything runs in a scratch database (teddy_bench_floor, dropped at the end unless --keep):
the project's migrations make our schema, the library's recorder makes its tables in the schema
`library` of the same database. Variants are alternated round by round (the order rotates), so
the noise of a shared machine hits all alike; figures are medians and p99 of many repetitions.
Python's garbage collector is off inside timed operations (collected between rounds).
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
DB = "teddy_bench_floor"
LIB_SCHEMA = "library"
MASTER_KEYS = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA="
TEXT = "x" * 100  # the sensitive string field of every event (as in bench/workers.py)
ACTOR = "parent:floor-parent"
EVENT_TYPE = "ChildNoteAdded"
TOPIC = "teddy.child"
MAX_VERSION = 2**63 - 1

# Copied from eventsourcing_app/eventstore/recorders.py (compared with it at run time). The load
# SQL in two forms: the key row joined to every event (the recorder's until commit 7fac545), and
# joined to the first event asked for only (its form from that commit on).
LOAD_COLUMNS = (
    "position", "event_id", "version", "event_type", "schema_version", "occurred_at", "correlation_id",
    "causation_id", "actor", "data_subject", "payload", "chain_hash", "kafka_topic", "kafka_partition",
    "kafka_offset",
)
APPEND_SQL = (
    "SELECT outcome, stream_version, published_version, positions, hashes, detail, epoch FROM eventstore_append("
    "%s, %s, %s, %b::uuid[], %b::text[], %b::int[], %b::timestamptz[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::bytea[], %b::bytea[], %s::text, %b::bytea, %s::text, %b::text[], %b::bytea[])"
)
_SELECT_COLUMNS = ", ".join("e." + c if c != "event_id" else "e.event_id::text" for c in LOAD_COLUMNS)
LOAD_SQL = (f"SELECT {_SELECT_COLUMNS}, "
            "k.wrapped_key, k.master_key_id "
            "FROM eventstore_event e LEFT JOIN privacy_subject_key k ON k.subject = e.data_subject "
            "WHERE e.stream_id = %s AND e.version >= %s AND e.version <= %s ORDER BY e.version")
LOAD_SQL_KEY_ONCE = (f"SELECT {_SELECT_COLUMNS}, "
                     "k.wrapped_key, k.master_key_id "
                     "FROM eventstore_event e "
                     "LEFT JOIN privacy_subject_key k ON k.subject = CASE WHEN e.version = %s THEN e.data_subject END "
                     "WHERE e.stream_id = %s AND e.version >= %s AND e.version <= %s ORDER BY e.version")

# The columns an event row is written with (recorded_at: the database's clock).
_EVENT_INSERT = ("INSERT INTO {table} (event_id, stream_id, version, event_type, schema_version, occurred_at, "
                 "recorded_at, correlation_id, causation_id, actor, data_subject, payload, chain_hash) ")
PLAIN_EVENT_1 = _EVENT_INSERT + ("VALUES (%b, %b, %b, %b, %b, %b, now(), %b, %b, %b, %b, %b, %b) RETURNING position")
PLAIN_EVENTS_N = _EVENT_INSERT + (
    "SELECT x.id, %b, x.v, x.etype, x.sver, x.occ, now(), x.corr, x.caus, x.actor, x.subject, x.payload, x.hash "
    "FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::int[], %b::timestamptz[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::bytea[], %b::bytea[]) "
    "AS x(id, v, etype, sver, occ, corr, caus, actor, subject, payload, hash) RETURNING position")
PLAIN_STREAM_NEW = ("INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, last_hash, "
                    "created_at, updated_at) VALUES (%b, %b, %b, 0, %b, now(), now())")
PLAIN_STREAM_MOVE = ("UPDATE eventstore_stream SET version = %b, last_hash = %b, updated_at = now() "
                     "WHERE stream_id = %b AND version = %b")
PLAIN_SUBJECT_STREAM = "INSERT INTO privacy_subject_stream (subject, stream_id) VALUES (%b, %b)"
# As PostgresRecorder.record_publications (bound server-side here).
PUB_UPDATE = ("UPDATE {table} e SET kafka_topic = x.topic, kafka_partition = x.part, kafka_offset = x.off, "
              "published_at = %b FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::bigint[]) "
              "AS x(pos, topic, part, off) WHERE e.position = x.pos")
SIDE_INSERT = ('INSERT INTO floor_kafka_position (position, topic, partition, "offset", published_at) '
               "SELECT x.pos, x.topic, x.part, x.off, %b FROM unnest(%b::bigint[], %b::text[], %b::int[], "
               "%b::bigint[]) AS x(pos, topic, part, off)")
RUN_INSERT = ("WITH o AS (SELECT %b::bigint[] AS offs) "
              "INSERT INTO floor_kafka_run (stream_id, first_version, last_version, topic, partition, offsets, "
              "published_at) SELECT x.sid, x.first, x.last, x.topic, x.part, o.offs[x.s : (x.s + (x.last - x.first))::int], "
              "%b FROM o, unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::int[], %b::int[]) "
              "AS x(sid, first, last, topic, part, s)")
LOG_SQL = f"SELECT e.stream_id, {_SELECT_COLUMNS} FROM eventstore_event e WHERE e.position > %s ORDER BY e.position LIMIT %s"
LOG_CURSOR_SQL = f"SELECT e.stream_id, {_SELECT_COLUMNS} FROM eventstore_event e ORDER BY e.position"
IMMUTABLE_COLUMNS = ("position, event_id, stream_id, version, event_type, schema_version, occurred_at, recorded_at, "
                     "correlation_id, causation_id, actor, data_subject, payload, chain_hash")
SECONDARY_INDEXES = ("eventstore_event_type", "eventstore_event_correlation", "eventstore_event_causation",
                     "eventstore_event_actor", "eventstore_event_recorded_brin")

SCALES = {
    # log_streams x log_per = the log of section 6; rounds x per_round = samples per variant
    "full": dict(log_streams=2000, log_per=100, existing=200, s1=(40, 25), s2=(50, 20), s3=(60, 1), s4=(60, 1),
                 s5=(60, 1), s6_passes=3, warm_single=20, warm_batch=3),
    "quick": dict(log_streams=200, log_per=100, existing=50, s1=(10, 20), s2=(10, 10), s3=(10, 1), s4=(10, 1),
                  s5=(15, 1), s6_passes=2, warm_single=10, warm_batch=2),
}

perf = time.perf_counter


def log(message: str) -> None:
    print(message, flush=True)


# --- statistics -----------------------------------------------------------------------------

def summarize(samples: list[float]) -> dict:
    s = sorted(samples)
    n = len(s)
    return {"n": n, "median": statistics.median(s), "p99": s[max(0, math.ceil(0.99 * n) - 1)],
            "mean": statistics.fmean(s), "min": s[0], "max": s[-1]}


def alternate(section: str, variants: dict, rounds: int, per_round: int, warmup: int) -> dict[str, dict]:
    """Runs each variant (a callable returning the seconds of one timed operation) `per_round`
    times per round, the order of the variants rotating from round to round."""
    names = list(variants)
    log(f"[{section}] warm-up: {warmup} per variant ({', '.join(names)})")
    for name in names:
        for _ in range(warmup):
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    started = next_report = time.monotonic()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            order = names[k:] + names[:k]
            for name in order:
                for _ in range(per_round):
                    samples[name].append(variants[name]())
            gc.enable()
            gc.collect()
            gc.disable()
            now = time.monotonic()
            if now >= next_report or r == rounds - 1:
                next_report = now + 5
                medians = ", ".join(f"{name} {statistics.median(v) * 1e3:.3g}" for name, v in samples.items())
                log(f"[{section}] round {r + 1}/{rounds} ({now - started:.0f} s): medians ms: {medians}")
    finally:
        gc.enable()
    return {name: summarize(v) for name, v in samples.items()}


# --- the events -----------------------------------------------------------------------------

class Crypto:
    """Payloads as the product stores them: canonical JSON with the text field in an AES-GCM
    envelope (cipher.encrypt_fields' format), about 300 bytes."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = os.urandom(32)
        self.aead = AESGCM(self.key)
        self.wrapped = os.urandom(12 + 32 + 16)  # stands for a wrapped data key (never unwrapped here)

    @staticmethod
    def aad(subject: str, context: str, field: str) -> bytes:
        return f"{subject}\x1f{context}\x1f{field}".encode()

    def payload(self, subject: str, event_id: str, n: int) -> bytes:
        nonce = os.urandom(12)
        plaintext = json.dumps(TEXT, separators=(",", ":")).encode()
        envelope = {"$enc": 1, "n": base64.b64encode(nonce).decode(),
                    "c": base64.b64encode(self.aead.encrypt(nonce, plaintext, self.aad(subject, event_id, "text")))
                    .decode()}
        data = {"child_id": subject.split(":", 1)[1], "n": n, "note_id": f"note-{n:08d}",
                "kind": "bedtime-story", "text": envelope}
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class Events:
    """Column arrays of `count` events of one stream, built before any timer starts."""

    def __init__(self, crypto: Crypto, subject: str, count: int, first_version: int = 1, prev_hash: bytes = b""):
        now = dt.datetime.now(dt.timezone.utc)
        self.ids = [uuid.uuid4() for _ in range(count)]
        self.types = [EVENT_TYPE] * count
        self.svers = [1] * count
        self.occ = [now] * count
        self.corr = [str(uuid.uuid4()) for _ in range(count)]
        self.caus = [str(uuid.uuid4()) for _ in range(count)]
        self.actors = [ACTOR] * count
        self.subjects = [subject] * count
        self.payloads = [crypto.payload(subject, str(i), first_version + k) for k, i in enumerate(self.ids)]
        self.digests = [hashlib.sha256(p).digest() for p in self.payloads]
        self.versions = list(range(first_version, first_version + count))
        # The chain hashes the append would compute (for the plain statements).
        self.hashes = []
        h = prev_hash or bytes(32)
        for version, digest in zip(self.versions, self.digests):
            h = hashlib.sha256(h + version.to_bytes(8, "big", signed=True) + digest).digest()
            self.hashes.append(h)
        self.last_hash = h

    def append_params(self, stream_id: str, expected: int, wrapped: bytes) -> list:
        """The arguments of eventstore_append as PostgresRecorder.append builds them."""
        subjects = sorted({s for s in self.subjects if s is not None})
        return [stream_id, "child", int(expected), self.ids, self.types, self.svers, self.occ, self.corr, self.caus,
                self.actors, self.subjects, self.payloads, self.digests, None, None, None, subjects,
                [wrapped for _ in subjects]]

    def unnest_params(self, stream_id: str) -> list:
        return [stream_id, self.ids, self.versions, self.types, self.svers, self.occ, self.corr, self.caus,
                self.actors, self.subjects, self.payloads, self.hashes]


# --- setup ----------------------------------------------------------------------------------

def recreate_database(pg: str, db: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{db}"')


def drop_database(pg: str, db: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def migrate(pg: str, db: str) -> float:
    started = perf()
    env = dict(os.environ, DATABASE_URL=f"{pg}/{db}", TEDDY_MASTER_KEYS=MASTER_KEYS,
               DJANGO_SETTINGS_MODULE="teddy_project.settings", KAFKA_PUBLISH_ENABLED="false", LOG_LEVEL="WARNING")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit("bench_floor: manage.py migrate failed")
    return perf() - started


def product_facts(conn) -> dict:
    """What was measured: the migrations applied, the trigger's form, the SQL copies."""
    facts: dict = {}
    rows = conn.execute("SELECT name FROM django_migrations WHERE app = 'eventsourcing_app' ORDER BY id").fetchall()
    facts["migrations"] = [r[0] for r in rows]
    tgattr = conn.execute("SELECT tgattr::text FROM pg_trigger WHERE tgname = 'eventstore_event_no_update'").fetchone()
    facts["update_trigger"] = ("BEFORE UPDATE OF <columns>" if tgattr and tgattr[0].strip() else
                               "BEFORE UPDATE (every row)")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teddy_project.settings")
    os.environ.setdefault("TEDDY_MASTER_KEYS", MASTER_KEYS)
    try:
        import django

        django.setup()
        from eventsourcing_app.eventstore import recorders

        facts["append_sql_as_recorder"] = "same" if recorders._APPEND_SQL == APPEND_SQL else "differs"
        facts["load_sql_as_recorder"] = ("key row per event" if recorders._LOAD_SQL == LOAD_SQL else
                                         "key row on the first event" if recorders._LOAD_SQL == LOAD_SQL_KEY_ONCE
                                         else "neither of the two forms measured here")
    except Exception as exc:  # the comparison is information, not a precondition
        facts["append_sql_as_recorder"] = facts["load_sql_as_recorder"] = f"not compared ({exc.__class__.__name__})"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "eventsourcing_app"], cwd=REPO,
                               capture_output=True, text=True)
        facts["commit"] = head.stdout.strip()
        facts["eventsourcing_app_uncommitted_changes"] = bool(dirty.stdout.strip())
    except OSError:
        facts["commit"] = "unknown"
    return facts


def make_library(pg_parts, db: str):
    """The library's Application on the scratch database (schema `library`): its recorder creates
    its tables, composite type and function."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class BenchAggregate(Aggregate):
        @event("Created")
        def __init__(self, n: int, text: str) -> None:
            self.n, self.text, self.count = n, text, 1

        @event("Added")
        def add(self, n: int, text: str) -> None:
            self.n, self.text, self.count = n, text, self.count + 1

    class BenchFloorApp(Application):
        pass

    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": db,
           "POSTGRES_HOST": pg_parts.hostname or "localhost", "POSTGRES_PORT": str(pg_parts.port or 5432),
           "POSTGRES_USER": pg_parts.username or "postgres", "POSTGRES_PASSWORD": pg_parts.password or "",
           "POSTGRES_SCHEMA": LIB_SCHEMA, "POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "0"}
    app = BenchFloorApp(env=env)
    return app, BenchAggregate


def create_copies(conn) -> None:
    """Copies of the events table: without its secondary indexes (section 3), and two full copies
    that differ only in the update trigger (section 4)."""
    triggers = [r[0] for r in conn.execute(
        "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = 'eventstore_event'::regclass "
        "AND NOT t.tgisinternal").fetchall()]
    fk = ("ADD FOREIGN KEY (stream_id) REFERENCES eventstore_stream (stream_id) DEFERRABLE INITIALLY DEFERRED")
    # (c) of section 3: the constraints' indexes (position, event_id, stream+version), none of the others.
    conn.execute("CREATE TABLE eventstore_event_noidx (LIKE eventstore_event INCLUDING DEFAULTS INCLUDING IDENTITY "
                 "INCLUDING CONSTRAINTS INCLUDING STORAGE) WITH (fillfactor = 80)")
    conn.execute("ALTER TABLE eventstore_event_noidx ADD PRIMARY KEY (position), ADD UNIQUE (event_id), "
                 f"ADD UNIQUE (stream_id, version), {fk}")
    for definition in triggers:
        conn.execute(definition.replace(" ON public.eventstore_event ", " ON public.eventstore_event_noidx ")
                     .replace("TRIGGER eventstore_event_", "TRIGGER eventstore_event_noidx_"))
    # Section 4: every index, constraint and option of the real table; the update trigger in each form.
    for table, update_trigger in (
            ("floor_pub_row", "BEFORE UPDATE"),
            ("floor_pub_of", f"BEFORE UPDATE OF {IMMUTABLE_COLUMNS}")):
        conn.execute(f"CREATE TABLE {table} (LIKE eventstore_event INCLUDING ALL) WITH (fillfactor = 80)")
        conn.execute(f"ALTER TABLE {table} {fk}")
        conn.execute(f"CREATE TRIGGER {table}_no_update {update_trigger} ON {table} "
                     "FOR EACH ROW EXECUTE FUNCTION eventstore_event_immutable()")
        conn.execute(f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                     "FOR EACH ROW EXECUTE FUNCTION eventstore_event_immutable()")
        conn.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_event_immutable()")
    conn.execute("CREATE TABLE floor_kafka_position (position bigint PRIMARY KEY, topic text NOT NULL, "
                 'partition int NOT NULL, "offset" bigint NOT NULL, published_at timestamptz NOT NULL)')
    conn.execute("CREATE TABLE floor_kafka_run (stream_id varchar(200) NOT NULL, first_version bigint NOT NULL, "
                 "last_version bigint NOT NULL, topic text NOT NULL, partition int NOT NULL, offsets bigint[] NOT NULL, "
                 "published_at timestamptz NOT NULL, PRIMARY KEY (stream_id, first_version))")
    conn.execute("CREATE TABLE floor_min (v bigint)")


def table_indexes(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1",
                                       [table]).fetchall()]


def fill(conn, lib_table: str, crypto: Crypto, streams: int, per: int, existing: int, payload: bytes) -> dict:
    """Set-based: the log of section 6 (streams x per events, streams interleaved in position
    order, published), the existing streams of section 2 (5 events each) for our two variants
    and the library's, their subjects' key rows."""
    started = perf()
    p = {"payload": payload, "wrapped": crypto.wrapped, "streams": streams, "per": per, "topic": TOPIC}

    def ours(prefix: str, n_streams: int, n_per: int, published: bool) -> None:
        p.update(prefix=prefix, n=n_streams, per=n_per)
        conn.execute("INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, last_hash, "
                     "created_at, updated_at) SELECT 'child.' || %(prefix)s || s, 'child', %(per)s, "
                     f"{'%(per)s' if published else '0'}, sha256(int8send(s)), now(), now() "
                     "FROM generate_series(1, %(n)s) s", p)
        conn.execute("INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                     "SELECT 'child:' || %(prefix)s || s, %(wrapped)s, 'k1', now() FROM generate_series(1, %(n)s) s", p)
        conn.execute("INSERT INTO privacy_subject_stream (subject, stream_id) "
                     "SELECT 'child:' || %(prefix)s || s, 'child.' || %(prefix)s || s FROM generate_series(1, %(n)s) s",
                     p)
        kafka = ("%(topic)s, (s %% 12)::int, (v::bigint * %(n)s + s), t0 + (v * %(n)s + s) * interval '1 ms'"
                 if published else "NULL, NULL, NULL, NULL")
        conn.execute(
            "INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version, occurred_at, "
            "recorded_at, correlation_id, causation_id, actor, data_subject, payload, chain_hash, kafka_topic, "
            "kafka_partition, kafka_offset, published_at) "
            "SELECT gen_random_uuid(), 'child.' || %(prefix)s || s, v, 'ChildNoteAdded', 1, "
            "t0 + (v * %(n)s + s) * interval '1 ms', t0 + (v * %(n)s + s) * interval '1 ms', "
            "gen_random_uuid()::text, gen_random_uuid()::text, 'parent:floor-parent', 'child:' || %(prefix)s || s, "
            f"%(payload)s, sha256(int8send(v::bigint * %(n)s + s)), {kafka} "
            "FROM (SELECT now() - interval '1 day' AS t0) t, generate_series(1, %(per)s) v, "
            "generate_series(1, %(n)s) s ORDER BY v, s", p)

    def library(prefix: str, n_streams: int, n_per: int) -> None:
        p.update(prefix=prefix, n=n_streams, per=n_per)
        conn.execute(f"INSERT INTO {lib_table} (originator_id, originator_version, topic, state) "
                     "SELECT md5(%(prefix)s || s)::uuid, v, '__main__:BenchAggregate.Added', %(payload)s "
                     "FROM generate_series(1, %(per)s) v, generate_series(1, %(n)s) s ORDER BY v, s", p)

    log(f"[fill] the log: {streams:,} streams x {per} events, ours then the library's")
    ours("floor-log-", streams, per, True)
    library("floor-log-", streams, per)
    log(f"[fill] {existing} existing streams of 5 events for each single-event variant")
    ours("floor-fnx-", existing, 5, False)
    ours("floor-plx-", existing, 5, False)
    library("floor-libx-", existing, 5)
    return {"seconds": perf() - started}


def vacuum(conn, lib_table: str) -> None:
    for table in ("eventstore_event", "eventstore_stream", "privacy_subject_key", "privacy_subject_stream",
                  lib_table):
        conn.execute(f"VACUUM ANALYZE {table}")


# --- the sections ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args, scale: dict) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.args, self.scale = args, scale
        self.url = f"{args.pg}/{args.db}"
        self.conn = psycopg.connect(self.url, autocommit=True)
        # The library's SQL is sent on a connection like its pool's: autocommit, dict rows.
        self.lconn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        self.async_conn = psycopg.connect(self.url, autocommit=True)
        self.async_conn.execute("SET synchronous_commit = off")
        self.cursor_conn = psycopg.connect(self.url, autocommit=True)  # section 6's server-side cursor
        self.crypto = Crypto()
        self.results: dict = {}
        self.loads: dict = {}

    # library plumbing: its statements, taken from its recorder
    def setup_library(self, app, aggregate_class) -> None:
        from psycopg.sql import SQL, Identifier
        from psycopg.types.composite import CompositeInfo, register_composite

        self.app, self.BenchAggregate = app, aggregate_class
        rec = app.recorder
        self.lib_table = f"{LIB_SCHEMA}.{rec.events_table_name}"
        self.lib_insert = rec.insert_events_statement
        self.lib_locks = rec.lock_table_statements
        self.lib_notify = SQL("NOTIFY {0}").format(Identifier(rec.channel_name))
        self.lib_select = rec.select_events_statement + SQL(" ORDER BY originator_version") + SQL(" ASC")
        self.lib_notifications = SQL("SELECT * FROM {schema}.{table}").format(
            schema=Identifier(LIB_SCHEMA), table=Identifier(rec.events_table_name)) + SQL(
            " WHERE notification_id>=%s ORDER BY notification_id LIMIT %s")
        info = CompositeInfo.fetch(self.lconn, f"{LIB_SCHEMA}.{rec.stored_event_type_name}")
        register_composite(info, self.lconn)
        self.lib_row = info.python_type

    def lib_save_raw(self, rows: list) -> float:
        """The library's insert_events (no db functions) as its recorder sends it: a pipelined
        transaction of lock_timeout, LOCK TABLE ... IN EXCLUSIVE MODE, NOTIFY and the INSERT ...
        RETURNING notification_id, a sync for the ids, then COMMIT."""
        conn = self.lconn
        t = perf()
        with conn.pipeline() as pipeline, conn.transaction():
            with conn.cursor() as curs:
                pass  # its _insert_events: nothing
            with conn.cursor() as curs:
                for statement in self.lib_locks:
                    curs.execute(statement, prepare=True)
                curs.execute(self.lib_notify)
                curs.execute(self.lib_insert, (rows,))
                pipeline.sync()
                ids = [row["notification_id"] for row in curs.fetchall()]
        elapsed = perf() - t
        assert len(ids) == len(rows)
        return elapsed

    def append_fn(self, cur, params: list, expect: str = "appended") -> float:
        t = perf()
        row = cur.execute(APPEND_SQL, params, prepare=True, binary=True).fetchone()
        elapsed = perf() - t
        assert row[0] == expect, row
        return elapsed

    def plain_append(self, cur, cev, stream_id: str, ev: Events, new: bool, prev_version: int,
                     table: str = "eventstore_event") -> float:
        """The same rows as eventstore_append writes, by plain statements in one transaction sent
        as one pipeline (one round trip): the stream row (new: in its final state; existing: moved
        with an optimistic version check), the event rows, the subject-stream row of a new stream."""
        conn = self.conn
        count = len(ev.ids)
        sql = PLAIN_EVENT_1 if count == 1 else PLAIN_EVENTS_N
        if count == 1:
            params = [ev.ids[0], stream_id, ev.versions[0], ev.types[0], ev.svers[0], ev.occ[0], ev.corr[0],
                      ev.caus[0], ev.actors[0], ev.subjects[0], ev.payloads[0], ev.hashes[0]]
        else:
            params = ev.unnest_params(stream_id)
        t = perf()
        with conn.pipeline():
            cur.execute("BEGIN")
            if new:
                cur.execute(PLAIN_STREAM_NEW, [stream_id, "child", ev.versions[-1], ev.last_hash], prepare=True)
            cev.execute(sql.format(table=table), params, prepare=True, binary=True)
            if new:
                cur.execute(PLAIN_SUBJECT_STREAM, [ev.subjects[0], stream_id], prepare=True)
            else:
                cur.execute(PLAIN_STREAM_MOVE, [ev.versions[-1], ev.last_hash, stream_id, prev_version], prepare=True)
            cur.execute("COMMIT")
        positions = cev.fetchall()
        elapsed = perf() - t
        assert len(positions) == count
        return elapsed

    def key_rows(self, prefix: str, count: int) -> None:
        self.conn.execute("INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                          "SELECT 'child:' || %s || s, %s, 'k1', now() FROM generate_series(0, %s) s",
                          [prefix, self.crypto.wrapped, count])

    def existing(self, prefix: str) -> list[list]:
        return [list(r) for r in self.conn.execute(
            "SELECT stream_id, version, last_hash FROM eventstore_stream WHERE stream_id LIKE %s ORDER BY stream_id",
            [f"child.{prefix}%"]).fetchall()]

    # 1 ---------------------------------------------------------------------------------------
    def section1(self) -> None:
        rounds, per = self.scale["s1"]
        cur, acur = self.conn.cursor(), self.async_conn.cursor()
        counter = iter(range(10**9))

        def select1() -> float:
            t = perf()
            cur.execute("SELECT 1", prepare=True, binary=True).fetchone()
            return perf() - t

        def insert(c) -> float:
            v = next(counter)
            t = perf()
            c.execute("INSERT INTO floor_min (v) VALUES (%b)", [v], prepare=True)
            return perf() - t

        self.results["1"] = alternate("1 round trip", {
            "select1": select1, "insert_durable": lambda: insert(cur), "insert_async": lambda: insert(acur),
        }, rounds, per, self.scale["warm_single"])

    # 2 ---------------------------------------------------------------------------------------
    def section2(self) -> None:
        from eventsourcing.persistence import StoredEvent

        rounds, per = self.scale["s2"]
        total = rounds * per + self.scale["warm_single"] + 5
        for prefix in ("floor-fn1-", "floor-pl1-"):
            self.key_rows(prefix, total)
        c_fn, c_pl, c_ev = self.conn.cursor(), self.conn.cursor(), self.conn.cursor()
        crypto, wrapped = self.crypto, self.crypto.wrapped
        payload = self.payload
        state = {"fn_new": 0, "pl_new": 0, "lib_new": 0, "fn_x": 0, "pl_x": 0, "lib_x": 0, "ref_rec": 0, "ref_app": 0}
        fn_existing, pl_existing = self.existing("floor-fnx-"), self.existing("floor-plx-")
        lib_existing = [[uuid.UUID(hashlib.md5(f"floor-libx-{s}".encode()).hexdigest()), 5]
                        for s in range(1, self.scale["existing"] + 1)]

        def fn_new() -> float:
            i = state["fn_new"] = state["fn_new"] + 1
            ev = Events(crypto, f"child:floor-fn1-{i}", 1)
            return self.append_fn(c_fn, ev.append_params(f"child.floor-fn1-{i}", -1, wrapped))

        def fn_existing_() -> float:
            row = fn_existing[state["fn_x"] % len(fn_existing)]
            state["fn_x"] += 1
            stream_id, version = row[0], row[1]
            ev = Events(crypto, "child:" + stream_id.split(".", 1)[1], 1, version + 1)
            elapsed = self.append_fn(c_fn, ev.append_params(stream_id, version, wrapped))
            row[1] = version + 1
            return elapsed

        def plain_new() -> float:
            i = state["pl_new"] = state["pl_new"] + 1
            stream_id = f"child.floor-pl1-{i}"
            ev = Events(crypto, f"child:floor-pl1-{i}", 1)
            return self.plain_append(c_pl, c_ev, stream_id, ev, True, 0)

        def plain_existing() -> float:
            row = pl_existing[state["pl_x"] % len(pl_existing)]
            state["pl_x"] += 1
            stream_id, version, last_hash = row
            ev = Events(crypto, "child:" + stream_id.split(".", 1)[1], 1, version + 1, bytes(last_hash))
            elapsed = self.plain_append(c_pl, c_ev, stream_id, ev, False, version)
            row[1], row[2] = version + 1, ev.last_hash
            return elapsed

        def lib_new() -> float:
            return self.lib_save_raw([self.lib_row(uuid.uuid4(), 1, "__main__:BenchAggregate.Created", payload)])

        def lib_existing_() -> float:
            row = lib_existing[state["lib_x"] % len(lib_existing)]
            state["lib_x"] += 1
            elapsed = self.lib_save_raw([self.lib_row(row[0], row[1] + 1, "__main__:BenchAggregate.Added", payload)])
            row[1] += 1
            return elapsed

        def ref_recorder() -> float:
            events = [StoredEvent(originator_id=uuid.uuid4(), originator_version=1,
                                  topic="__main__:BenchAggregate.Created", state=payload)]
            t = perf()
            self.app.recorder.insert_events(events)
            return perf() - t

        def ref_app() -> float:
            state["ref_app"] += 1
            t = perf()
            self.app.save(self.BenchAggregate(n=state["ref_app"], text=TEXT))
            return perf() - t

        self.results["2"] = alternate("2 single-event append", {
            "fn_new": fn_new, "fn_existing": fn_existing_, "plain_new": plain_new, "plain_existing": plain_existing,
            "lib_new": lib_new, "lib_existing": lib_existing_, "ref_lib_recorder": ref_recorder,
            "ref_lib_app_save": ref_app,
        }, rounds, per, self.scale["warm_single"])

    # 3 ---------------------------------------------------------------------------------------
    def section3(self) -> None:
        from eventsourcing.persistence import StoredEvent

        rounds, per = self.scale["s3"]
        batch, per_stream = 500, 10  # 10 appends of 500 per stream (5,000 events), as bench/run's scenario 2
        total_streams = (rounds * per + self.scale["warm_batch"]) // per_stream + 2
        for prefix in ("floor-fnb-", "floor-plb-", "floor-pnb-"):
            self.key_rows(prefix, total_streams)
        c_fn, c_pl, c_ev = self.conn.cursor(), self.conn.cursor(), self.conn.cursor()
        crypto, wrapped, payload = self.crypto, self.crypto.wrapped, self.payload
        streams: dict[str, list] = {}  # variant -> [index, stream number, version, last hash, handle]

        def next_stream(variant: str) -> tuple[int, int, bytes, bool]:
            s = streams.setdefault(variant, [0, 0, 0, b"", None])
            if s[0] % per_stream == 0:
                s[1] += 1
                s[2], s[3], s[4] = 0, b"", None
            s[0] += 1
            return s[1], s[2], s[3], s[2] == 0

        def fn_500() -> float:
            n, version, _, new = next_stream("fn")
            ev = Events(crypto, f"child:floor-fnb-{n}", batch, version + 1)
            elapsed = self.append_fn(c_fn, ev.append_params(f"child.floor-fnb-{n}", -1 if new else version, wrapped))
            streams["fn"][2] = version + batch
            return elapsed

        def plain(variant: str, prefix: str, table: str) -> float:
            n, version, last_hash, new = next_stream(variant)
            ev = Events(crypto, f"child:{prefix}{n}", batch, version + 1, last_hash)
            elapsed = self.plain_append(c_pl, c_ev, f"child.{prefix}{n}", ev, new, version, table)
            streams[variant][2], streams[variant][3] = version + batch, ev.last_hash
            return elapsed

        def lib_500() -> float:
            n, version, _, new = next_stream("lib")
            s = streams["lib"]
            if new:
                s[4] = uuid.uuid4()
            rows = [self.lib_row(s[4], version + k, "__main__:BenchAggregate.Added", payload)
                    for k in range(1, batch + 1)]
            elapsed = self.lib_save_raw(rows)
            s[2] = version + batch
            return elapsed

        def ref_recorder() -> float:
            n, version, _, new = next_stream("rec")
            s = streams["rec"]
            if new:
                s[4] = uuid.uuid4()
            events = [StoredEvent(originator_id=s[4], originator_version=version + k,
                                  topic="__main__:BenchAggregate.Added", state=payload) for k in range(1, batch + 1)]
            t = perf()
            self.app.recorder.insert_events(events)
            elapsed = perf() - t
            s[2] = version + batch
            return elapsed

        def ref_app() -> float:
            n, version, _, new = next_stream("app")
            s = streams["app"]
            start = 0
            if new:
                s[4] = self.BenchAggregate(n=0, text=TEXT)
                start = 1
            for k in range(start, batch):
                s[4].add(n=version + k, text=TEXT)
            t = perf()
            self.app.save(s[4])
            elapsed = perf() - t
            s[2] = version + batch
            return elapsed

        self.results["3"] = alternate("3 500-event append", {
            "fn_500": fn_500,
            "plain_500": lambda: plain("pl", "floor-plb-", "eventstore_event"),
            "plain_500_noidx": lambda: plain("pn", "floor-pnb-", "eventstore_event_noidx"),
            "lib_500": lib_500, "ref_lib_recorder": ref_recorder, "ref_lib_app_save": ref_app,
        }, rounds, per, self.scale["warm_batch"])

    # 4 ---------------------------------------------------------------------------------------
    def section4(self) -> None:
        rounds, per = self.scale["s4"]
        batch = 500
        cur, cins = self.conn.cursor(), self.conn.cursor()
        self.conn.execute("INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, "
                          "last_hash, created_at, updated_at) VALUES ('child.floor-pub', 'child', 0, 0, %s, now(), now())",
                          [bytes(32)])
        crypto = self.crypto
        counters = {"floor_pub_row": 0, "floor_pub_of": 0, "offset": 0, "side": 0, "run": 0}
        parts = [3] * batch
        topics = [TOPIC] * batch

        def offsets() -> list[int]:
            first = counters["offset"]
            counters["offset"] += batch
            return list(range(first, first + batch))

        def update(table: str) -> float:
            version = counters[table]
            counters[table] += batch
            ev = Events(crypto, "child:floor-pub", batch, version + 1)
            positions = [r[0] for r in cins.execute(PLAIN_EVENTS_N.format(table=table),
                                                    ev.unnest_params("child.floor-pub"), prepare=True,
                                                    binary=True).fetchall()]
            params = [dt.datetime.now(dt.timezone.utc), positions, topics, parts, offsets()]
            t = perf()
            cur.execute(PUB_UPDATE.format(table=table), params, prepare=True)
            elapsed = perf() - t
            assert cur.rowcount == batch
            return elapsed

        def side() -> float:
            first = counters["side"]
            counters["side"] += batch
            params = [dt.datetime.now(dt.timezone.utc), list(range(first, first + batch)), topics, parts, offsets()]
            t = perf()
            cur.execute(SIDE_INSERT, params, prepare=True)
            return perf() - t

        def runs(n_runs: int) -> float:
            r = counters["run"]
            counters["run"] += 1
            length = batch // n_runs
            sids = [f"child.floor-run-{r}" if n_runs == 1 else f"child.floor-run-{r}-{k}" for k in range(n_runs)]
            firsts = [1] * n_runs  # each run its own stream
            lasts = [f + length - 1 for f in firsts]
            starts = [1 + k * length for k in range(n_runs)]
            params = [offsets(), dt.datetime.now(dt.timezone.utc), sids, firsts, lasts, [TOPIC] * n_runs,
                      [3] * n_runs, starts]
            t = perf()
            cur.execute(RUN_INSERT, params, prepare=True)
            elapsed = perf() - t
            assert cur.rowcount == n_runs
            return elapsed

        self.results["4"] = alternate("4 Kafka positions of 500 events", {
            "update_row_trigger": lambda: update("floor_pub_row"),
            "update_of_trigger": lambda: update("floor_pub_of"),
            "side_table_insert": side,
            "runs_1x500": lambda: runs(1),
            "runs_500x1": lambda: runs(batch),
        }, rounds, per, self.scale["warm_batch"])
        self.conn.execute("SELECT pg_stat_force_next_flush()")
        hot = self.conn.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                "WHERE relname IN ('floor_pub_row', 'floor_pub_of') ORDER BY relname").fetchall()
        self.results["4_hot"] = {name: {"updated": upd, "hot": hot_upd} for name, upd, hot_upd in hot}

    # 5 ---------------------------------------------------------------------------------------
    def make_load_streams(self) -> None:
        """Ours: a 1,000-event stream appended by eventstore_append (real envelopes, chain hashes);
        the library: a 1,000-event aggregate saved by its Application."""
        subject, stream_id = "child:floor-load", "child.floor-load"
        self.conn.execute("INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at) "
                          "VALUES (%s, %s, 'k1', now())", [subject, self.crypto.wrapped])
        ev = Events(self.crypto, subject, 1000)
        self.append_fn(self.conn.cursor(), ev.append_params(stream_id, -1, self.crypto.wrapped))
        self.load_stream = stream_id
        aggregate = self.BenchAggregate(n=0, text=TEXT)
        for k in range(1, 1000):
            aggregate.add(n=k, text=TEXT)
        self.app.save(aggregate)
        self.lib_load_id = aggregate.id

    def section5(self) -> None:
        rounds, per = self.scale["s5"]
        cur_b, cur_t, cur_k, lcur = self.conn.cursor(), self.conn.cursor(), self.conn.cursor(), self.conn.cursor()
        lrec = self.lconn.cursor()
        params = [self.load_stream, 1, MAX_VERSION]
        rows = self.conn.execute(LOAD_SQL, params, binary=True).fetchall()
        payloads = [bytes(r[10]) for r in rows]
        envelopes = []
        for r, p in zip(rows, payloads):
            env = json.loads(p)["text"]
            envelopes.append((base64.b64decode(env["n"]), base64.b64decode(env["c"]),
                              Crypto.aad(r[9], r[1], "text")))
        aead = self.crypto.aead
        lib_rows = self.conn.execute(self.lib_select, [self.lib_load_id], binary=True).fetchall()
        self.loads = {"ours_payload_bytes_avg": statistics.fmean(len(p) for p in payloads),
                      "ours_field_ciphertext_bytes_avg": statistics.fmean(len(e[1]) for e in envelopes),
                      "library_state_bytes_avg": statistics.fmean(len(bytes(r[3])) for r in lib_rows),
                      "rows": len(rows), "library_rows": len(lib_rows)}
        assert len(rows) == 1000 and len(lib_rows) == 1000, (len(rows), len(lib_rows))

        once_params = [1] + params

        def ours(cur, binary: bool, sql: str = LOAD_SQL, args: list = params) -> float:
            t = perf()
            got = cur.execute(sql, args, prepare=True, binary=binary).fetchall()
            elapsed = perf() - t
            assert len(got) == 1000
            return elapsed

        from psycopg import sql as pgsql

        copy_ours = pgsql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
            pgsql.SQL(LOAD_SQL.replace("%s", "{}")).format(*map(pgsql.Literal, params)))
        copy_lib = pgsql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
            pgsql.SQL(self.lib_select.as_string(self.conn).replace("%s", "{}")).format(pgsql.Literal(self.lib_load_id)))
        copy_cur = self.conn.cursor()
        copied: dict[str, int] = {}

        def copy(name: str, statement) -> float:
            size = 0
            t = perf()
            with copy_cur.copy(statement) as stream:
                for block in stream:
                    size += len(block)
            elapsed = perf() - t
            copied[name] = size
            return elapsed

        def lib_binary() -> float:
            t = perf()
            got = lcur.execute(self.lib_select, [self.lib_load_id], prepare=True, binary=True).fetchall()
            elapsed = perf() - t
            assert len(got) == 1000
            return elapsed

        def lib_as_recorder() -> float:
            t = perf()
            got = lrec.execute(self.lib_select, [self.lib_load_id], prepare=True).fetchall()
            elapsed = perf() - t
            assert len(got) == 1000
            return elapsed

        def decrypt() -> float:
            t = perf()
            for nonce, ct, aad in envelopes:
                aead.decrypt(nonce, ct, aad)
            return perf() - t

        def loads() -> float:
            t = perf()
            for p in payloads:
                json.loads(p)
            return perf() - t

        def decode_as_cipher() -> float:
            """json.loads of each payload, then its envelope opened as cipher.decrypt_fields opens it
            (base64 of nonce and ciphertext, AES-GCM with the associated data, json.loads of the value)."""
            t = perf()
            for r, p in zip(rows, payloads):
                data = json.loads(p)
                out = dict(data)
                for field, value in data.items():
                    if isinstance(value, dict) and value.get("$enc") == 1:
                        out[field] = json.loads(aead.decrypt(base64.b64decode(value["n"]), base64.b64decode(value["c"]),
                                                             f"{r[9]}\x1f{r[1]}\x1f{field}".encode()))
            return perf() - t

        def ref_select_events() -> float:
            t = perf()
            got = self.app.recorder.select_events(self.lib_load_id)
            elapsed = perf() - t
            assert len(got) == 1000
            return elapsed

        def ref_repository_get() -> float:
            t = perf()
            aggregate = self.app.repository.get(self.lib_load_id)
            elapsed = perf() - t
            assert aggregate.version == 1000
            return elapsed

        self.results["5"] = alternate("5 load 1,000 events", {
            "ours_load_binary": lambda: ours(cur_b, True), "ours_load_text": lambda: ours(cur_t, False),
            "ours_load_key_once_binary": lambda: ours(cur_k, True, LOAD_SQL_KEY_ONCE, once_params),
            "ours_copy_binary": lambda: copy("ours", copy_ours),
            "lib_select_binary": lib_binary, "lib_select_as_recorder": lib_as_recorder,
            "lib_copy_binary": lambda: copy("library", copy_lib),
            "py_aesgcm_decrypt_1000": decrypt, "py_json_loads_1000": loads, "py_decode_as_cipher_1000": decode_as_cipher,
            "ref_lib_select_events": ref_select_events, "ref_lib_repository_get": ref_repository_get,
        }, rounds, per, self.scale["warm_batch"])
        self.loads["copy_bytes"] = copied

    # 6 ---------------------------------------------------------------------------------------
    def section6(self) -> None:
        """Each variant reads the whole log page by page; the variants take turns page by page
        (one round: the next page of each, in a rotating order), so a burst of load on the
        machine hits all of them alike. A pass ends when every variant has read the whole log."""
        passes = self.scale["s6_passes"]
        page = 5000
        cur_b, cur_t, cur_c, lcur = self.conn.cursor(), self.conn.cursor(), self.conn.cursor(), self.conn.cursor()
        cursor_conn = self.cursor_conn
        copied: dict[str, int] = {}
        # Page boundaries for the COPY variants (COPY takes no parameters): the position before each page.
        def bounds(sql: str) -> list[int]:
            return [0] + [r[0] for r in self.conn.execute(sql, [page]).fetchall()]

        ours_bounds = bounds("SELECT position FROM (SELECT position, row_number() OVER (ORDER BY position) AS n "
                             "FROM eventstore_event) x WHERE n %% %s = 0 ORDER BY position")
        lib_bounds = bounds(f"SELECT notification_id FROM (SELECT notification_id, row_number() OVER "
                            f"(ORDER BY notification_id) AS n FROM {self.lib_table}) x WHERE n %% %s = 0 "
                            "ORDER BY notification_id")
        ours_copy = (f"COPY (SELECT e.stream_id, {_SELECT_COLUMNS} FROM eventstore_event e WHERE e.position > {{}} "
                     f"ORDER BY e.position LIMIT {page}) TO STDOUT (FORMAT BINARY)")
        lib_copy = (f"COPY (SELECT * FROM {self.lib_table} WHERE notification_id > {{}} ORDER BY notification_id "
                    f"LIMIT {page}) TO STDOUT (FORMAT BINARY)")

        def keyset(cur, sql, key_index: int, inclusive: bool, binary: bool = True):
            last = 0
            while True:
                t = perf()
                got = cur.execute(sql, [last + 1 if inclusive else last, page], prepare=True, binary=binary).fetchall()
                yield perf() - t, len(got)
                if len(got) < page:
                    return
                last = got[-1][key_index]

        def server_cursor():
            with cursor_conn.transaction():
                with cursor_conn.cursor(name="floor_log", binary=True) as named:
                    named.itersize = page
                    t = perf()
                    named.execute(LOG_CURSOR_SQL)
                    while True:
                        got = named.fetchmany(page)
                        yield perf() - t, len(got)
                        if len(got) < page:
                            return
                        t = perf()

        def copy_pages(name: str, statement: str, starts: list[int]):
            for lo in starts:
                size = 0
                t = perf()
                with cur_c.copy(statement.format(lo)) as stream:
                    for block in stream:
                        size += len(block)
                elapsed = perf() - t
                copied[name] = copied.get(name, 0) + size
                yield elapsed, 0

        def notifications():
            start = 1
            while True:
                t = perf()
                got = self.app.recorder.select_notifications(start, page)
                yield perf() - t, len(got)
                if len(got) < page:
                    return
                start = got[-1].id + 1

        readers = {
            "ours_keyset_binary": lambda: keyset(cur_b, LOG_SQL, 1, False),
            "ours_keyset_text": lambda: keyset(cur_t, LOG_SQL, 1, False, binary=False),
            "ours_server_cursor_binary": server_cursor,
            "ours_copy_binary": lambda: copy_pages("ours", ours_copy, ours_bounds),
            "lib_keyset_binary": lambda: keyset(lcur, self.lib_notifications, 4, True),
            "lib_copy_binary": lambda: copy_pages("library", lib_copy, lib_bounds),
            "ref_lib_select_notifications": notifications,
        }
        names = list(readers)
        ours_rows = self.conn.execute("SELECT count(*) FROM eventstore_event").fetchone()[0]
        lib_rows = self.conn.execute(f"SELECT count(*) FROM {self.lib_table}").fetchone()[0]
        known_rows = {"ours_copy_binary": ours_rows, "lib_copy_binary": lib_rows}
        pages: dict[str, list[float]] = {name: [] for name in names}
        totals: dict[str, list[tuple[float, int]]] = {name: [] for name in names}

        def one_pass(number: int, timed: bool) -> None:
            active = {name: readers[name]() for name in names}
            spent = {name: 0.0 for name in names}
            rows = {name: 0 for name in names}
            r = 0
            while active:
                live = [name for name in names if name in active]
                k = r % len(live)
                for name in live[k:] + live[:k]:
                    try:
                        elapsed, n = next(active[name])
                    except StopIteration:
                        del active[name]
                        continue
                    spent[name] += elapsed
                    rows[name] += n
                    if timed:
                        pages[name].append(elapsed)
                r += 1
                gc.enable()
                gc.collect()
                gc.disable()
            if timed:
                for name in names:
                    totals[name].append((spent[name], known_rows.get(name, rows[name])))
                rates = ", ".join(f"{n} {v[-1][1] / v[-1][0]:,.0f}/s" for n, v in totals.items())
                log(f"[6 read the log] pass {number}/{passes} ({time.monotonic() - started:.0f} s): {rates}")

        log(f"[6 read the log] warm-up: one pass of every variant, page by page ({', '.join(names)})")
        started = time.monotonic()
        gc.collect()
        gc.disable()
        try:
            one_pass(0, False)
            copied.clear()
            for number in range(1, passes + 1):
                one_pass(number, True)
        finally:
            gc.enable()
        out = {}
        for name in names:
            rates = [rows / seconds for seconds, rows in totals[name]]
            out[name] = {"rows": totals[name][0][1], "events_per_s_median": statistics.median(rates),
                         "events_per_s_min": min(rates), "events_per_s_max": max(rates),
                         "pass_seconds_median": statistics.median(s for s, _ in totals[name]),
                         "page": summarize(pages[name]), "passes": len(rates)}
        out["copy_bytes_per_pass"] = {k: v // passes for k, v in copied.items()}
        self.results["6"] = out


# --- the report -----------------------------------------------------------------------------

def ms(seconds: float) -> str:
    value = seconds * 1e3
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    if value >= 1:
        return f"{value:.2f} ms"
    return f"{value:.3f} ms"


def rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s"


def lat(s: dict, per: int = 1, show_rate: bool = True) -> str:
    text = f"{ms(s['median'])} p50 · {ms(s['p99'])} p99"
    if per > 1:
        text += f" · {s['median'] / per * 1e6:.1f} µs/event p50 · {per / s['mean']:,.0f} events/s"
    elif show_rate:
        text += f" · {rate(1 / s['mean'])}"
    return text


def write_report(path: Path, args, env: dict, bench: Bench, facts: dict, timings: dict) -> None:
    R = bench.results
    s1, s2, s3, s4, s5, s6 = (R.get(k, {}) for k in ("1", "2", "3", "4", "5", "6"))
    lines: list[str] = []
    add = lines.append
    add("# The bare PostgreSQL floor of the event store's hot paths")
    add("")
    add(f"- date: {env['date']} ({timings['total']:.0f} s)")
    add(f"- command: `{env['command']}`")
    add(f"- machine: {env['nproc']} CPUs (nproc), {env['cpu']}, {env['ram']}, Linux {env['kernel']}; load average "
        f"at the start {env['load_start']}, at the end {env['load_end']} (a shared machine: others run work and "
        "benchmarks on it; per-section load averages in the raw numbers)")
    add(f"- PostgreSQL: {env['postgres']} on localhost; " + ", ".join(f"{k} {v}" for k, v in env["settings"].items()))
    add(f"- versions: python {env['python']}, psycopg {env['psycopg']}, eventsourcing {env['eventsourcing']}, "
        f"cryptography {env['cryptography']}")
    add(f"- our schema: the project's migrations at commit {facts.get('commit')}"
        f"{' with uncommitted changes under eventsourcing_app/' if facts.get('eventsourcing_app_uncommitted_changes') else ''}"
        f", up to {facts['migrations'][-1]} ({len(facts['migrations'])} migrations); its update trigger on "
        f"eventstore_event: {facts['update_trigger']}; the append SQL used here compared with the recorder's at run "
        f"time: {facts['append_sql_as_recorder']}; the recorder's load SQL at run time: "
        f"{facts['load_sql_as_recorder']} (both forms are measured)")
    add(f"- the library's schema: created by its own PostgresApplicationRecorder (an `Application` with "
        f"`PERSISTENCE_MODULE=eventsourcing.postgres`) in the schema `{LIB_SCHEMA}` of the same scratch database: "
        f"`{bench.lib_table}`")
    add(f"- the store before the measures: {env['log_events']:,} events in each log (set-based), VACUUM ANALYZE; "
        f"every event written here carries a ~{bench.loads.get('ours_payload_bytes_avg', 0):.0f}-byte payload "
        "(JSON with one AES-GCM field), correlation, causation, actor and data subject (every partial index gets "
        "an entry); the library's raw rows carry the same payload bytes")
    add("")
    add("How to read it: each figure is the median (p50) and p99 of its repetitions; the variants of a section "
        "ran alternately, round by round, in a rotating order. A rate is 1 / mean latency on one connection, one "
        "operation after the other. Arguments are built before the timer starts (psycopg's adaptation of them "
        "is inside); Python's garbage collector is off inside timed operations. *ref* rows run the library's own "
        "code in the same rounds, for the goals' denominators. Run-to-run differences on this machine are "
        "larger than many of the differences between rows: compare rows of one run, within a section. With "
        "fewer than 100 repetitions (sections 3 to 5) the p99 is the slowest repetition.")
    add("")

    def table(title: str, rows: list[tuple[str, str, str]]) -> None:
        add(f"## {title}")
        add("")
        add("| figure | value | what it bounds |")
        add("| --- | --- | --- |")
        for figure, value, bounds in rows:
            add(f"| {figure} | {value} | {bounds} |")
        add("")

    if s1:
        table("1. Round trip floor (one connection, autocommit)", [
            ("prepared `SELECT 1`", lat(s1["select1"]),
             "every statement: one network round trip and one executor start"),
            ("durable one-row INSERT (one bigint column, no index)", lat(s1["insert_durable"]),
             "any durable single-event save on one connection: one round trip + one WAL flush (fdatasync)"),
            ("the same INSERT with synchronous_commit off", lat(s1["insert_async"]),
             "not a durable save: shows what the WAL flush costs (durable minus this)"),
        ])
    if s2:
        table("2. Single-event append", [
            ("(a) `eventstore_append` (1 event, new stream)", lat(s2["fn_new"]),
             "our single-event save to a new stream: the product's SQL without the store's Python"),
            ("(a) `eventstore_append` (1 event, existing stream)", lat(s2["fn_existing"]),
             "the same, appending to a stream of 5+ events (exact expected version)"),
            ("(b) plain statements, new stream: INSERT stream row (final state), INSERT event, INSERT "
             "subject-stream row, in one transaction (one pipeline, one round trip)", lat(s2["plain_new"]),
             "the same rows with none of the function's checks (no lock, no key check, no subtransaction)"),
            ("(b) plain statements, existing stream: INSERT event, UPDATE stream row (optimistic version check)",
             lat(s2["plain_existing"]), "as above, existing stream"),
            ("(c) the library's save SQL, new aggregate (pipelined: lock_timeout, LOCK TABLE EXCLUSIVE, NOTIFY, "
             "INSERT ... RETURNING, sync, COMMIT)", lat(s2["lib_new"]),
             "the library's single-event save at the database: two round trips + one WAL flush"),
            ("(c) the library's save SQL, existing aggregate", lat(s2["lib_existing"]), "as above, next version"),
            ("ref: the library's `recorder.insert_events` (1 stored event)", lat(s2["ref_lib_recorder"]),
             "(c) plus the recorder's Python (pool checkout, composite rows)"),
            ("ref: the library's `Application.save(new aggregate)` (aggregate built inside the timer)",
             lat(s2["ref_lib_app_save"]), "the library's single-event save rate: the goal's denominator"),
        ])
    if s3:
        table("3. 500-event append (10 appends of 500 per stream: 1 in 10 creates the stream)", [
            ("(a) `eventstore_append` with 500 events", lat(s3["fn_500"], 500),
             "our 500-event save: the product's SQL without the store's Python"),
            ("(b) plain: INSERT ... SELECT FROM unnest (500 rows) into eventstore_event + the stream row, one "
             "transaction, one round trip", lat(s3["plain_500"], 500),
             "the same rows with all the table's indexes, the deferred FK and its triggers; none of the function's "
             "checks"),
            ("(c) as (b) into a copy without the secondary indexes (event_type, correlation, causation, actor, "
             "BRIN)", lat(s3["plain_500_noidx"], 500), "(b) minus (c) is what those five indexes cost a batch"),
            ("(d) the library's 500-row save SQL (as its recorder sends it)", lat(s3["lib_500"], 500),
             "the library's 500-event save at the database"),
            ("ref: the library's `recorder.insert_events` (500 stored events)", lat(s3["ref_lib_recorder"], 500),
             "(d) plus the recorder's Python"),
            ("ref: the library's `Application.save` of an aggregate with 500 new events (events triggered before "
             "the timer)", lat(s3["ref_lib_app_save"], 500), "the library's 500-event save: the goal's denominator"),
        ])
    if s4:
        hot = R.get("4_hot", {})

        def hot_text(name: str) -> str:
            h = hot.get(name)
            if not h or not h["updated"]:
                return ""
            return f"; HOT updates {h['hot'] / h['updated']:.0%} of {h['updated']:,} rows updated"

        table("4. Recording Kafka positions of 500 just-inserted events (one statement, autocommit)", [
            ("(a) UPDATE ... FROM unnest (topic, partition, offset, published_at), BEFORE UPDATE FOR EACH ROW "
             "trigger (0004's form)", lat(s4["update_row_trigger"], 500) + hot_text("floor_pub_row"),
             "record_publications' event-row update with the trigger run per row"),
            ("(b) the same, trigger `BEFORE UPDATE OF <the immutable columns>`", lat(s4["update_of_trigger"], 500)
             + hot_text("floor_pub_of"), "the same update with the trigger not fired ((a) minus (b): the trigger)"),
            ("(c) INSERT of 500 rows into a narrow side table (position PK, topic, partition, offset, published_at)",
             lat(s4["side_table_insert"], 500), "positions kept beside the events instead of on them"),
            ("(d) one row per run (stream, first and last version, topic, partition, offsets bigint[]): 1 run "
             "of 500 (one 500-event append)", lat(s4["runs_1x500"], 500), "positions per run, batch appends"),
            ("(d) the same: 500 runs of 1 (500 single-event appends)", lat(s4["runs_500x1"], 500),
             "positions per run, single-event appends"),
        ])
        add("Both copies of section 4 have every index, constraint, option (fillfactor 80) and the delete/truncate "
            "triggers of eventstore_event. HOT: the share of the updated rows PostgreSQL updated in place (heap-only "
            "tuples: no new index entries); every other updated row got a new entry in each of the table's indexes. "
            "The stream rows' `published_version` UPDATE that record_publications also makes is the same for every "
            "variant and left out.")
        add("")
    if s5:
        L = bench.loads
        copy_bytes = L.get("copy_bytes", {})

        def mark(form: str) -> str:
            return " (the recorder's form at run time)" if facts.get("load_sql_as_recorder") == form else ""

        table("5. Loading a 1,000-event stream (fetch into Python tuples; one statement each)", [
            (f"ours: the load SQL, key row joined to every event{mark('key row per event')}, binary",
             lat(s5["ours_load_binary"], show_rate=False),
             "the floor of a raw load of ours in this form (no StoredEvent objects)"),
            ("ours: the same, text", lat(s5["ours_load_text"], show_rate=False), "what binary results save"),
            (f"ours: the load SQL, key row joined to the first event only{mark('key row on the first event')}, "
             "binary", lat(s5["ours_load_key_once_binary"], show_rate=False),
             "the floor of a raw load of ours in this form; the row above minus this: 999 key lookups"),
            (f"ours: COPY (the load SQL, key row joined to every event) TO STDOUT binary, {copy_bytes.get('ours', 0) / 1024:,.0f} KiB read, not "
             "parsed", lat(s5["ours_copy_binary"], show_rate=False),
             "roughly the server's and the wire's share of the load (COPY's own framing included; binary fetch "
             "minus this: about what building the tuples costs)"),
            ("library: its select_events SQL, binary, tuples", lat(s5["lib_select_binary"], show_rate=False),
             "the library's raw load at its floor"),
            ("library: the same as its recorder runs it (text, dict rows)",
             lat(s5["lib_select_as_recorder"], show_rate=False), "the library's raw load at the database, as it runs"),
            (f"library: COPY (its select) TO STDOUT binary, {copy_bytes.get('library', 0) / 1024:,.0f} KiB read, not "
             "parsed", lat(s5["lib_copy_binary"], show_rate=False), "the server's and the wire's share of its load"),
            (f"Python: AES-GCM decryption of 1,000 fields of {L['ours_field_ciphertext_bytes_avg']:.0f} bytes (one "
             "AESGCM context, with associated data)", lat(s5["py_aesgcm_decrypt_1000"], show_rate=False),
             "the bare cost of opening a 1,000-event aggregate's encrypted fields"),
            (f"Python: json.loads of 1,000 payloads of {L['ours_payload_bytes_avg']:.0f} bytes",
             lat(s5["py_json_loads_1000"], show_rate=False), "the bare cost of parsing a 1,000-event aggregate's payloads"),
            ("Python: json.loads + the envelope opened as cipher.decrypt_fields does it (base64, AES-GCM, "
             "json.loads of the value), 1,000 payloads", lat(s5["py_decode_as_cipher_1000"], show_rate=False),
             "the payload decoding of a load, no domain objects"),
            ("ref: the library's `recorder.select_events` (1,000 stored events)",
             lat(s5["ref_lib_select_events"], show_rate=False), "the library's raw load, with its StoredEvent objects"),
            (f"ref: the library's `repository.get` (1,000 events of {L['library_state_bytes_avg']:.0f} bytes)",
             lat(s5["ref_lib_repository_get"], show_rate=False),
             "the library's 1,000-event aggregate load: the goal's denominator"),
        ])
    if s6:
        def log_row(name: str) -> str:
            v = s6[name]
            text = (f"{v['events_per_s_median']:,.0f} events/s (passes {v['events_per_s_min']:,.0f}–"
                    f"{v['events_per_s_max']:,.0f}) · {v['rows']:,} rows in {v['pass_seconds_median']:.2f} s")
            if v.get("page"):
                text += f" · page {ms(v['page']['median'])} p50, {ms(v['page']['p99'])} p99"
            return text

        copied = s6.get("copy_bytes_per_pass", {})

        table(f"6. Reading the whole log in position order (pages of 5,000, the variants taking turns page by "
              f"page; {s6['ours_keyset_binary']['passes']} timed passes after a warm-up pass)", [
            ("ours: keyset pages (`position > last ORDER BY position LIMIT 5000`, the load columns + stream id), "
             "binary", log_row("ours_keyset_binary"), "a reader of our log, one connection"),
            ("ours: the same, text", log_row("ours_keyset_text"), "what binary results save"),
            ("ours: one server-side cursor (DECLARE ... ORDER BY position; FETCH 5000), binary",
             log_row("ours_server_cursor_binary"), "a reader holding one snapshot for the whole read"),
            (f"ours: the same pages by COPY (... LIMIT 5000) TO STDOUT binary, "
             f"{copied.get('ours', 0) / 2**20:,.0f} MiB read, not parsed", log_row("ours_copy_binary"),
             "roughly the server's and the wire's share of reading our log (no tuples built)"),
            ("library: its select_notifications SQL (`notification_id >= %s ORDER BY notification_id LIMIT %s`), "
             "binary, tuples", log_row("lib_keyset_binary"), "the library's log read at its floor"),
            (f"library: the same pages by COPY binary, {copied.get('library', 0) / 2**20:,.0f} MiB read, not parsed",
             log_row("lib_copy_binary"), "the server's and the wire's share of reading its log"),
            ("ref: the library's `recorder.select_notifications` pages", log_row("ref_lib_select_notifications"),
             "the library's log read, with its Notification objects"),
        ])

    # The goals, in this run's numbers.
    goal_rows = []
    if s1 and s2:
        lib_rate = 1 / s2["ref_lib_app_save"]["mean"]
        target = 1 / (2 * lib_rate)
        goal_rows.append(("single-event saves ≥ 2× the library's rate",
                          f"library `Application.save` {rate(lib_rate)} → ours ≥ {rate(2 * lib_rate)}: ≤ {ms(target)} "
                          "mean per save",
                          f"durable INSERT {ms(s1['insert_durable']['mean'])}, plain (b) new "
                          f"{ms(s2['plain_new']['mean'])}, `eventstore_append` new {ms(s2['fn_new']['mean'])} "
                          f"(means)",
                          f"{s1['insert_durable']['mean'] / target:.0%} / {s2['plain_new']['mean'] / target:.0%} / "
                          f"{s2['fn_new']['mean'] / target:.0%}"))
    if s3:
        lib_rate = 500 / s3["ref_lib_app_save"]["mean"]
        target = 500 / (2 * lib_rate)
        goal_rows.append(("500-event saves ≥ 2× the library's rate",
                          f"library `Application.save` {rate(lib_rate)} events → ours ≥ {rate(2 * lib_rate)}: ≤ "
                          f"{ms(target)} mean per 500",
                          f"plain (b) {ms(s3['plain_500']['mean'])}, without 5 indexes (c) "
                          f"{ms(s3['plain_500_noidx']['mean'])}, `eventstore_append` {ms(s3['fn_500']['mean'])}",
                          f"{s3['plain_500']['mean'] / target:.0%} / {s3['plain_500_noidx']['mean'] / target:.0%} / "
                          f"{s3['fn_500']['mean'] / target:.0%}"))
    if s5:
        target = 0.25 * s5["ref_lib_repository_get"]["median"]
        floor = s5["ours_load_binary"]["median"] + s5["py_aesgcm_decrypt_1000"]["median"] + \
            s5["py_json_loads_1000"]["median"]
        decode = s5["ours_load_binary"]["median"] + s5["py_decode_as_cipher_1000"]["median"]
        once = s5["ours_load_key_once_binary"]["median"] + s5["py_aesgcm_decrypt_1000"]["median"] + \
            s5["py_json_loads_1000"]["median"]
        goal_rows.append(("1,000-event aggregate load ≤ 0.25× the library's time",
                          f"library `repository.get` {ms(s5['ref_lib_repository_get']['median'])} → ours ≤ "
                          f"{ms(target)}",
                          f"load SQL binary + bare decrypt + bare json.loads: key row per event {ms(floor)}, key "
                          f"row on the first event {ms(once)}; load SQL (key row per event) + decode as cipher "
                          f"{ms(decode)} (sums of medians; no domain objects)",
                          f"{floor / target:.0%} / {once / target:.0%} / {decode / target:.0%}"))
    if s6:
        target = 160_000
        a = s6["ours_keyset_binary"]["events_per_s_median"]
        b = s6["ours_server_cursor_binary"]["events_per_s_median"]
        c = s6["ours_copy_binary"]["events_per_s_median"]
        goal_rows.append(("reading the log ≥ 160,000 events/s", "≥ 160,000 events/s: ≤ 6.25 µs per event",
                          f"keyset binary {rate(a)}, server-side cursor binary {rate(b)} (tuples, no objects); "
                          f"COPY, not parsed {rate(c)}",
                          f"{target / a:.0%} / {target / b:.0%} / {target / c:.0%}"))
    if goal_rows:
        add("## The goals in this run's numbers")
        add("")
        add("The last column is the floor's time as a share of the time the goal allows (100 % or more: the "
            "database work alone takes all of it). Means for the save rates (a rate is a mean), medians for the "
            "load; the library's figures are the *ref* rows of this run.")
        add("")
        add("| goal | target from this run | floor measured | floor / allowed |")
        add("| --- | --- | --- | ---: |")
        for row in goal_rows:
            add("| " + " | ".join(row) + " |")
        add("")
    add("## Raw numbers")
    add("")
    add("Seconds unless named otherwise.")
    add("")
    add("```json")
    add(json.dumps({"environment": env, "product": facts, "timings": timings, "loads": bench.loads,
                    "results": R}, indent=1, default=str))
    add("```")
    add("")
    path.write_text("\n".join(lines))


def environment(args, pg_conn) -> dict:
    import cryptography
    import eventsourcing  # noqa: F401
    import psycopg
    from importlib.metadata import version

    settings = dict(pg_conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', "
        "'wal_sync_method', 'commit_delay', 'full_page_writes', 'shared_buffers', 'jit', 'checkpoint_timeout', "
        "'max_wal_size') ORDER BY name").fetchall())
    from bench.bench_eventstore import machine

    host = machine()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": os.environ.get("BENCH_COMMAND") or "python -m bench.bench_floor " + " ".join(sys.argv[1:]),
        "nproc": host["nproc"], "cpu": host["cpu"], "ram": f"{host['memory']} RAM", "kernel": host["kernel"],
        "postgres": pg_conn.execute("SELECT version()").fetchone()[0].split(" on ")[0],
        "settings": settings, "python": platform.python_version(), "psycopg": psycopg.__version__,
        "eventsourcing": version("eventsourcing"), "cryptography": cryptography.__version__,
        "scale": "quick" if args.quick else "full",
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run-floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, about 30 s (a smoke run)")
    parser.add_argument("--out", default=str(REPO / "bench" / "FLOOR_RESULTS.md"),
                        help="markdown report (default bench/FLOOR_RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database at the end")
    parser.add_argument("--db", default=DB, help=f"scratch database (default {DB}; must start with {DB})")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432",
                        help="PostgreSQL server, without a database (default postgres://postgres@localhost:5432)")
    args = parser.parse_args()
    if not args.db.startswith(DB):
        parser.error(f"--db: the scratch database's name must start with {DB}")
    scale = SCALES["quick" if args.quick else "full"]
    started = perf()
    load_start = loadavg()
    timings: dict = {"load_average": {"start": load_start}}

    log(f"[setup] scratch database {args.db} (load average {load_start})")
    recreate_database(args.pg, args.db)
    app = bench = None
    try:
        timings["migrate"] = migrate(args.pg, args.db)
        log(f"[setup] migrated in {timings['migrate']:.1f} s")
        bench = Bench(args, scale)
        conn = bench.conn
        facts = product_facts(conn)
        env = environment(args, conn)
        env["load_start"] = load_start
        conn.execute(f"CREATE SCHEMA {LIB_SCHEMA}")
        app, aggregate_class = make_library(urlsplit(args.pg), args.db)
        bench.setup_library(app, aggregate_class)
        create_copies(conn)
        facts["noidx_indexes"] = table_indexes(conn, "eventstore_event_noidx")
        facts["pub_copy_indexes"] = table_indexes(conn, "floor_pub_row")
        facts["eventstore_event_indexes"] = table_indexes(conn, "eventstore_event")
        bench.payload = bench.crypto.payload("child:floor-log-1", str(uuid.uuid4()), 1)
        timings["fill"] = fill(conn, bench.lib_table, bench.crypto, scale["log_streams"], scale["log_per"],
                               scale["existing"], bench.payload)
        bench.make_load_streams()
        vacuum(conn, bench.lib_table)
        timings["fill"]["with_vacuum"] = perf() - started
        env["log_events"] = scale["log_streams"] * scale["log_per"]
        log(f"[setup] filled ({env['log_events']:,} events per log) in {timings['fill']['seconds']:.1f} s")
        for number in ("6", "5", "1", "2", "3", "4"):
            timings["load_average"][f"section {number}"] = loadavg()
            t = perf()
            getattr(bench, f"section{number}")()
            timings[f"section {number}"] = perf() - t
        env["load_end"] = timings["load_average"]["end"] = loadavg()
        timings["total"] = perf() - started
        out = Path(args.out)
        write_report(out, args, env, bench, facts, timings)
        log(f"wrote {out} ({timings['total']:.0f} s; load average at the end {env['load_end']})")
        return 0
    finally:
        if app is not None:
            app.close()
        if bench is not None:
            for c in (bench.conn, bench.lconn, bench.async_conn, bench.cursor_conn):
                c.close()
        if args.keep:
            log(f"kept database {args.db}")
        else:
            drop_database(args.pg, args.db)
            log(f"dropped database {args.db}")


if __name__ == "__main__":
    sys.exit(main())
