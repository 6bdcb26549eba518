"""Publishing committed events to Kafka and recording where they landed.

One publisher per process: a confluent-kafka producer plus a background thread that serves
delivery reports and records the acknowledged positions on the mirror rows in batches (one
or two statements per batch, never one per event).

Order: an event is handed to the producer only when every earlier event of its stream is
already acknowledged (the stream's `published_version`) or was handed to this same producer
just before it (the producer keeps per-partition order). Anything else is left to the
outbox relay, which publishes from the first unacknowledged version on.

Faults: a send reported as timed out may still have been written, so publication is
at-least-once and consumers skip duplicates by stream version / event id. After a fatal
error, a timeout or any unexpected producer error the producer is replaced (a producer that
lost its broker's state, e.g. UNKNOWN_PRODUCER_ID after a restart, never recovers by itself),
and a background thread that died is started again. An event Kafka refuses for good (too
large, unknown topic) is a poison event: recorded, logged once with what to do, counted, and
left for the relay to retry now and then; it never blocks other streams.
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from typing import Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from django.db import close_old_connections, connections

from .. import metrics
from ..eventstore.integrity import canonical_timestamp
from ..eventstore.recorders import DjangoRecorder
from ..eventstore.records import Publication, StoredEvent
from .config import KafkaSettings
from .topics import check_topics

logger = logging.getLogger(__name__)

_RETRY_CONNECT_SECONDS = 2.0
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})  # by a producer replacement
FIRST_CONNECT_WAIT_SECONDS = 2.0  # once per process; then the relay publishes what waited
# Positions are recorded in batches: at most this long after the first acknowledgement waits,
# at once when this many wait, or when somebody flushes. One UPDATE per batch, not per event.
_RECORD_INTERVAL_SECONDS = 0.05
_RECORD_BATCH = 5000
# An append whose previous version another process appended (and has not been seen published
# yet) waits here this long for it, checked every few milliseconds, instead of waiting for the
# relay's grace period: several web workers writing one stream keep its order on Kafka and
# still publish within milliseconds. Past the wait, the relay publishes it.
DEFER_SECONDS = 1.5
_DEFER_CHECK_SECONDS = 0.005
# Refusals that no retry can cure: the event itself does not fit, or its topic is not there.
PERMANENT_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_RECORD,
})


_CONTENT_TYPE = ("content_type", b"application/json")


def event_headers(stored: StoredEvent) -> list[tuple[str, bytes]]:
    meta = stored.metadata
    headers = [
        ("event_id", meta.event_id.encode()),
        ("stream_id", meta.stream_id.encode()),
        ("version", b"%d" % meta.version),
        ("event_type", meta.event_type.encode()),
        ("schema_version", b"%d" % meta.schema_version),
        ("timestamp", canonical_timestamp(meta.timestamp).encode()),
        ("chain_hash", stored.chain_hash.hex().encode()),
        _CONTENT_TYPE,
    ]
    if meta.correlation_id is not None:
        headers.append(("correlation_id", meta.correlation_id.encode()))
    if meta.causation_id is not None:
        headers.append(("causation_id", meta.causation_id.encode()))
    if meta.actor is not None:
        headers.append(("actor", meta.actor.encode()))
    if meta.data_subject is not None:
        headers.append(("data_subject", meta.data_subject.encode()))
    if meta.global_position is not None:
        headers.append(("global_position", b"%d" % meta.global_position))
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
        # stream -> (last version handed to the current producer, the stream's publication epoch
        # then): another epoch later means a refill republishes the stream from its start.
        self._tails: dict[str, tuple[int, int]] = {}
        self._acks: queue.SimpleQueue[Publication] = queue.SimpleQueue()
        # stream -> [(first version, events, epoch, give up at)], appends waiting for their
        # predecessor (appended by another process) to be published.
        self._deferred: dict[str, list[tuple[int, Sequence[StoredEvent], int, float]]] = {}
        self._last_defer_check = 0.0
        self.deferred_published = 0  # appends published after waiting for another process's
        self._outstanding = 0  # handed to the producer, not yet recorded or failed
        self._idle = threading.Condition()
        self._stopped = threading.Event()
        self.errors = 0
        self._first_ack_waiting = 0.0
        self._flushing = 0
        self._unreported_failures = 0
        self._last_failure_report = 0.0
        self.replacements = 0  # producers replaced after faults (metric-ready)
        self.poison_events = 0  # events Kafka refused for good (metric-ready)
        self.last_error: str | None = None
        self._first_connect_done = threading.Event()
        self._first_wait_over = False
        self._thread: threading.Thread | None = None
        self._start_thread()  # last: it reads every attribute above
        atexit.register(self.close)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="eventstore-publisher", daemon=True)
        self._thread.start()

    def _ensure_thread(self) -> None:
        """A background thread that died (it must not, but faults are inventive) is replaced."""
        if not self._stopped.is_set() and (self._thread is None or not self._thread.is_alive()):
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    logger.error("the Kafka publisher's background thread had stopped; starting it again")
                    self._start_thread()

    # --- producing ---------------------------------------------------------------

    def publish_appended(self, stream_id: str, first_version: int, published_version: int | None,
                         events: Sequence[StoredEvent], epoch: int | None = 0) -> bool:
        """Publishes a fresh append if that keeps stream order; False leaves it to the relay."""
        self._ensure_thread()
        self._await_first_connection()
        with self._lock:
            before, epoch = first_version - 1, epoch or 0
            tail = self._tails.get(stream_id)
            if tail is not None and tail[1] != epoch:
                # A refill republishes the stream from its start: nothing may overtake that.
                del self._tails[stream_id]
                tail = None
            if (published_version or 0) != before and (tail is None or tail[0] != before):
                if len(self._deferred) < 10_000:
                    self._deferred.setdefault(stream_id, []).append(
                        (first_version, events, epoch, time.monotonic() + DEFER_SECONDS))
                return False
            return self._produce(events, {stream_id: epoch})

    def _publish_deferred(self) -> None:
        """Publishes waiting appends whose predecessor is published now (one query for all)."""
        now = time.monotonic()
        if not self._deferred or now - self._last_defer_check < _DEFER_CHECK_SECONDS:
            return
        self._last_defer_check = now
        with self._lock:
            waiting = {sid: sorted(items, key=lambda item: item[0]) for sid, items in self._deferred.items()}
        close_old_connections()
        state = self.recorder.publication_state(list(waiting))
        with self._lock:
            for sid, items in waiting.items():
                published, current_epoch = state.get(sid, (0, 0))
                done = set()
                for item in items:
                    first, events, epoch, give_up = item
                    tail = self._tails.get(sid)
                    if epoch != current_epoch or published >= events[-1].version or now > give_up:
                        done.add(id(item))  # a refill, published already (the relay), or left to the relay
                    elif published == first - 1 or tail == (first - 1, epoch):
                        done.add(id(item))
                        if self._produce(events, {sid: epoch}):
                            self.deferred_published += 1
                # Appends deferred meanwhile stay.
                kept = [item for item in self._deferred.get(sid, []) if id(item) not in done]
                if kept:
                    self._deferred[sid] = kept
                else:
                    self._deferred.pop(sid, None)

    def publish_backlog(self, events: Sequence[StoredEvent], epochs: dict[str, int]) -> bool:
        """Publishes events in the given (per-stream version) order, each stream in the
        publication epoch given; used by the relay and the refill."""
        self._ensure_thread()
        self._await_first_connection()
        with self._lock:
            return self._produce(events, epochs)

    def _produce(self, events: Sequence[StoredEvent], epochs: dict[str, int]) -> bool:
        producer = self._current_producer()
        if producer is None:
            return False
        refused: set[str] = set()  # a stream with a poison event: nothing after it is sent now
        routes: dict[str, tuple[str, bytes]] = {}  # stream -> (topic, key), once per stream and call
        for stored in events:
            meta = stored.metadata
            if meta.stream_id in refused:
                continue
            route = routes.get(meta.stream_id)
            if route is None:
                route = routes[meta.stream_id] = (self.settings.event_topic(meta.stream_id.split(".", 1)[0]),
                                                  meta.stream_id.encode())
            topic, key = route
            epoch = epochs.get(meta.stream_id, 0)
            publication = (meta.global_position, meta.stream_id, meta.version, epoch)
            with self._idle:
                self._outstanding += 1
            while True:
                try:
                    producer.produce(
                        topic, key=key, value=stored.payload, headers=event_headers(stored),
                        on_delivery=lambda err, msg, p=publication: self._delivered(err, msg, p),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:
                    self._failed(meta.stream_id)
                    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    if error is not None and error.code() in PERMANENT_ERRORS:
                        self._poison(publication, error)
                        refused.add(meta.stream_id)
                        break
                    metrics.PUBLISH_ERRORS.labels("produce").inc()
                    self._replace_producer(f"could not hand {meta.stream_id} v{meta.version} to Kafka: {exc}")
                    return False
                except Exception as exc:  # noqa: BLE001 - whatever it is, a new producer is the cure
                    self._failed(meta.stream_id)
                    metrics.PUBLISH_ERRORS.labels("produce").inc()
                    self._replace_producer(f"unexpected producer error: {exc!r}")
                    return False
            if meta.stream_id not in refused:
                self._tails[meta.stream_id] = (meta.version, epoch)
        if len(self._tails) > 100_000:  # bounded memory; a forgotten tail only means a relay hop
            self._tails.clear()
        return True

    def _replace_producer(self, reason: str) -> None:
        if not self._replace:
            logger.warning("%s; the producer will be replaced and the outbox relay republishes what waits", reason)
        self.last_error = reason
        self._replace = True

    def _poison(self, publication: tuple[int, str, int, int], error: KafkaError) -> None:
        position, stream_id, version, _ = publication
        self.poison_events += 1
        metrics.POISON_EVENTS.inc()
        self._tails.pop(stream_id, None)
        try:
            attempts = self.recorder.record_poison(position, stream_id, version, f"{error.name()}: {error.str()}")
        except Exception:  # noqa: BLE001 - the refusal is logged either way
            logger.exception("could not record the poison event %s v%s", stream_id, version,
                             extra={"stream_id": stream_id})
            attempts = 1
        if attempts == 1:
            logger.error("Kafka refused %s v%s for good (%s: %s): the stream is held at version %s and the relay "
                         "retries it now and then. Fix the cause (a topic with a lower max.message.bytes than "
                         "EVENTSTORE_MAX_EVENT_BYTES, a missing topic: `manage.py provision_topics`); "
                         "`manage.py relay_outbox --poison` lists what is held.",
                         stream_id, version, error.name(), error.str(), version - 1, extra={"stream_id": stream_id})

    def publish_record(self, topic: str, key: str, value: bytes | None, headers: list[tuple[str, bytes]],
                       timeout: float = 10.0, wait: bool = True) -> tuple[str, int, int] | None:
        """Produces one record (a snapshot, or a tombstone with value None) and waits for its
        acknowledgement: (topic, partition, offset), or None if Kafka did not take it. With
        `wait=False` it returns None at once; a failed delivery is logged."""
        if wait and not self.ensure_connected(timeout):
            return None
        producer = self._current_producer()  # read once: a replacement may run meanwhile
        if producer is None:
            logger.warning("Kafka is not connected: the record for %s in %s was not published", key, topic)
            return None
        done, result = threading.Event(), []

        def delivered(err, msg):
            result.append(None if err is not None else (msg.topic(), msg.partition(), msg.offset()))
            if err is not None:
                if not wait:
                    logger.warning("Kafka did not take the record for %s in %s: %s", key, topic, err)
                if err.code() not in PERMANENT_ERRORS | _PURGED:  # purged: a replacement is under way
                    self._replace_producer(f"a record for {key} was not delivered: {err}")
            done.set()

        try:
            producer.produce(topic, key=key.encode(), value=value, headers=headers, on_delivery=delivered)
        except BufferError as exc:
            logger.warning("could not hand a record for %s to Kafka: %s", key, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a fatal or unexpected error: a new producer
            self._replace_producer(f"could not hand a record for {key} to Kafka: {exc}")
            return None
        if not wait:
            return None
        if not done.wait(timeout):
            self._replace_producer(f"a record for {key} was not acknowledged within {timeout:.0f}s")
            return None
        return result[0]

    def _await_first_connection(self) -> None:
        """Connecting happens in the background thread, from the publisher's start: a hand-off
        waits for the very first connection of the process for at most
        FIRST_CONNECT_WAIT_SECONDS, never longer (not holding the lock the connection takes)."""
        if not self._first_connect_done.is_set() and not self._first_wait_over:
            self._first_connect_done.wait(FIRST_CONNECT_WAIT_SECONDS)
            self._first_wait_over = True  # one wait per process, however the connection goes

    def _current_producer(self) -> Producer | None:
        """The usable producer, or None (the outbox relay publishes then)."""
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
                self.replacements += 1
                metrics.PRODUCER_REPLACEMENTS.inc()
                logger.warning("replacing the Kafka producer (%s)", self.last_error or "after a fault")
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
            if old is not None:
                logger.info("a new Kafka producer is connected; publishing resumes")
        except Exception as exc:  # broker down or topics wrong: events wait in the outbox
            self.last_error = str(exc)
            logger.warning("Kafka is not available for publishing (%s); events wait in the outbox", exc)
        finally:
            self._connecting = False

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            logger.error("fatal Kafka producer error %s; the producer will be replaced", err)
            self.last_error = str(err)
            self._replace = True
        else:
            logger.debug("Kafka producer error %s", err)

    def _delivered(self, err: KafkaError | None, msg, publication: tuple[int, str, int, int]) -> None:
        position, stream_id, version, epoch = publication
        if err is None and msg.offset() is not None:
            self._acks.put(Publication(position, stream_id, version, msg.topic(), msg.partition(), msg.offset(), epoch))
            return
        if err is None:
            # "Delivered" without an offset: the broker did not say where the record is, nor
            # that it is anywhere (an idempotent producer's send it took for a duplicate: a
            # producer that outlived `refill_kafka --recreate-topics` got such answers for sends
            # that never reached the new topics). Not recorded as published: the relay sends it
            # again (a duplicate at worst, which consumers skip), from a fresh producer.
            self.errors += 1
            self._unreported_failures += 1
            metrics.PUBLISH_ERRORS.labels("not_acknowledged").inc()
            self.last_error = f"Kafka answered for {stream_id} v{version} without an offset"
            self._replace = True
            if self._unreported_failures == 1:
                logger.warning("Kafka answered for %s v%s without an offset; it waits in the outbox for the relay",
                               stream_id, version, extra={"stream_id": stream_id})
            self._failed(stream_id)
            return
        self.errors += 1
        self._unreported_failures += 1
        metrics.PUBLISH_ERRORS.labels("refused" if err.code() in PERMANENT_ERRORS else
                                      "purged" if err.code() in _PURGED else "not_acknowledged").inc()
        if err.code() in PERMANENT_ERRORS:
            self._poison(publication, err)
            self._failed(stream_id)
            return
        if err.code() not in _PURGED:
            # A timeout, a fatal error, or anything else unexpected: a fresh producer.
            self.last_error = str(err)
            self._replace = True
        if self._unreported_failures == 1:
            logger.warning("Kafka did not acknowledge %s v%s (%s); it waits in the outbox for the relay",
                           stream_id, version, err, extra={"stream_id": stream_id})
        self._failed(stream_id)

    def _failed(self, stream_id: str) -> None:
        self._tails.pop(stream_id, None)
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    # --- recording acknowledgements --------------------------------------------------

    def _serve(self) -> None:
        try:
            if not self._first_connect_done.is_set():
                try:
                    self._connect()
                finally:
                    self._first_connect_done.set()
            while not self._stopped.is_set():
                try:
                    self._serve_once()
                except KafkaException as exc:  # e.g. a fatal error raised from poll()
                    self._replace_producer(f"the Kafka producer failed: {exc}")
                except Exception:  # noqa: BLE001 - this thread must outlive any surprise
                    logger.exception("the Kafka publisher's background thread hit an error; it goes on")
                    time.sleep(0.1)
        finally:
            connections.close_all()

    def _serve_once(self) -> None:
        if (self._producer is None or self._replace) and self._last_connect_attempt and \
                time.monotonic() - self._last_connect_attempt > _RETRY_CONNECT_SECONDS:
            self._connect()
        producer = self._producer
        if producer is not None:
            producer.poll(0.01)
        else:
            time.sleep(0.01)
        if self._deferred:
            try:
                self._publish_deferred()
            except Exception as exc:  # noqa: BLE001 - those appends are left to the relay
                logger.warning("could not check the appends waiting for another process's publication (%s); "
                               "the relay publishes them", exc)
                with self._lock:
                    self._deferred.clear()
        waiting = self._acks.qsize()
        if waiting:
            now = time.monotonic()
            self._first_ack_waiting = self._first_ack_waiting or now
            if (waiting >= _RECORD_BATCH or self._flushing
                    or now - self._first_ack_waiting >= _RECORD_INTERVAL_SECONDS):
                self._record_acks()
                self._first_ack_waiting = 0.0
        self._report_failures()

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
            close_old_connections()  # a connection lost earlier is replaced, not reused
            self.recorder.record_publications(batch)
            metrics.EVENTS_PUBLISHED.inc(len(batch))
        except Exception:
            logger.exception("could not record %d Kafka positions; the relay will publish those events again", len(batch))
        with self._idle:
            self._outstanding -= len(batch)
            self._idle.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until everything handed over is acknowledged and recorded (or failed)."""
        self._ensure_thread()
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            while self._deferred and time.monotonic() < deadline:  # they go out, or to the relay, soon
                time.sleep(_DEFER_CHECK_SECONDS)
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
