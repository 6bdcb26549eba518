"""Faults under load, in one module bounded in time (about a minute and a half).

Proven here (each test's figures go to var/test-logs/faults-under-load.json, one section each):

1. Four writer processes on two children and two conversations (few streams: frequent
   conflicts, retried), through the command handlers and the repository, while the broker is
   killed and restarted empty, the operator's recovery runs (`refill_kafka --recreate-topics`,
   then `projections rebuild --all --source mirror`, as docs/read-side.md says) and a Celery
   pool process feeding the projectors is killed and replaced: every stream is 1..N and exactly
   what the writers were told they committed; verify_integrity is clean (hash chains, stream
   rows, snapshots, each event against its Kafka record); Kafka, read as a consumer reads it
   (StreamOrderGuard), holds every committed event in per-stream order; every projector applied
   every stream and its read models equal a rebuild from Kafka offset zero. All of it runs on a
   database, broker and worker of its own. Found by it: a send Kafka answered without an offset
   was recorded as published (and Kafka lacked it for good); verify_integrity failed on it.
2. PostgreSQL backends terminated: outside a request, between calls, inside the append
   statement, inside a caller's transaction, at its commit, in a loop from another process:
   one call fails with a clear error, nothing is half-written, the next call works whatever it
   is (found here: after a failed append, load or version read, the next command or
   transaction failed on the dead connection, for good; loads raised Django's raw error).
3. Redis hung (SIGSTOP), killed and started again empty, under a writer process that uses it
   (cache, Celery's broker, erasure broadcasts): commands, loads and appends go on working,
   readiness names Redis while it is away and is up again when it is back, the cache fills
   again; no restart.

The subprocesses run this module: python -m tests.integration.test_faults_under_load ROLE ...
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction

from devtools.embedded import start_tansu
from eventsourcing_app.application import (
    Actor,
    Unavailable,
    grant_consent,
    register_child,
    register_parent,
    update_child_profile,
)
from eventsourcing_app.domain import Child
from eventsourcing_app.eventstore import StoreUnavailableError, get_event_sourcing_service
from tests.conftest import LOG_DIR, RUN_ID, unique_stream
from tests.events import notes
from tests.integration.conftest import REPO, STREAM_TYPES, database_url, process_env
from tests.integration.helpers import wait_until

SYSTEM = Actor.system("faults-under-load")
WRITERS = 4


# --- helpers -------------------------------------------------------------------------------

def uid() -> str:
    return uuid.uuid4().hex[:10]


def new_family() -> str:
    """A parent with consent for a registered child; returns the child id."""
    n = uid()
    parent_id, child_id = f"parent-{n}", f"child-{n}"
    register_parent(actor=SYSTEM, parent_id=parent_id, email=f"{n}@example.org", name="Robin")
    grant_consent(actor=SYSTEM, parent_id=parent_id, child_id=child_id, method="signed_form")
    register_child(actor=SYSTEM, child_id=child_id, parent_id=parent_id, name="Alice", age=6)
    return child_id


def backend_of_this_thread() -> int:
    """This thread's backend (a connection a failed call left broken is replaced first: the
    test's own query must not be the call that heals it)."""
    raw = connection.connection
    if raw is not None and not connection.in_atomic_block and (raw.closed or raw.broken):
        connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def terminate(pid: int) -> bool:
    with psycopg.connect(database_url(), autocommit=True) as other:
        return other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]


def rows_of(stream_ids) -> dict[str, tuple[int, int, int]]:
    """Per stream (events stored, highest event version, the stream row's version), read over a
    connection of its own."""
    with psycopg.connect(database_url(), autocommit=True) as other:
        out = {}
        for stream_id in stream_ids:
            events, highest = other.execute("SELECT count(*), COALESCE(max(version), 0) FROM eventstore_event "
                                            "WHERE stream_id = %s", [stream_id]).fetchone()
            row = other.execute("SELECT version FROM eventstore_stream WHERE stream_id = %s", [stream_id]).fetchone()
            out[stream_id] = (events, highest, row[0] if row else 0)
    return out


def whole(rows: dict[str, tuple[int, int, int]]) -> list[str]:
    """Streams whose rows disagree: events missing below the version, or a stream row that is
    not at its last event."""
    return [f"{sid}: {events} events, highest v{highest}, stream row v{version}"
            for sid, (events, highest, version) in rows.items() if not events == highest == version]


@pytest.fixture(autouse=True)
def nothing_left_waiting(request):
    """What a test here appended to the session's database and left in the outbox (a writer
    process that exited, acknowledgements whose recording a terminated backend failed) is
    published to the session broker afterwards: later tests' readiness checks look at the whole
    outbox."""
    yield
    if "store" in request.fixturenames or "any_store" in request.fixturenames:
        from eventsourcing_app.operations.relay import relay_outbox

        relay_outbox(request.getfixturevalue("store"), stream_types=["test", "child", "parent", "conversation"],
                     time_budget=20.0)


FIGURES = LOG_DIR / "faults-under-load.json"


def record_figures(section: str, figures: dict) -> None:
    """Adds a test's figures to var/test-logs/faults-under-load.json (one section per test)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    try:
        everything = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    FIGURES.write_text(json.dumps(everything, indent=2) + "\n")


def is_clear(exc: BaseException) -> bool:
    """A lost connection, said so, with what to do: the store's or the application's own error."""
    text = str(exc)
    return isinstance(exc, (StoreUnavailableError, Unavailable)) and "database" in text and (
        "retry" in text or "try again" in text)


# --- 1. writers, a broker killed, a worker killed --------------------------------------------

PROJECTOR_LOCKS = ("SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                   "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = %s "
                   "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


class Stack:
    """A database, a broker and a Celery worker (projection threads, beat's relay every second)
    of this test only: it kills the broker and a worker process, which the rest of the session
    must not feel, and the projectors' locks and positions are per database."""

    def __init__(self, kafka_settings, workdir) -> None:
        self.workdir = workdir
        self.db_name = f"{django_settings.DATABASES['default']['NAME']}_load"
        server = database_url().rsplit("/", 1)[0]
        self.maintenance_url, self.url = f"{server}/postgres", f"{server}/{self.db_name}"
        self.broker = start_tansu(log_path=LOG_DIR / f"tansu-load-{RUN_ID}.log")
        self.kafka = kafka_settings.with_changes(bootstrap_servers=self.broker.address, topic_prefix=f"load{RUN_ID}.",
                                                 message_timeout_ms=3000)
        self.queue, self.worker_name = f"load-{RUN_ID}", f"load-{RUN_ID}@localhost"
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "teddy_project.settings", "DATABASE_URL": self.url,
                    "KAFKA_BOOTSTRAP_SERVERS": self.broker.address, "KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
                    "KAFKA_TOPIC_PARTITIONS": str(self.kafka.partitions), "KAFKA_MESSAGE_TIMEOUT_MS": "3000",
                    "EVENTSTORE_STREAM_TYPES": ",".join(STREAM_TYPES), "CELERY_TASK_DEFAULT_QUEUE": self.queue}
        self.worker, self.log_path = None, LOG_DIR / f"celery-load-{RUN_ID}.log"

    def start(self) -> None:
        from eventsourcing_app.kafka.topics import provision_topics
        from teddy_project.celery import app

        self.drop_database()
        with psycopg.connect(self.maintenance_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        migrated = subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=self.env,
                                  capture_output=True, text=True, timeout=300)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        provision_topics(self.kafka)
        log = open(self.log_path, "ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "teddy_project", "worker", "-n", self.worker_name, "-Q", self.queue,
             "--concurrency=2", "-B", "-s", str(self.workdir / "beat-schedule"), "--loglevel=INFO"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.worker.poll() is not None or app.control.ping(destination=[self.worker_name],
                                                                                timeout=0.5), timeout=90)
        assert self.worker.poll() is None, f"the Celery worker did not start; see {log.name}"

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.worker is not None:
            try:  # pool processes and beat too, whatever became of the main process
                os.killpg(self.worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.worker.wait(10)
        self.broker.stop(kill=True)
        self.drop_database()

    def drop_database(self) -> None:
        with psycopg.connect(self.maintenance_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as db:
            return db.execute(query, params).fetchall()

    def run(self, *args, timeout: float = 300, env: dict | None = None):
        return subprocess.run([sys.executable, *args], cwd=REPO, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    def pool_processes(self) -> list[int]:
        from teddy_project.celery import app

        stats = app.control.inspect(destination=[self.worker_name], timeout=2).stats() or {}
        return list(stats.get(self.worker_name, {}).get("pool", {}).get("processes", []))

    def projector_lock_holders(self) -> Counter:
        """Pool process id -> how many projectors' locks it holds."""
        from eventsourcing_app.readside.worker import PROJECTOR_LOCK_CLASS

        ports = [port for (port,) in self.sql(PROJECTOR_LOCKS, [PROJECTOR_LOCK_CLASS])]
        by_port = processes_by_local_port(self.pool_processes())
        return Counter(by_port[port] for port in ports if port in by_port)

    def applied(self) -> int:
        """Events the projectors applied so far, all projectors and generations together."""
        return self.sql("SELECT COALESCE(sum(version), 0) FROM readside_stream_progress")[0][0]


def processes_by_local_port(pids) -> dict[int, int]:
    """Local TCP port -> process id, for the sockets these processes hold (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


@pytest.fixture
def stack(kafka_settings, configured):
    workdir = LOG_DIR / f"faults-load-{RUN_ID}"
    workdir.mkdir(parents=True, exist_ok=True)
    own = Stack(kafka_settings, workdir)
    try:
        own.start()
        yield own
    finally:
        own.stop()


def load_setup(out: str) -> None:
    """Two families: a child and a conversation each (the streams the writers share)."""
    from eventsourcing_app.application.children import register_child_with_consent
    from eventsourcing_app.application.conversations import start_conversation
    from eventsourcing_app.eventstore import get_event_store

    tag = uid()
    children, conversations = [f"c{n}-{tag}" for n in (1, 2)], [f"v{n}-{tag}" for n in (1, 2)]
    for n, (child_id, conversation_id) in enumerate(zip(children, conversations, strict=True)):
        parent_id = f"p{n}-{tag}"
        register_parent(actor=SYSTEM, parent_id=parent_id, email=f"load{n}-{tag}@example.org", name="Robin")
        register_child_with_consent(actor=SYSTEM, parent_id=parent_id, child_id=child_id, name="Alice", age=6,
                                    consent_method="signed_form", device_id=f"bear{n}-{tag}", udid=f"udid{n}-{tag}")
        start_conversation(actor=SYSTEM, conversation_id=conversation_id, child_id=child_id)
    store = get_event_store()
    streams = [f"parent.p{n}-{tag}" for n in (0, 1)] + [f"child.{c}" for c in children] + \
        [f"conversation.{v}" for v in conversations]
    with open(out, "w") as f:
        json.dump({"children": children, "conversations": conversations,
                   "streams": {s: store.get_stream_version_sync(s) for s in streams}}, f)
    store.flush(10)


def load_writer(n: str, setup: str, out: str, stop: str) -> None:
    """One writer process: profile changes and messages through the command handlers, and
    profile changes through the repository, on the shared streams, and now and then a whole
    conversation of its own (start, message, safety flag, end), until told to stop. A
    Conflict (the handler gave up after its own retries) and a ConcurrencyError from the
    repository are retried as a caller would: again, on fresh state. Each committed change is
    one line: stream, version, correlation id (and event id for the repository's)."""
    import logging
    import random
    from functools import partial

    from eventsourcing_app.application import Conflict
    from eventsourcing_app.application.conversations import (
        end_conversation,
        raise_safety_flag,
        record_message,
        start_conversation,
    )
    from eventsourcing_app.eventstore import ConcurrencyError, get_event_store
    from eventsourcing_app.observability import event_context

    shared = json.load(open(setup))
    rng = random.Random(n)
    counts = Counter()

    class Retries(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(("command conflicted", "command met a deadlock")):
                counts["retried_inside_the_handlers"] += 1

    handler_log = logging.getLogger("eventsourcing_app.application.unit_of_work")
    handler_log.setLevel(logging.INFO)
    handler_log.addHandler(Retries())
    service = get_event_sourcing_service()
    with open(out, "a", buffering=1) as log:
        for i in itertools.count():
            if os.path.exists(stop):
                break
            kind = rng.choices(("profile", "message", "repository", "conversation"), (32, 40, 18, 10))[0]
            child_id, conversation_id = rng.choice(shared["children"]), rng.choice(shared["conversations"])
            if kind == "conversation":  # a whole one, on a stream of its own: alerts and talk time too
                new_id = f"x{n}-{i}"
                steps = [partial(start_conversation, actor=SYSTEM, conversation_id=new_id, child_id=child_id),
                         partial(record_message, actor=SYSTEM, conversation_id=new_id, speaker="child", text="hello"),
                         partial(raise_safety_flag, actor=SYSTEM, conversation_id=new_id, category="bullying",
                                 severity="low"),
                         partial(end_conversation, actor=SYSTEM, conversation_id=new_id)]
            else:
                steps = [None]
            for step_number, step in enumerate(steps):
                cid = f"w{n}-{i}-{step_number}"
                for attempt in itertools.count(1):
                    try:
                        with event_context(correlation_id=cid):
                            if step is not None:
                                done = step()
                                line = {"stream": done.stream_id, "version": done.version}
                            elif kind == "profile":
                                done = update_child_profile(actor=SYSTEM, child_id=child_id,
                                                            changes={"interests": [cid]})
                                line = {"stream": done.stream_id, "version": done.version}
                            elif kind == "message":
                                done = record_message(actor=SYSTEM, conversation_id=conversation_id,
                                                      speaker=rng.choice(("child", "bear")), text=f"message {cid}")
                                line = {"stream": done.stream_id, "version": done.version}
                            else:
                                child = service.load_aggregate_sync(Child, child_id)
                                child.update_profile({"interests": [cid]})
                                ids = [e.event_id for e in child.get_domain_events()]
                                service.save_aggregate_sync(child)
                                line = {"stream": child.stream_id, "version": child.version, "ids": ids}
                        break
                    except Conflict:
                        counts["conflicts_raised_to_the_caller"] += 1
                    except ConcurrencyError:
                        counts["repository_conflicts"] += 1
                    if attempt == 100:
                        raise RuntimeError(f"{cid} did not go through in 100 attempts")
                    time.sleep(rng.uniform(0, 0.01))
                counts["committed"] += 1
                log.write(json.dumps({**line, "cid": cid, "kind": kind}) + "\n")
        log.write(json.dumps({"summary": dict(counts)}) + "\n")
    get_event_store().flush(10)


def load_check(setup: str, out: str, *writer_logs: str) -> None:
    """After the run: the mirror against what the writers were told, the hash chains and Kafka
    (verify_integrity), Kafka read as a consumer does, and the read models against a rebuild
    of each projector from Kafka offset zero. Writes the problems and the figures as JSON."""
    from eventsourcing_app.eventstore import get_event_store
    from eventsourcing_app.kafka.config import KafkaSettings
    from eventsourcing_app.kafka.consumer import StreamOrderGuard
    from eventsourcing_app.models import Stream
    from eventsourcing_app.operations.verify import verify_integrity
    from eventsourcing_app.readside.models import DeadLetter, StreamProgress
    from eventsourcing_app.readside.operations import rebuild
    from eventsourcing_app.readside.projectors import PROJECTORS
    from eventsourcing_app.readside.runner import active_generation
    from tests.integration.test_projections import comparable_rows
    from tests.kafka_helpers import records_by_stream

    shared = json.load(open(setup))
    streams = {sid: shared["streams"].get(sid, 0) for sid in Stream.objects.values_list("stream_id", flat=True)}
    problems, figures, told = [], Counter(), {sid: {} for sid in streams}
    for path in writer_logs:
        for line in map(json.loads, open(path).read().splitlines()):
            if "summary" in line:
                figures.update(line["summary"])
            elif line["stream"] not in told:
                problems.append(f"{line['stream']} v{line['version']} was committed, the stream is not stored")
            elif line["version"] in told[line["stream"]]:
                problems.append(f"two writers were told they committed {line['stream']} v{line['version']}")
            else:
                told[line["stream"]][line["version"]] = line
    store, kafka = get_event_store(), KafkaSettings.from_django()

    # 1. The mirror: versions 1..N without a gap, exactly what was committed.
    mirror = {}
    for stream_id, before in streams.items():
        events = mirror[stream_id] = store.load_events_sync(stream_id)
        versions = [e.version for e in events]
        committed = set(range(1, before + 1)) | set(told[stream_id])
        if versions != list(range(1, len(events) + 1)):
            problems.append(f"{stream_id}: versions not 1..N: {versions[:5]}...")
        lost, unexpected = committed - set(versions), set(versions) - committed
        figures["lost"] += len(lost)
        if lost or unexpected:
            problems.append(f"{stream_id}: committed but missing {sorted(lost)[:5]}, stored but never committed "
                            f"{sorted(unexpected)[:5]}")
        for event in events:
            line = told[stream_id].get(event.version)
            if line and (event.metadata.correlation_id != line["cid"] or str(event.event_id) not in line.get(
                    "ids", [str(event.event_id)])):
                problems.append(f"{stream_id} v{event.version} is not what {line['cid']} committed")
        figures["events_in_the_store"] += len(events)

    # 2. Hash chains, stream rows, snapshots' seals; each event against its Kafka record.
    try:
        report = verify_integrity(kafka_settings=kafka)
    except Exception as exc:  # noqa: BLE001 - reported, and the other checks still run
        problems.append(f"verify_integrity failed: {type(exc).__name__}: {exc}")
    else:
        problems += [f"verify_integrity: {p}" for p in report.problems[:10]]
        if report.unpublished:
            problems.append(f"{report.unpublished} events not published")
        figures.update(chains_verified=report.streams, events_verified=report.events,
                       events_compared_with_kafka=report.kafka_checked, snapshots_verified=report.snapshots)
    unplaced = [f"{e.metadata.stream_id} v{e.version}" for events in mirror.values() for e in events
                if e.kafka_position is not None and e.kafka_position.offset is None]
    if unplaced:
        problems.append(f"{len(unplaced)} events recorded as published without a Kafka offset: {unplaced[:5]}")

    # 3. Kafka as a consumer reads it: every committed event, in version order per stream,
    #    once duplicates are skipped (a version at or below the last one taken) and so is a
    #    version that came before its predecessor's copy (taken from the copy the relay sends
    #    after it: the consumers' StreamOrderGuard).
    for stream_type in ("parent", "child", "conversation"):
        ids = [sid for sid in streams if sid.startswith(f"{stream_type}.")]
        records = records_by_stream(kafka, stream_type, ids)
        for stream_id in ids:
            guard = StreamOrderGuard()
            applied = [r.metadata.event_id for r in records[stream_id] if guard.accept(r)]
            if applied != [e.metadata.event_id for e in mirror[stream_id]]:
                problems.append(f"{stream_id}: Kafka holds {len(applied)} of its {len(mirror[stream_id])} events in "
                                f"order ({guard.gaps_skipped} records ahead of a missing predecessor)")
            figures["events_in_kafka"] += len(applied)
            figures["duplicates_in_kafka"] += guard.duplicates_skipped
            figures["records_ahead_of_their_predecessor_in_kafka"] += guard.gaps_skipped

    # 4. The read models the worker fed through all of it, against a rebuild from offset zero.
    def behind() -> list[str]:
        out = []
        for name, cls in PROJECTORS.items():
            generation = active_generation(name)
            progress = dict(StreamProgress.objects.filter(projector=name, generation=generation)
                            .values_list("stream_id", "version"))
            out += [f"{name}: {sid} at {progress.get(sid, 0)} of {len(events)}" for sid, events in mirror.items()
                    if sid.split(".")[0] in cls.stream_types and progress.get(sid, 0) != len(events)]
        return out

    deadline = time.monotonic() + 180
    while behind() and time.monotonic() < deadline:
        time.sleep(0.2)
    problems += behind()
    if DeadLetter.objects.filter(resolved_at__isnull=True).exists():
        problems.append(f"dead letters: {list(DeadLetter.objects.values_list('stream_id', 'error'))[:5]}")
    ids = {"child_id": shared["children"],
           "conversation_id": [sid.split(".", 1)[1] for sid in streams if sid.startswith("conversation.")]}
    for name, cls in PROJECTORS.items():
        old = active_generation(name)
        before = {m.__name__: comparable_rows(m, old, ids) for m in cls.models}
        rebuilt = rebuild(name, source="kafka", kafka_settings=kafka, keep_old=True)
        after = {m.__name__: comparable_rows(m, rebuilt.new_generation, ids) for m in cls.models}
        for model, rows in before.items():
            if rows != after[model] or not rows:
                problems.append(f"{name}.{model}: {len(rows)} rows fed through the faults, {len(after[model])} "
                                "rebuilt from zero, not equal")
            figures["read_model_rows_compared"] += len(rows)
        followed = sum(len(events) for sid, events in mirror.items() if sid.split(".")[0] in cls.stream_types)
        figures["events_checked_in_read_models"] += followed
        figures[f"events_rebuilt_{name}"] = rebuilt.events
    with open(out, "w") as f:
        json.dump({"problems": problems, "figures": dict(figures)}, f)


def test_writers_on_shared_streams_lose_nothing_while_the_broker_and_a_worker_are_killed(stack):
    """Four writer processes change two children and two conversations (few streams: frequent
    conflicts, retried as a caller would) through the command handlers and the repository, and
    now and then run a whole conversation of their own, while the broker is killed (SIGKILL)
    and restarted, and a Celery pool process holding projectors' locks is killed (SIGKILL)
    mid-projection and replaced by the worker (its projectors taken over by the other one).

    The broker keeps nothing across a restart (Tansu, memory only): what it had acknowledged is
    gone. So, while the writers go on, the operator's recovery runs as docs/core.md and
    docs/read-side.md say: `refill_kafka --recreate-topics` (every stream republished once, in
    order; beat's relay every second does the rest), then `projections rebuild --all --source
    mirror` (the recreated topics start at offset zero, the projectors' positions point further
    on: without the rebuild, streams whose records fell below those positions are missing from
    the read models until one, the documented known limit). The worker is killed after that, so
    the read models asserted are those the worker fed from the rebuild on, through its kill.

    Asserted once the writers stopped and the relay drained the outbox: every stream's versions
    are 1..N, exactly what the writers were told they committed (nothing missing, nothing else,
    each the writer's own by correlation id); verify_integrity finds the hash chains, stream
    rows, snapshots' seals and each event's Kafka record right; Kafka read as a consumer reads
    it (duplicates skipped, and a version that came before its predecessor's republished copy)
    holds every committed event in per-stream version order; the events acknowledged before the
    kill are there because the refill republished them. Every projector applied every stream to
    its last version, no dead letter, and its read models equal a rebuild from Kafka offset zero,
    row for row (personal values decrypted). A pool process may also die by itself (SIGSEGV in
    librdkafka) when the refill deletes the topics its consumers read: it is replaced the same
    way, and counted. Figures: var/test-logs/faults-under-load.json, "combined"."""
    from eventsourcing_app.kafka.topics import provision_topics
    from eventsourcing_app.readside.projectors import PROJECTORS

    setup, stop = stack.workdir / "setup.json", stack.workdir / "stop"
    made = stack.run("-m", "tests.integration.test_faults_under_load", "load-setup", str(setup))
    assert made.returncode == 0, made.stdout + made.stderr
    logs = [stack.workdir / f"writer-{n}.jsonl" for n in range(WRITERS)]
    writers = [subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_faults_under_load", "load-writer", str(n), str(setup),
         str(logs[n]), str(stop)], cwd=REPO, env=stack.env, stdout=open(stack.workdir / f"writer-{n}.log", "ab"),
        stderr=subprocess.STDOUT) for n in range(WRITERS)]
    faults, marks = Counter(), {}
    started = time.monotonic()

    def committed() -> int:
        return sum(path.read_text().count("\n") for path in logs if path.exists())

    def write_on(at_least: int, seconds: float) -> None:
        """Lets the writers commit `at_least` more changes and run for `seconds` more."""
        target, until = committed() + at_least, time.monotonic() + seconds
        wait_until(lambda: (committed() >= target and time.monotonic() >= until)
                   or any(w.poll() is not None for w in writers), timeout=120)
        assert all(w.poll() is None for w in writers), f"a writer died; see {stack.workdir}"

    try:
        write_on(60, 2.0)
        # The broker dies with acknowledged events and sends in flight, and comes back empty.
        marks["writing"] = time.monotonic() - started
        stack.broker.stop(kill=True)
        faults["broker_kills"] += 1
        write_on(40, 3.5)  # longer than the message timeout: the sends in flight fail
        stack.broker = start_tansu(port=stack.broker.port, log_path=LOG_DIR / f"tansu-load-{RUN_ID}-2.log")
        provision_topics(stack.kafka)
        marks["broker_restarted"] = time.monotonic() - started
        deadline = time.monotonic() + 120
        while True:  # as an operator would: again while beat's relay holds the lock a moment
            refill = stack.run("manage.py", "refill_kafka", "--recreate-topics")  # settles 3s (the message timeout)
            output = refill.stdout + refill.stderr
            if refill.returncode == 0 or "still unpublished" in output:  # the writers go on: the relay's
                break
            assert "another refill" in output and time.monotonic() < deadline, output
            faults["refills_refused_while_the_relay_ran"] += 1
            time.sleep(0.5)
        faults["refills"] += 1
        marks["refilled"] = time.monotonic() - started
        # The refill recreated the topics at offset zero, the projectors' positions point further
        # on: as docs/read-side.md says, rebuild them (from the mirror, then on from Kafka), blue/
        # green, while the writers go on and the worker feeds the generations it switches to.
        rebuilt = stack.run("manage.py", "projections", "rebuild", "--all", "--source", "mirror",
                            env={"PROJECTIONS_SWITCH_GRACE_SECONDS": "0.5"})
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        faults["projection_rebuilds_after_the_refill"] += 1
        marks["rebuilt"] = time.monotonic() - started
        applied = stack.applied()
        write_on(60, 2.0)
        wait_until(lambda: stack.applied() > applied, timeout=120)  # the worker feeds the new generations

        # A pool process holding projectors' locks dies in the middle of feeding them.
        marks["fed_after_the_rebuild"] = time.monotonic() - started
        holders = wait_until(stack.projector_lock_holders, timeout=60)
        victim, locks = holders.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        faults["worker_kills"] += 1
        faults["projector_locks_held_by_the_killed_process"] += locks
        def replaced() -> bool:
            pool = stack.pool_processes()
            return len(pool) == 2 and victim not in pool

        wait_until(replaced, timeout=120)  # the worker starts a new pool process
        wait_until(lambda: sum(stack.projector_lock_holders().values()) == len(PROJECTORS), timeout=120)
        marks["worker_replaced"] = time.monotonic() - started
        write_on(60, 2.0)
        stop.touch()
        for writer in writers:
            assert writer.wait(120) == 0, f"see {stack.workdir}"
        writing = time.monotonic() - started
        # Beat's relay publishes what the writers' publishers left in the outbox.
        wait_until(lambda: stack.sql("SELECT count(*) FROM eventstore_stream WHERE published_version < version")
                   == [(0,)], timeout=120)
        marks["drained"] = time.monotonic() - started
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait(10)

    checked = stack.workdir / "check.json"
    done = stack.run("-m", "tests.integration.test_faults_under_load", "load-check", str(setup), str(checked),
                     *map(str, logs), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    marks["checked"] = time.monotonic() - started
    result = json.loads(checked.read_text())
    conflicts = sum(result["figures"].get(k, 0) for k in (
        "retried_inside_the_handlers", "conflicts_raised_to_the_caller", "repository_conflicts"))
    deaths = [line for line in stack.log_path.read_text(errors="replace").splitlines() if "exited with 'signal" in line]
    faults["pool_processes_that_died_by_themselves"] = sum(1 for line in deaths if "SIGKILL" not in line)
    figures = {**result["figures"], **faults, "conflicts_retried": conflicts, "writers": WRITERS,
               "writing_seconds": round(writing, 1), "seconds_at": {k: round(v, 1) for k, v in marks.items()},
               "command": "bash scripts/test tests/integration/test_faults_under_load.py -s "
                          "(with TEST_DATABASE_URL and TEST_REDIS_URL as needed)"}
    print("faults under load:", json.dumps(figures))
    record_figures("combined", figures)
    assert not result["problems"], "\n".join(result["problems"])
    assert figures["lost"] == 0 and figures["committed"] > 0


class _WithoutOffset:
    """A delivery report as the broker gave some after a refill recreated the topics: no error,
    and no offset."""

    def __init__(self, msg) -> None:
        self._msg = msg

    def offset(self):
        return None

    def __getattr__(self, name):
        return getattr(self._msg, name)


def test_a_send_kafka_answers_without_an_offset_waits_for_the_relay(own_broker):
    """Found by the scenario above: the worker's relay, whose producer outlived the refill's
    recreated topics, was answered without an offset for sends that never reached the new
    topics, and recorded them as published (at offset None): Kafka lacked them for good and
    verify_integrity failed with a TypeError. Such an answer is no acknowledgement."""
    from eventsourcing_app.eventstore import build_event_store
    from eventsourcing_app.kafka.consumer import StreamOrderGuard
    from eventsourcing_app.models import Event, Stream
    from eventsourcing_app.operations.relay import KafkaUnavailableError, relay_outbox
    from eventsourcing_app.operations.verify import verify_integrity
    from tests.kafka_helpers import records_by_stream

    _, kafka = own_broker
    mine = build_event_store(kafka_settings=kafka)
    stream_id, publisher = unique_stream("test"), mine.publisher
    answered = publisher._delivered
    publisher._delivered = lambda err, msg, publication: answered(err, _WithoutOffset(msg), publication)
    try:
        mine.append_events_sync(stream_id, notes(2), expected_version=0)
        assert mine.flush(30)
        assert Stream.objects.get(pk=stream_id).published_version == 0
        assert not Event.objects.filter(stream_id=stream_id, published_at__isnull=False).exists()

        del publisher._delivered  # the broker answers as it should again
        deadline = time.monotonic() + 60
        while Stream.objects.get(pk=stream_id).published_version != 2:
            assert time.monotonic() < deadline, "the relay did not publish the events again"
            try:
                relay_outbox(mine, stream_types=["test"], time_budget=10.0)
            except KafkaUnavailableError:
                time.sleep(0.5)
        assert verify_integrity(stream_id, kafka_settings=kafka).ok
        guard = StreamOrderGuard()
        copies = records_by_stream(kafka, "test", [stream_id])[stream_id]
        assert [r.metadata.version for r in copies if guard.accept(r)] == [1, 2]
    finally:
        publisher.close()


def test_verify_integrity_reports_an_event_recorded_without_an_offset_instead_of_failing(store):
    """Rows the publisher recorded that way before: a difference to refill, not a TypeError."""
    from eventsourcing_app.eventstore import EventStore
    from eventsourcing_app.eventstore.recorders import PostgresRecorder
    from eventsourcing_app.operations.relay import relay_outbox
    from eventsourcing_app.operations.verify import verify_integrity

    stream_id = unique_stream("test")
    EventStore(recorder=PostgresRecorder(), stream_types=store.stream_types, max_event_bytes=store.max_event_bytes,
               kafka_settings=store.kafka_settings).append_events_sync(stream_id, notes(2), expected_version=0)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE eventstore_event SET kafka_topic = %s, kafka_partition = 0, kafka_offset = NULL, "
                       "published_at = now() WHERE stream_id = %s AND version = 2",
                       [store.kafka_settings.event_topic("test"), stream_id])
    try:
        report = verify_integrity(stream_id, kafka_settings=store.kafka_settings)
        assert not report.ok
        assert (report.first_problem.version, "without an offset" in report.first_problem.reason) == (2, True)
    finally:
        relay_outbox(store, stream_types=["test"], time_budget=20.0)  # publishes both, positions recorded again
    assert verify_integrity(stream_id, kafka_settings=store.kafka_settings).ok


# --- 2. PostgreSQL backends terminated ------------------------------------------------------

class Calls:
    """The calls a caller makes, each on its own streams: which one meets the dead connection,
    and which one comes next, must not matter."""

    def __init__(self, store) -> None:
        self.store = store
        self.service = get_event_sourcing_service()
        self.child_id = new_family()
        self.a, self.b, self.c = (unique_stream("test") for _ in range(3))
        store.append_events_sync(self.a, notes(1), expected_version=0)

    @property
    def streams(self) -> list[str]:
        return [self.a, self.b, self.c, f"child.{self.child_id}"]

    def append(self):
        self.store.append_events_sync(self.a, notes(3))

    def appends_in_the_callers_transaction(self):
        with transaction.atomic():
            self.store.append_events_sync(self.b, notes(2))
            self.store.append_events_sync(self.c, notes(2))

    def command(self):
        update_child_profile(actor=SYSTEM, child_id=self.child_id, changes={"interests": [uid()]})

    def aggregate_load(self):
        self.service.load_aggregate_sync(Child, self.child_id)

    def stream_version(self):
        self.store.get_stream_version_sync(self.a)

    def events_load(self):
        self.store.load_events_sync(self.a)

    def a_query_of_the_callers_own(self):
        from eventsourcing_app.models import Stream

        Stream.objects.filter(pk=self.a).count()


STORE_CALLS = ["append", "appends_in_the_callers_transaction", "command", "aggregate_load", "stream_version",
               "events_load"]


def test_a_terminated_backend_fails_one_call_clearly_and_the_next_call_of_any_kind_works(store):
    """Outside a request (a script, a worker), in one thread: its backend is terminated, the
    next call fails with the store's or the application's own error saying to retry, whatever
    that call is, and the call after it works, whatever it is, with nothing half-written. (The
    caller's own query fails with Django's error; what comes after it must work all the same,
    but for the caller's own transaction, which only Django could replace.)"""
    calls = Calls(store)
    pairs = [(first, then) for first, then in itertools.product([*STORE_CALLS, "a_query_of_the_callers_own"],
                                                                 STORE_CALLS)
             if not (first == "a_query_of_the_callers_own" and then == "appends_in_the_callers_transaction")]
    problems, failed_clearly = [], 0
    for first, then in pairs:
        assert terminate(backend_of_this_thread())
        try:
            getattr(calls, first)()
        except Exception as exc:  # noqa: BLE001 - judged below
            if first != "a_query_of_the_callers_own" and not is_clear(exc):
                problems.append(f"{first} failed unclearly: {type(exc).__name__}: {exc}")
            failed_clearly += first != "a_query_of_the_callers_own"
        try:
            getattr(calls, then)()
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"{then} after a failed {first}: {type(exc).__name__}: {exc}")
        rows = rows_of(calls.streams)
        problems += whole(rows)
        if rows[calls.b][0] != rows[calls.c][0]:
            problems.append(f"after {first}/{then}: one transaction's appends half stored: {rows}")
    print(f"{len(pairs)} pairs of calls; {failed_clearly} first calls failed with a clear error")
    assert not problems, "\n".join(problems)


TABLE_LOCK = ("LOCK TABLE eventstore_event IN SHARE MODE", [])  # every insert of an event waits


def row_lock(stream_id: str):
    return "SELECT 1 FROM eventstore_stream WHERE stream_id = %s FOR UPDATE", [stream_id]


def terminated_inside_the_statement(run, streams, lock=TABLE_LOCK) -> dict:
    """Runs run(block) in a thread of its own. At block() the test takes `lock` (by default the
    events table in SHARE mode, so that the append after block() waits inside its statement,
    with the stream row locked or created and the data checked) and terminates the thread's
    backend while it waits. Then, before the thread goes on, the test reads the streams' rows;
    the thread then makes the call again, the same way (nothing blocks it then). Returns the
    error, the rows after the failure, the result of the second call and the two backends."""
    outcome: dict = {}
    ready, locked, failed, checked = (threading.Event() for _ in range(4))

    def block():
        ready.set()
        assert locked.wait(30)

    def body():
        from django.db import connections

        try:
            outcome["pid"] = backend_of_this_thread()
            try:
                run(block)
            except Exception as exc:  # noqa: BLE001 - returned to the test
                outcome["error"] = exc
            failed.set()
            assert checked.wait(30)
            outcome["again"] = run(lambda: None)
            outcome["pid_after"] = backend_of_this_thread()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcome["error_again"] = exc
        finally:
            failed.set()
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert ready.wait(30)
        with psycopg.connect(database_url()) as locker, psycopg.connect(database_url(), autocommit=True) as watcher:
            locker.execute(*lock)
            locked.set()
            wait_until(lambda: watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                               [outcome["pid"]]).fetchone() == ("Lock",), timeout=30)
            assert watcher.execute("SELECT pg_terminate_backend(%s, 5000)", [outcome["pid"]]).fetchone()[0]
            locker.rollback()
        assert failed.wait(30)
        outcome["rows"] = rows_of(streams)
    finally:
        locked.set()
        checked.set()
        thread.join(60)
    assert not thread.is_alive(), "the caller did not come back after its backend was terminated"
    return outcome


def test_a_backend_terminated_inside_an_append_leaves_nothing_half_written(any_store):
    """Caught inside the statement, after the stream row was locked (or made): a multi-event
    append to a new stream, to an existing one, and the second append of a caller's transaction
    whose first append went through (caught there waiting for the second stream's row). The
    caller gets the store's error (retry, idempotent); nothing of it is stored, nor of the
    transaction; the same call again, in the same thread, stores it whole."""
    existing, fresh, first, second = (unique_stream("test") for _ in range(4))
    any_store.append_events_sync(existing, notes(2), expected_version=0)
    any_store.append_events_sync(second, notes(1), expected_version=0)
    new_batch, batch, one, two = notes(3), notes(3), notes(2), notes(2)

    def to_new_stream(block):
        block()
        return any_store.append_events_sync(fresh, new_batch, expected_version=0)

    def to_existing_stream(block):
        block()
        return any_store.append_events_sync(existing, batch, expected_version=2)

    def in_a_transaction(block):
        with transaction.atomic():
            any_store.append_events_sync(first, one, expected_version=0)
            block()
            return any_store.append_events_sync(second, two, expected_version=1)

    cases = [(to_new_stream, TABLE_LOCK, {fresh: (0, 0, 0)}, {fresh: (3, 3, 3)}),
             (to_existing_stream, TABLE_LOCK, {existing: (2, 2, 2)}, {existing: (5, 5, 5)}),
             (in_a_transaction, row_lock(second), {first: (0, 0, 0), second: (1, 1, 1)},
              {first: (2, 2, 2), second: (3, 3, 3)})]
    for run, lock, after_failure, after_retry in cases:
        outcome = terminated_inside_the_statement(run, list(after_failure), lock)
        assert "error_again" not in outcome, f"{run.__name__}: the call after the failure: {outcome['error_again']!r}"
        error = outcome.get("error")
        assert error is not None and is_clear(error), f"{run.__name__}: {error!r}"
        assert "idempotent" in str(error)
        assert outcome["rows"] == after_failure, f"{run.__name__}: half-written: {outcome['rows']}"
        assert not outcome["again"].idempotent  # nothing of it had been stored
        assert outcome["pid_after"] != outcome["pid"]
        assert rows_of(list(after_retry)) == after_retry


def pg_writer(out: str, stop: str, a: str, b: str, c: str, child_id: str) -> None:
    """A script's loop, as a caller writes it: appends (3 events), a transaction of two
    appends (2 events each, a moment of work between them), a command and loads, in turn; each
    call that fails is made again the same way (the same events at the same expected versions:
    idempotent) until it works. One JSON line per call."""
    import traceback

    from eventsourcing_app.eventstore import get_event_store
    from eventsourcing_app.observability import event_context

    store, service = get_event_store(), get_event_sourcing_service()
    known = {a: store.get_stream_version_sync(a), b: 0, c: 0}
    pending = None
    with open(out, "a", buffering=1) as log:
        for i in itertools.count():
            if os.path.exists(stop):
                break
            if pending is None:
                op = ("append", "transaction", "command", "load")[i % 4]
                pending = {"op": op, "a": notes(3), "b": notes(2), "c": notes(2), "cid": f"loop-{uid()}"}
            op, line = pending["op"], {"op": pending["op"]}
            try:
                if op == "append":
                    done = store.append_events_sync(a, pending["a"], expected_version=known[a])
                    known[a] = done.last_version
                    line.update(stream=a, ids=[e.event_id for e in pending["a"]], last=done.last_version)
                elif op == "transaction":
                    with transaction.atomic():
                        first = store.append_events_sync(b, pending["b"], expected_version=known[b])
                        time.sleep(0.003)  # the caller's work inside its transaction
                        second = store.append_events_sync(c, pending["c"], expected_version=known[c])
                        line["at_commit"] = True  # what fails from here is the caller's own COMMIT
                    line.pop("at_commit")
                    known[b], known[c] = first.last_version, second.last_version
                    line.update(b=[e.event_id for e in pending["b"]], c=[e.event_id for e in pending["c"]])
                elif op == "command":
                    with event_context(correlation_id=pending["cid"]):
                        update_child_profile(actor=SYSTEM, child_id=child_id, changes={"interests": [pending["cid"]]})
                    line.update(cid=pending["cid"])
                else:
                    loaded = service.load_aggregate_sync(Child, child_id)
                    events = store.load_events_sync(a)
                    assert len(events) == known[a], (len(events), known[a])
                    line.update(child_version=loaded.version)
                line["ok"] = True
                pending = None
            except Exception as exc:  # noqa: BLE001 - recorded; the same call is made again
                frames = traceback.extract_tb(exc.__traceback__)
                line.update(ok=False, error=type(exc).__name__, message=str(exc), cid=pending["cid"],
                            where=[f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.line}" for f in frames
                                   if "site-packages" not in f.filename][-3:])
            log.write(json.dumps(line) + "\n")


def test_a_writer_whose_backends_are_terminated_in_a_loop_loses_nothing_and_never_fails_twice(store, kafka_settings):
    """A writer process (a script: no request cycle) appends in a loop while the test
    terminates its backends (found by application_name) again and again: while it runs a
    statement, while its transaction is open between two appends, while it is idle. Each
    termination fails one call with a clear error (the store's, the application's, or Django's
    own for the caller's COMMIT, which no store code runs); the call after it works; at the end
    every batch is stored once, whole, in order (both appends of a transaction or neither), an
    acknowledged command once (twice only if its first attempt failed: commands are not
    idempotent), and the hash chains verify."""
    from eventsourcing_app.operations.verify import verify_integrity

    calls = Calls(store)
    name = f"faults-loop-{uid()}"
    workdir = LOG_DIR / f"faults-loop-{RUN_ID}"
    workdir.mkdir(parents=True, exist_ok=True)
    out, stop = workdir / "calls.jsonl", workdir / "stop"
    env = process_env(kafka_settings, PGAPPNAME=name)
    writer = subprocess.Popen([sys.executable, "-m", "tests.integration.test_faults_under_load", "pg-writer", str(out),
                               str(stop), calls.a, calls.b, calls.c, calls.child_id], cwd=REPO, env=env,
                              stdout=open(workdir / "writer.log", "ab"), stderr=subprocess.STDOUT)

    def lines() -> list[dict]:
        if not out.exists():
            return []
        return [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]

    def oks() -> int:
        return sum(1 for line in lines() if line["ok"])

    kills: dict[str, int] = {}
    try:
        with psycopg.connect(database_url(), autocommit=True) as watcher:
            wait_until(lambda: oks() >= 8 or writer.poll() is not None, timeout=60)
            for k in range(24):
                assert writer.poll() is None, f"the writer died; see {workdir / 'writer.log'}"
                wanted = ("active", "idle in transaction", "idle")[k % 3]
                seen = None

                def in_state(wanted=wanted):
                    nonlocal seen
                    rows = watcher.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
                                           [name]).fetchall()
                    if any(state == wanted for _, state in rows):
                        seen = wanted
                        return rows
                    return None

                try:
                    rows = wait_until(in_state, timeout=5, interval=0.001)
                except AssertionError:  # not caught in that state this time: terminated as it is
                    rows = watcher.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
                                           [name]).fetchall()
                    seen = "other"
                before = oks()
                for pid, _ in rows:
                    watcher.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
                kills[seen] = kills.get(seen, 0) + 1
                wait_until(lambda before=before: oks() > before or writer.poll() is not None, timeout=60)
        stop.touch()
        assert writer.wait(60) == 0, f"see {workdir / 'writer.log'}"
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)

    calls_made = lines()
    failures = [(n, line) for n, line in enumerate(calls_made) if not line["ok"]]
    # The caller's own COMMIT fails with Django's error (no store code runs there), which says
    # the connection was lost; everything else with the store's or the application's own.
    at_commit = [line for _, line in failures if line.get("at_commit")]
    unclear = [line for _, line in failures if not (
        line["error"] in ("StoreUnavailableError", "Unavailable") and "database" in line["message"]
        and ("retry" in line["message"] or "try again" in line["message"])
        or line.get("at_commit") and line["error"] == "OperationalError"
        and any(words in line["message"] for words in ("terminating connection", "server closed the connection")))]
    assert not unclear, unclear
    twice = [line for n, line in failures if n + 1 < len(calls_made) and not calls_made[n + 1]["ok"]]
    assert failures, "no termination failed a call"

    from eventsourcing_app.models import Event

    def stored_ids(stream_id: str) -> list[str]:
        return [str(i) for i in Event.objects.filter(stream_id=stream_id).order_by("version")
                .values_list("event_id", flat=True)]

    done = [line for line in calls_made if line["ok"]]
    expected = {calls.a: stored_ids(calls.a)[:1] + [i for line in done if line["op"] == "append" for i in line["ids"]],
                calls.b: [i for line in done if line["op"] == "transaction" for i in line["b"]],
                calls.c: [i for line in done if line["op"] == "transaction" for i in line["c"]]}
    stored = {stream_id: stored_ids(stream_id) for stream_id in expected}
    lost = sum(len(set(ids) - set(stored[sid])) for sid, ids in expected.items())
    # A command is not idempotent: one whose commit the termination hit may be stored and run
    # again by the caller. Every acknowledged one is stored; twice only after a failed attempt.
    changed = Event.objects.filter(stream_id=f"child.{calls.child_id}", event_type="ChildProfileUpdated")
    stored_cids = Counter(changed.values_list("correlation_id", flat=True))
    acknowledged = {line["cid"] for line in done if line["op"] == "command"}
    failed_cids = {line["cid"] for _, line in failures if line["op"] == "command"}
    lost += len(acknowledged - set(stored_cids))
    assert not twice, f"the call after a failure failed too: {twice}"
    assert lost == 0 and stored == expected, "acknowledged events missing, or stored events nobody acknowledged"
    assert set(stored_cids) <= acknowledged | failed_cids
    assert all(count == 1 or cid in failed_cids for cid, count in stored_cids.items()), stored_cids
    for stream_id in calls.streams:
        report = verify_integrity(stream_id)
        assert report.ok, report.first_problem
    assert not whole(rows_of(calls.streams))
    figures = {"terminations": sum(kills.values()), "terminations_by_state_seen": kills, "calls": len(calls_made),
               "calls_failed": len(failures), "of_which_the_callers_commit": len(at_commit),
               "writes_committed": sum(1 for line in done if line["op"] != "load"),
               "events_checked": sum(len(stored_ids(s)) for s in calls.streams), "lost": lost,
               "failed_twice": len(twice)}
    print("postgres terminations:", json.dumps(figures))
    record_figures("postgres_terminations", figures)


# --- 3. Redis down ----------------------------------------------------------------------------

REDIS_OPS = ("command", "load", "append", "events")


def redis_writer(out: str, stop: str, child_id: str, stream_id: str) -> None:
    """A process configured with the test's own Redis: a command, an aggregate load (through
    the Redis cache), an append and a load of events, in turn, each timed; one JSON line per
    call, with what the load started from."""
    from eventsourcing_app.eventstore import EventSourcingRepositoryImpl, get_event_store

    store, children = get_event_store(), EventSourcingRepositoryImpl(Child)
    with open(out, "a", buffering=1) as log:
        for i in itertools.count():
            if os.path.exists(stop):
                break
            op = REDIS_OPS[i % len(REDIS_OPS)]
            line = {"op": op, "t": time.time()}
            started = time.monotonic()
            try:
                if op == "command":
                    update_child_profile(actor=SYSTEM, child_id=child_id, changes={"interests": [f"r-{i}"]})
                elif op == "load":
                    children.load_sync(child_id)
                    line["from"] = children.last_load.started_from
                elif op == "append":
                    store.append_events_sync(stream_id, notes(1))
                else:
                    store.load_events_sync(stream_id)
                line["ok"] = True
            except Exception as exc:  # noqa: BLE001 - recorded
                line.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            line["seconds"] = round(time.monotonic() - started, 4)
            log.write(json.dumps(line) + "\n")


def test_with_redis_hung_or_down_appends_and_loads_work_and_readiness_names_redis(store, kafka_settings, client,
                                                                                   settings, tmp_path):
    """A writer process uses a Redis the test started (cache, Celery's broker, the erasure
    broadcast): the test stops it (SIGSTOP: it accepts connections and answers nothing), kills
    it, and starts it again, empty, on the same port. Throughout, commands, aggregate loads,
    appends and loads of events go on working (each phase needs a number of each; how long a
    call took is logged, not asserted); /health/ready/ names Redis while it is hung or down
    and says it is up again once it is back, and the writer's cache fills the new Redis again
    and loads start from it, without restarting anything. (test_health.py covers a Redis URL
    where nothing ever listened.)"""
    import statistics

    import redis

    from devtools.embedded import start_redis

    settings.EVENTSTORE = {**settings.EVENTSTORE, "PUBLISH_LAG_ALERT_SECONDS": 10**9}  # as in test_health.py:
    settings.PROJECTIONS = {**settings.PROJECTIONS, "LAG_ALERT_SECONDS": 10**9}  # only Redis is to be down
    calls = Calls(store)
    own = start_redis(tmp_path / "redis")
    settings.REDIS_URL = url = f"redis://127.0.0.1:{own.port}/0"
    workdir = LOG_DIR / f"faults-redis-{RUN_ID}"
    workdir.mkdir(parents=True, exist_ok=True)
    out, stop = workdir / "calls.jsonl", workdir / "stop"
    env = process_env(kafka_settings, REDIS_URL=url, EVENTSTORE_SNAPSHOT_FREQUENCY="5")

    def lines(since: float) -> list[dict]:
        if not out.exists():
            return []
        return [line for line in map(json.loads, (t for t in out.read_text().splitlines() if t.endswith("}")))
                if line["t"] >= since]

    def calls_in(name: str, each: int = 12) -> dict:
        """Waits until the writer made `each` calls of every kind since now; their figures."""
        since = time.time()
        wait_until(lambda: writer.poll() is not None or all(
            sum(1 for line in lines(since) if line["op"] == op) >= each for op in REDIS_OPS), timeout=120)
        assert writer.poll() is None, f"the writer died; see {workdir / 'writer.log'}"
        made = lines(since)
        failed = [line for line in made if not line["ok"]]
        assert not failed, f"{name}: {failed[:3]}"
        seconds = [line["seconds"] for line in made]
        return {"calls": len(made), "max_seconds": max(seconds), "median_seconds": round(statistics.median(seconds), 4),
                "loads_from_cache": sum(1 for line in made if line.get("from") == "cache")}

    def readiness() -> dict:
        response = client.get("/health/ready/")
        body = response.json()
        return {"status": response.status_code, "down": body["down"], "redis": body["checks"]["redis"]}

    phases, writer = {}, None
    try:
        writer = subprocess.Popen([sys.executable, "-m", "tests.integration.test_faults_under_load", "redis-writer",
                                   str(out), str(stop), calls.child_id, calls.a], cwd=REPO, env=env,
                                  stdout=open(workdir / "writer.log", "ab"), stderr=subprocess.STDOUT)
        phases["up"] = calls_in("Redis up")
        assert phases["up"]["loads_from_cache"] > 0  # the cache is really used
        assert readiness()["down"] == []

        own.pause()
        phases["hung"] = calls_in("Redis hung")
        hung = readiness()
        assert hung["status"] == 503 and hung["down"] == ["redis"], hung
        assert hung["redis"]["status"] == "down" and hung["redis"]["error"]

        own.stop(kill=True)
        phases["down"] = calls_in("Redis down")
        down = readiness()
        assert down["status"] == 503 and down["down"] == ["redis"], down
        assert str(own.port) in down["redis"]["error"], down  # names where it looked

        own = start_redis(tmp_path / "redis", port=own.port)  # empty
        assert readiness() == {"status": 200, "down": [], "redis": {"status": "up"}}
        back = time.time()
        wait_until(lambda: redis.Redis.from_url(url).exists(f"teddy:aggregate:child.{calls.child_id}"), timeout=60)
        wait_until(lambda: any(line.get("from") == "cache" for line in lines(back)), timeout=60)
        phases["back"] = calls_in("Redis back")
        stop.touch()
        assert writer.wait(60) == 0, f"see {workdir / 'writer.log'}"
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(10)
        own.stop(kill=True)
    figures = {"phases": phases, "readiness_hung": hung["redis"], "readiness_down": down["redis"]}
    print("redis down:", json.dumps(figures))
    record_figures("redis_down", figures)


# --- the processes the tests start: python -m tests.integration.test_faults_under_load ROLE ... ---

ROLES = {"load-setup": load_setup, "load-writer": load_writer, "load-check": load_check, "pg-writer": pg_writer,
         "redis-writer": redis_writer}


def main(argv: list[str]) -> None:
    import django

    django.setup()
    ROLES[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
