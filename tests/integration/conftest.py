"""Integration fixtures: a Tansu broker per session (and per test where faults are injected),
committed database access, the configured event store, and a real Celery worker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from django.conf import settings

from devtools.embedded import start_tansu
from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.kafka.topics import provision_topics
from tests.conftest import LOG_DIR, RUN_ID

STREAM_TYPES = ("child", "parent", "conversation", "test")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker):
    """A fresh test database, migrated, for the whole session (tests commit for real)."""
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        connections.close_all()
        # Connections of other threads (publisher, async executor) would block the DROP.
        with connections["default"]._nodb_cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", [settings.DATABASES["default"]["NAME"]])
        try:
            teardown_databases(config, verbosity=0)
        except Exception as exc:  # another process still connected; the next run recreates it
            warnings.warn(f"test database not dropped: {exc}")


@pytest.fixture(scope="session")
def kafka_broker():
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    broker = start_tansu(log_path=LOG_DIR / f"tansu-{RUN_ID}.log")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_settings(kafka_broker) -> KafkaSettings:
    return KafkaSettings.from_django().with_changes(
        bootstrap_servers=kafka_broker.address, topic_prefix=f"t{RUN_ID}.", partitions=6, stream_types=STREAM_TYPES)


@pytest.fixture(scope="session", autouse=True)
def configured(kafka_settings, django_db_setup, django_db_blocker):
    """Points the process-wide settings at the session broker, so get_event_store() uses it."""
    settings.KAFKA_BOOTSTRAP_SERVERS = kafka_settings.bootstrap_servers
    settings.KAFKA_TOPIC_PREFIX = kafka_settings.topic_prefix
    settings.KAFKA_TOPIC_PARTITIONS = kafka_settings.partitions
    settings.EVENTSTORE = {**settings.EVENTSTORE, "STREAM_TYPES": list(STREAM_TYPES)}
    provision_topics(kafka_settings)
    yield


@pytest.fixture(autouse=True)
def committed_db(django_db_blocker):
    """Real commits, as in production: the publisher thread, other threads and the Celery
    worker must see the data. Tests never flush; each uses its own stream ids."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="session")
def store(configured):
    from eventsourcing_app.eventstore import get_event_store

    store = get_event_store()
    yield store
    store.publisher.close()


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def process_env(kafka: KafkaSettings | None = None, **extra: str) -> dict:
    """The environment of a process a test starts: this session's database, the given broker and
    topics (the session's by default) and the test stream types, with `extra` on top."""
    kafka = kafka or KafkaSettings.from_django()
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "teddy_project.settings", "DATABASE_URL": database_url(),
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "KAFKA_TOPIC_PARTITIONS": str(kafka.partitions), "EVENTSTORE_STREAM_TYPES": ",".join(STREAM_TYPES),
            **extra}


@pytest.fixture(scope="session")
def celery_worker(kafka_settings, configured):
    """A real Celery worker process on its own queue, against the test database and broker."""
    from teddy_project.celery import app

    queue = f"teddy-test-{RUN_ID}"
    app.conf.task_default_queue = queue
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    env = process_env(kafka_settings, CELERY_TASK_DEFAULT_QUEUE=queue, EVENTSTORE_RELAY_GRACE_SECONDS="0")
    name = f"worker-{RUN_ID}@localhost"
    log = open(LOG_DIR / f"celery-{RUN_ID}.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "teddy_project", "worker", "-n", name, "-Q", queue,
         "--concurrency=2", "--loglevel=INFO"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[name], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the Celery worker did not start; see {log.name}")
    yield name
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def own_broker(kafka_settings, request):
    """A broker of this test only (faults must not disturb the rest of the session), with the
    session's topics and a short message timeout so that failed sends are noticed quickly."""
    broker = start_tansu(log_path=LOG_DIR / f"tansu-{request.node.name[:40]}.log")
    settings = kafka_settings.with_changes(bootstrap_servers=broker.address, message_timeout_ms=3000)
    provision_topics(settings)
    yield broker, settings
    broker.stop(kill=True)


def portable_store(store):
    """A store on the portable ORM recorder (the one SQLite uses), here on PostgreSQL."""
    from eventsourcing_app.eventstore import EventStore
    from eventsourcing_app.eventstore.recorders import DjangoRecorder

    return EventStore(recorder=DjangoRecorder(), stream_types=store.stream_types,
                      max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)


@pytest.fixture(params=["postgres", "portable"])
def any_store(request, store):
    """Each test twice: on the one-statement PostgreSQL recorder and on the portable one."""
    from eventsourcing_app.eventstore.recorders import PostgresRecorder

    if request.param == "postgres":
        assert isinstance(store.recorder, PostgresRecorder)
        return store
    return portable_store(store)

