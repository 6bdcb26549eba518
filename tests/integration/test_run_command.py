"""The one-command run as operators end it: a closed terminal (SIGHUP) or a console that goes
away (`scripts/run | head`) stops everything it started, embedded broker and Redis included;
an unreachable Redis or a bad setting stops it at once with one line, printing no secret.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.embedded import free_port
from tests.integration.conftest import REPO

A_MASTER_KEY = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA="


def _env(data_dir: Path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC_PREFIX")}
    return {**env, "TEDDY_DATA_DIR": str(data_dir), "TEDDY_MASTER_KEYS": A_MASTER_KEY, **extra}


def _start(data_dir: Path, port: int | None = None, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "devtools.run_stack", "--no-worker", "--port", str(port or free_port())],
                            cwd=REPO, env=_env(data_dir, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _read_until(process: subprocess.Popen, marker: bytes, timeout: float = 240) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"the run ended before {marker!r}:\n{seen.decode(errors='replace')[-2000:]}")
        seen += line
        assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
    return seen


@pytest.mark.parametrize("ending", ["SIGHUP", "console closed"])
def test_however_the_console_goes_away_everything_the_run_started_stops(tmp_path, ending):
    port = free_port()
    process = _start(tmp_path / "var", port)
    try:
        _read_until(process, b"Ctrl-C to stop")
        started = _descendants(process.pid)
        assert len(started) >= 3, started  # the broker, redis-server and the web server at least
        if ending == "SIGHUP":
            process.send_signal(signal.SIGHUP)
        else:
            process.stdout.close()  # as `| head` does once it has its lines
        assert process.wait(60) == 0
        deadline = time.monotonic() + 30
        while [pid for pid in started if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if _alive(pid)], "left running after the run ended"
        if ending == "SIGHUP":
            # At once again on the same port: the last run's closed connections (TIME_WAIT)
            # do not make it "already in use".
            process = _start(tmp_path / "var", port)
            _read_until(process, b"Ctrl-C to stop")
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _descendants(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_an_unreachable_redis_stops_the_run_at_once_in_one_line(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "devtools.run_stack", "--no-worker", "--port", str(free_port())],
                          cwd=REPO, env=_env(tmp_path / "var", REDIS_URL="redis://127.0.0.1:1/0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 60
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "REDIS_URL" in errors[0] and "redis://127.0.0.1:1/0" in errors[0], done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_bad_master_key_stops_the_run_without_printing_it(tmp_path):
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    done = subprocess.run([sys.executable, "-m", "devtools.run_stack", "--no-worker", "--port", str(free_port())],
                          cwd=REPO, env=_env(tmp_path / "var", TEDDY_MASTER_KEYS=secret),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and "TEDDY_MASTER_KEYS is not valid" in done.stdout, done.stdout[-1500:]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "var").rglob("*.log"))
    assert secret not in done.stdout + done.stderr + logs and "Traceback" not in done.stdout


def test_a_malformed_database_url_stops_the_run_with_one_line_naming_it(tmp_path):
    done = subprocess.run([sys.executable, "-m", "devtools.run_stack", "--no-worker", "--port", str(free_port())],
                          cwd=REPO, env=_env(tmp_path / "var", DATABASE_URL="postgres://user:s3cret@[bad/x"),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout[-1500:]
    reasons = [line.strip() for line in done.stdout.splitlines() if "configuration error" in line]
    assert len(reasons) == 1 and reasons[0].startswith("configuration error: DATABASE_URL is not valid"), done.stdout
    assert "s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stdout + done.stderr
