"""What operators do with projections: status (position, lag), blue/green rebuilds and retries of
dead letters (`manage.py projections ...` calls these)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from confluent_kafka import TopicPartition
from confluent_kafka import Consumer
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Max

from ..eventstore import get_event_store
from ..kafka.config import KafkaSettings
from .engine import ProjectionEngine
from .models import DeadLetter, ProjectorCheckpoint, ProjectorState, StreamProgress
from .projectors import PROJECTORS, projector_named
from .runner import CatchUp, ProjectionRunner

logger = logging.getLogger(__name__)

REBUILD_SOURCES = ("auto", "kafka", "mirror")


# --- status ------------------------------------------------------------------------------

@dataclass
class ProjectorStatus:
    name: str
    description: str
    active_generation: int
    building_generation: int | None
    position: int  # the sum of the next offsets of every partition it reads
    events_applied: int
    lag_events: int
    lag_seconds: float | None  # age of the oldest event not applied yet
    dead_letters: int
    held_streams: int
    last_seen: datetime | None  # a runner's last batch or heartbeat
    caught_up_at: datetime | None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        for key in ("last_seen", "caught_up_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _behind(name: str, generation: int, stream_types, join: str = "") -> tuple[str, list]:
    """FROM/WHERE of the streams of these types that the generation has not applied to the end
    (counted from the mirror, per stream; not from Kafka watermarks, which a broker may misreport)."""
    marks = ", ".join(["%s"] * len(stream_types))
    return ("FROM eventstore_stream s LEFT JOIN readside_stream_progress p ON p.stream_id = s.stream_id "
            f"AND p.projector = %s AND p.generation = %s {join} "
            f"WHERE s.stream_type IN ({marks}) AND s.version > COALESCE(p.version, 0)",
            [name, generation, *stream_types])


def _lag(name: str, generation: int, stream_types) -> tuple[int, float | None]:
    """Events of the mirror not applied yet by the generation, and the age of the oldest one."""
    behind, params = _behind(name, generation, stream_types, join="LEFT JOIN eventstore_event e ON "
                             "e.stream_id = s.stream_id AND e.version = COALESCE(p.version, 0) + 1")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(SUM(s.version - COALESCE(p.version, 0)), 0), MIN(e.recorded_at) {behind}",
                       params)
        events, oldest = cursor.fetchone()
    return int(events or 0), _age(oldest, datetime.now(timezone.utc))


def _age(moment, now: datetime) -> float | None:
    """Seconds from a timestamp a raw query returned (SQLite's: text, naive UTC) to `now`."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (now - moment).total_seconds())


def projection_status() -> list[ProjectorStatus]:
    out = []
    for name, cls in PROJECTORS.items():
        state, _ = ProjectorState.objects.get_or_create(name=name)
        checkpoint = ProjectorCheckpoint.objects.filter(projector=name, generation=state.active_generation).first()
        lag_events, lag_seconds = _lag(name, state.active_generation, cls.stream_types)
        out.append(ProjectorStatus(
            name=name, description=cls.description, active_generation=state.active_generation,
            building_generation=state.building_generation,
            position=sum((checkpoint.offsets or {}).values()) if checkpoint else 0,
            events_applied=checkpoint.events_applied if checkpoint else 0,
            lag_events=lag_events, lag_seconds=lag_seconds,
            dead_letters=DeadLetter.objects.filter(projector=name, generation=state.active_generation,
                                                   resolved_at__isnull=True).count(),
            held_streams=StreamProgress.objects.filter(projector=name, generation=state.active_generation,
                                                       held_at_version__isnull=False).count(),
            last_seen=checkpoint.updated_at if checkpoint else None,
            caught_up_at=checkpoint.caught_up_at if checkpoint else None,
        ))
    return out


def overdue_projectors(limit_seconds: float, generations: dict[str, int] | None = None) -> tuple[list[str], int]:
    """Projectors with an event recorded more than `limit_seconds` ago not applied yet (their
    active generation), and the number of unresolved dead letters. One query per projector
    that stops at the first such stream."""
    overdue = []
    with connection.cursor() as cursor:
        for name, cls in PROJECTORS.items():
            state = (generations or {}).get(name) or ProjectorState.objects.filter(name=name).values_list(
                "active_generation", flat=True).first() or 1
            behind, params = _behind(name, state, cls.stream_types)
            cursor.execute(f"SELECT 1 {behind} AND s.updated_at < %s AND p.held_at_version IS NULL LIMIT 1",
                           [*params, datetime.now(timezone.utc) - timedelta(seconds=limit_seconds)])
            if cursor.fetchone():
                overdue.append(name)
    return overdue, DeadLetter.objects.filter(resolved_at__isnull=True).count()


def projection_gauges(now: datetime) -> list[dict]:
    """What /metrics shows of each projector's served generation, in a few queries whose cost
    does not depend on how far behind it is: lag in events (the stored events of its streams
    less those it applied, less those waiting behind held streams), the age of the oldest event
    it has not applied (0 when caught up; read only then), dead letters, held streams, and the
    time since its runner's last batch or heartbeat. `now` is the database's clock."""
    from django.db.models import Count, Sum

    generations = dict(ProjectorState.objects.values_list("name", "active_generation"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT stream_type, COALESCE(SUM(version), 0) FROM eventstore_stream GROUP BY stream_type")
        stored = {stream_type: int(total) for stream_type, total in cursor.fetchall()}
    checkpoints = {(row["projector"], row["generation"]): row
                   for row in ProjectorCheckpoint.objects.values("projector", "generation", "updated_at", "caught_up_at")}
    dead = {(row["projector"], row["generation"]): row["n"] for row in
            DeadLetter.objects.filter(resolved_at__isnull=True).values("projector", "generation").annotate(n=Count("id"))}
    # One scan of the progress rows for every projector (not one per projector).
    applied_by = {(row["projector"], row["generation"]): row["v"] or 0 for row in
                  StreamProgress.objects.values("projector", "generation").annotate(v=Sum("version"))}
    out = []
    for name, cls in PROJECTORS.items():
        generation = generations.get(name, 1)
        applied = applied_by.get((name, generation), 0)
        held, waiting = _held(name, generation)
        lag_events = max(0, sum(stored.get(t, 0) for t in cls.stream_types) - int(applied) - waiting)
        checkpoint = checkpoints.get((name, generation)) or {}
        last_seen, caught_up = checkpoint.get("updated_at"), checkpoint.get("caught_up_at")
        lag_seconds = 0.0
        if lag_events:
            lag_seconds = (_oldest_unapplied_age(name, generation, cls.stream_types, now)
                           if lag_events <= OLDEST_UNAPPLIED_MAX_LAG else None)
            if lag_seconds is None:  # too costly to read now: the time since it was last caught up
                lag_seconds = _age(caught_up, now)
        out.append({
            "name": name, "lag_events": lag_events, "dead_letters": dead.get((name, generation), 0),
            "lag_seconds": lag_seconds, "held_streams": held,
            "last_seen_seconds": _age(last_seen, now),
        })
    return out


def _held(name: str, generation: int) -> tuple[int, int]:
    """Streams held (through the partial index of held rows) and the events waiting behind them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*), COALESCE(SUM(s.version - p.version), 0) FROM readside_stream_progress p "
                       "JOIN eventstore_stream s ON s.stream_id = p.stream_id WHERE p.projector = %s "
                       "AND p.generation = %s AND p.held_at_version IS NOT NULL", [name, generation])
        held, waiting = cursor.fetchone()
    return int(held), int(waiting)


# Reading the oldest unapplied event joins every lagging stream: past this, the time since the
# projector was last caught up stands for it (an upper bound).
OLDEST_UNAPPLIED_TIMEOUT_MS = 500
OLDEST_UNAPPLIED_MAX_LAG = 10_000  # further behind, it would only be cancelled: not tried


def _oldest_unapplied_age(name: str, generation: int, stream_types, now: datetime) -> float | None:
    """Age of the oldest event the generation has not applied, held streams aside (those are
    the dead letters' to report); None when it takes more than OLDEST_UNAPPLIED_TIMEOUT_MS."""
    behind, params = _behind(name, generation, stream_types, join="JOIN eventstore_event e ON "
                             "e.stream_id = s.stream_id AND e.version = COALESCE(p.version, 0) + 1")
    postgres = connection.vendor == "postgresql"
    try:
        with transaction.atomic(), connection.cursor() as cursor:  # a savepoint: a timeout here spoils nothing else
            if postgres:
                cursor.execute("SELECT current_setting('statement_timeout')")
                outer = cursor.fetchone()[0]
                cursor.execute(f"SET LOCAL statement_timeout = {OLDEST_UNAPPLIED_TIMEOUT_MS}")
            cursor.execute(f"SELECT MIN(e.recorded_at) {behind} AND p.held_at_version IS NULL", params)
            oldest = cursor.fetchone()[0]
            if postgres:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [outer])
    except DatabaseError:  # the timeout, on a large backlog
        return None
    return _age(oldest, now) or 0.0


# --- rebuild -----------------------------------------------------------------------------

@dataclass
class RebuildReport:
    name: str
    old_generation: int
    new_generation: int
    source: str
    events: int
    seconds: float
    rows_deleted: int


def _topics_expired(kafka_settings: KafkaSettings, topics: list[str]) -> bool:
    """Whether a topic no longer starts at offset 0 (retention removed its first records)."""
    consumer = Consumer(kafka_settings.consumer_config(group_id="teddy-projection-rebuild"))
    try:
        meta = consumer.list_topics(timeout=10)
        for topic in topics:
            for partition in meta.topics[topic].partitions:
                low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if low > 0:
                    return True
        return False
    finally:
        consumer.close()


def _start_building(name: str, source: str) -> tuple[int, int]:
    with transaction.atomic():
        state, _ = ProjectorState.objects.select_for_update().get_or_create(name=name)
        if state.building_generation is None:
            highest = ProjectorCheckpoint.objects.filter(projector=name).aggregate(m=Max("generation"))["m"] or 0
            state.building_generation = max(highest, state.active_generation) + 1
            state.building_source = source
            state.save(update_fields=["building_generation", "building_source"])
        return state.active_generation, state.building_generation


def mirror_replay_start(served: dict[str, int] | None, recorded_next: dict[str, int]) -> dict[str, int]:
    """Where a generation filled from the mirror goes on reading Kafka, per "topic:partition".

    Both inputs are points before which every record is in the mirror scan made after reading
    them: the served generation's positions, and the offsets after the last ones the mirror
    recorded. The lower of the two is taken: after `refill_kafka --recreate-topics` the served
    generation's positions point into the deleted logs, past the ends of the new ones, and
    starting there would skip every record until the new logs reach them (the mirror's
    positions point into the new logs: the latest acknowledgement is recorded). A partition the
    mirror recorded nothing for starts at 0. Records read again are skipped by stream version."""
    if not served:
        return dict(recorded_next)
    return {where: min(offset, recorded_next.get(where, 0)) for where, offset in served.items()} | {
        where: offset for where, offset in recorded_next.items() if where not in served}


def _replay_mirror(cls, generation: int, kafka_settings: KafkaSettings, done: CatchUp,
                   progress: Callable[[CatchUp], None] | None) -> None:
    """Applies every event of the mirror, then sets the Kafka positions from where the consumer
    goes on (mirror_replay_start). Records after those that the scan also had are skipped by
    stream version."""
    store = get_event_store()
    topics = [kafka_settings.event_topic(t) for t in cls.stream_types]
    served = ProjectorState.objects.filter(name=cls.name).values_list("active_generation", flat=True).first()
    served_offsets = (ProjectorCheckpoint.objects.filter(projector=cls.name, generation=served)
                      .values_list("offsets", flat=True).first()) if served is not None else None
    recorded = {where: offset + 1 for where, offset in store.recorder.last_offsets(topics).items()}
    start = {where: offset for where, offset in mirror_replay_start(served_offsets, recorded).items()
             if where.rsplit(":", 1)[0] in topics}
    engine = ProjectionEngine(cls, generation)
    for chunk in store.recorder.iter_events_of_types(list(cls.stream_types), settings.PROJECTIONS["BATCH_SIZE"]):
        result = engine.apply_batch(chunk)
        done.events += result.applied + result.skipped
        done.batches += 1
        if progress is not None:
            progress(done)
    engine.apply_batch([], start)


def rebuild(name: str, *, source: str = "auto", kafka_settings: KafkaSettings | None = None,
            progress: Callable[[CatchUp], None] | None = None, keep_old: bool = False) -> RebuildReport:
    """Fills a new generation of the projector beside the one the API reads, switches the API
    to it once it has caught up, then deletes the old one (blue/green: no downtime).

    source: "kafka" replays the topics from offset zero; "mirror" replays the event store and
    goes on from Kafka after it (for topics that expired or were refilled); "auto" takes the
    mirror when a topic no longer starts at offset zero. An interrupted rebuild resumes."""
    cls = projector_named(name)
    if source not in REBUILD_SOURCES:
        raise ValueError(f"source must be one of {', '.join(REBUILD_SOURCES)}, not {source!r}")
    kafka_settings = kafka_settings or KafkaSettings.from_django()
    topics = [kafka_settings.event_topic(t) for t in cls.stream_types]
    if source == "auto":
        source = "mirror" if _topics_expired(kafka_settings, topics) else "kafka"
    started = time.monotonic()
    old, new = _start_building(name, source)
    done = CatchUp()
    checkpoint = ProjectorCheckpoint.objects.filter(projector=name, generation=new).first()
    if source == "mirror" and (checkpoint is None or not checkpoint.offsets):
        _replay_mirror(cls, new, kafka_settings, done, progress)
    runner = ProjectionRunner(cls, kafka_settings, generation=new, batch_size=settings.PROJECTIONS["BATCH_SIZE"])
    try:
        def kafka_progress(part: CatchUp) -> None:  # counted on from the mirror's part
            if progress is not None:
                progress(CatchUp(done.events + part.events, done.batches + part.batches))

        kafka_part = runner.catch_up(progress=kafka_progress)
        done.events += kafka_part.events
        # The switch: the API reads the new generation from now on; the worker's runner of the
        # old one notices within seconds and moves over.
        with transaction.atomic():
            state = ProjectorState.objects.select_for_update().get(name=name)
            runner.step(timeout=0.05)  # what arrived meanwhile
            state.active_generation, state.building_generation, state.building_source = new, None, ""
            state.switched_at = datetime.now(timezone.utc)
            state.save()
    finally:
        runner.close()
    deleted = 0
    if not keep_old and old != new:
        time.sleep(settings.PROJECTIONS["SWITCH_GRACE_SECONDS"])
        deleted = drop_generation(name, old)
    logger.info("projector %s rebuilt as generation %d from %s: %d events in %.1fs", name, new, source, done.events,
                time.monotonic() - started)
    return RebuildReport(name, old, new, source, done.events, time.monotonic() - started, deleted)


def drop_generation(name: str, generation: int, chunk: int = 5000) -> int:
    """Deletes a generation's rows, its checkpoint first (that fences a runner still on it)."""
    cls = projector_named(name)
    if ProjectorState.objects.filter(name=name, active_generation=generation).exists():
        raise ValueError(f"generation {generation} of {name} is the one the API reads; it cannot be dropped")
    ProjectorCheckpoint.objects.filter(projector=name, generation=generation).delete()
    deleted = 0
    for model in (*cls.models, StreamProgress, DeadLetter):
        scope = {"generation": generation} if model in cls.models else {"projector": name, "generation": generation}
        while True:
            ids = list(model.objects.filter(**scope).values_list("id", flat=True)[:chunk])
            if not ids:
                break
            deleted += model.objects.filter(id__in=ids).delete()[0]
    return deleted


# --- dead letters ---------------------------------------------------------------------------

def retry_dead_letters(names: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Applies the streams held behind dead letters again; per projector (released, still held)."""
    out = {}
    for name in names or list(PROJECTORS):
        cls = projector_named(name)
        state, _ = ProjectorState.objects.get_or_create(name=name)
        out[name] = ProjectionEngine(cls, state.active_generation).retry_dead_letters()
    return out
