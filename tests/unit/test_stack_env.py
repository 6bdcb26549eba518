"""The one-command run's env file, which `manage.py` commands beside the stack are run with
(the whole run, with a command using the file, is `scripts/run --check`)."""
from __future__ import annotations

import os
import stat
import subprocess

from devtools import run_stack

TRICKY = "it's a \"value\" with $HOME, `backticks` and spaces"


def sourced(path, names) -> dict[str, str]:
    """The variables as a shell that sources the file the banner's way sees them."""
    script = f"set -a; . '{path}'; set +a; " + "; ".join(f'printf "%s\\0" "${{{n}-<unset>}}"' for n in names)
    out = subprocess.run(["/bin/sh", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True,
                         check=True).stdout.decode()
    return dict(zip(names, out.split("\0")))


def test_the_settings_variables_are_found_in_the_settings():
    names = run_stack.settings_variables()
    for name in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC_PREFIX", "TEDDY_MASTER_KEYS",
                 "TEDDY_DATA_DIR", "KAFKA_EVENT_RETENTION_MS", "KAFKA_SNAPSHOT_RETENTION_MS", "EVENTSTORE_STREAM_TYPES",
                 "DJANGO_SETTINGS_MODULE"):
        assert name in names
    assert "PATH" not in names and "PYTHONUNBUFFERED" not in names


def test_the_env_file_holds_the_stacks_settings_quoted_for_the_shell_and_only_for_its_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(run_stack, "VAR", tmp_path)
    monkeypatch.setattr(run_stack, "STACK_ENV", tmp_path / "stack.env")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    stale = tmp_path / "stack.env"
    stale.write_text("LEFT=over\n")
    stale.chmod(0o644)  # a file of an earlier run, readable by others
    stack = run_stack.Stack(env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:39092", "REDIS_URL": "redis://127.0.0.1:6390/0",
                                 "TEDDY_MASTER_KEYS": "a2V5", "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
                                 "KAFKA_TOPIC_PREFIX": TRICKY, "PATH": "/usr/bin", "PYTHONUNBUFFERED": "1",
                                 "LOG_LEVEL": ""})
    run_stack.write_stack_env(stack, key_from_file=True)

    assert stack.env_file == stale
    assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600
    text = stale.read_text()
    assert "LEFT=over" not in text and "PATH=" not in text and "PYTHONUNBUFFERED" not in text
    assert "LOG_LEVEL" not in text  # empty counts as unset, as in the settings
    assert "set -a; . " in text and "manage.py verify_integrity" in text
    assert "master-key" in text and "teddy.sqlite3" in text  # where the key and the database come from
    names = ["KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "TEDDY_MASTER_KEYS", "DJANGO_SETTINGS_MODULE",
             "KAFKA_TOPIC_PREFIX", "TEDDY_DATA_DIR", "DATABASE_URL"]
    assert sourced(stale, names) == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:39092", "REDIS_URL": "redis://127.0.0.1:6390/0",
        "TEDDY_MASTER_KEYS": "a2V5", "DJANGO_SETTINGS_MODULE": "teddy_project.settings",
        "KAFKA_TOPIC_PREFIX": TRICKY, "TEDDY_DATA_DIR": str(tmp_path), "DATABASE_URL": "<unset>"}
    assert [p.name for p in tmp_path.iterdir()] == ["stack.env"]  # no temporary file left

    run_stack.remove_stack_env(stack)
    assert not stale.exists() and stack.env_file is None
    run_stack.remove_stack_env(stack)  # twice is harmless


def test_a_database_url_is_written_when_the_stack_uses_one(tmp_path, monkeypatch):
    monkeypatch.setattr(run_stack, "VAR", tmp_path)
    monkeypatch.setattr(run_stack, "STACK_ENV", tmp_path / "stack.env")
    monkeypatch.setenv("DATABASE_URL", "postgres://teddy:s3cret@db:5432/teddy")
    stack = run_stack.Stack(env={"DATABASE_URL": "postgres://teddy:s3cret@db:5432/teddy"})
    run_stack.write_stack_env(stack, key_from_file=False)
    assert sourced(stack.env_file, ["DATABASE_URL"]) == {"DATABASE_URL": "postgres://teddy:s3cret@db:5432/teddy"}
    assert "teddy.sqlite3" not in stack.env_file.read_text() and "master-key" not in stack.env_file.read_text()


def test_a_stop_never_removes_an_env_file_this_run_did_not_write(tmp_path):
    """E.g. a second run refused because another one uses the directory."""
    other = tmp_path / "stack.env"
    other.write_text("KAFKA_BOOTSTRAP_SERVERS='127.0.0.1:9092'\n")
    run_stack.remove_stack_env(run_stack.Stack(env={}))
    assert other.exists()
