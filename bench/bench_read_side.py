"""Benchmark of the read side: projection catch-up, end-to-end lag, API latency.

Run it with `bash bench/run-read-side [--quick]` (bench/README.md). One run:

1. makes a scratch database and an embedded Tansu broker, and seeds families through the
   application layer (parents with logins, consent, children; conversations saved through
   the repository, many events per append, as a device service would);
2. catch-up from zero: each projector replays everything into a new generation, from Kafka
   offset zero and from the mirror, read-model writes included: events/s;
3. lag: a real Celery worker runs the projection threads; W writer processes append at a
   steady rate to their own conversations while a probe process appends to its own child
   stream and times each append's commit -> applied by the profiles projector (p50/p99); then
   the same with two probe processes taking turns on ONE stream (each append's predecessor
   was appended by the other process);
4. API: gunicorn (4 workers) serves the API; 16 concurrent clients (4 processes x 4 threads)
   read the main endpoints with a parent's token for a fixed time: p50/p99 per endpoint.

`bash bench/run` runs it too (scenario 8 of its table), with `--json` for the numbers it
folds into its own table and `--smoke` in its --quick run.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


# --- steps that run inside Django (subprocesses of the orchestrator) ------------------------

def _django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teddy_project.settings")
    import django

    django.setup()


def step_seed(families: int, conversations: int, messages: int) -> dict:
    _django()
    from django.core.management import call_command

    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.accounts import create_parent_account
    from eventsourcing_app.application.children import register_child_with_consent
    from eventsourcing_app.domain import Conversation
    from eventsourcing_app.eventstore import get_event_sourcing_service, get_event_store

    call_command("migrate", verbosity=0)
    call_command("provision_topics", verbosity=0)
    system = Actor.system("bench")
    repository = get_event_sourcing_service().get_repository(Conversation)
    first = None
    started = time.monotonic()
    for f in range(families):
        account = create_parent_account(email=f"bench-{f}@example.com", password="bench-password-2026",
                                        name=f"Parent {f}")
        first = first or account
        for c in range(2):
            child_id = f"bench-{f}-{c}"
            register_child_with_consent(actor=system, parent_id=account.parent_id, child_id=child_id,
                                        name=f"Kid {f}-{c}", age=6 + c, consent_method="signed_form",
                                        device_id=f"bear-{f}-{c}", udid=f"udid-{f}-{c}")
            for v in range(conversations):
                conversation = Conversation(f"conv-{f}-{c}-{v}")
                conversation.start(child_id, f"bear-{f}-{c}")
                for m in range(messages):
                    conversation.record_message("child" if m % 2 == 0 else "bear", f"message {m} of {v}")
                if v % 3 == 0:
                    conversation.raise_safety_flag("bullying", "medium", 1)
                conversation.end()
                conversation.summarize(f"conversation {v} of kid {f}-{c}")
                repository.save_sync(conversation)
        if f % 20 == 0:
            log(f"  seeded {f + 1}/{families} families")
    store = get_event_store()
    store.flush(60)
    streams, events = store.recorder.stream_totals()
    return {"streams": streams, "events": events, "seconds": time.monotonic() - started,
            "token": first.token, "parent_id": first.parent_id, "child_id": "bench-0-0"}


def step_catchup() -> dict:
    _django()
    from eventsourcing_app.kafka.config import KafkaSettings
    from eventsourcing_app.readside.operations import _replay_mirror
    from eventsourcing_app.readside.projectors import PROJECTORS
    from eventsourcing_app.readside.runner import CatchUp, ProjectionRunner

    out = {}
    settings = KafkaSettings.from_django()
    for index, (name, cls) in enumerate(PROJECTORS.items()):
        runner = ProjectionRunner(cls, settings, generation=-(1000 + index), batch_size=5000)
        runner.engine.resync()
        runner._assign()
        started = time.monotonic()
        done = runner.catch_up()
        kafka_seconds = time.monotonic() - started
        runner.close()
        mirror = CatchUp()
        started = time.monotonic()
        _replay_mirror(cls, -(2000 + index), settings, mirror, None)
        mirror_seconds = time.monotonic() - started
        out[name] = {"kafka_events": done.events, "kafka_seconds": kafka_seconds,
                     "mirror_events": mirror.events, "mirror_seconds": mirror_seconds}
        log(f"  {name}: kafka {done.events / kafka_seconds:,.0f} events/s, "
            f"mirror {mirror.events / mirror_seconds:,.0f} events/s")
    return out


def step_writer(worker: int, rate: float, seconds: float, child_id: str) -> dict:
    """Appends messages to its own open conversation (of `child_id`) at a steady rate."""
    _django()
    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.conversations import record_message, start_conversation

    actor = Actor.system(f"bench-writer-{worker}")
    conversation_id = f"load-{worker}-{os.getpid()}"
    start_conversation(actor=actor, conversation_id=conversation_id, child_id=child_id)
    deadline, period, sent = time.monotonic() + seconds, 1.0 / rate, 0
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        record_message(actor=actor, conversation_id=conversation_id, speaker="child", text=f"load {sent}")
        sent += 1
        next_at += period
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return {"sent": sent}


def step_probe(child_id: str, seconds: float, interval: float, turn: int | None, turns: int) -> dict:
    """Appends to `child_id` and times commit -> applied (profiles projector). With `turn`, it
    appends only when the stream's version says it is its turn (two processes alternate)."""
    _django()
    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.children import update_child_profile
    from eventsourcing_app.eventstore import get_event_store
    from eventsourcing_app.readside.models import StreamProgress
    from eventsourcing_app.readside.runner import active_generation

    store = get_event_store()
    actor = Actor.system(f"bench-probe-{turn or 0}")
    stream_id = f"child.{child_id}"
    generation = active_generation("profiles")
    lags, deadline, n = [], time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        if turn is not None and store.get_stream_version_sync(stream_id) % turns != turn:
            time.sleep(0.001)
            continue
        n += 1
        result = update_child_profile(actor=actor, child_id=child_id, changes={"interests": [f"p{turn}-{n}"]})
        committed = time.monotonic()
        while True:
            applied = (StreamProgress.objects.filter(projector="profiles", generation=generation,
                                                     stream_id=stream_id).values_list("version", flat=True).first())
            if applied is not None and applied >= result.version:
                lags.append(time.monotonic() - committed)
                break
            if time.monotonic() - committed > 10:
                lags.append(10.0)
                break
            time.sleep(0.002)
        time.sleep(interval)
    return {"lags": lags}


def step_clients(base: str, token: str, child_id: str, seconds: float, threads: int) -> dict:
    paths = {"children": "/api/v1/children/", "profile": f"/api/v1/children/{child_id}/",
             "conversations": f"/api/v1/children/{child_id}/conversations/", "alerts": "/api/v1/alerts/?state=open",
             "timeline": f"/api/v1/children/{child_id}/timeline/"}
    results: dict[str, list[float]] = {name: [] for name in paths}
    errors = [0]
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        names = list(paths)
        i = offset
        while time.monotonic() < deadline:
            name = names[i % len(names)]
            i += 1
            request = urllib.request.Request(base + paths[name], headers={"Authorization": f"Token {token}"})
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                results[name].append(time.monotonic() - started)
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1

    pool = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"latencies": results, "errors": errors[0]}


# --- the orchestrator ------------------------------------------------------------------

def _run_step(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.bench_read_side", "--step", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spawn_step(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.bench_read_side", "--step", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"a bench process failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_caught_up(env: dict, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "manage.py", "projections", "status", "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if done.returncode == 0:
            rows = json.loads(done.stdout)
            if all(r["lag_events"] == 0 for r in rows):
                return
        time.sleep(1)
    raise RuntimeError("the worker's projectors did not catch up")


def orchestrate(args) -> int:
    import psycopg
    from psycopg import sql

    from devtools.embedded import start_tansu

    quick = args.quick
    if args.smoke:  # every scenario, as small as still gives a number (a test runs it)
        families = args.families or 2  # the pair of probes takes turns on bench-1-0
        plan = {"families": families, "conversations": 2, "messages": 4, "lag_seconds": 1.5, "writers": 4,
                "rate": 20.0, "api_seconds": 1.5}
    else:
        families = args.families or (20 if quick else 250)
        plan = {"families": families, "conversations": 4 if quick else 6, "messages": 10 if quick else 16,
                "lag_seconds": 5 if quick else 20, "writers": 4, "rate": 20.0, "api_seconds": 5 if quick else 15}
    admin = psycopg.connect(f"{args.pg}/postgres", autocommit=True)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db)))
    (REPO / "var").mkdir(exist_ok=True)
    broker = start_tansu(log_path=REPO / "var" / "bench-read-side-tansu.log")
    env = {**os.environ, "DATABASE_URL": f"{args.pg}/{args.db}", "KAFKA_BOOTSTRAP_SERVERS": broker.address,
           "REDIS_URL": args.redis, "PROJECTIONS_RUN_IN_WORKER": "0", "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
           "TEDDY_MASTER_KEYS": base64.b64encode(os.urandom(32)).decode(), "LOG_LEVEL": "WARNING",
           "API_THROTTLE_USER": "1000000/min", "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
           "CELERY_TASK_DEFAULT_QUEUE": f"bench-read-side-{os.getpid()}"}
    children: list[subprocess.Popen] = []
    results: dict = {"plan": plan}
    started = dt.datetime.now(dt.timezone.utc)
    try:
        log(f"bench: seeding {families} families ...")
        seed = _run_step(env, "seed", str(families), str(plan["conversations"]), str(plan["messages"]))
        results["seed"] = seed
        log(f"bench: {seed['events']} events in {seed['streams']} streams; catch-up from zero ...")
        results["catchup"] = _run_step(env, "catchup")

        log("bench: starting a Celery worker with the projection threads ...")
        worker_env = {**env, "PROJECTIONS_RUN_IN_WORKER": "1"}
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "teddy_project", "worker", "-n",
                                   f"bench-{os.getpid()}@localhost", "-Q", worker_env["CELERY_TASK_DEFAULT_QUEUE"],
                                   "--concurrency=2", "--loglevel=WARNING"], cwd=REPO, env=worker_env,
                                  stdout=subprocess.DEVNULL, stderr=open(REPO / "var" / "bench-read-side-worker.log", "w"))
        children.append(worker)
        _wait_caught_up(env)
        log(f"bench: lag under load ({plan['writers']} writers x {plan['rate']:.0f} appends/s) ...")
        # Each writer its own family's child while there are enough (a smoke run seeds fewer).
        writers = [_spawn_step(env, "writer", str(n), str(plan["rate"]), str(plan["lag_seconds"] + 2),
                               f"bench-{n % families}-0") for n in range(plan["writers"])]
        time.sleep(1)
        probe = _collect(_spawn_step(env, "probe", seed["child_id"], str(plan["lag_seconds"]), "0.02", "-", "1"))
        sent = sum(_collect(w)["sent"] for w in writers)
        results["lag"] = {"lags": probe["lags"], "background_appends": sent}
        log("bench: lag with two processes taking turns on one stream ...")
        pair = [_spawn_step(env, "probe", "bench-1-0", str(plan["lag_seconds"]), "0", str(t), "2") for t in range(2)]
        results["lag_one_stream"] = {"lags": [x for p in pair for x in _collect(p)["lags"]]}

        # The API alone on the machine: the worker's polling would take CPU from the web workers.
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        port = _free_port()
        log(f"bench: API under 16 concurrent clients (gunicorn, 4 workers, port {port}) ...")
        web = subprocess.Popen([sys.executable, "-m", "gunicorn", "teddy_project.wsgi", "-b", f"127.0.0.1:{port}",
                                "-w", "4", "--log-level", "warning"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(REPO / "var" / "bench-read-side-web.log", "w"))
        children.append(web)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/health/", timeout=1).read()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        clients = [_spawn_step(env, "clients", base, seed["token"], seed["child_id"], str(plan["api_seconds"]), "4")
                   for _ in range(4)]
        merged: dict[str, list[float]] = {}
        errors = 0
        for c in clients:
            part = _collect(c)
            errors += part["errors"]
            for name, values in part["latencies"].items():
                merged.setdefault(name, []).extend(values)
        results["api"] = {"latencies": merged, "errors": errors, "seconds": plan["api_seconds"]}
    finally:
        log("bench: stopping the web server, the worker and the broker; dropping the database ...")
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.stop()
        if not args.keep:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
    report = render(results, started, args)
    Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(summarize(results), indent=1))
    print(report)
    return 0


def summarize(results: dict) -> dict:
    """The key numbers, for bench/run's table (bench_eventstore.py)."""
    ms = lambda values, share: percentile(values, share) * 1000 if values else None  # noqa: E731
    catchup = results["catchup"]
    kafka_events = sum(r["kafka_events"] for r in catchup.values())
    mirror_events = sum(r["mirror_events"] for r in catchup.values())
    # The slowest of the projectors that replay most of the log (one that reads a few hundred
    # events is timed mostly on its start-up).
    big = [(name, r) for name, r in catchup.items() if r["kafka_events"] >= 0.1 * max(1, kafka_events / len(catchup))]
    name, slow = min(big, key=lambda item: item[1]["kafka_events"] / item[1]["kafka_seconds"])
    lag, pair, api = results["lag"]["lags"], results["lag_one_stream"]["lags"], results["api"]
    everything = [v for values in api["latencies"].values() for v in values]
    seed = {k: v for k, v in results["seed"].items() if k != "token"}
    return {
        "plan": results["plan"], "seed": seed,
        "catchup": {"kafka_events": kafka_events,
                    "kafka_rate": kafka_events / sum(r["kafka_seconds"] for r in catchup.values()),
                    "mirror_events": mirror_events,
                    "mirror_rate": mirror_events / sum(r["mirror_seconds"] for r in catchup.values()),
                    "slowest": {"name": name, "rate": slow["kafka_events"] / slow["kafka_seconds"]},
                    "projectors": catchup},
        "lag": {"samples": len(lag), "p50_ms": ms(lag, .5), "p99_ms": ms(lag, .99),
                "max_ms": max(lag) * 1000 if lag else None,
                "background_appends": results["lag"]["background_appends"]},
        "lag_one_stream": {"samples": len(pair), "p50_ms": ms(pair, .5), "p99_ms": ms(pair, .99)},
        "api": {"clients": 16, "requests": len(everything), "rate": len(everything) / api["seconds"],
                "p50_ms": ms(everything, .5), "p99_ms": ms(everything, .99), "errors": api["errors"]},
    }


def render(results: dict, started, args) -> str:
    # NaN (no sample: a smoke run's probe may get none) is shown as a dash.
    ms = lambda seconds: "–" if seconds != seconds else f"{seconds * 1000:.1f} ms"  # noqa: E731
    seed, plan = results["seed"], results["plan"]
    lines = [
        "# Read-side benchmark results", "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with `{os.environ.get('BENCH_COMMAND', 'bash bench/run-read-side')}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; PostgreSQL at {args.pg}, "
        "embedded Tansu broker. Scenarios: bench/README.md.", "",
        f"Seeded {seed['events']:,} events in {seed['streams']:,} streams ({plan['families']} families, 2 children "
        f"each, {plan['conversations']} conversations per child of {plan['messages']} messages).", "",
        "## 1. Catch-up from zero (one projector at a time, read-model writes included)", "",
        "| projector | from Kafka offset 0 | from the mirror |", "| --- | ---: | ---: |",
    ]
    total_k = total_m = 0.0
    for name, r in results["catchup"].items():
        k, m = r["kafka_events"] / r["kafka_seconds"], r["mirror_events"] / r["mirror_seconds"]
        total_k += r["kafka_seconds"]
        total_m += r["mirror_seconds"]
        lines.append(f"| {name} | {k:,.0f} events/s ({r['kafka_events']:,} in {r['kafka_seconds']:.1f} s) | "
                     f"{m:,.0f} events/s ({r['mirror_events']:,} in {r['mirror_seconds']:.1f} s) |")
    lag, pair = results["lag"]["lags"], results["lag_one_stream"]["lags"]
    lines += [
        "", "## 2. End-to-end lag, commit to read model (projection threads in a Celery worker)", "",
        "| load | samples | p50 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |",
        f"| {plan['writers']} writer processes x {plan['rate']:.0f} appends/s "
        f"({results['lag']['background_appends']:,} appends), probe on its own stream | {len(lag)} | "
        f"{ms(percentile(lag, .5))} | {ms(percentile(lag, .99))} | {ms(max(lag, default=float('nan')))} |",
        f"| two processes taking turns on one stream (each append's predecessor is the other's) | {len(pair)} | "
        f"{ms(percentile(pair, .5))} | {ms(percentile(pair, .99))} | {ms(max(pair, default=float('nan')))} |",
        "", "## 3. API reads, 16 concurrent clients (4 processes x 4 threads, on the same 2 CPUs), gunicorn with "
        "4 sync workers", "",
        "| endpoint | requests | req/s | p50 | p99 |", "| --- | ---: | ---: | ---: | ---: |",
    ]
    api = results["api"]
    for name, values in api["latencies"].items():
        lines.append(f"| GET {name} | {len(values):,} | {len(values) / api['seconds']:,.0f} | "
                     f"{ms(percentile(values, .5))} | {ms(percentile(values, .99))} |")
    everything = [v for values in api["latencies"].values() for v in values]
    lines += [f"| all | {len(everything):,} | {len(everything) / api['seconds']:,.0f} | "
              f"{ms(percentile(everything, .5))} | {ms(percentile(everything, .99))} |", "",
              f"Errors: {api['errors']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--step"]:
        name, *rest = argv[1:]
        if name == "seed":
            out = step_seed(int(rest[0]), int(rest[1]), int(rest[2]))
        elif name == "catchup":
            out = step_catchup()
        elif name == "writer":
            out = step_writer(int(rest[0]), float(rest[1]), float(rest[2]), rest[3])
        elif name == "probe":
            turn = None if rest[3] == "-" else int(rest[3])
            out = step_probe(rest[0], float(rest[1]), float(rest[2]), turn, int(rest[4]))
        elif name == "clients":
            out = step_clients(rest[0], rest[1], rest[2], float(rest[3]), int(rest[4]))
        else:
            raise SystemExit(f"unknown step {name}")
        print(json.dumps(out, default=str))
        return 0
    parser = argparse.ArgumentParser(prog="bash bench/run-read-side", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, about a minute")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny counts (2 families, 1.5 s of lag and of API load): checks that every scenario "
                             "runs, in about half a minute; the numbers mean little")
    parser.add_argument("--families", type=int, help="families to seed (default 250; --quick 20)")
    parser.add_argument("--out", default=str(REPO / "bench" / "READ_SIDE_RESULTS.md"))
    parser.add_argument("--pg", default="postgres://postgres@localhost:5432")
    parser.add_argument("--db", default="teddy_bench_read")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--json", help="also write the key numbers as JSON to this path (bench/run reads them)")
    return orchestrate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
