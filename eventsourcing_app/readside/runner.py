"""Feeding a projector from the Kafka topics: a consumer that assigns the partitions at the
positions its checkpoint stored (no consumer group: positions live in the database, in the same
transaction as the read models) and hands each batch to the engine.

`ProjectionRunner.step()` reads one batch; `catch_up()` reads until every partition reported
its end (partition EOF, not the broker's queried high watermark); `run(stop)` runs for good,
as the Celery worker's projection threads do (readside/worker.py).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from ..eventstore.errors import MalformedEventError
from ..kafka.config import KafkaSettings
from ..kafka.reader import stored_event_from_message
from .engine import BatchResult, Fenced, ProjectionEngine, Projector
from .models import ProjectorState

logger = logging.getLogger(__name__)


def active_generation(name: str) -> int:
    state, _ = ProjectorState.objects.get_or_create(name=name)
    return state.active_generation


@dataclass
class CatchUp:
    events: int = 0
    batches: int = 0
    seconds: float = 0.0


class ProjectionRunner:
    def __init__(self, projector_cls: type[Projector], kafka_settings: KafkaSettings, generation: int | None = None,
                 *, batch_size: int = 5000, poll_timeout: float = 0.1, linger: float = 0.0) -> None:
        self.projector_cls = projector_cls
        self.settings = kafka_settings
        self.generation = generation if generation is not None else active_generation(projector_cls.name)
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.linger = linger
        self.engine = ProjectionEngine(projector_cls, self.generation)
        self.topics = [kafka_settings.event_topic(t) for t in projector_cls.stream_types
                       if t in kafka_settings.stream_types]
        self.consumer: Consumer | None = None
        self.at_end: set[str] = set()
        self.partitions: list[str] = []

    # --- the consumer -----------------------------------------------------------------

    def _partitions(self) -> list[tuple[str, int]]:
        admin = AdminClient(self.settings.admin_config())
        found = []
        for topic in self.topics:
            meta = admin.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise KafkaException(f"topic {topic} is not there ({getattr(meta, 'error', None)}); run "
                                     "`manage.py provision_topics`")
            found.extend((topic, p) for p in sorted(meta.partitions))
        return found

    def _assign(self) -> None:
        if self.consumer is None:
            config = self.settings.consumer_config(group_id=f"teddy-projector-{self.projector_cls.name}")
            config["client.id"] = f"teddy-projector-{self.projector_cls.name}-{uuid.uuid4().hex[:6]}"
            self.consumer = Consumer(config)
        offsets = self.engine.position.offsets
        partitions = self._partitions()
        self.partitions = [f"{t}:{p}" for t, p in partitions]
        self.consumer.assign([TopicPartition(t, p, offsets.get(f"{t}:{p}", OFFSET_BEGINNING)) for t, p in partitions])
        self.at_end = set()

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - closing a broken consumer
                pass
            self.consumer = None

    # --- one batch --------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> BatchResult | None:
        """Reads up to one batch and applies it; None if nothing new arrived."""
        if self.consumer is None:
            self.engine.resync()
            self._assign()
        messages = self._read_batch(self.poll_timeout if timeout is None else timeout)
        events, next_offsets, bad = [], {}, []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.at_end.add(f"{msg.topic()}:{msg.partition()}")
                    continue
                if err.retriable() or err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                    logger.warning("projector %s: Kafka: %s (retrying)", self.projector_cls.name, err)
                    continue
                raise KafkaException(err)
            where = f"{msg.topic()}:{msg.partition()}"
            self.at_end.discard(where)
            next_offsets[where] = msg.offset() + 1
            try:
                events.append(stored_event_from_message(msg))
            except MalformedEventError as exc:
                bad.append((f"{msg.topic()}[{msg.partition()}]", msg.offset(), str(exc)))
        if not next_offsets:
            return None
        try:
            result = self.engine.apply_batch(events, next_offsets, unreadable=bad)
        except Fenced as exc:
            logger.info("projector %s: %s; re-reading its positions", self.projector_cls.name, exc)
            self.engine.resync()
            self._assign()
            return None
        except Exception:
            # Nothing of the batch was stored: read it again from the stored positions.
            self.close()
            raise
        return result

    def _read_batch(self, timeout: float) -> list:
        """Waits up to `timeout` for a first record, then takes what arrives within `linger`
        of it (up to a batch). Each batch costs a few round trips whatever its size, so under a
        steady trickle of events this bounds the batches per second (and the CPU they take)
        at the price of at most `linger` of lag. consume() with a timeout would instead wait
        for a full batch."""
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=0)
        if not messages:
            first = self.consumer.poll(timeout)
            if first is None:
                return []
            messages = [first]
        deadline = time.monotonic() + self.linger
        while len(messages) < self.batch_size:
            left = deadline - time.monotonic()
            more = self.consumer.consume(num_messages=self.batch_size - len(messages), timeout=max(0.0, left))
            messages.extend(more)
            if left <= 0 or not more:
                break
        return messages

    @property
    def caught_up(self) -> bool:
        return bool(self.partitions) and self.at_end >= set(self.partitions)

    def catch_up(self, progress: Callable[[CatchUp], None] | None = None, timeout: float = 3600.0) -> CatchUp:
        """Applies everything up to the end of every partition, as a new consumer finds them
        (the end is known from partition EOF events, which come once per arrival at the end:
        use a fresh runner for each catch-up)."""
        done = CatchUp()
        started = time.monotonic()
        if self.consumer is None:
            self.engine.resync()
            self._assign()
        while not self.caught_up:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"projector {self.projector_cls.name} did not catch up within {timeout:.0f}s")
            result = self.step()
            if result is not None:
                done.events += result.applied + result.skipped
                done.batches += 1
                if progress is not None:
                    progress(done)
        done.seconds = time.monotonic() - started
        self.engine.heartbeat(caught_up=True)
        return done

    def run(self, stop, heartbeat_seconds: float = 5.0, still_active: Callable[[], bool] | None = None) -> None:
        """Applies batches until `stop` is set (or this generation stops being the active one)."""
        last_beat = 0.0
        while not stop.is_set():
            self.step()
            now = time.monotonic()
            if now - last_beat >= heartbeat_seconds:
                if still_active is not None and not still_active():
                    return
                self.engine.heartbeat(caught_up=self.caught_up)
                last_beat = now
