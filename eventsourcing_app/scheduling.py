"""Fire-and-forget snapshot scheduling: a save never waits for Redis or Celery.

`schedule(stream_id)` only notes the stream (a bounded set) and returns; a background thread
hands the noted streams to Celery. While Celery's broker is unreachable the thread keeps the
streams (bounded: the oldest are dropped, with a log line) and retries with a growing pause;
a stream whose scheduling is lost is snapshotted at its next threshold crossing instead.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000


class BackgroundSnapshotScheduler:
    def __init__(self, send: Callable[[str], None], max_pending: int = MAX_PENDING) -> None:
        self.send = send
        self.max_pending = max_pending
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.sent = 0

    def __call__(self, stream_id: str) -> None:
        with self._lock:
            self._pending[stream_id] = None
            self._pending.move_to_end(stream_id)
            while len(self._pending) > self.max_pending:
                lost, _ = self._pending.popitem(last=False)
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("%d snapshot requests dropped while Celery is unreachable (e.g. %s); those "
                                   "streams are snapshotted at their next threshold", self.dropped, lost)
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="snapshot-scheduler", daemon=True)
                self._thread.start()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        pause, failing = 0.5, False
        while True:
            self._wake.wait(30.0)
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    stream_id = next(iter(self._pending))
                try:
                    self.send(stream_id)
                except Exception as exc:  # noqa: BLE001 - a snapshot is an optimisation; retry later
                    if not failing:
                        logger.warning("could not schedule snapshots (%s); %d waiting, retrying", exc, self.pending)
                        failing = True
                    time.sleep(pause)  # not the wake event: new requests must not cut the pause short
                    pause = min(pause * 2, 30.0)
                    continue
                with self._lock:
                    self._pending.pop(stream_id, None)
                self.sent += 1
                if failing:
                    logger.info("snapshot scheduling works again")
                    failing, pause = False, 0.5
