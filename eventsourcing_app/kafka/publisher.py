"""Publishing committed events to Kafka and recording where they landed.

One publisher per process: a confluent-kafka producer plus a background thread that serves
delivery reports and records the acknowledged positions on the mirror rows in batches (one
or two statements per batch, never one per event).

Order: an event is handed to the producer only when every earlier event of its stream is
already acknowledged (the stream's `published_version`) or was handed to this same producer
just before it (the producer keeps per-partition order). Anything else is left to the
outbox relay, which publishes from the first unacknowledged version on.

Faults (see TANSU.md): a send reported as timed out may still have been written, so
publication is at-least-once and consumers skip duplicates by stream version / event id. After
a fatal error or a timeout the producer is replaced, never retried forever.
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from django.db import close_old_connections, connections

from ..eventstore.integrity import canonical_timestamp
from ..eventstore.recorders import DjangoRecorder, Publication
from ..eventstore.records import StoredEvent
from .config import KafkaSettings
from .topics import check_topics

logger = logging.getLogger(__name__)

_RETRY_CONNECT_SECONDS = 2.0
# Positions are recorded in batches: at most this long after the first acknowledgement waits,
# at once when this many wait, or when somebody flushes. One UPDATE per batch, not per event.
_RECORD_INTERVAL_SECONDS = 0.05
_RECORD_BATCH = 5000


def event_headers(stored: StoredEvent) -> list[tuple[str, bytes]]:
    meta = stored.metadata
    headers = [
        ("event_id", meta.event_id.encode()),
        ("stream_id", meta.stream_id.encode()),
        ("version", str(meta.version).encode()),
        ("event_type", meta.event_type.encode()),
        ("schema_version", str(meta.schema_version).encode()),
        ("timestamp", canonical_timestamp(meta.timestamp).encode()),
        ("chain_hash", stored.chain_hash.hex().encode()),
        ("content_type", b"application/json"),
    ]
    for name in ("correlation_id", "causation_id", "actor", "data_subject"):
        value = getattr(meta, name)
        if value is not None:
            headers.append((name, value.encode()))
    if meta.global_position is not None:
        headers.append(("global_position", str(meta.global_position).encode()))
    return headers


class EventPublisher:
    def __init__(self, settings: KafkaSettings, recorder: DjangoRecorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self._lock = threading.RLock()
        self._producer: Producer | None = None
        self._replace = False
        self._last_connect_attempt = 0.0
        self._connecting = False
        self._tails: dict[str, int] = {}  # stream -> last version handed to the current producer
        self._acks: queue.SimpleQueue[Publication] = queue.SimpleQueue()
        self._outstanding = 0  # handed to the producer, not yet recorded or failed
        self._idle = threading.Condition()
        self._stopped = threading.Event()
        self.errors = 0
        self._first_ack_waiting = 0.0
        self._flushing = 0
        self._unreported_failures = 0
        self._last_failure_report = 0.0
        # Started last: it reads every attribute above.
        self._thread = threading.Thread(target=self._serve, name="eventstore-publisher", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # --- producing ---------------------------------------------------------------

    def publish_appended(self, stream_id: str, first_version: int, published_version: int | None,
                         events: Sequence[StoredEvent]) -> bool:
        """Publishes a fresh append if that keeps stream order; False leaves it to the relay."""
        with self._lock:
            before = first_version - 1
            if (published_version or 0) != before and self._tails.get(stream_id) != before:
                return False
            return self._produce(events)

    def publish_backlog(self, events: Sequence[StoredEvent]) -> bool:
        """Publishes events in the given (per-stream version) order; used by the relay."""
        with self._lock:
            return self._produce(events)

    def _produce(self, events: Sequence[StoredEvent]) -> bool:
        producer = self._current_producer()
        if producer is None:
            return False
        for stored in events:
            meta = stored.metadata
            topic = self.settings.event_topic(meta.stream_id.split(".", 1)[0])
            publication = (meta.global_position, meta.stream_id, meta.version)
            with self._idle:
                self._outstanding += 1
            while True:
                try:
                    producer.produce(
                        topic, key=meta.stream_id.encode(), value=stored.payload, headers=event_headers(stored),
                        on_delivery=lambda err, msg, p=publication: self._delivered(err, msg, p),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:
                    self._failed(meta.stream_id)
                    logger.warning("could not hand %s v%s to Kafka: %s; the outbox relay will retry",
                                   meta.stream_id, meta.version, exc)
                    return False
            self._tails[meta.stream_id] = meta.version
        if len(self._tails) > 100_000:  # bounded memory; a forgotten tail only means a relay hop
            self._tails.clear()
        return True

    def publish_record(self, topic: str, key: str, value: bytes | None, headers: list[tuple[str, bytes]],
                       timeout: float = 10.0) -> tuple[str, int, int] | None:
        """Produces one record (a snapshot, or a tombstone with value None) and waits for its
        acknowledgement: (topic, partition, offset), or None if Kafka did not take it."""
        if not self.ensure_connected(timeout):
            return None
        done, result = threading.Event(), []

        def delivered(err, msg):
            result.append(None if err is not None else (msg.topic(), msg.partition(), msg.offset()))
            done.set()

        try:
            self._producer.produce(topic, key=key.encode(), value=value, headers=headers, on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            logger.warning("could not hand a record for %s to Kafka: %s", key, exc)
            return None
        if not done.wait(timeout):
            return None
        return result[0]

    def _current_producer(self) -> Producer | None:
        """The usable producer, or None. Only the very first call connects in the caller's
        thread (start-up); later (re)connections happen in the background thread, so an
        append never waits for an absent broker."""
        if self._producer is None and self._last_connect_attempt == 0.0:
            self._connect()
        if self._replace:
            return None
        return self._producer

    def ensure_connected(self, timeout: float = 10.0, force: bool = False) -> bool:
        """Connects now if needed, or anew if `force` (the relay calls this before a backlog)."""
        deadline = time.monotonic() + timeout
        if force or self._producer is None or self._replace:
            self._connect()
        while self._connecting and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._producer is not None and not self._replace

    def _connect(self) -> None:
        # The lock is not held while talking to the broker: appends must not wait on it.
        with self._lock:
            if self._connecting:
                return
            self._connecting = True
            self._last_connect_attempt = time.monotonic()
            old, self._producer, self._replace = self._producer, None, False
            self._tails.clear()
        try:
            if old is not None:
                logger.warning("replacing the Kafka producer after a fatal error or a timeout")
                old.purge()  # their delivery reports fail; those events stay in the outbox
                old.flush(2.0)  # serves those reports
                unreported = len(old)
                if unreported:  # reports that will never come: stop waiting for them
                    with self._idle:
                        self._outstanding -= unreported
                        self._idle.notify_all()
            check_topics(self.settings, timeout=5.0)
            producer = Producer({**self.settings.producer_config(), "error_cb": self._on_error},
                                logger=logging.getLogger("librdkafka"))
            with self._lock:
                self._producer = producer
        except Exception as exc:  # broker down or topics wrong: events wait in the outbox
            logger.warning("Kafka is not available for publishing (%s); events wait in the outbox", exc)
        finally:
            self._connecting = False

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            logger.error("fatal Kafka producer error %s; the producer will be replaced", err)
            self._replace = True
        else:
            logger.debug("Kafka producer error %s", err)

    def _delivered(self, err: KafkaError | None, msg, publication: tuple[int, str, int]) -> None:
        position, stream_id, version = publication
        if err is None:
            self._acks.put(Publication(position, stream_id, version, msg.topic(), msg.partition(), msg.offset()))
            return
        self.errors += 1
        self._unreported_failures += 1
        if err.code() == KafkaError._MSG_TIMED_OUT or err.fatal():
            self._replace = True
        if self._unreported_failures == 1:
            logger.warning("Kafka did not acknowledge %s v%s (%s); it waits in the outbox for the relay",
                           stream_id, version, err)
        self._failed(stream_id)

    def _failed(self, stream_id: str) -> None:
        self._tails.pop(stream_id, None)
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    # --- recording acknowledgements --------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopped.is_set():
                if (self._producer is None or self._replace) and self._last_connect_attempt and \
                        time.monotonic() - self._last_connect_attempt > _RETRY_CONNECT_SECONDS:
                    self._connect()
                producer = self._producer
                if producer is not None:
                    producer.poll(0.01)
                else:
                    time.sleep(0.01)
                waiting = self._acks.qsize()
                if waiting:
                    now = time.monotonic()
                    self._first_ack_waiting = self._first_ack_waiting or now
                    if (waiting >= _RECORD_BATCH or self._flushing
                            or now - self._first_ack_waiting >= _RECORD_INTERVAL_SECONDS):
                        self._record_acks()
                        self._first_ack_waiting = 0.0
                self._report_failures()
        finally:
            connections.close_all()

    def _report_failures(self) -> None:
        """One summary line every few seconds instead of a line per failed send."""
        now = time.monotonic()
        if self._unreported_failures > 1 and now - self._last_failure_report > 5.0:
            logger.warning("%d more sends were not acknowledged by Kafka; they wait in the outbox for the relay",
                           self._unreported_failures - 1)
            self._unreported_failures, self._last_failure_report = 0, now

    def _record_acks(self) -> None:
        batch: list[Publication] = []
        while len(batch) < _RECORD_BATCH:
            try:
                batch.append(self._acks.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return
        try:
            close_old_connections()
            self.recorder.record_publications(batch, datetime.now(timezone.utc))
        except Exception:
            logger.exception("could not record %d Kafka positions; the relay will publish those events again", len(batch))
        with self._idle:
            self._outstanding -= len(batch)
            self._idle.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until everything handed over is acknowledged and recorded (or failed)."""
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            producer = self._producer
            if producer is not None:
                producer.flush(timeout)
            with self._idle:
                while self._outstanding > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(min(remaining, 0.05))
            return True
        finally:
            self._flushing -= 1

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def close(self, timeout: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        try:
            self.flush(timeout)
        finally:
            self._stopped.set()
            self._thread.join(timeout)
