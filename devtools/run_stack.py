"""The one-command run of the Teddy event store (`scripts/run` ends here).

Brings the whole product up on one machine, for a demo or for local work, and takes it
down again cleanly:

1. Infrastructure. Kafka is an embedded Tansu broker and Redis an embedded redis-server
   (both from wheels in requirements.txt), unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL say
   where real ones are. The database is the settings' default SQLite file in var/ unless
   DATABASE_URL is set.
2. One-off setup: migrations, Kafka topics, static files, the admin user, demo data.
3. Long-running children: Celery worker, Celery beat (it schedules the outbox relay) and
   the Django web server. Each writes to var/logs/<name>.log; warnings and errors are
   echoed to the console.
4. A banner with the URLs, the admin login and a demo parent's login and API token, then a
   watch over the children. The stack's environment is written to var/stack.env (mode 0600:
   it may hold key material), so that `manage.py` commands can be run beside the stack;
   the file is removed when the stack stops.

Ctrl-C or SIGTERM stops everything in reverse order and exits 0. A child that dies on its
own stops the whole stack and exits 1, after printing the end of its log. `--check` does
the start-up, probes /health/ready/, the API and a `manage.py verify_integrity` run with only
var/stack.env's environment, stops and exits 0 or 1: a non-interactive test of this very
command.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from devtools import embedded
# Plain functions (no Django settings needed): the orchestrator uses them before anything starts.
from eventsourcing_app.operations.preflight import redis_problem, without_password

ROOT = Path(__file__).resolve().parent.parent
# Same rule as teddy_project/settings.py, so the SQLite file, static files and our logs
# all end up in one place.
VAR = Path(os.environ.get("TEDDY_DATA_DIR") or ROOT / "var").resolve()
LOGS = VAR / "logs"
STACK_ENV = VAR / "stack.env"

STOP_GRACE_SECONDS = 10.0
WEB_START_TIMEOUT = 60.0
READY_TIMEOUT = 60.0
# Lines worth showing on the console; everything else stays in the log files.
ECHO_PATTERN = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback")
# ... except runserver's standard notice: a local run uses the development server on purpose.
ECHO_IGNORE = re.compile(r"This is a development server")

ADMIN_SCRIPT = """
import os
from django.contrib.auth import get_user_model
User = get_user_model()
user, created = User.objects.get_or_create(username=os.environ["TEDDY_RUN_ADMIN_USERNAME"])
user.is_staff = user.is_superuser = user.is_active = True
user.set_password(os.environ["TEDDY_RUN_ADMIN_PASSWORD"])
user.save()
print("created" if created else "updated")
"""

# One demo parent's login and API token, and the compliance admin's demo logins, as one JSON
# line (none: "null").
DEMO_LOGIN_SCRIPT = """
import dataclasses, json
from eventsourcing_app.application.demo import DEMO_PASSWORD, DEMO_STAFF, demo_logins
logins = [login for login in demo_logins() if login.token]
login = dataclasses.asdict(logins[0]) if logins else None
if login:
    login["staff"] = [[name, group, DEMO_PASSWORD] for name, group in DEMO_STAFF.items()]
print(json.dumps(login))
"""


class Stopping(Exception):
    """Ctrl-C or SIGTERM arrived: unwind and stop everything."""


class StartupError(Exception):
    """Something needed for the stack failed; the message says what and where to look."""


_stop_requested = threading.Event()


def show(text: str) -> None:
    """Writes to the console. If the console went away (`scripts/run | head`, a closed
    terminal), even in the middle of a line: quiet from now on, and everything stops, as on
    Ctrl-C."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        _stop_requested.set()


def say(message: str = "") -> None:
    show(f"run: {message}" if message else "")


def shown(path: Path) -> str:
    """A path as the user should read it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def check_stop() -> None:
    if _stop_requested.is_set():
        raise Stopping()


def pause(seconds: float) -> None:
    """Sleeps, but wakes at once when a stop is requested."""
    if _stop_requested.wait(seconds):
        raise Stopping()


def install_signal_handlers() -> None:
    # The handler only sets a flag: raising from inside it could land between starting a
    # process and recording it, and that process would then never be stopped.
    def request_stop(signum, _frame):
        if not _stop_requested.is_set():
            show("")
            say(f"{signal.Signals(signum).name} received, stopping ...")
        _stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGHUP, request_stop)  # the terminal was closed


def spawn(args: list[str], env: dict[str, str], output) -> subprocess.Popen:
    # Each child gets its own session (so a Ctrl-C in the terminal reaches only us, and we
    # stop the children in order) and hence its own process group, which we can signal as
    # a whole to also catch processes it forked (Celery's pool).
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
        stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=embedded.die_with_parent,
    )


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


@dataclass
class Child:
    """A long-running process we started, with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    exit_info: object = None  # os.waitid's result once the process has exited

    def exited(self) -> bool:
        """True once the process has exited, without reaping it where the OS allows: an
        unreaped child keeps its PID, which is also its process group id, so signalling
        the group afterwards cannot hit an unrelated process that reused the number."""
        if self.process.returncode is not None or self.exit_info is not None:
            return True
        if hasattr(os, "waitid"):
            self.exit_info = os.waitid(os.P_PID, self.process.pid,
                                       os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return self.exit_info is not None
        return self.process.poll() is not None

    def describe_exit(self) -> str:
        if self.process.returncode is not None:
            code = self.process.returncode
            return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if self.exit_info.si_code == os.CLD_EXITED:
            return f"exit code {self.exit_info.si_status}"
        return f"killed by {signal.Signals(self.exit_info.si_status).name}"

    def stop(self) -> None:
        if not self.exited():
            self.process.terminate()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.exited():
                say(f"{self.name} did not stop within {STOP_GRACE_SECONDS:.0f}s, killing it")
        if self.process.returncode is None:  # still unreaped, so the group id is ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class LogEcho(threading.Thread):
    """Follows the children's log files and echoes warnings and errors, prefixed."""

    def __init__(self) -> None:
        super().__init__(name="log-echo", daemon=True)
        self.files: dict[str, object] = {}
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def follow(self, name: str, path: Path) -> None:
        with self.lock:
            self.files[name] = open(path, "r", errors="replace")

    def run(self) -> None:
        while not self.finished.wait(0.3):
            with self.lock:
                for name, handle in self.files.items():
                    self.echo_new_lines(name, handle)

    @staticmethod
    def echo_new_lines(name: str, handle) -> None:
        while True:
            start = handle.tell()
            line = handle.readline()
            if not line.endswith("\n"):  # nothing new, or a line still being written
                handle.seek(start)
                return
            if ECHO_PATTERN.search(line) and not ECHO_IGNORE.search(line):
                show(f"[{name:<6}] {line.rstrip()[:240]}")

    def close(self) -> None:
        self.finished.set()
        if self.is_alive():
            self.join(2)
        with self.lock:
            for handle in self.files.values():
                handle.close()


@dataclass
class Stack:
    """Everything started so far, in start order, so it can be stopped in reverse."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    started: list = field(default_factory=list)  # embedded.Service and Child objects
    echo: LogEcho = field(default_factory=LogEcho)
    env_file: Path | None = None  # written by this run, removed when it stops

    @property
    def children(self) -> list[Child]:
        return [item for item in self.started if isinstance(item, Child)]

    def start_child(self, name: str, args: list[str]) -> Child:
        log_path = LOGS / f"{name}.log"
        with open(log_path, "wb") as output:  # the child keeps its own copy of the fd
            child = Child(name, spawn(args, self.env, output), log_path)
        self.started.append(child)
        self.echo.follow(name, log_path)
        say(f"started {name:<6} (pid {child.process.pid}, log {shown(log_path)})")
        return child

    def stop_all(self) -> None:
        for item in reversed(self.started):
            try:
                item.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                say(f"could not stop {item.name}: {exc}")
        self.started.clear()
        self.echo.close()


# --- Infrastructure -----------------------------------------------------------------------

def env_is_set(name: str) -> bool:
    # The settings treat an empty variable as unset; so do we.
    return bool(os.environ.get(name, "").strip())


def start_infrastructure(stack: Stack) -> None:
    if env_is_set("KAFKA_BOOTSTRAP_SERVERS"):
        say(f"kafka     from environment: KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
    else:
        tansu = embedded.start_tansu(log_path=VAR / "tansu.log")
        stack.started.append(tansu)
        stack.env["KAFKA_BOOTSTRAP_SERVERS"] = tansu.address
        say(f"kafka     embedded Tansu on {tansu.address} (memory only; log {shown(VAR / 'tansu.log')})")
    check_stop()

    if env_is_set("REDIS_URL"):
        say(f"redis     from environment: REDIS_URL={without_password(os.environ['REDIS_URL'])}")
        problem = redis_problem(os.environ["REDIS_URL"])
        if problem:  # at once, not later as a flood of readiness-probe errors
            raise StartupError(f"REDIS_URL: {problem}, or unset REDIS_URL to use the embedded one")
    else:
        redis = embedded.start_redis(VAR / "redis")
        stack.started.append(redis)
        stack.env["REDIS_URL"] = f"redis://{redis.address}/0"
        say(f"redis     embedded redis-server on {stack.env['REDIS_URL']} (log {shown(VAR / 'redis' / 'redis.log')})")
    check_stop()

    if env_is_set("DATABASE_URL"):
        say(f"database  from environment: DATABASE_URL={without_password(os.environ['DATABASE_URL'])}")
    else:
        say(f"database  SQLite {shown(VAR / 'teddy.sqlite3')} (settings default)")


def use_metrics_dir(stack: Stack) -> None:
    """Every process of the run (setup commands, web, worker, beat) writes its metrics into one
    directory that /metrics adds up; emptied first, so the numbers are this run's."""
    if env_is_set("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = VAR / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


# --- The environment for commands beside the stack -------------------------------------

def settings_variables() -> set[str]:
    """The environment variables the settings read: each is read through one of the helpers of
    teddy_project/env.py, called with the variable's name."""
    text = (ROOT / "teddy_project" / "settings.py").read_text()
    return set(re.findall(r"\benv_\w+\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", text)) | {"DJANGO_SETTINGS_MODULE"}


def stack_env_text(env: dict[str, str], names: set[str], notes: list[str] = ()) -> str:
    """Shell-sourceable `NAME='value'` lines for every one of `names` set in `env`."""
    lines = ["# The environment of the running stack, for manage.py commands beside it:",
             f"#   set -a; . {shown(STACK_ENV)}; set +a; .venv/bin/python manage.py verify_integrity",
             "# Written by scripts/run and removed when it stops. It may hold key material: keep it private.",
             *(f"# {note}" for note in notes)]
    lines += [f"{name}={shlex.quote(env[name])}" for name in sorted(names) if env.get(name, "").strip()]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read, whole or not at all (a file left by an earlier
    run keeps no looser mode: a new one replaces it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_stack_env(stack: Stack, key_from_file: bool) -> None:
    env = {**stack.env, "TEDDY_DATA_DIR": str(VAR)}  # absolute: the same files from any directory
    notes = []
    if not env_is_set("DATABASE_URL"):
        notes.append(f"database: the SQLite file {shown(VAR / 'teddy.sqlite3')} (the settings' default in TEDDY_DATA_DIR)")
    if key_from_file:
        notes.append(f"TEDDY_MASTER_KEYS: the local master key of {shown(VAR / 'master-key')}")
    write_private(STACK_ENV, stack_env_text(env, settings_variables(), notes))
    stack.env_file = STACK_ENV


def remove_stack_env(stack: Stack) -> None:
    if stack.env_file is not None:
        with contextlib.suppress(FileNotFoundError):
            stack.env_file.unlink()
        stack.env_file = None


def check_stack_env(stack: Stack) -> bool:
    """`manage.py verify_integrity` with nothing but the env file's environment (sourced as the
    banner shows) runs against the running stack and exits 0."""
    base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if name in os.environ}
    script = (f"set -a; . {shlex.quote(str(stack.env_file))}; set +a; "
              f"exec {shlex.quote(sys.executable)} manage.py verify_integrity")
    try:
        done = subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, env=base, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        say(f"commands FAILED: verify_integrity with {shown(STACK_ENV)} did not finish within 120s")
        return False
    if done.returncode == 0:
        compared = [line for line in done.stdout.splitlines() if line.startswith("Kafka copy:")]
        say(f"commands OK: verify_integrity with {shown(STACK_ENV)} -> exit 0 "
            f"({compared[0] if compared else 'integrity verified'})")
        return True
    output = [line for line in (done.stdout + done.stderr).splitlines() if not re.match(r"%\d+\|", line)]
    say(f"commands FAILED: verify_integrity with {shown(STACK_ENV)} -> exit {done.returncode}:\n"
        + "\n".join("    " + line for line in output[-15:]))
    return False


# --- One-off setup ------------------------------------------------------------------------

def run_step(stack: Stack, title: str, args: list[str], show_output: bool = False,
             extra_env: dict[str, str] | None = None) -> str:
    """Runs a setup command to completion; its output goes to var/logs/setup.log, and to
    the console too when asked or when it fails."""
    setup_log = LOGS / "setup.log"
    with open(setup_log, "ab") as output:
        output.write(f"\n=== {title}: {' '.join(args)}\n".encode())
        output.flush()
        start = output.tell()
        env = {**stack.env, **(extra_env or {})}
        # The commands print their own report; their INFO log lines would repeat it.
        if not env_is_set("LOG_LEVEL"):
            env["LOG_LEVEL"] = "WARNING"
        process = spawn(args, env, output)
    while process.poll() is None:
        if _stop_requested.wait(0.1):
            process.terminate()
            process.wait()
            raise Stopping()
    with open(setup_log, "rb") as log_file:
        log_file.seek(start)
        text = log_file.read().decode(errors="replace").strip()
    if process.returncode != 0:
        # librdkafka repeats each connection failure many times ("%3|...|FAIL|..."); the
        # command's own message at the end says it once, so keep the excerpt to the rest.
        lines = [line for line in text.splitlines() if not re.match(r"%\d+\|", line)]
        raise StartupError(f"{title} failed (exit code {process.returncode}):\n"
                           + "\n".join("    " + line for line in lines[-15:])
                           + f"\n  full output: {shown(setup_log)}")
    if show_output and text:
        for line in text.splitlines():
            say(f"  {line}")
    return text


def manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


def admin_credentials() -> tuple[str, str, str]:
    """(username, password, where the password comes from). A generated password is kept in
    var/admin-password so the login stays the same from one run to the next."""
    username = os.environ.get("ADMIN_USERNAME", "").strip() or "admin"
    if env_is_set("ADMIN_PASSWORD"):
        return username, os.environ["ADMIN_PASSWORD"], "from ADMIN_PASSWORD"
    password_file = VAR / "admin-password"
    if password_file.exists() and password_file.read_text().strip():
        return username, password_file.read_text().strip(), f"stored in {shown(password_file)}"
    password = secrets.token_urlsafe(12)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return username, password, f"generated, stored in {shown(password_file)}"


def local_master_key() -> str:
    """The local run's master key, made once and kept in var/master-key: the personal data in
    the local database stays readable from one run to the next (losing it erases that data)."""
    key_file = VAR / "master-key"
    if key_file.exists() and key_file.read_text().strip():
        return key_file.read_text().strip()
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def check_settings(stack: Stack) -> set[str]:
    """Fails on a bad environment variable, with the settings' own message naming it, before
    anything is started; returns the management commands available."""
    run_step(stack, "checking settings", manage("check", "--database", "default"))
    return set(run_step(stack, "listing commands", manage("help", "--commands")).split())


def demo_login(stack: Stack) -> dict | None:
    """A demo parent's {"email", "password", "token", "parent_id"}, or None without one."""
    output = run_step(stack, "demo login", manage("shell", "--command", DEMO_LOGIN_SCRIPT))
    try:
        return json.loads(output.splitlines()[-1]) if output else None
    except ValueError:
        raise StartupError(f"demo login: unexpected output {output.splitlines()[-1]!r}; see "
                           f"{shown(LOGS / 'setup.log')}") from None


def set_up(stack: Stack, commands: set[str], kafka_is_embedded: bool) -> tuple[tuple[str, str, str], dict | None]:
    say("migrating the database ...")
    run_step(stack, "migrate", manage("migrate", "--noinput"))
    say("provisioning Kafka topics ...")
    run_step(stack, "provision_topics", manage("provision_topics"), show_output=True)
    if kafka_is_embedded and "refill_kafka" in commands:
        # The embedded broker keeps nothing across a restart, but the database does: publish
        # the stored events again before the relay and the web start adding new ones (nothing
        # else publishes yet, so there are no sends in flight to wait for).
        say("refilling the embedded Kafka from the database ...")
        run_step(stack, "refill_kafka", manage("refill_kafka", "--settle", "0"), show_output=True)
    run_step(stack, "collectstatic", manage("collectstatic", "--noinput", "--verbosity", "0"))

    username, password, source = admin_credentials()
    outcome = run_step(stack, "admin user", manage("shell", "--command", ADMIN_SCRIPT),
                       extra_env={"TEDDY_RUN_ADMIN_USERNAME": username,
                                  "TEDDY_RUN_ADMIN_PASSWORD": password})
    say(f"admin user '{username}' {outcome.splitlines()[-1] if outcome else 'ready'}")

    login = None
    if "load_demo_data" in commands:
        say("loading demo data ...")
        run_step(stack, "load_demo_data", manage("load_demo_data"), show_output=True)
        login = demo_login(stack)
    else:
        say("no load_demo_data command here: no demo data loaded")
    return (username, password, source), login


# --- Long-running children ----------------------------------------------------------------

def start_children(stack: Stack, port: int, with_worker: bool) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    if with_worker:
        celery = [sys.executable, "-m", "celery", "-A", "teddy_project"]
        level = f"--loglevel={os.environ.get('LOG_LEVEL', '').strip() or 'INFO'}"  # as the web server's
        stack.start_child("worker", [*celery, "worker", level, "--concurrency=2"])
        stack.start_child("beat", [*celery, "beat", level,
                                   "--schedule", str(VAR / "celerybeat-schedule")])
    else:
        say("--no-worker: no Celery worker or beat, so the outbox relay does not run")
    # --insecure: serve the admin's static files although DEBUG is off.
    stack.start_child("web", manage("runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"))
    stack.echo.start()


def dead_child(stack: Stack) -> Child | None:
    return next((child for child in stack.children if child.exited()), None)


def report_death(child: Child) -> None:
    say(f"{child.name} stopped unexpectedly ({child.describe_exit()}); end of {shown(child.log_path)}:")
    show(tail(child.log_path))


def get(url: str, limit: int | None = 300) -> tuple[int | None, str]:
    """(HTTP status or None, the body's first `limit` bytes (all: None) or the error)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(limit).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode(errors="replace").strip()
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def wait_until(stack: Stack, condition, timeout: float) -> bool:
    """Polls condition() until true or timeout; fails fast when a child dies."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        child = dead_child(stack)
        if child:
            report_death(child)
            raise StartupError(f"{child.name} died during start-up")
        if time.monotonic() >= deadline:
            return False
        pause(0.25)


def wait_for_web(stack: Stack, base: str, port: int) -> tuple[int | None, str]:
    if not wait_until(stack, lambda: port_answers(port), WEB_START_TIMEOUT):
        raise StartupError(f"the web server did not open port {port} within "
                           f"{WEB_START_TIMEOUT:.0f}s; see {shown(LOGS / 'web.log')}")
    # The port opens a moment before Django answers; give /health/ a short while.
    wait_until(stack, lambda: get(base + "/health/")[0] == 200, 15)
    return get(base + "/health/")


def print_banner(base: str, credentials: tuple[str, str, str], login: dict | None,
                 health: tuple[int | None, str], kafka_is_embedded: bool) -> None:
    username, password, source = credentials
    ready = get(base + "/health/ready/")
    logs = f"{shown(LOGS)}/<worker|beat|web|setup>.log"
    if kafka_is_embedded:
        logs += f", {shown(VAR / 'tansu.log')}"
    rule = "=" * 66
    show(f"\n{rule}\n  Teddy event store is running\n{rule}")
    show(f"  Admin        {base}/admin/\n"
         f"  Health       {base}/health/        (now: {health[0] or health[1]})\n"
         f"  Readiness    {base}/health/ready/  (now: {ready[0] or ready[1]})\n"
         f"  Admin login  {username} / {password}   ({source})\n"
         f"  API          {base}/api/v1/children/\n"
         f"  API docs     {base}/api/docs/\n"
         f"  Metrics      {base}/metrics        (Prometheus; dashboard: deploy/grafana/teddy-dashboard.json)\n"
         + "".join(f"  Admin login  {name} / {secret}   ({group}: the compliance audit trail)\n"
                   for name, group, secret in (login or {}).get("staff", []))
         + (f"  Parent login {login['email']} / {login['password']}   (demo parent {login['parent_id']})\n"
            f"  API token    {login['token']}   (send it as: Authorization: Token <token>)\n"
            if login else "")
         + f"  Logs         {logs}\n"
         f"  Commands     set -a; . {shown(STACK_ENV)}; set +a; .venv/bin/python manage.py verify_integrity\n"
         f"               (the stack's environment; removed when it stops)\n"
         f"\n  Ctrl-C to stop\n{rule}\n")


def check_ready(stack: Stack, base: str) -> bool:
    last: list[tuple[int | None, str]] = []

    def ready() -> bool:
        last[:] = [get(base + "/health/ready/")]
        return last[0][0] == 200

    ok = wait_until(stack, ready, READY_TIMEOUT)
    status, body = last[0]
    if ok:
        say(f"health ready OK: GET {base}/health/ready/ -> {status} {body}")
    else:
        say(f"health ready FAILED after {READY_TIMEOUT:.0f}s: GET {base}/health/ready/ -> "
            f"{status or 'no answer'} {body}")
    return ok


def check_api(stack: Stack, base: str, login: dict) -> bool:
    """The demo parent's children through the API, once the worker's projectors have them."""
    url = f"{base}/api/v1/children/"
    last: list[tuple[int | None, str]] = []

    def answered() -> bool:
        request = urllib.request.Request(url, headers={"Authorization": f"Token {login['token']}"})
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                last[:] = [(response.status, response.read(2000).decode(errors="replace"))]
        except urllib.error.HTTPError as exc:
            last[:] = [(exc.code, exc.read(300).decode(errors="replace"))]
        except OSError as exc:
            last[:] = [(None, str(exc))]
        return last[0][0] == 200 and last[0][1].strip() not in ("", "[]")

    ok = wait_until(stack, answered, READY_TIMEOUT)
    status, body = last[0] if last else (None, "no answer")
    if ok:
        say(f"API OK: GET {url} as {login['email']} -> {status} {body[:160]}...")
        ok = check_docs_page(base)
    else:
        say(f"API FAILED after {READY_TIMEOUT:.0f}s: GET {url} as {login['email']} -> {status or 'no answer'} "
            f"{body[:300]} (see the worker's log: its projection threads feed the read models)")
    return ok


def check_docs_page(base: str) -> bool:
    """/api/docs/ and the script it loads, served by the app itself (nothing from the internet)."""
    try:
        with urllib.request.urlopen(f"{base}/api/docs/", timeout=5) as response:
            page = response.read().decode(errors="replace")
        script = re.search(r'src="(/static/[^"]*swagger-ui-bundle[^"]*)"', page)
        if script is None:
            say("API docs FAILED: /api/docs/ does not load its script from /static/")
            return False
        with urllib.request.urlopen(base + script.group(1), timeout=5) as response:
            size = len(response.read())
    except (OSError, ValueError) as exc:
        say(f"API docs FAILED: {exc}")
        return False
    say(f"API docs OK: {base}/api/docs/ with {script.group(1)} ({size:,} bytes) served locally")
    return True


def check_admin(base: str, login: dict) -> bool:
    """The compliance admin as a demo officer sees it: the login form, the event list and the
    admin's own stylesheet, all served by the app."""
    import http.cookiejar

    name, _, secret = next(iter(login.get("staff", [])), (None, None, None))
    if name is None:
        return True
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        with opener.open(f"{base}/admin/login/", timeout=5) as response:
            form = response.read().decode(errors="replace")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
        data = urlencode({"username": name, "password": secret, "next": "/admin/eventsourcing_app/event/",
                                       "csrfmiddlewaretoken": token.group(1) if token else ""}).encode()
        request = urllib.request.Request(f"{base}/admin/login/", data=data, headers={"Referer": f"{base}/admin/login/"})
        with opener.open(request, timeout=10) as response:
            page = response.read().decode(errors="replace")
            if response.url.rstrip("/").endswith("/admin/login") or 'id="result_list"' not in page:
                say(f"admin FAILED: {name} could not open the event list after logging in")
                return False
        with opener.open(f"{base}/static/admin/css/base.css", timeout=5) as response:
            response.read()
    except (OSError, ValueError) as exc:
        say(f"admin FAILED: {exc}")
        return False
    say(f"admin OK: {name} logged in and listed the events at {base}/admin/eventsourcing_app/event/")
    return True


def check_metrics(stack: Stack, base: str, with_worker: bool) -> bool:
    """/metrics names every metric the dashboard shows, and counts the demo's work done in
    other processes: the setup's appends and, with a worker, the projectors' batches."""
    from prometheus_client.parser import text_string_to_metric_families

    from eventsourcing_app.metrics import REQUIRED_METRICS

    counted = {"teddy_events_appended_total"} | ({"teddy_projection_events_applied_total"} if with_worker else set())
    last: list[str] = []

    def complete() -> bool:
        status, body = get(base + "/metrics", limit=None)
        if status != 200:
            last[:] = [f"GET /metrics -> {status or 'no answer'} {body[:200]}"]
            return False
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
        missing = sorted(name for name in REQUIRED_METRICS if name not in samples)
        idle = sorted(name for name in counted if not samples.get(name))
        last[:] = [f"missing {', '.join(missing)}" if missing else f"nothing counted yet in {', '.join(idle)}"]
        return not missing and not idle

    ok = wait_until(stack, complete, READY_TIMEOUT)
    if ok:
        say(f"metrics OK: {base}/metrics has all {len(REQUIRED_METRICS)} metrics the dashboard shows, "
            f"with the demo's work counted ({', '.join(sorted(counted))})")
    else:
        say(f"metrics FAILED: {last[0] if last else 'no answer'}")
    return ok


def watch(stack: Stack) -> int:
    """Blocks until Ctrl-C/SIGTERM/SIGHUP or the console goes away (returns 0 via Stopping) or a
    child dies (returns 1)."""
    while True:
        child = dead_child(stack)
        if child:
            report_death(child)
            return 1
        if console_gone():
            say()  # meets the closed pipe: stops, as on Ctrl-C
            _stop_requested.set()
        pause(0.5)


def console_gone() -> bool:
    """Whether nobody reads our output any more (`scripts/run | head` once head has exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError):
        return True


# --- Entry point --------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/run", description="Run the Teddy event store with everything it needs.")
    parser.add_argument("--port", type=int, help="web port (default: $PORT or 8000; "
                        "with --check and neither given, any free port)")
    parser.add_argument("--no-worker", action="store_true",
                        help="do not start the Celery worker and beat")
    parser.add_argument("--check", action="store_true",
                        help="start everything, check /health/ready/ answers 200 within "
                             f"{READY_TIMEOUT:.0f}s, that the API and the admin answer and that `manage.py verify_integrity` "
                             "works with var/stack.env, stop, exit 0 or 1")
    return parser.parse_args(argv)


def choose_port(args: argparse.Namespace) -> int:
    if args.port:
        return args.port
    if os.environ.get("PORT", "").strip():
        if not os.environ["PORT"].strip().isdigit():
            raise StartupError(f"PORT={os.environ['PORT']!r} is not a port number")
        return int(os.environ["PORT"])
    # A check needs no particular port, and 8000 may well be taken by a running stack.
    return embedded.free_port() if args.check else 8000


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the web server binds: a port whose only users are the last run's closed
        # connections (TIME_WAIT, for a minute after Ctrl-C) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def hold_run_lock():
    """Two runs on one var/ directory would share the SQLite file, the beat schedule and the
    redis directory; refuse the second one. The lock goes away with this process."""
    handle = open(VAR / "run.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(f"another scripts/run is already using {shown(VAR)}; stop it first "
                           "(or give this one its own TEDDY_DATA_DIR)") from None
    return handle


def run(args: argparse.Namespace, stack: Stack) -> int:
    port = choose_port(args)
    if not port_is_free(port):
        raise StartupError(f"port {port} is already in use; pick another with --port N")
    base = f"http://127.0.0.1:{port}"

    stack.env.setdefault("DJANGO_SETTINGS_MODULE", "teddy_project.settings")
    stack.env["PYTHONUNBUFFERED"] = "1"  # log lines reach the files as they happen
    if env_is_set("TEDDY_DATA_DIR"):
        stack.env["TEDDY_DATA_DIR"] = str(VAR)  # made absolute: the children run from ROOT
    (LOGS / "setup.log").write_bytes(b"")  # this run's setup output only
    use_metrics_dir(stack)

    key_from_file = not env_is_set("TEDDY_MASTER_KEYS")
    if key_from_file:
        stack.env["TEDDY_MASTER_KEYS"] = local_master_key()
        say(f"privacy   master key from {shown(VAR / 'master-key')} (set TEDDY_MASTER_KEYS to use your own)")
    kafka_is_embedded = not env_is_set("KAFKA_BOOTSTRAP_SERVERS")
    say("checking settings ...")
    commands = check_settings(stack)
    start_infrastructure(stack)
    write_stack_env(stack, key_from_file)
    credentials, login = set_up(stack, commands, kafka_is_embedded)
    start_children(stack, port, with_worker=not args.no_worker)
    health = wait_for_web(stack, base, port)

    if args.check:
        ok = check_ready(stack, base)
        if ok and login and not args.no_worker:
            ok = check_api(stack, base, login)
        if ok and login:
            ok = check_admin(base, login)
        ok = ok and check_metrics(stack, base, with_worker=not args.no_worker)
        ok = ok and check_stack_env(stack)
        return 0 if ok else 1
    print_banner(base, credentials, login, health, kafka_is_embedded)
    return watch(stack)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    install_signal_handlers()
    stack = Stack()
    code = 0
    try:
        VAR.mkdir(parents=True, exist_ok=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        lock = hold_run_lock()  # noqa: F841 - held until this process exits
        code = run(args, stack)
    except Stopping:
        code = 1 if args.check else 0  # an interrupted check has not passed
    except StartupError as exc:
        say(f"error: {exc}")
        code = 1
    except TimeoutError as exc:  # an embedded service did not open its port
        say(f"error: {exc}")
        code = 1
    finally:
        if stack.started:
            say("stopping ...")
        stack.stop_all()
        remove_stack_env(stack)
    say("stopped" if code == 0 else f"stopped (exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
