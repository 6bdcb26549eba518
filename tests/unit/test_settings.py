"""A bad setting stops start-up with a message that names the variable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
A_MASTER_KEY = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA="


def start_django(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "teddy_project.settings", "TEDDY_MASTER_KEYS": A_MASTER_KEY, **env},
    )


@pytest.mark.parametrize("name, value, message", [
    ("KAFKA_TOPIC_PARTITIONS", "many", "KAFKA_TOPIC_PARTITIONS='many' is not valid: expected a whole number"),
    ("KAFKA_TOPIC_PARTITIONS", "0", "below the minimum 1"),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka", "KAFKA_BOOTSTRAP_SERVERS='kafka' is not valid"),
    ("KAFKA_COMPRESSION", "brotli", "KAFKA_COMPRESSION='brotli' is not valid"),
    ("EVENTSTORE_STREAM_TYPES", "child,Bad-Type", "EVENTSTORE_STREAM_TYPES"),
    ("EVENTSTORE_MAX_EVENT_BYTES", "2000000", "above the maximum 1000000"),
    ("DJANGO_DEBUG", "perhaps", "DJANGO_DEBUG='perhaps' is not valid"),
    ("REDIS_URL", "localhost:6379", "REDIS_URL='localhost:6379' is not valid"),
    ("DATABASE_URL", "nosuchdb://x", "DATABASE_URL"),
    ("TEDDY_MASTER_KEYS", "", "TEDDY_MASTER_KEYS is not set"),
    ("TEDDY_MASTER_KEYS", "c2hvcnQ=", "key 1 decodes to 5 bytes, not 32"),
    ("TEDDY_MASTER_KEYS", "not*base64!", "is not base64"),
    ("EVENTSTORE_SNAPSHOT_FREQUENCIES", "child:10", "EVENTSTORE_SNAPSHOT_FREQUENCIES"),
    ("DATABASE_URL", "sqlite://relative.db", "names no database file: write sqlite:///relative/path.db"),
])
def test_a_bad_value_names_the_variable(name, value, message):
    done = start_django(**{name: value})
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and message in done.stderr, done.stderr[-500:]


def test_defaults_start():
    done = start_django(DATABASE_URL="", KAFKA_BOOTSTRAP_SERVERS="", REDIS_URL="")
    assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.parametrize("value", ["c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA=,c2VjcmV0"])
def test_a_bad_master_key_is_never_printed(value):
    done = start_django(TEDDY_MASTER_KEYS=value)
    assert done.returncode != 0 and "TEDDY_MASTER_KEYS is not valid" in done.stderr
    assert not [part for part in value.split(",") if part in done.stderr + done.stdout], done.stderr[-300:]


@pytest.mark.parametrize("name, value, message", [
    ("DATABASE_URL", "nosuchdb://x", "configuration error: DATABASE_URL is not valid"),
    ("TEDDY_MASTER_KEYS", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "configuration error: TEDDY_MASTER_KEYS is not valid"),
    ("DATABASE_URL", "sqlite://relative.db", "configuration error: DATABASE_URL='sqlite://relative.db' names no"),
])
def test_manage_py_says_a_bad_setting_in_one_line(name, value, message):
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TEDDY_MASTER_KEYS": A_MASTER_KEY, name: value})
    assert done.returncode == 1 and done.stderr.startswith(message), done.stderr[-500:]
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
