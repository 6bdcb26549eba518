"""Erasures told to every process at once, over Redis pub/sub.

The process that erases a subject publishes its name after the commit; every process runs a
small listener thread that drops the subject's keys from its memory on receipt. This is a
speed-up, not the guarantee: the append statement refuses data for a destroyed key, cached
keys expire within minutes, and reads always see the key row as stored. With Redis down the
listener retries with a growing pause and says so once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Sequence

import redis

logger = logging.getLogger(__name__)

CHANNEL = "teddy:erasures"


class ErasureBroadcast:
    def __init__(self, redis_url: str, on_erased: Callable[[str], None]) -> None:
        self.redis_url = redis_url
        self.on_erased = on_erased
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.received = 0

    def publish(self, subjects: Sequence[str]) -> bool:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            client.publish(CHANNEL, json.dumps(list(subjects)))
            return True
        except redis.RedisError as exc:
            logger.warning("erasure of %s not broadcast (%s); other processes drop the keys when they next touch "
                           "them or within minutes", ", ".join(subjects), exc)
            return False
        finally:
            client.close()

    def ensure_listening(self) -> None:
        """Starts the listener in this process (again after a fork, or if it died)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():  # (never after a fork)
                return
            self._thread = threading.Thread(target=self._listen, name="erasure-listener", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        pause, warned = 0.5, False
        while True:
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                if warned:
                    logger.info("erasure broadcasts are received again")
                pause, warned = 0.5, False
                for message in pubsub.listen():
                    self._handle(message)
            except redis.RedisError as exc:
                if not warned:
                    logger.warning("not receiving erasure broadcasts (%s); retrying", exc)
                    warned = True
            except Exception:  # noqa: BLE001 - the listener must outlive any surprise
                logger.exception("erasure listener failed; restarting it")
            time.sleep(pause)
            pause = min(pause * 2, 30.0)

    def _handle(self, message) -> None:
        try:
            subjects = json.loads(message["data"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed erasure broadcast: %r", message)
            return
        for subject in subjects if isinstance(subjects, list) else []:
            if isinstance(subject, str):
                self.on_erased(subject)
                self.received += 1
