"""The projection threads of a Celery worker process.

Each pool process of the worker starts one thread per projector. A thread works only while it
holds its projector's lock (a PostgreSQL advisory lock on its own connection; a file lock on
SQLite), so across all workers one thread feeds each projector and the others stand by: when
the holder's process dies, its connection closes, the lock is free and a stand-by takes over
within a few seconds. A thread that fails (broker, database) closes what it had and starts
again after a pause; the checkpoint fence (engine.py) keeps a lost lock from writing twice.

Why a loop in the worker rather than a task per commit: a task per append costs the writer a
Redis round trip on the hot path and a consumer start per task; a standing consumer with
`fetch.wait.max.ms=10` brings an event to the read models in milliseconds, and beat is not
needed as a safety net because the loop never stops polling.
"""
from __future__ import annotations

import contextlib
import logging
import threading

from django.conf import settings
from django.db import connection

from ..eventstore.recorders import file_lock, lock_path_beside_database, session_advisory_lock
from ..kafka.config import KafkaSettings
from .models import ProjectorState
from .projectors import PROJECTORS
from .runner import ProjectionRunner

logger = logging.getLogger(__name__)

PROJECTOR_LOCK_CLASS = 0x7E4D
RETRY_PAUSE_SECONDS = 2.0
_threads: list[threading.Thread] = []
_stop = threading.Event()


@contextlib.contextmanager
def projector_lock(name: str):
    """Yields True while this thread holds the projector's lock (False: another holds it)."""
    if connection.vendor == "postgresql":
        lock = session_advisory_lock(connection, PROJECTOR_LOCK_CLASS, name)
    else:
        lock = file_lock(lock_path_beside_database(connection.alias, f"projector-{name}"))
    with lock as held:
        yield held


def _is_active(name: str, generation: int) -> bool:
    return ProjectorState.objects.filter(name=name, active_generation=generation).exists()


def run_projector(name: str, stop: threading.Event) -> None:
    """One projector's thread: feed it while holding its lock, heal after failures."""
    projector_cls = PROJECTORS[name]
    kafka_settings = KafkaSettings.from_django()
    while not stop.is_set():
        runner = None
        try:
            with projector_lock(name) as held:
                if held:
                    runner = ProjectionRunner(projector_cls, kafka_settings,
                                              batch_size=settings.PROJECTIONS["BATCH_SIZE"],
                                              linger=settings.PROJECTIONS["LINGER_MS"] / 1000)
                    logger.info("projector %s: feeding generation %d", name, runner.generation)
                    runner.run(stop, still_active=lambda: _is_active(name, runner.generation))
        except Exception as exc:  # noqa: BLE001 - the thread heals itself: new consumer, new connection
            logger.error("projector %s failed (%s: %s); starting again in %.0fs", name, type(exc).__name__, exc,
                         RETRY_PAUSE_SECONDS)
            with contextlib.suppress(Exception):
                connection.close()
        finally:
            if runner is not None:
                runner.close()
        stop.wait(RETRY_PAUSE_SECONDS)
    connection.close()


def start_projection_threads() -> list[threading.Thread]:
    """Starts the projection threads of this process (once)."""
    if _threads or not settings.PROJECTIONS["RUN_IN_WORKER"]:
        return _threads
    _stop.clear()
    for name in PROJECTORS:
        thread = threading.Thread(target=run_projector, args=(name, _stop), name=f"projector-{name}", daemon=True)
        thread.start()
        _threads.append(thread)
    return _threads


def stop_projection_threads(timeout: float = 5.0) -> None:
    _stop.set()
    for thread in _threads:
        thread.join(timeout)
    _threads.clear()
