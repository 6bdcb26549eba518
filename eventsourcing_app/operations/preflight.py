"""Quick checks, before an operator's command starts, that Kafka and Redis answer.

Left to themselves, librdkafka retries an unreachable broker for as long as a call's timeout
(printing a line per attempt) and a Redis client waits for its socket timeout: a command would
hang and bury the cause. These probes answer within seconds with one line that names the
address and the setting to change.

Which command needs what, besides the database: `provision_topics` Kafka; `verify_integrity`
Kafka, unless `--no-kafka`; `export_child` neither (it reads the database only);
`forget_child` checks both but erases without them: the erasure is complete once the key is
destroyed in the database, and what Kafka (snapshot tombstones) and Redis (telling the other
processes) would have done is then said, to be done by running it again.
"""
from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from ..kafka.config import QUIET_LOG_LEVEL

PROBE_TIMEOUT_SECONDS = 3.0


class Unreachable(Exception):
    """A service a command needs does not answer; the message is one line saying what to do."""


def kafka_problem(bootstrap_servers: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """None if a bootstrap server answers as a Kafka broker, else why not (one line)."""
    errors = []
    for server in (s.strip() for s in bootstrap_servers.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            # A plain connect first: fast, silent, and it names the refusal precisely.
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                break
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
    else:
        return (f"Kafka is not reachable at {bootstrap_servers} ({'; '.join(errors)}); "
                "start it or set KAFKA_BOOTSTRAP_SERVERS")
    try:
        AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": QUIET_LOG_LEVEL}).list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if hasattr(error, "str") else str(error)
        return (f"Kafka at {bootstrap_servers} accepts connections but does not answer as a Kafka broker within "
                f"{timeout:.0f}s ({reason}); check the broker, or set KAFKA_BOOTSTRAP_SERVERS")
    return None


def redis_problem(url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """None if Redis answers a PING, else why not (one line). Needs no Django: the one-command
    run probes a given REDIS_URL with it before anything starts."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        return f"{without_password(url)} is not a Redis URL ({exc}); e.g. redis://127.0.0.1:6379/0"
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return f"Redis is not reachable at {without_password(url)} ({exc}); start it or set REDIS_URL"
    finally:
        client.close()


def without_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL at all: say so, print none of it (it may hold a password)
        return "<not a URL>"
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def require_kafka(bootstrap_servers: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    problem = kafka_problem(bootstrap_servers, timeout)
    if problem:
        raise Unreachable(problem)


def switch_off_publishing() -> None:
    """The process's event store, when it is built, gets no Kafka publisher: what it appends
    waits in the outbox for the relay. Only for a process that runs one command."""
    from django.conf import settings

    settings.KAFKA_PUBLISH_ENABLED = False


class OwnProcessAware:
    """Management command mixin: `runs_as_own_process` is True when run as `manage.py
    <command>` (a process of its own), False when called in-process (`call_command`)."""

    runs_as_own_process = False

    def run_from_argv(self, argv):
        self.runs_as_own_process = True
        return super().run_from_argv(argv)


class PublishesNothing(OwnProcessAware):
    """For management commands that write nothing to Kafka. As a process of its own such a
    command builds the event store without a publisher: a publisher connects in the background
    from the start, and with the broker away it would delay the exit and log its failures for
    a broker the command does not use. Called in-process, the process's store stays as it is."""

    def run_from_argv(self, argv):
        switch_off_publishing()
        return super().run_from_argv(argv)
