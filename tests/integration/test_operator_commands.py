"""Operators' commands run beside the stack, as OS processes, with Kafka or Redis away.

A command that needs a service that does not answer fails within seconds with one line that
names the address and the setting; librdkafka's own connection lines never reach the
terminal. The time bound is a hang guard, not a speed claim.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from devtools.embedded import free_port
from eventsourcing_app.application import Actor, grant_consent, register_child, register_parent
from eventsourcing_app.models import Stream, SubjectKey
from eventsourcing_app.operations.relay import relay_outbox
from tests.integration.conftest import REPO, process_env

HANG_GUARD_SECONDS = 20
NO_KAFKA = "127.0.0.1:1"  # nothing listens on port 1
KAFKA_DOWN = (f"CommandError: Kafka is not reachable at {NO_KAFKA} ({NO_KAFKA}: Connection refused); "
              "start it or set KAFKA_BOOTSTRAP_SERVERS")


def no_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def manage(kafka_settings, *args, **env_changes) -> tuple[subprocess.CompletedProcess, float]:
    env = process_env(kafka_settings, **{"REDIS_URL": settings.REDIS_URL, **env_changes})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    return done, time.monotonic() - started


def stderr_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def assert_no_librdkafka_lines(done: subprocess.CompletedProcess) -> None:
    text = done.stdout + done.stderr
    assert "%3|" not in text and "%4|" not in text and "%6|" not in text and "|FAIL|" not in text, text[-2000:]


def a_child() -> str:
    suffix = uuid.uuid4().hex[:10]
    actor = Actor.system("operator-test")
    register_parent(actor=actor, parent_id=f"parent-{suffix}", email=f"parent-{suffix}@example.org", name="Robin")
    grant_consent(actor=actor, parent_id=f"parent-{suffix}", child_id=f"child-{suffix}", method="signed_form")
    register_child(actor=actor, child_id=f"child-{suffix}", parent_id=f"parent-{suffix}", name="Zephyrine", age=7,
                   device_id=f"bear-{suffix}", udid="udid-operator-test")
    return f"child-{suffix}"


def key_destroyed(child_id: str) -> bool:
    return SubjectKey.objects.get(pk=f"child:{child_id}").wrapped_key is None


@pytest.mark.parametrize("args", [
    ["verify_integrity"],
    ["verify_integrity", "child.anything"],
    ["provision_topics"],
], ids=lambda args: " ".join(args))
def test_a_command_that_needs_kafka_fails_at_once_with_one_line(kafka_settings, args):
    done, seconds = manage(kafka_settings, *args, KAFKA_BOOTSTRAP_SERVERS=NO_KAFKA)
    assert done.returncode != 0
    assert seconds < HANG_GUARD_SECONDS
    assert stderr_lines(done) == [KAFKA_DOWN], done.stderr[-2000:]
    assert "integrity verified" not in done.stdout
    assert_no_librdkafka_lines(done)


def test_verifying_an_unknown_stream_is_one_line_and_an_error(kafka_settings):
    done, _ = manage(kafka_settings, "verify_integrity", "child.does-not-exist")
    assert done.returncode != 0
    assert stderr_lines(done) == ["CommandError: stream child.does-not-exist does not exist: nothing to verify "
                                  "(check the id; `manage.py verify_integrity` without an id checks every stream)"]


def test_verifying_the_hash_chains_only_needs_no_broker(store, kafka_settings):
    child_id = a_child()
    done, seconds = manage(kafka_settings, "verify_integrity", f"child.{child_id}", "--no-kafka",
                           KAFKA_BOOTSTRAP_SERVERS=NO_KAFKA, REDIS_URL=no_redis())
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < HANG_GUARD_SECONDS
    assert "1 streams, 1 events: hash chains OK" in done.stdout and "integrity verified" in done.stdout
    assert_no_librdkafka_lines(done)


def test_export_child_reads_the_database_only_and_works_with_kafka_and_redis_away(store, kafka_settings, tmp_path):
    """A subject access request is not held up by the broker or the cache."""
    child_id = a_child()
    target = tmp_path / "export.json"
    done, seconds = manage(kafka_settings, "export_child", child_id, "-o", str(target),
                           KAFKA_BOOTSTRAP_SERVERS=NO_KAFKA, REDIS_URL=no_redis())
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < HANG_GUARD_SECONDS
    export = json.loads(target.read_text())
    assert export["child"]["name"] == "Zephyrine" and not export["erased"]
    assert "wrote 2 events of 2 streams" in done.stderr  # the child's and the consent in the parent's
    assert_no_librdkafka_lines(done)


def test_forget_child_with_kafka_away_erases_and_says_what_is_left_to_do(store, kafka_settings):
    child_id = a_child()
    done, seconds = manage(kafka_settings, "forget_child", child_id, "--reason", "parent_request",
                           KAFKA_BOOTSTRAP_SERVERS=NO_KAFKA)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < HANG_GUARD_SECONDS
    assert key_destroyed(child_id)  # the erasure is complete without Kafka
    assert f"child {child_id}: data key destroyed" in done.stdout
    said = [line for line in stderr_lines(done) if line.startswith("Kafka is not reachable")]
    assert len(said) == 1
    assert "no snapshot tombstones were published" in said[0] and "Run this command again once Kafka answers" in said[0]
    assert_no_librdkafka_lines(done)

    # The erasure event waited in the outbox; the relay publishes it once Kafka answers.
    stream = Stream.objects.get(pk=f"child.{child_id}")
    assert stream.published_version < stream.version
    relay_outbox(store)
    assert Stream.objects.get(pk=f"child.{child_id}").published_version == stream.version

    again, _ = manage(kafka_settings, "forget_child", child_id, "--reason", "parent_request")
    assert again.returncode == 0 and "was already gone" in again.stdout
    assert not [line for line in stderr_lines(again) if "not reachable" in line]


def test_forget_child_with_redis_away_erases_and_says_what_is_left_to_do(store, kafka_settings):
    child_id = a_child()
    redis_url = no_redis()
    done, seconds = manage(kafka_settings, "forget_child", child_id, "--reason", "parent_request", REDIS_URL=redis_url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < HANG_GUARD_SECONDS
    assert key_destroyed(child_id)
    said = [line for line in stderr_lines(done) if line.startswith("Redis is not reachable")]
    assert len(said) == 1 and redis_url in said[0]
    assert "other processes were not told" in said[0] and "Run this command again once Redis answers" in said[0]
    assert_no_librdkafka_lines(done)


def test_forget_child_of_an_unknown_child_is_one_line_and_an_error(kafka_settings):
    done, _ = manage(kafka_settings, "forget_child", "nobody-here", "--reason", "parent_request")
    assert done.returncode != 0
    assert stderr_lines(done) == ["CommandError: no child nobody-here (stream child.nobody-here does not exist)"]
