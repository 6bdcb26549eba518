"""The two systems under test, each driven in its own worker process.

A worker is started by bench_eventstore.py as `python -m bench.bench_eventstore --worker
ours|library`; it reads one JSON command per line on stdin and answers one JSON line on the
protocol stream (the original stdout; everything else the process prints goes to stderr).
Both workers implement the same scenarios with the same event shape (an int and a
100-character string), so that the numbers of one run can be compared side by side.

- ours:    this project's EventStore (PostgresRecorder + EventPublisher to a real Tansu broker),
           built with build_event_store(kafka_settings=...), Kafka publishing ON.
- library: the eventsourcing library's Application with its PostgreSQL persistence module
           (PostgresApplicationRecorder, psycopg3 pool), aggregates declared with @event, as
           its documentation shows; no snapshots, no aggregate cache (its defaults). The
           snapshot scenario uses a second Application subclass with snapshotting enabled.

The snapshot scenario (op `load_snapshot`) loads through each side's repository: ours
`EventSourcingRepositoryImpl(BenchAggregate, event_store=<the benchmark's store>,
snapshot_store=SnapshotStore(...), cache=False)`, the library `app.repository.get(id)` of an
Application with `is_snapshotting_enabled = True`, snapshot taken with `app.take_snapshot(id)`.

The concurrent-writers scenario does not run in these workers: the orchestrator starts one
writer process per writer (`python -m bench.bench_eventstore --writer-process ours|library
--index I --duration S`, `serve_writer` below), each with its own store or Application and its
own connection, waits until every one is warmed up and releases them together.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Iterator

TEXT = "x" * 100  # the string field of every benchmark event (same for both sides)


# --- measuring helpers ---------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Prints `label: i/total (rate/s)` about once a second while a loop runs."""

    def __init__(self, label: str, total: int, unit: str = "") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.start = self.last = time.perf_counter()

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= 1.0 or done == self.total:
            self.last = now
            rate = done / (now - self.start) if now > self.start else 0.0
            log(f"    {self.label}: {done}/{self.total}{self.unit} ({rate:,.0f}/s)")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    """Current resident set size of this process in KiB (from /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {"p50_ms": statistics.median(ms), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms), "max_ms": max(ms)}


# --- the systems under test ---------------------------------------------------------

class System:
    """What each side implements; every method returns a JSON-able dict."""

    name = "?"

    def setup(self) -> dict: ...
    def append_new_stream(self, i: int) -> None: ...
    def new_batched_stream(self, i: int) -> Any: ...
    def append_batch(self, handle: Any, first_n: int, count: int) -> Any: ...
    def flush(self) -> float | None: return None  # seconds waited, None if not applicable
    def counters(self) -> dict: return {}  # cumulative counters; each scenario reports their change
    def final_check(self) -> dict: return {}  # what the database holds at the end
    def make_load_stream(self, events: int) -> Any: ...
    def load_aggregate(self, handle: Any) -> int: ...
    def load_raw(self, handle: Any) -> int: ...
    # The snapshot scenario: a stream written for it, loaded through the side's repository
    # (snapshots on), a snapshot taken at its last version, and how a load started.
    def make_snapshot_stream(self, events: int) -> Any: ...
    def load_via_repository(self, handle: Any) -> int: ...
    def take_snapshot(self, handle: Any) -> int: ...
    def replay_report(self, handle: Any) -> dict: ...
    def concurrent_writer(self, index: int) -> tuple[Callable[[], None], Callable[[], None]]: ...
    # A writer process of the concurrent scenario: only what one writer needs (no migrations).
    def setup_writer(self) -> None: ...
    def unpublished(self, index: int) -> int: return 0  # events of a writer's stream left to the relay
    # The whole log in its global order, one page at a time: yields each page's event count.
    def log_pages(self, page: int) -> Iterator[int]: ...
    def stored_count(self) -> int: ...
    def close(self) -> None: ...


class Ours(System):
    name = "ours"

    def setup(self) -> dict:
        import django

        django.setup()
        from django.core.management import call_command

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        log(f"    migrated {os.environ['DATABASE_URL'].rsplit('/', 1)[-1]} in {time.perf_counter() - t0:.1f}s")

        from django.conf import settings

        from eventsourcing_app.eventstore import EventSourcingRepositoryImpl, SnapshotStore
        from eventsourcing_app.kafka.topics import provision_topics

        self._define_types()
        for report in provision_topics(self.kafka):
            log(f"    topic {report}")
        self._build_store()
        BenchEvent, BenchAggregate = self.BenchEvent, self.BenchAggregate
        publish = self.store.publisher is not None
        # The snapshot scenario goes through the product's repository and snapshot store, built
        # on the benchmark's own store (not get_event_store(): that would be a second store with
        # its own producer, publishing even in a --no-kafka run), configured as
        # get_snapshot_store() configures it; snapshots are published to the Tansu broker too.
        config = settings.EVENTSTORE
        self.snapshots = SnapshotStore(
            frequencies=config["SNAPSHOT_FREQUENCIES"], default_frequency=config["SNAPSHOT_FREQUENCY"],
            keep=config["SNAPSHOTS_KEPT"], publisher=self.store.publisher, kafka_settings=self.kafka)
        self.repository = EventSourcingRepositoryImpl(BenchAggregate, event_store=self.store,
                                                      snapshot_store=self.snapshots, cache=False)
        # Warm up: connection, producer start-up (first publish connects), code paths.
        for i in range(30):
            self.store.append_events_sync(f"bench.warmup-{i}", [BenchEvent(subject=f"warmup-{i}", n=i, text=TEXT)],
                                          expected_version=0)
        self.flush()
        self._await_producer()
        from django.db import connection
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            server_version = cursor.fetchone()[0]
        return {"server_version": server_version, "publish": publish}

    def setup_writer(self) -> None:
        import django

        django.setup()
        self._define_types()
        self._build_store()
        name = f"writer-warmup-{os.getpid()}"
        self.store.append_events_sync(f"bench.{name}", [self.BenchEvent(subject=name, n=0, text=TEXT)],
                                      expected_version=0)
        self.flush()
        self._await_producer()

    def _await_producer(self) -> None:
        """The producer connected. An append waits for the process's first connection only
        FIRST_CONNECT_WAIT_SECONDS (2 s) and then leaves its events to the outbox relay, and so
        every later event of that stream: on a loaded machine a process's first connection
        can take longer, so the measured streams start only once it is there."""
        if self.store.publisher is not None and not self.store.publisher.ensure_connected(timeout=60):
            raise RuntimeError(f"the Kafka producer did not connect: {self.store.publisher.last_error}")

    def _define_types(self) -> None:
        """The benchmark's event and aggregate classes, and our Kafka settings."""
        from eventsourcing_app.domain import DomainEvent, EventSourcedAggregate
        from eventsourcing_app.eventstore import deserialize_event
        from eventsourcing_app.kafka.config import KafkaSettings

        # Defined here: the event registry is global, and only this worker needs the class.
        from dataclasses import dataclass

        @dataclass
        class BenchEvent(DomainEvent):
            # Encryption on: the text is personal data of the stream's own data subject.
            subject: str
            n: int
            text: str

            data_subject = ("bench", "subject")
            sensitive_fields = ("text",)

        class BenchAggregate(EventSourcedAggregate):
            aggregate_type = "bench"
            # The text is the subject's personal data in the events: encrypted in snapshots too.
            snapshot_sensitive_fields = ("text",)

            def __init__(self, id: str) -> None:
                super().__init__(id)
                self.subject, self.n, self.text, self.count = None, 0, "", 0

            def apply_event(self, event) -> None:
                self.subject, self.n, self.text, self.count = event.subject, event.n, event.text, self.count + 1

            def snapshot_subject(self) -> tuple[str, str] | None:
                return ("bench", self.subject)  # the events' data subject, so the same key

            def to_snapshot(self) -> dict:
                return {"subject": self.subject, "n": self.n, "text": self.text, "count": self.count}

            @classmethod
            def from_snapshot(cls, id: str, version: int, state: dict) -> "BenchAggregate":
                aggregate = cls(id)
                aggregate.subject, aggregate.n = state["subject"], state["n"]
                aggregate.text, aggregate.count = state["text"], state["count"]
                aggregate._version = version
                return aggregate

        self.BenchEvent, self.BenchAggregate, self.deserialize = BenchEvent, BenchAggregate, deserialize_event
        self.kafka = KafkaSettings(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], topic_prefix="bench-",
                                   partitions=12, stream_types=("bench",))

    def _build_store(self) -> None:
        from eventsourcing_app.eventstore import build_event_store

        publish = os.environ.get("BENCH_OURS_PUBLISH", "1") == "1"  # 0 only for the --no-kafka diagnosis
        self.store = build_event_store(kafka_settings=self.kafka, publish=publish)
        if publish:
            if self.store.publisher is None:
                raise RuntimeError("Kafka publishing is off; the benchmark needs it on")
            self._instrument_publication_recording()
        else:
            self._recording = {}
            log("    Kafka publishing is OFF for this run (--no-kafka)")

    def _instrument_publication_recording(self) -> None:
        """Counts the publisher thread's `record_publications` calls (how often, how many events,
        how long): that work happens off the timed thread, so cProfile does not see it."""
        recorder, original = self.store.recorder, self.store.recorder.record_publications
        stats = self._recording = {"record_calls": 0, "record_events": 0, "record_s": 0.0, "record_cpu_s": 0.0}

        def record_publications(publications):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(publications)
            finally:
                stats["record_calls"] += 1
                stats["record_events"] += len(publications)
                stats["record_s"] += time.perf_counter() - t0
                stats["record_cpu_s"] += time.thread_time() - c0

        recorder.record_publications = record_publications

    def counters(self) -> dict:
        return dict(self._recording)

    def append_new_stream(self, i: int) -> None:
        self.store.append_events_sync(f"bench.single-{i}", [self.BenchEvent(subject=f"single-{i}", n=i, text=TEXT)],
                                      expected_version=0)

    def new_batched_stream(self, i: int, label: str = "batch") -> Any:
        return [f"bench.{label}-{i}", 0]

    def append_batch(self, handle: Any, first_n: int, count: int) -> Any:
        stream_id, version = handle
        subject = stream_id.split(".", 1)[1]
        events = [self.BenchEvent(subject=subject, n=first_n + k, text=TEXT) for k in range(count)]
        result = self.store.append_events_sync(stream_id, events, expected_version=version)
        handle[1] = result.last_version

    def flush(self) -> float | None:
        if self.store.publisher is None:
            return 0.0
        t0 = time.perf_counter()
        if not self.store.flush(600):
            raise RuntimeError(f"store.flush timed out; {self.store.publisher.outstanding} events not recorded")
        if self.store.publisher.errors:
            log(f"    WARNING: {self.store.publisher.errors} Kafka delivery errors so far")
        return time.perf_counter() - t0

    def make_load_stream(self, events: int, name: str = "load-1") -> Any:
        handle = [f"bench.{name}", 0]
        for first in range(0, events, 500):
            self.append_batch(handle, first, min(500, events - first))
        self.flush()
        return handle[0]

    def load_aggregate(self, handle: Any) -> int:
        aggregate = self.BenchAggregate(handle.split(".", 1)[1])
        for stored in self.store.load_events_sync(handle):
            aggregate.apply_event(self.deserialize(stored))
            aggregate.increment_version()
        return aggregate.version

    def load_raw(self, handle: Any) -> int:
        return len(self.store.load_events_sync(handle))

    def make_snapshot_stream(self, events: int) -> Any:
        return self.make_load_stream(events, "snap-1").split(".", 1)[1]  # the aggregate id

    def load_via_repository(self, handle: Any) -> int:
        return self.repository.load_sync(handle).version

    def take_snapshot(self, handle: Any) -> int:
        aggregate = self.repository.load_sync(handle)
        return self.snapshots.save_snapshot_sync(aggregate.stream_id, aggregate, aggregate.version).version

    def replay_report(self, handle: Any) -> dict:
        version = self.repository.load_sync(handle).version
        report = self.repository.last_load
        return {"version": version, "started_from": report.started_from, "base_version": report.base_version,
                "events_replayed": report.events_replayed}

    def concurrent_writer(self, index: int):
        from django.db import connections

        stream_id, state = f"bench.conc-{index}", {"version": 0}

        def append() -> None:
            self.store.append_events_sync(stream_id, [self.BenchEvent(subject=f"conc-{index}", n=state["version"],
                                                                      text=TEXT)],
                                          expected_version=state["version"])
            state["version"] += 1

        return append, connections.close_all  # Django connections are per thread

    def log_pages(self, page: int) -> Iterator[int]:
        # The store's own reader of the whole log: keyset pages in global position order, each
        # event with its subject's key row (as a reader that decrypts needs).
        after = 0
        while True:
            events = self.store.read_all_sync(after_position=after, limit=page)
            if events:
                after = events[-1].metadata.global_position
                yield len(events)
            if len(events) < page:
                return

    def stored_count(self) -> int:
        return self.final_check()["stored_events"]

    def relay_backlog(self, events: int, per_stream: int) -> dict:
        """Appends `events` events with publishing off (a store without a publisher, as while
        Kafka is unreachable), then times the outbox relay publishing all of them through this
        worker's publishing store until every Kafka position is recorded."""
        from eventsourcing_app.eventstore import build_event_store
        from eventsourcing_app.operations.relay import relay_outbox

        if self.store.publisher is None:
            raise RuntimeError("the relay scenario needs Kafka publishing (not in a --no-kafka run)")
        leftover = self.store.recorder.outbox_backlog(["bench"])
        if leftover:  # e.g. warm-up events of a process whose first connection took long
            log(f"    [ours] WARNING: {leftover} events of earlier scenarios were left to the relay; "
                f"relayed first, untimed: {relay_outbox(self.store, grace_seconds=0.0, stream_types=['bench'])}")
        quiet = build_event_store(kafka_settings=self.kafka, publish=False)
        streams = -(-events // per_stream)
        progress = Progress("[ours] backlog appends (publishing off)", events, " events")
        done = 0
        for s in range(streams):
            count = min(per_stream, events - done)
            quiet.append_events_sync(f"bench.backlog-{s}", [
                self.BenchEvent(subject=f"backlog-{s}", n=k, text=TEXT) for k in range(count)], expected_version=0)
            done += count
            progress.tick(done)
        backlog = self.store.recorder.outbox_backlog(["bench"])
        if backlog != events:
            raise RuntimeError(f"the outbox holds {backlog} events, expected {events}")
        log(f"    [ours] relaying {backlog} events of {streams} streams")
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        report = relay_outbox(self.store, grace_seconds=0.0, stream_types=["bench"], flush_timeout=120.0)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        if report.skipped or report.published != events or report.remaining:
            raise RuntimeError(f"the relay did not publish the backlog: {report}")
        return {"count": report.published, "streams": report.streams, "elapsed_s": elapsed, "relay_cpu_s": cpu,
                "relay_report": str(report)}

    def unpublished(self, index: int) -> int:
        """Events of writer `index`'s stream that Kafka has not acknowledged (left to the relay)."""
        stream_id = f"bench.conc-{index}"
        if self.store.publisher is None:
            return 0
        published = self.store.recorder.published_versions([stream_id]).get(stream_id, 0)
        return self.store.recorder.stream_version(stream_id) - published

    def final_check(self) -> dict:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*), count(*) FILTER (WHERE kafka_offset IS NULL) FROM eventstore_event")
            events, unpublished = cursor.fetchone()
        if self.store.publisher is not None and unpublished:
            log(f"    WARNING: {unpublished} of {events} events have no recorded Kafka position")
        return {"stored_events": events, "unpublished_events": unpublished}

    def close(self) -> None:
        if self.store.publisher is not None:
            self.store.flush(60)
            self.store.publisher.close()
        from django.db import connections
        connections.close_all()


class Library(System):
    name = "library"

    def setup(self) -> dict:
        self._define_types()
        BenchAggregate, BenchApplication = self.BenchAggregate, self.BenchApplication

        class BenchSnapshottingApplication(BenchApplication):
            # The snapshot scenario only: the library's documented switch (a snapshot store in
            # its own table, used by repository.get). Its tables are named after the class.
            is_snapshotting_enabled = True

        self.app = BenchApplication(env=self.env)
        for i in range(30):  # warm up: pool connections, prepared statements
            self.app.save(BenchAggregate(n=i, text=TEXT))
        # A separate application, so that scenario 5 keeps the default settings (no snapshot
        # lookup before each load); it opens its own connection pool (part of scenario 9's RSS).
        self.snap_app = BenchSnapshottingApplication(env=self.env)
        for i in range(30):
            self.snap_app.save(BenchAggregate(n=i, text=TEXT))
        import eventsourcing

        return {"eventsourcing": getattr(eventsourcing, "__version__", "?"),
                "recorder": type(self.app.recorder).__name__}

    def setup_writer(self) -> None:
        # The same Application class, so the same tables as the worker's: writers of several
        # processes meet the library's table lock, as they would in production. The worker
        # created the tables; eight processes creating them at once collide in the catalog
        # ("tuple concurrently updated"), so the writers use the library's switch to skip it.
        self._define_types()
        self.app = self.BenchApplication(env={**self.env, "CREATE_TABLE": "no"})
        self.snap_app = None

    def _define_types(self) -> None:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event

        class BenchAggregate(Aggregate):
            @event("Created")
            def __init__(self, n: int, text: str) -> None:
                self.n, self.text, self.count = n, text, 1

            @event("Added")
            def add(self, n: int, text: str) -> None:
                self.n, self.text, self.count = n, text, self.count + 1

        class BenchApplication(Application):
            pass

        self.BenchAggregate, self.BenchApplication = BenchAggregate, BenchApplication
        self.env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": os.environ["BENCH_LIB_DBNAME"],
            "POSTGRES_HOST": os.environ.get("BENCH_PG_HOST", "localhost"),
            "POSTGRES_PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "POSTGRES_USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "POSTGRES_PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
        }

    def append_new_stream(self, i: int) -> None:
        self.app.save(self.BenchAggregate(n=i, text=TEXT))

    def new_batched_stream(self, i: int, label: str = "batch") -> Any:
        return [None]  # the library names its aggregates itself (a new UUID)

    def append_batch(self, handle: Any, first_n: int, count: int, app: Any = None) -> Any:
        aggregate = handle[0]
        start = 0
        if aggregate is None:  # the creation event is the stream's first event
            aggregate = handle[0] = self.BenchAggregate(n=first_n, text=TEXT)
            start = 1
        for k in range(start, count):
            aggregate.add(n=first_n + k, text=TEXT)
        (app or self.app).save(aggregate)

    def make_load_stream(self, events: int, app: Any = None) -> Any:
        handle = [None]
        for first in range(0, events, 500):
            self.append_batch(handle, first, min(500, events - first), app)
        return handle[0].id

    def load_aggregate(self, handle: Any) -> int:
        return self.app.repository.get(handle).version

    def load_raw(self, handle: Any) -> int:
        return len(self.app.recorder.select_events(handle))

    def make_snapshot_stream(self, events: int) -> Any:
        return self.make_load_stream(events, self.snap_app)

    def load_via_repository(self, handle: Any) -> int:
        return self.snap_app.repository.get(handle).version

    def take_snapshot(self, handle: Any) -> int:
        self.snap_app.take_snapshot(handle)
        return self._latest_snapshot_version(handle)

    def _latest_snapshot_version(self, handle: Any) -> int:
        latest = list(self.snap_app.snapshots.get(handle, desc=True, limit=1))
        return latest[0].originator_version if latest else 0

    def replay_report(self, handle: Any) -> dict:
        # The library does not say how a load started: count the events its repository reads
        # from the event store (those after the snapshot it used) during one load.
        events, replayed = self.snap_app.repository.event_store, [0]
        original = events.get

        def counting_get(*args, **kwargs):
            for item in original(*args, **kwargs):
                replayed[0] += 1
                yield item

        events.get = counting_get
        try:
            version = self.snap_app.repository.get(handle).version
        finally:
            del events.get
        base = self._latest_snapshot_version(handle)
        return {"version": version, "started_from": "snapshot" if base else "empty", "base_version": base,
                "events_replayed": replayed[0]}

    def concurrent_writer(self, index: int):
        state: dict[str, Any] = {"aggregate": None}

        def append() -> None:
            if state["aggregate"] is None:
                state["aggregate"] = self.BenchAggregate(n=0, text=TEXT)
            else:
                state["aggregate"].add(n=state["aggregate"].count, text=TEXT)
            self.app.save(state["aggregate"])

        return append, lambda: None

    def log_pages(self, page: int) -> Iterator[int]:
        # Both applications' logs (the snapshotting one has its own tables), each in
        # notification order, as the library's own readers page through them.
        for app in (self.app, self.snap_app):
            start = None
            while True:
                notifications = app.recorder.select_notifications(start, page)
                if notifications:
                    start = notifications[-1].id + 1
                    yield len(notifications)
                if len(notifications) < page:
                    break

    def stored_count(self) -> int:
        return self.final_check()["stored_events"]

    def final_check(self) -> dict:
        stored = 0
        for app in (self.app, self.snap_app):  # the snapshotting application has its own tables
            with app.recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
                cursor.execute(f"SELECT count(*) AS n FROM {app.recorder.events_table_name}")
                stored += cursor.fetchone()["n"]
        return {"stored_events": stored}

    def close(self) -> None:
        if self.snap_app is not None:
            self.snap_app.close()
        self.app.close()


# --- scenarios (the same code drives both systems) ------------------------------------

class Worker:
    def __init__(self, system: System, profile_dir: str | None) -> None:
        self.system = system
        self.profile_dir = profile_dir
        self.tag = f"[{system.name}]"

    def _measured(self, scenario: str, body: Callable[[], dict]) -> dict:
        profiler = cProfile.Profile() if self.profile_dir else None
        cpu0, counters0 = cpu_seconds(), self.system.counters()
        if profiler:
            profiler.enable()
        try:
            result = body()
        finally:
            if profiler:
                profiler.disable()
        result["client_cpu_s"] = cpu_seconds() - cpu0
        for key, value in self.system.counters().items():
            result[key] = value - counters0[key]
        if profiler:
            path = os.path.join(self.profile_dir, f"profile-{self.system.name}-{scenario}.txt")
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
            with open(path, "w") as f:
                f.write(out.getvalue())
            profiler.dump_stats(path[:-4] + ".prof")
            log(f"    {self.tag} profile written to {path}")
        return result

    def single(self, n: int) -> dict:
        def body() -> dict:
            progress = Progress(f"{self.tag} single-event appends", n)
            latencies = []
            t0 = time.perf_counter()
            for i in range(n):
                s = time.perf_counter()
                self.system.append_new_stream(i)
                latencies.append(time.perf_counter() - s)
                if i % 100 == 99 or i == n - 1:
                    progress.tick(i + 1)
            elapsed = time.perf_counter() - t0
            flush = self.system.flush()
            return {"count": n, "elapsed_s": elapsed, "flush_s": flush, **latency_summary(latencies)}
        return self._measured("single", body)

    def batched(self, streams: int, per_stream: int, batch: int, label: str = "batch") -> dict:
        def body() -> dict:
            total = streams * per_stream
            progress = Progress(f"{self.tag} appends of {batch}", total, " events")
            latencies, done = [], 0
            t0 = time.perf_counter()
            for s in range(streams):
                handle = self.system.new_batched_stream(s, label)
                for first in range(0, per_stream, batch):
                    count = min(batch, per_stream - first)
                    b0 = time.perf_counter()
                    self.system.append_batch(handle, first, count)
                    latencies.append(time.perf_counter() - b0)
                    done += count
                    progress.tick(done)
            elapsed = time.perf_counter() - t0
            flush = self.system.flush()
            return {"count": total, "batches": len(latencies), "elapsed_s": elapsed, "flush_s": flush,
                    **{f"batch_{k}": v for k, v in latency_summary(latencies).items()}}
        return self._measured(label, body)

    def _timed_loads(self, fn: Callable[[Any], int], handle: Any, events: int, loads: int,
                     label: str) -> list[float]:
        for _ in range(3):  # warm-up, not counted
            got = fn(handle)
            if got != events:
                raise RuntimeError(f"{label} returned {got} events, expected {events}")
        progress, times = Progress(f"{self.tag} {label}", loads, " loads"), []
        for i in range(loads):
            s = time.perf_counter()
            fn(handle)
            times.append(time.perf_counter() - s)
            progress.tick(i + 1)
        return times

    def load(self, events: int, loads: int) -> dict:
        log(f"    {self.tag} writing a {events}-event stream")
        handle = self.system.make_load_stream(events)

        def body() -> dict:
            aggregate = latency_summary(self._timed_loads(self.system.load_aggregate, handle, events, loads,
                                                          "aggregate loads"))
            raw = latency_summary(self._timed_loads(self.system.load_raw, handle, events, loads, "raw loads"))
            return {"events": events, "loads": loads, **{f"aggregate_{k}": v for k, v in aggregate.items()},
                    **{f"raw_{k}": v for k, v in raw.items()}}
        return self._measured("load", body)

    def load_snapshot(self, events: int, loads: int) -> dict:
        """Scenario 3b: a new stream of `events` events loaded through the side's repository
        (snapshots on), first with no snapshot, then from a snapshot taken at its last version."""
        log(f"    {self.tag} writing a {events}-event stream for the snapshot scenario")
        handle = self.system.make_snapshot_stream(events)

        def body() -> dict:
            load = self.system.load_via_repository
            before = latency_summary(self._timed_loads(load, handle, events, loads, "repository loads, no snapshot"))
            before_report = self.system.replay_report(handle)
            t0 = time.perf_counter()
            snapshot_version = self.system.take_snapshot(handle)
            snapshot_s = time.perf_counter() - t0
            if snapshot_version != events:
                raise RuntimeError(f"the snapshot is at version {snapshot_version}, expected {events}")
            after = latency_summary(self._timed_loads(load, handle, events, loads, "repository loads from snapshot"))
            after_report = self.system.replay_report(handle)
            log(f"    {self.tag} a load from the snapshot started from {after_report['started_from']} "
                f"v{after_report['base_version']} and replayed {after_report['events_replayed']} events")
            return {"events": events, "loads": loads, "snapshot_version": snapshot_version,
                    "take_snapshot_s": snapshot_s,
                    **{f"snapshot_{k}": v for k, v in after.items()},
                    **{f"snapshot_load_{k}": v for k, v in after_report.items()},
                    **{f"no_snapshot_{k}": v for k, v in before.items()},
                    **{f"no_snapshot_load_{k}": v for k, v in before_report.items()}}
        return self._measured("load_snapshot", body)

    def read_log(self, page: int, passes: int) -> dict:
        """Reads the whole log in global order, `page` events per query, `passes` times (the
        first page once before, untimed): events/s of each pass and the latency of one page."""
        expected = self.system.stored_count()
        next(iter(self.system.log_pages(page)), None)  # warm-up: connection, statement, code paths

        def body() -> dict:
            rates, latencies = [], []
            for p in range(passes):
                pages, total = iter(self.system.log_pages(page)), 0
                t0 = last = time.perf_counter()
                for count in pages:
                    now = time.perf_counter()
                    latencies.append(now - last)
                    total += count
                    last = now
                elapsed = time.perf_counter() - t0
                if total != expected:
                    raise RuntimeError(f"pass {p + 1} read {total} events, the store holds {expected}")
                rates.append(total / elapsed)
                log(f"    {self.tag} read {total} events in {elapsed:.2f}s ({total / elapsed:,.0f}/s)")
            return {"count": expected, "page": page, "passes": passes, "rates": rates,
                    "rate": statistics.median(rates),
                    **{f"page_{k}": v for k, v in latency_summary(latencies).items()}}
        return self._measured("read_log", body)

    def relay(self, events: int, per_stream: int) -> dict:
        return self._measured("relay", lambda: self.system.relay_backlog(events, per_stream))


def _monotonic() -> float:
    """A clock every process of the machine shares (CLOCK_MONOTONIC): the orchestrator
    compares the writers' start and end times."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def serve_writer(which: str, index: int, duration: float) -> None:
    """One writer process of the concurrent scenario. Builds its own store (ours, with Kafka
    publishing) or Application (the library), appends until warmed up, says `ready`, waits for
    `go` on stdin, appends single events to its own stream for `duration` seconds, flushes
    Kafka (ours) and answers its counts, times and latencies (one JSON line each)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        system = Ours() if which == "ours" else Library()
        system.setup_writer()
        append, finish = system.concurrent_writer(index)
        for _ in range(5):  # creates the stream; connection, statements and producer warmed up
            append()
        system.flush()
        counters0 = system.counters()
        protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        if sys.stdin.readline().strip() != "go":
            return
        cpu0 = cpu_seconds()
        latencies = []
        start = now = _monotonic()
        deadline = start + duration
        while now < deadline:
            append()
            end = _monotonic()
            latencies.append(end - now)
            now = end
        flush_s = system.flush()
        flushed = _monotonic()
        answer = {"count": len(latencies), "start": start, "end": now, "flushed": flushed, "flush_s": flush_s,
                  "unpublished": system.unpublished(index),
                  "client_cpu_s": cpu_seconds() - cpu0, "peak_rss_kb": peak_rss_kb(),
                  "latencies_ms": [round(x * 1000, 4) for x in latencies],
                  **{k: v - counters0[k] for k, v in system.counters().items()}}
        finish()
        system.close()
    except Exception:  # noqa: BLE001 - handed to the orchestrator, which stops the run
        answer = {"error": traceback.format_exc()}
    protocol.write(json.dumps(answer) + "\n")


def serve(which: str) -> None:
    """The worker's main loop (stdin commands, JSON answers on the original stdout)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed to stdout, by Python or C code, goes to stderr
    sys.stdout = sys.stderr
    system = Ours() if which == "ours" else Library()
    worker = Worker(system, os.environ.get("BENCH_PROFILE_DIR") or None)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "setup":
                t0 = time.perf_counter()
                info = system.setup()
                answer = {"info": info, "setup_s": time.perf_counter() - t0, "rss_kb": rss_kb()}
            elif op == "finish":
                answer = {"rss_kb": rss_kb(), "peak_rss_kb": peak_rss_kb(), **system.final_check()}
                system.close()
            else:
                answer = getattr(worker, op)(**command)
            answer.setdefault("peak_rss_kb", peak_rss_kb())
        except Exception:  # noqa: BLE001 - handed to the orchestrator, which stops the run
            answer = {"error": traceback.format_exc()}
        protocol.write(json.dumps(answer) + "\n")
        if op == "finish":
            break
