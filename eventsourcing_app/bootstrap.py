"""The composition root: the one place that wires the event store to Kafka, privacy and Celery.

`install()` runs when Django starts the app (apps.py). It makes the store package's entry
points (`get_event_store()`, `get_event_sourcing_service()`, ...) hand out what is built
here, per process: after a fork (a Celery worker child) everything is built anew, because
producers, connections, threads and key caches belong to one process.
"""
from __future__ import annotations

import os
import threading

from django.conf import settings

from .eventstore import configured
from .eventstore.cache import AggregateCache
from .eventstore.recorders import recorder_for
from .eventstore.serialization import registry
from .eventstore.service import EventSourcingService
from .eventstore.snapshots import SnapshotStore
from .eventstore.store import EventStore
from .kafka.config import KafkaSettings
from .kafka.publisher import EventPublisher
from .kafka.reader import KafkaEventReader
from .privacy.broadcast import ErasureBroadcast
from .privacy.keyring import MasterKeyring
from .privacy.keys import SubjectKeys
from .privacy.protection import PersonalDataProtection
from .scheduling import BackgroundSnapshotScheduler


def _send_snapshot_task(stream_id: str) -> None:
    from .tasks import create_snapshot

    create_snapshot.apply_async(args=[stream_id], retry=False)


class Bootstrap:
    """Builds each part once per process, on first use."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._parts: dict[str, object] = {}
        os.register_at_fork(after_in_child=self._forget_parts)

    def _forget_parts(self) -> None:
        """In a forked child: nothing of the parent's (producer, threads, connections) is reused."""
        self._lock = threading.RLock()
        self._parts = {}

    def _part(self, name: str, build):
        with self._lock:
            part = self._parts.get(name)
            if part is None:
                part = self._parts[name] = build()
            return part

    # --- privacy ---------------------------------------------------------------------

    def field_protection(self) -> PersonalDataProtection:
        def build():
            keys = SubjectKeys(MasterKeyring(settings.TEDDY_MASTER_KEYS))
            broadcast = ErasureBroadcast(settings.REDIS_URL, on_erased=keys.forget)
            protection = PersonalDataProtection(keys, on_erased=broadcast.publish)
            protection.broadcast = broadcast
            registry.field_protection = protection  # the decoder opens encrypted fields with it
            return protection

        protection = self._part("protection", build)
        protection.broadcast.ensure_listening()
        return protection

    # --- the store -------------------------------------------------------------------

    def build_event_store(self, *, kafka_settings: KafkaSettings | None = None, alias: str = "default",
                          publish: bool | None = None) -> EventStore:
        """A new event store; tests and tools pass their own Kafka settings."""
        kafka_settings = kafka_settings or KafkaSettings.from_django()
        recorder = recorder_for(alias)
        publish = settings.KAFKA_PUBLISH_ENABLED if publish is None else publish
        return EventStore(
            recorder=recorder,
            stream_types=kafka_settings.stream_types,
            max_event_bytes=min(settings.EVENTSTORE["MAX_EVENT_BYTES"], kafka_settings.max_message_bytes),
            publisher=EventPublisher(kafka_settings, recorder) if publish else None,
            kafka_settings=kafka_settings,
            field_protection=self.field_protection(),
            kafka_reader=KafkaEventReader(kafka_settings),
        )

    def event_store(self) -> EventStore:
        return self._part("store", self.build_event_store)

    def snapshot_store(self) -> SnapshotStore:
        def build():
            store, config = self.event_store(), settings.EVENTSTORE
            return SnapshotStore(
                frequencies=config["SNAPSHOT_FREQUENCIES"], default_frequency=config["SNAPSHOT_FREQUENCY"],
                keep=config["SNAPSHOTS_KEPT"], publisher=store.publisher, kafka_settings=store.kafka_settings,
                recorder=store.recorder, field_protection=self.field_protection())

        return self._part("snapshots", build)

    def aggregate_cache(self) -> AggregateCache | None:
        seconds = settings.EVENTSTORE["AGGREGATE_CACHE_SECONDS"]
        if not seconds:
            return None
        return self._part("cache", lambda: AggregateCache(settings.REDIS_URL, seconds, self.field_protection()))

    def event_sourcing_service(self) -> EventSourcingService:
        return self._part("service", lambda: EventSourcingService(
            self.event_store(), self.snapshot_store(), snapshot_scheduler=self.schedule_snapshot))

    def snapshot_scheduler(self) -> BackgroundSnapshotScheduler:
        return self._part("scheduler", lambda: BackgroundSnapshotScheduler(_send_snapshot_task))

    def schedule_snapshot(self, stream_id: str) -> None:
        self.snapshot_scheduler()(stream_id)


_bootstrap = Bootstrap()


def install() -> Bootstrap:
    configured.install(_bootstrap)
    return _bootstrap


def current() -> Bootstrap:
    return _bootstrap
