"""docker-compose.yml, checked without Docker.

- It is valid: against the Compose specification's JSON schema (the one Debian's docker-compose
  ships), and `docker-compose config` (Debian's 1.29.2, which needs no daemon) resolves it with
  a sample .env, keeping the start order. scripts/test installs docker-compose; without it the
  test fails rather than skips.
- The settings it passes are exactly the ones the app reads, both ways: a variable the app
  never reads (a typo) fails, naming it; so does one the app reads that compose neither passes
  nor leaves at its default on purpose (LEFT_AT_DEFAULT, with the reason), so that a new setting
  fails here until someone decides. The required and the production settings reach every app
  service, and every value it passes is accepted by the settings.
- What its commands name exists: manage.py commands, the Celery app, the WSGI module, the
  URLs of the health check and of Prometheus's scrape.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
# Where the app's own code reads the environment (besides the settings' env_* helpers).
APP_PACKAGES = ("teddy_project", "eventsourcing_app")

APP_IMAGE = "teddy-eventstore:latest"
APP_SERVICES = {"migrate", "web", "worker-snapshots", "worker-projections", "beat"}
ONE_SHOT = "migrate"
METRICS_DIR = "/app/var/metrics"

# Passed to every app service: what production must not leave to the local defaults.
PRODUCTION = {
    "DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_REPLICATION_FACTOR", "KAFKA_TOPIC_PARTITIONS",
    "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "LOG_FORMAT", "LOG_LEVEL", "LOG_REQUESTS",
    "PROMETHEUS_MULTIPROC_DIR", "WORKER_METRICS_PORT", "DJANGO_SETTINGS_MODULE", "TEDDY_DATA_DIR",
}
# May differ between app services (all others must be the same everywhere: a worker with another
# KAFKA_TOPIC_PARTITIONS or master key than the web server would be a broken deployment).
PER_SERVICE = {
    "PROJECTIONS_RUN_IN_WORKER": "only Celery workers start projection threads; each worker says whether it does",
}
# Read by the app, deliberately not passed: the default is what the production stack wants.
LEFT_AT_DEFAULT = {
    "KAFKA_TOPIC_PREFIX": "the stack has a Kafka cluster of its own; a prefix is for environments sharing one",
    "KAFKA_EVENT_RETENTION_MS": "365 days; the mirror keeps every event whatever Kafka drops",
    "KAFKA_SNAPSHOT_RETENTION_MS": "90 days on the compacted snapshot topics",
    "KAFKA_COMPRESSION": "lz4 suits the broker of the stack",
    "KAFKA_MESSAGE_TIMEOUT_MS": "a send not acknowledged within the default is left to the relay",
    "KAFKA_PUBLISH_ENABLED": "production publishes after every commit",
    "EVENTSTORE_STREAM_TYPES": "the aggregate types the code defines; another list is a code change",
    "EVENTSTORE_MAX_EVENT_BYTES": "below the 1 MB message limit that the stack's broker keeps",
    "EVENTSTORE_RELAY_GRACE_SECONDS": "the relay's grace period, as documented and tested",
    "EVENTSTORE_RELAY_INTERVAL_SECONDS": "beat sends the relay every second",
    "EVENTSTORE_RELAY_BATCH_SIZE": "the relay's batch, as benchmarked",
    "EVENTSTORE_PUBLISH_LAG_ALERT_SECONDS": "readiness alerts after 30 s of publishing lag",
    "EVENTSTORE_SNAPSHOT_FREQUENCY": "a snapshot every 10 events",
    "EVENTSTORE_SNAPSHOT_FREQUENCIES": "no per-type frequencies",
    "EVENTSTORE_SNAPSHOTS_KEPT": "two snapshots kept per stream",
    "EVENTSTORE_AGGREGATE_CACHE_SECONDS": "hot aggregates cached in Redis for 5 minutes",
    "CELERY_TASK_DEFAULT_QUEUE": "every task is sent to the default queue, which worker-snapshots consumes",
    "PROJECTIONS_BATCH_SIZE": "the projectors' batch, as benchmarked",
    "PROJECTIONS_LINGER_MS": "the projectors' linger, as benchmarked",
    "PROJECTIONS_READ_YOUR_WRITES_WAIT_SECONDS": "the API's wait for ?min_version=",
    "PROJECTIONS_SWITCH_GRACE_SECONDS": "old rows kept 3 s after a rebuild's switch",
    "PROJECTIONS_LAG_ALERT_SECONDS": "readiness alerts after 30 s of projection lag",
    "API_THROTTLE_ANON": "the API's documented rates",
    "API_THROTTLE_USER": "the API's documented rates",
    "API_THROTTLE_AUTH": "the API's documented rates",
    "ADMIN_LOGIN_FAILURE_LIMIT": "the admin's login limit, as documented",
    "ADMIN_LOGIN_COOLOFF_HOURS": "the admin's lockout time, as documented",
    "SESSION_IDLE_SECONDS": "sessions end after 30 idle minutes",
}
# Set by the image for Python and pip themselves, not for the app.
IMAGE_ONLY_PREFIXES = ("PYTHON", "PIP_")

SAMPLE_ENV = {
    "DJANGO_SECRET_KEY": "sample-secret-key-for-the-compose-test-only-0123456789",
    "TEDDY_MASTER_KEYS": "dGVzdC1vbmx5LW1hc3Rlci1rZXktMDEyMzQ1Njc4OTA=",
    "POSTGRES_PASSWORD": "samplepassword1",
    "DJANGO_ALLOWED_HOSTS": "teddy.example.com",
    "KAFKA_TOPIC_PARTITIONS": "24",
    "LOG_LEVEL": "WARNING",
}


# --- reading the compose file, the image and the app --------------------------------------------

@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<:` merges, as Compose does


def services() -> dict[str, dict]:
    return compose()["services"]


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", "NAME"]
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {name: None if value is None else str(value) for name, value in env.items()}


def app_services() -> dict[str, dict]:
    return {name: service for name, service in services().items() if service.get("image") == APP_IMAGE}


@cache
def image_environment() -> dict[str, str]:
    """The ENV of the Dockerfile (every app container has it)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for item in shlex.split(line.strip()[4:]):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def app_env_of(service: dict) -> dict[str, str | None]:
    """What the app in this service's container finds: the image's ENV, then compose's."""
    return {**image_environment(), **environment(service)}


@cache
def env_helpers_without_default() -> frozenset[str]:
    """The helpers of teddy_project/env.py that read a required variable: `_read(name, None, ...)`."""
    tree = ast.parse((REPO / "teddy_project" / "env.py").read_text())
    required = set()
    for function in tree.body:
        if isinstance(function, ast.FunctionDef):
            for node in ast.walk(function):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_read"
                        and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                        and node.args[1].value is None):
                    required.add(function.name)
    return frozenset(required)


@cache
def settings_reads() -> dict[str, dict]:
    """Every env_*("NAME", ...) call of the settings: NAME -> helper, default, line."""
    tree = ast.parse((REPO / "teddy_project" / "settings.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_")
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            default = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else None
            found[node.args[0].value] = {"helper": node.func.id, "default": default,
                                         "where": f"teddy_project/settings.py:{node.lineno}"}
    assert found, "no env_*() call found in teddy_project/settings.py: has the way settings are read changed?"
    return found


def _environ_key(node: ast.AST, parents: dict) -> ast.AST | None:
    """For a use of os.environ / os.getenv: the expression naming the variable, if there is one."""
    parent = parents.get(node)
    name = node.attr if isinstance(node, ast.Attribute) else node.id
    if name == "getenv":
        return parent.args[0] if isinstance(parent, ast.Call) and parent.args else None
    if isinstance(parent, ast.Subscript):
        return parent.slice
    if isinstance(parent, ast.Attribute) and parent.attr in ("get", "setdefault", "pop"):
        call = parents.get(parent)
        return call.args[0] if isinstance(call, ast.Call) and call.args else None
    if isinstance(parent, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in parent.ops):
        return parent.left
    return None  # os.environ passed around, copied, iterated: which variable, nobody can say


@cache
def code_reads() -> tuple[dict[str, str], tuple[str, ...]]:
    """Variables read through os.environ / os.getenv in the app's code: (NAME -> where, reads
    whose variable is not a literal). teddy_project/env.py's _read is the env_* helpers' own."""
    found, unknown = {}, []
    for package in APP_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if not ((isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                         and isinstance(node.value, ast.Name) and node.value.id == "os")
                        or (isinstance(node, ast.Name) and node.id in ("environ", "getenv"))):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                key = _environ_key(node, parents)
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    found.setdefault(key.value, where)
                elif path.relative_to(REPO).as_posix() != "teddy_project/env.py":
                    unknown.append(where)
    return found, tuple(unknown)


def app_reads() -> dict[str, str]:
    """Every variable the app reads -> where."""
    reads = {name: read["where"] for name, read in settings_reads().items()}
    for name, where in code_reads()[0].items():
        reads.setdefault(name, where)
    return reads


def required_settings() -> set[str]:
    return {name for name, read in settings_reads().items() if read["helper"] in env_helpers_without_default()}


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def shell_steps(command: list[str]) -> list[list[str]]:
    """The simple commands of a service: its command, or the `&&`-chained ones of `sh -c "..."`."""
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(step) for step in command[2].split("&&")]
    return [command]


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def module_assigns(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
               for node in tree.body)


@cache
def management_commands() -> frozenset[str]:
    """manage.py's commands, found as files: Django's own and those of every installed app."""
    tree = ast.parse((REPO / "teddy_project" / "settings.py").read_text())
    apps = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "INSTALLED_APPS" for t in node.targets))
    directories = [Path(importlib.util.find_spec("django").submodule_search_locations[0]) / "core"]
    for entry in apps:
        parts = entry.split(".")
        for end in range(len(parts), 0, -1):  # "package.apps.SomeConfig": the package
            try:
                spec = importlib.util.find_spec(".".join(parts[:end]))
            except (ImportError, AttributeError, ValueError):
                spec = None
            if spec is not None and spec.submodule_search_locations:
                directories.append(Path(spec.submodule_search_locations[0]))
                break
    return frozenset(path.stem for directory in directories
                     for path in (directory / "management" / "commands").glob("*.py") if not path.stem.startswith("_"))


def failures_message(failures: list[str]) -> str:
    return "\n".join(["", *failures])


# --- the settings, both ways ---------------------------------------------------------------------

def test_the_app_services_are_the_ones_expected():
    assert set(app_services()) == APP_SERVICES, (
        f"app services (image {APP_IMAGE}) are {sorted(app_services())}; this test knows {sorted(APP_SERVICES)}: "
        "update APP_SERVICES (and what it checks of each)")
    for name, service in app_services().items():
        assert service.get("build") == ".", f"{name} is not built from this repository's Dockerfile"


def test_the_app_reads_its_environment_only_through_names_written_out():
    _, unknown = code_reads()
    assert not unknown, ("the app reads the environment with a variable name this test cannot see (use a literal "
                         "name, or teach tests/unit/test_compose.py): " + ", ".join(unknown))
    reads = app_reads()
    for name in ("DATABASE_URL", "TEDDY_MASTER_KEYS", "DJANGO_SETTINGS_MODULE", "KAFKA_TOPIC_PARTITIONS"):
        assert name in reads, f"{name} is not found among the variables the app reads: the scan is broken"
    assert "TEDDY_MASTER_KEYS" in required_settings()


def test_every_variable_compose_passes_to_the_app_is_one_the_app_reads():
    reads = app_reads()
    failures = [f"docker-compose.yml passes {name} to {service_name}, but the app never reads it "
                "(a typo, or a setting that is gone?)"
                for service_name, service in sorted(app_services().items())
                for name in sorted(environment(service)) if name not in reads]
    failures += [f"the Dockerfile sets {name} (ENV), but the app never reads it"
                 for name in sorted(image_environment())
                 if name not in reads and not name.startswith(IMAGE_ONLY_PREFIXES)]
    assert not failures, failures_message(failures)


def test_the_required_and_the_production_settings_reach_every_app_service():
    wanted = required_settings() | PRODUCTION
    failures = [f"{name} is not passed to {service_name}"
                + (" (it is required: the app does not start without it)" if name in required_settings() else "")
                for service_name, service in sorted(app_services().items())
                for name in sorted(wanted) if name not in app_env_of(service)]
    assert not failures, failures_message(failures)


def test_every_setting_the_app_reads_is_passed_or_left_at_its_default_on_purpose():
    passed = set(image_environment()).union(*(environment(service) for service in app_services().values()))
    reads = app_reads()
    failures = [f"{name} (read at {where}) is neither passed by docker-compose.yml nor in LEFT_AT_DEFAULT of "
                "tests/unit/test_compose.py: pass it to the app services or list it there with the reason"
                for name, where in sorted(reads.items()) if name not in passed and name not in LEFT_AT_DEFAULT]
    failures += [f"LEFT_AT_DEFAULT lists {name}, which the app no longer reads" for name in sorted(LEFT_AT_DEFAULT)
                 if name not in reads]
    failures += [f"LEFT_AT_DEFAULT lists {name}, which docker-compose.yml passes" for name in sorted(LEFT_AT_DEFAULT)
                 if name in passed]
    failures += [f"{name} is required (no default) and cannot be left at its default"
                 for name in sorted(required_settings() & set(LEFT_AT_DEFAULT))]
    assert not failures, failures_message(failures)


def test_the_app_services_share_one_environment():
    envs = {name: environment(service) for name, service in app_services().items()}
    reference_name = "web"
    reference = {k: v for k, v in envs[reference_name].items() if k not in PER_SERVICE}
    failures = []
    for name, env in sorted(envs.items()):
        shared = {k: v for k, v in env.items() if k not in PER_SERVICE}
        for variable in sorted(set(shared) | set(reference)):
            if shared.get(variable, "<not passed>") != reference.get(variable, "<not passed>"):
                failures.append(f"{variable} is {shared.get(variable, '<not passed>')!r} in {name} but "
                                f"{reference.get(variable, '<not passed>')!r} in {reference_name}")
    assert not failures, failures_message(failures)


def test_each_worker_says_whether_it_runs_the_projections_and_takes_only_its_own_queue():
    default_queue = settings_reads()["CELERY_TASK_DEFAULT_QUEUE"]["default"]
    settings_text = (REPO / "teddy_project" / "settings.py").read_text()
    assert "CELERY_TASK_ROUTES" not in settings_text, "tasks are routed: check the workers' --queues again"
    snapshots, projections = services()["worker-snapshots"], services()["worker-projections"]
    assert environment(snapshots).get("PROJECTIONS_RUN_IN_WORKER") == "false"
    assert environment(projections).get("PROJECTIONS_RUN_IN_WORKER") == "true"
    # The snapshots worker consumes the queue every task is sent to; the projections worker not.
    assert option(command_of(snapshots), "-Q", "--queues") in (None, default_queue)
    queues = option(command_of(projections), "-Q", "--queues")
    assert queues and default_queue not in queues.split(","), (
        f"worker-projections consumes {queues!r}: it must not take tasks from the default queue {default_queue!r}")
    # Each pool process starts the projector threads (worker_process_init): a prefork pool.
    assert option(command_of(projections), "-P", "--pool") in (None, "prefork")


# --- start order, health, restarts, the metrics volume --------------------------------------------

def test_the_start_order_is_infrastructure_then_migrate_then_the_app():
    svc = services()
    migrate_deps = svc[ONE_SHOT]["depends_on"]
    assert migrate_deps == {"postgres": {"condition": "service_healthy"}, "kafka": {"condition": "service_healthy"}}
    failures = []
    for name in sorted(APP_SERVICES - {ONE_SHOT}):
        deps = svc[name].get("depends_on") or {}
        for dependency, condition in (("postgres", "service_healthy"), ("redis", "service_healthy"),
                                      ("kafka", "service_healthy"), (ONE_SHOT, "service_completed_successfully")):
            if (deps.get(dependency) or {}).get("condition") != condition:
                failures.append(f"{name} does not wait for {dependency} ({condition})")
    for name, service in sorted(svc.items()):
        for dependency, spec in (service.get("depends_on") or {}).items():
            if spec.get("condition") == "service_healthy" and "healthcheck" not in svc[dependency]:
                failures.append(f"{name} waits for {dependency} to be healthy, which has no healthcheck")
    assert not failures, failures_message(failures)


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy():
    failures = []
    for name, service in sorted(services().items()):
        if name == ONE_SHOT:
            if service.get("restart") != "no":
                failures.append(f"{name} is a one-shot: restart must be \"no\"")
            continue
        if not (service.get("healthcheck") or {}).get("test"):
            failures.append(f"{name} has no healthcheck")
        if service.get("restart") not in ("always", "unless-stopped", "on-failure"):
            failures.append(f"{name} has no restart policy")
    assert not failures, failures_message(failures)


def test_every_app_container_has_its_own_empty_metrics_directory_and_each_is_scraped():
    """prometheus_client's directory must be empty when a container's processes start, and
    must not be shared with processes that may be gone or alive elsewhere: a tmpfs per
    container. So Prometheus scrapes the web server and every worker replica."""
    failures = []
    for name, service in sorted(app_services().items()):
        mounts = [v for v in service.get("volumes") or [] if isinstance(v, dict) and v.get("target") == METRICS_DIR]
        if not mounts or mounts[0].get("type") != "tmpfs":
            failures.append(f"{name} has no tmpfs at {METRICS_DIR}")
        elif not (mounts[0].get("tmpfs") or {}).get("size"):
            failures.append(f"{name}: the tmpfs at {METRICS_DIR} has no size (it would grow into the memory)")
        if any(isinstance(v, str) and METRICS_DIR in v for v in service.get("volumes") or []):
            failures.append(f"{name} mounts a volume at {METRICS_DIR}: its files would outlive the processes")
        if environment(service).get("PROMETHEUS_MULTIPROC_DIR") != METRICS_DIR:
            failures.append(f"{name}: PROMETHEUS_MULTIPROC_DIR is not {METRICS_DIR}")
        if environment(service).get("LOG_FORMAT") != "json":
            failures.append(f"{name}: LOG_FORMAT is not json")
    workers = [name for name, service in app_services().items()
               if command_of(service)[:1] == ["celery"] and "worker" in command_of(service)]
    port = {environment(services()[name]).get("WORKER_METRICS_PORT") for name in workers}
    assert len(port) == 1 and port != {None}, f"the workers serve no metrics port: {port}"
    scrape = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    discovered = [(names, config["port"]) for job in scrape.values() for config in job.get("dns_sd_configs", [])
                  for names in config["names"]]
    worker_port = int(next(iter(port)))
    missing = [name for name in workers if (name, worker_port) not in discovered]
    assert not missing, f"Prometheus does not scrape {missing} on port {port}"
    assert not failures, failures_message(failures)


# --- what the commands name exists -----------------------------------------------------------------

def test_the_manage_py_commands_exist():
    known = management_commands()
    assert {"migrate", "check", "provision_topics", "createsuperuser"} <= known, "the command scan is broken"
    used = [(name, step[2]) for name, service in app_services().items() for step in shell_steps(command_of(service))
            if step[:2] == ["python", "manage.py"]]
    assert ("migrate", "provision_topics") in used
    failures = [f"{name} runs `manage.py {command}`, which does not exist" for name, command in used
                if command not in known]
    assert not failures, failures_message(failures)


def test_the_celery_gunicorn_and_url_references_exist():
    failures = []
    celery_module = REPO / "teddy_project" / "celery.py"
    for name, service in sorted(app_services().items()):
        for step in shell_steps(command_of(service)):
            if step[:1] == ["celery"]:
                app = option(step, "-A", "--app")
                if app != "teddy_project" or not module_assigns(celery_module, "app"):
                    failures.append(f"{name}: celery -A {app} names no Celery app (teddy_project/celery.py: app)")
            if step[:1] == ["gunicorn"]:
                module, _, attribute = step[1].partition(":")
                path = REPO / Path(*module.split(".")).with_suffix(".py")
                if not path.exists() or not module_assigns(path, attribute):
                    failures.append(f"{name}: gunicorn {step[1]} names no WSGI application")
        # A worker's health check pings the worker by the node name it gave itself.
        step = command_of(service)
        if step[:1] == ["celery"] and "worker" in step:
            node = option(step, "-n", "--hostname") or "celery@%h"
            check = " ".join(service["healthcheck"]["test"][1:])
            if f"--destination {node.replace('%h', '$$HOSTNAME')}" not in check:
                failures.append(f"{name}: the health check does not ping the worker's node {node}")
    urls = (REPO / "teddy_project" / "urls.py").read_text()
    web = services()["web"]
    assert "http://localhost:8000/health/ready/" in " ".join(web["healthcheck"]["test"])
    assert 'path("health/ready/"' in urls
    assert option(command_of(web), "--bind") == "0.0.0.0:8000" and "8000:8000" in web["ports"]
    # One access log, the app's (LOG_REQUESTS): gunicorn's would repeat it, query strings included.
    assert environment(web)["LOG_REQUESTS"] == "true"
    assert not {"--access-logfile", "--access-logformat"} & {arg.split("=")[0] for arg in command_of(web)}
    # Prometheus scrapes the web server by its service name: an allowed host, a URL that exists.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["web:8000"] and scrape["metrics_path"] == "/metrics"
    assert all(job.get("metrics_path", "/metrics") == "/metrics"
               for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"])
    assert 'path("metrics"' in urls, "urls.py has no /metrics for Prometheus to scrape"
    assert "web" in environment(web)["DJANGO_ALLOWED_HOSTS"].split(",")
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services()["prometheus"]["volumes"]
    # Beat's health check looks at the schedule file beat is told to write, in the image's data dir.
    beat = services()["beat"]
    schedule = option(command_of(beat), "--schedule", "-s")
    assert schedule.startswith(image_environment()["TEDDY_DATA_DIR"] + "/")
    assert Path(schedule).name + "*" in " ".join(beat["healthcheck"]["test"])
    assert not failures, failures_message(failures)


# --- validity: the Compose specification, docker-compose config, the settings' own checks ----------

def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is not installed: scripts/test installs Debian's docker-compose (apt-get install "
                    "docker-compose); it validates docker-compose.yml without a Docker daemon")
    return path


@cache
def compose_spec_schema() -> dict:
    """The Compose specification's JSON schema that Debian's docker-compose ships in its module."""
    interpreter = Path(docker_compose()).read_text().splitlines()[0].removeprefix("#!").split()
    found = subprocess.run([*interpreter, "-c", "import compose.config, pathlib; print(pathlib.Path("
                            "compose.config.__file__).with_name('compose_spec.json'))"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, f"docker-compose's Python module was not found: {found.stderr}"
    return json.loads(Path(found.stdout.strip()).read_text())


def test_the_compose_file_is_valid_against_the_compose_specification():
    schema = compose_spec_schema()
    assert schema.get("title") == "Compose Specification"
    # It declares draft 2019-09 by a URL ("http://...schema#") that jsonschema does not map itself.
    assert "draft/2019-09" in schema.get("$schema", ""), schema.get("$schema")
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, failures_message(
        [f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}" for error in errors])


def run_compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env_file = tmp_path / "sample.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    # Only the sample reaches the interpolation: not the test run's DATABASE_URL or master key.
    return subprocess.run([docker_compose(), "--project-directory", str(REPO), "--file", str(COMPOSE),
                           "--env-file", str(env_file), "config"],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})


@pytest.fixture(scope="module")
def resolved_config(tmp_path_factory):
    """docker-compose.yml as `docker-compose config` resolves it with SAMPLE_ENV."""
    done = run_compose_config(tmp_path_factory.mktemp("compose"), SAMPLE_ENV)
    assert done.returncode == 0, f"docker-compose config refused docker-compose.yml:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


def test_docker_compose_config_resolves_it_with_a_sample_env_keeping_the_order_and_checks(resolved_config):
    config = resolved_config["services"]
    assert set(config) == set(services())
    web = config["web"]["environment"]
    assert web["DATABASE_URL"] == f"postgres://teddy:{SAMPLE_ENV['POSTGRES_PASSWORD']}@postgres:5432/teddy"
    assert web["TEDDY_MASTER_KEYS"] == SAMPLE_ENV["TEDDY_MASTER_KEYS"]
    assert web["DJANGO_ALLOWED_HOSTS"] == f"localhost,web,{SAMPLE_ENV['DJANGO_ALLOWED_HOSTS']}"
    assert str(web["KAFKA_TOPIC_PARTITIONS"]) == SAMPLE_ENV["KAFKA_TOPIC_PARTITIONS"]
    # docker-compose 1.29.2 understood the file as written: nothing dropped or changed.
    for name, service in services().items():
        assert (config[name].get("depends_on") or {}) == (service.get("depends_on") or {}), name
        assert bool(config[name].get("healthcheck")) == bool(service.get("healthcheck")), name
        assert config[name].get("restart") == service.get("restart"), name
        assert set(config[name].get("environment") or {}) == set(environment(service)), name


def test_docker_compose_config_refuses_a_missing_secret_naming_it(tmp_path):
    for missing in ("DJANGO_SECRET_KEY", "TEDDY_MASTER_KEYS", "POSTGRES_PASSWORD"):
        done = run_compose_config(tmp_path, {k: v for k, v in SAMPLE_ENV.items() if k != missing})
        assert done.returncode != 0 and f"set {missing}" in done.stderr, (missing, done.stderr)


def test_the_settings_accept_every_value_compose_passes(resolved_config, tmp_path):
    """Each app service's resolved environment, as its container has it, loads the settings
    (every value validated, the metrics module set up) without a service running."""
    for name in sorted(APP_SERVICES):
        passed = resolved_config["services"][name]["environment"]
        env = {**image_environment(), **{k: str(v) for k, v in passed.items()}}
        env.update(TEDDY_DATA_DIR=str(tmp_path / name), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / name / "metrics"))
        (tmp_path / name / "metrics").mkdir(parents=True)
        done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={"PATH": os.environ["PATH"], **env})
        assert done.returncode == 0, f"{name}'s environment does not load the settings:\n{done.stderr[-2000:]}"
