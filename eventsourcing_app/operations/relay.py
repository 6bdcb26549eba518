"""The outbox relay and the refill: publishing what Kafka has not acknowledged, or everything again.

The outbox is implicit: a stream whose `version` is above its `published_version` has
events to publish, from `published_version + 1` on, in version order. The relay

- holds the store-wide relay lock (a PostgreSQL advisory lock: it cannot expire under a
  running relay, and goes away with a worker that dies), so two relays never run at once;
- takes streams whose first waiting event was recorded more than the grace period ago by the
  database's clock (`recorded_at`; an event's own `occurred_at` may be anything), and hands
  each stream's waiting events, whole, to the producer in version order;
- waits for the acknowledgements (the publisher records the positions), and repeats until
  nothing is left, no progress is made (Kafka unreachable) or its time is up;
- leaves a stream whose next event Kafka refused for good (a poison event) alone for a while
  instead of retrying it every second, so the other streams keep flowing.

The refill publishes every stored event again, for a broker that came back empty. It marks
itself in progress (the relay publishes nothing until it is done, also if it crashes), moves
every stream to a new publication epoch (acknowledgements of sends from before no longer
count; fresh appends leave the stream to the refill), lets sends in flight settle, optionally
empties the topics, moves the streams created meanwhile too, then relays everything in
per-stream version order.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..eventstore.errors import EventStoreError
from ..eventstore.store import EventStore

logger = logging.getLogger(__name__)

POISON_RETRY_SECONDS = 60.0


class KafkaUnavailableError(EventStoreError):
    pass


class RefillRefused(EventStoreError):
    """The refill would duplicate or misorder what the topics hold; nothing was done."""


class RefillUnfinishedError(KafkaUnavailableError):
    """A refill stopped between marking the streams and emptying the topics: the relay must
    not publish into those topics until a refill completes."""


@dataclass
class RelayReport:
    published: int = 0
    streams: int = 0
    remaining: int = 0
    seconds: float = 0.0
    held: list[str] = field(default_factory=list)  # streams waiting on a poison event
    skipped: bool = False  # another relay held the lock

    def __str__(self) -> str:
        if self.skipped:
            return "another relay is running; nothing done"
        held = f"; {len(self.held)} streams held by a poison event" if self.held else ""
        return (f"published {self.published} events of {self.streams} streams in {self.seconds:.2f}s; "
                f"{self.remaining} still waiting{held}")


def outbox_backlog(store: EventStore, stream_types: Sequence[str] | None = None) -> int:
    """How many committed events Kafka has not acknowledged yet."""
    return store.recorder.outbox_backlog(stream_types)


def poison_report(store: EventStore) -> list[dict]:
    """The events Kafka refused for good that still hold their streams."""
    return store.recorder.poison_events()


def relay_outbox(store: EventStore, *, grace_seconds: float = 0.0, batch_size: int = 5000,
                 progress: Callable[[RelayReport], None] | None = None, flush_timeout: float = 60.0,
                 force_new_producer: bool = False, stream_types: Sequence[str] | None = None,
                 time_budget: float | None = None) -> RelayReport:
    """Publishes the backlog (of the given stream types, or all) until none is left, no
    progress is made or `time_budget` seconds have passed. Another relay running: a report
    with `skipped`."""
    if store.publisher is None:
        raise KafkaUnavailableError("publishing is switched off (KAFKA_PUBLISH_ENABLED=false)")
    with store.recorder.relay_lock() as held:
        if not held:
            return RelayReport(skipped=True)
        unfinished = store.recorder.maintenance()
        if unfinished:
            name, started, detail = unfinished[0]
            raise RefillUnfinishedError(
                f"a {name} started at {started:%Y-%m-%d %H:%M:%S} UTC did not finish ({detail}); nothing is published "
                "until it does: run `manage.py refill_kafka` again (with --recreate-topics if it was "
                "meant to empty the topics, or if the relay wrote into them meanwhile)")
        return _relay(store, grace_seconds, batch_size, progress, flush_timeout, force_new_producer, stream_types,
                      time_budget)


def _relay(store, grace_seconds, batch_size, progress, flush_timeout, force_new_producer, stream_types,
           time_budget) -> RelayReport:
    recorder, publisher = store.recorder, store.publisher
    started = time.monotonic()
    report = RelayReport()
    if not publisher.ensure_connected(force=force_new_producer):
        report.remaining = recorder.outbox_backlog(stream_types)
        raise KafkaUnavailableError(
            f"cannot publish to Kafka at {store.kafka_settings.bootstrap_servers}; {report.remaining} events wait "
            "in the outbox. Check the broker and run `manage.py provision_topics`."
        )
    recorder.clear_resolved_poison()
    held = recorder.held_streams(POISON_RETRY_SECONDS)
    poison_seen = publisher.poison_events
    seen: set[str] = set()
    while time_budget is None or time.monotonic() - started < time_budget:
        stream_ids = recorder.outbox_heads(grace_seconds, batch_size, stream_types, held)
        if not stream_ids:
            break
        state = recorder.publication_state(stream_ids)
        epochs = {sid: epoch for sid, (_, epoch) in state.items()}
        before = {sid: published for sid, (published, _) in state.items()}
        events = recorder.unpublished_events(stream_ids, batch_size)
        if not publisher.publish_backlog(events, epochs) or not publisher.flush(flush_timeout):
            break
        after = recorder.published_versions(stream_ids)
        moved = sum(after.get(s, 0) - before.get(s, 0) for s in stream_ids)
        # A stream whose next event Kafka just refused for good waits for the next retry period.
        now_held = recorder.held_streams(POISON_RETRY_SECONDS) if publisher.poison_events != poison_seen else held
        poison_seen, newly_held = publisher.poison_events, set(now_held) - set(held)
        held = now_held
        if moved <= 0:
            if newly_held:  # only poison events this round: go on with the other streams
                continue
            logger.warning("the relay made no progress (Kafka did not acknowledge); stopping this run")
            break
        report.published += moved
        seen.update(s for s in stream_ids if after.get(s, 0) > before.get(s, 0))
        report.streams = len(seen)
        if progress:
            report.remaining = recorder.outbox_backlog(stream_types)
            progress(report)
    report.held = held
    report.remaining = recorder.outbox_backlog(stream_types)
    report.seconds = time.monotonic() - started
    if report.published:
        logger.info("outbox relay: %s", report)
    return report


@dataclass
class RefillPlan:
    streams: int
    events: int
    topics: dict[str, int]  # topic -> records it holds now

    def __str__(self) -> str:
        held = ", ".join(f"{t} ({n} records)" for t, n in sorted(self.topics.items()) if n) or "none"
        return (f"republish {self.events} events of {self.streams} streams into {len(self.topics)} topics; "
                f"topics that are not empty: {held}")


def plan_refill(store: EventStore, stream_types: Sequence[str] | None = None) -> RefillPlan:
    from ..kafka.topics import topic_record_counts

    types = list(stream_types or sorted(store.stream_types))
    counts = topic_record_counts(store.kafka_settings, [store.kafka_settings.event_topic(t) for t in types])
    streams, events = store.recorder.stream_totals(types)
    return RefillPlan(streams, events, counts)


def refill_kafka(store: EventStore, *, progress: Callable[[RelayReport], None] | None = None,
                 batch_size: int = 5000, stream_types: Sequence[str] | None = None, force: bool = False,
                 recreate_topics: bool = False, settle_seconds: float | None = None, chunk: int = 1000,
                 announce: Callable[[str], None] | None = None) -> RelayReport:
    """Publishes every stored event again, in per-stream order, and records the new positions.

    For a broker that came back empty (a memory-only broker after a restart, a lost cluster).
    Refuses (RefillRefused, nothing done) when the topics already hold records, unless told
    `force` (publish after them) or `recreate_topics` (empty them first).
    """
    from ..kafka.topics import check_topics, recreate_topics as recreate

    say = announce or (lambda message: logger.info("refill: %s", message))
    if store.publisher is None:
        raise KafkaUnavailableError("publishing is switched off (KAFKA_PUBLISH_ENABLED=false)")
    types = list(stream_types or sorted(store.stream_types))
    topics = [store.kafka_settings.event_topic(t) for t in types]
    recorder = store.recorder
    with recorder.relay_lock() as held:
        if not held:
            raise RefillRefused("the outbox relay (or another refill) is running; try again in a moment")
        plan = plan_refill(store, types)
        say(str(plan))
        if any(plan.topics.values()) and not (force or recreate_topics):
            raise RefillRefused(
                f"the topics already hold records ({plan}). Publishing every stored event after them would "
                "duplicate them and put each stream's oldest events after its newest. Use --recreate-topics to "
                "empty the topics first (consumers then start again from offset 0), or --force to publish after "
                "what is there (consumers skip what they have applied).")
        # 0. Until the topics are as they must be, no relay publishes (also if this crashes).
        started = recorder.begin_maintenance("refill", f"stream types {', '.join(types)}"
                                             + ("; topics recreated" if recreate_topics else ""))
        # 1. A new publication epoch for every stream, a chunk at a time: appends wait a moment
        #    at most; from here on nothing of these streams is published but by this refill.
        reset = 0
        for ids in recorder.stream_ids_chunks(types, chunk):
            reset += recorder.reset_publication(ids)
        say(f"{reset} streams marked for republication")
        # 2. Sends handed to producers before step 1 land or fail within the message timeout.
        if settle_seconds is None:
            settle_seconds = store.kafka_settings.message_timeout_ms / 1000.0
        if settle_seconds > 0:
            say(f"waiting {settle_seconds:.0f}s for sends in flight to settle")
            time.sleep(settle_seconds)
        # 3. Topics: emptied if asked, else provisioned (nothing is ever auto-created).
        if recreate_topics:
            say(f"emptying {len(topics)} topics (delete and create again)")
            recreate(store.kafka_settings, topics)
        else:
            check_topics(store.kafka_settings)
        # 3b. Streams created since step 1 started may have been published into the topics just
        #     emptied: they are republished too.
        late = sum(recorder.reset_publication(ids) for ids in recorder.stream_ids_chunks(types, chunk, started))
        if late:
            say(f"{late} streams created during the refill marked for republication too")
        recorder.end_maintenance("refill")
        # 4. Everything, in per-stream order. A producer that knew the old broker never
        #    recovers (UNKNOWN_PRODUCER_ID): start afresh.
        return _relay(store, 0.0, batch_size, progress, 60.0, True, types, None)
