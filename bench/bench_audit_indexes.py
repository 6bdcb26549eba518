"""What the compliance admin's indexes cost the append path.

Migration 0008 adds an (actor, position) B-tree and a BRIN index on recorded_at to the events
table. This appends the same workload with and without them, in alternating rounds on one
scratch database (so that neither side always runs first or on the larger table), with a
real actor on every event as in production, and prints the medians:

    bash bench/run-audit-indexes [--rounds 4] [--streams 6] [--pg postgres://postgres@localhost:5432]

Publishing is off (the indexes are the database's cost alone). The scratch database
`teddy_bench_indexes` is dropped at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

DB = "teddy_bench_indexes"
CREATE = [
    "CREATE INDEX IF NOT EXISTS eventstore_event_actor ON eventstore_event (actor, position) WHERE actor IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS eventstore_event_recorded_brin ON eventstore_event USING brin (recorded_at) "
    "WITH (autosummarize = on)",
]
DROP = ["DROP INDEX IF EXISTS eventstore_event_actor", "DROP INDEX IF EXISTS eventstore_event_recorded_brin"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run-audit-indexes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each with and without (default 4)")
    parser.add_argument("--streams", type=int, default=6, help="5,000-event streams per batched run (default 6)")
    parser.add_argument("--single", type=int, default=1000, help="single-event appends per run (default 1000)")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432", help="PostgreSQL server")
    args = parser.parse_args()

    import psycopg

    with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
    os.environ.update(DATABASE_URL=f"{args.pg}/{DB}", KAFKA_PUBLISH_ENABLED="0", LOG_LEVEL="WARNING",
                      DJANGO_SETTINGS_MODULE="teddy_project.settings",
                      EVENTSTORE_STREAM_TYPES="child,parent,conversation,bench")
    os.environ.setdefault("TEDDY_MASTER_KEYS", "YmVuY2gtb25seS1tYXN0ZXIta2V5LTAxMjM0NTY3ODk=")
    try:
        return _run(args)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def _run(args) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from eventsourcing_app.eventstore import get_event_store
    from tests.events import NoteRecorded

    call_command("migrate", verbosity=0)
    store = get_event_store()

    def workload() -> tuple[float, float]:
        started = time.perf_counter()
        for _ in range(args.streams):
            stream_id, version = f"bench.{uuid.uuid4().hex[:12]}", 0
            for _ in range(10):
                store.append_events_sync(stream_id, [NoteRecorded(text="x" * 100, n=i) for i in range(500)],
                                         expected_version=version, actor="user:17", correlation_id=str(uuid.uuid4()))
                version += 500
        batched = args.streams * 5000 / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(args.single):
            store.append_events_sync(f"bench.{uuid.uuid4().hex[:12]}", [NoteRecorded(text="y" * 100, n=1)],
                                     actor="user:17")
        return batched, args.single / (time.perf_counter() - started)

    results: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    for number in range(args.rounds):
        for side in (("with", "without") if number % 2 == 0 else ("without", "with")):
            with connection.cursor() as cursor:
                for statement in CREATE if side == "with" else DROP:
                    cursor.execute(statement)
            batched, single = workload()
            results[side].append((batched, single))
            print(f"round {number + 1}/{args.rounds} {side:7}: batched {batched:,.0f} events/s, "
                  f"single {single:,.0f} appends/s", flush=True)
    print("\n| indexes | batched (500/append) events/s | single-event appends/s |\n| --- | --- | --- |")
    for side, rows in results.items():
        print(f"| {side} | {statistics.median(r[0] for r in rows):,.0f} | {statistics.median(r[1] for r in rows):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
