"""Settings for the Teddy event store, read once from environment variables.

Every variable has a safe default for local use; README.md lists them all. A bad value
fails at start-up with a message naming the variable.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_float, env_frequencies, env_int, env_list, env_master_keys, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("TEDDY_DATA_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-local-only-key-set-DJANGO_SECRET_KEY-in-production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]", r"[\w.\-\[\]:*]+")

INSTALLED_APPS = [
    "eventsourcing_app.admin_site.AuditAdminConfig",  # django.contrib.admin with the audit trail's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",  # parents' API tokens (application/accounts.py makes them)
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs page's assets, served locally
    "eventsourcing_app",
    "axes",  # limits failed admin logins
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # request counts and latencies (/metrics)
    # Outside everything that may answer on its own (a bad host, a redirect, a NUL byte), so the
    # request's id and its access-log line cover every answer.
    "eventsourcing_app.observability.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's static files under gunicorn
    "eventsourcing_app.admin.security.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Outside Axes: a locked-out login is counted as the 429 it is.
    "eventsourcing_app.request_metrics.PrometheusAfterMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a locked-out login into a 429 page (django-axes: last)
]

# The admin is the compliance audit trail: failed logins are limited per user name and
# address (django-axes, only on the admin's login), sessions end when idle or when the
# browser closes.
AUTHENTICATION_BACKENDS = [
    "eventsourcing_app.admin.security.AdminLoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ONLY_ADMIN_SITE = True
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100)
AXES_COOLOFF_TIME = env_float("ADMIN_LOGIN_COOLOFF_HOURS", 0.25, minimum=0.01, maximum=720.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
SESSION_COOKIE_AGE = env_int("SESSION_IDLE_SECONDS", 1800, minimum=60, maximum=7 * 24 * 3600)
SESSION_SAVE_EVERY_REQUEST = True  # the age counts from the last request: an idle session ends
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

ROOT_URLCONF = "teddy_project.urls"
WSGI_APPLICATION = "teddy_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: PostgreSQL in production and tests, a SQLite file for the one-command run.
_default_db_url = f"sqlite:///{DATA_DIR / 'teddy.sqlite3'}"
_database_url = env_str("DATABASE_URL", _default_db_url)
try:
    # Reused connections are checked before each request's first query (a lost one is replaced).
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=600, conn_health_checks=True)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not valid: {exc}") from None
if (DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and DATABASES["default"]["NAME"] in ("", ":memory:")
        and _database_url.strip() != "sqlite://:memory:"):
    # dj-database-url reads sqlite://relative.db as a database in memory, lost at exit.
    raise ImproperlyConfigured(
        f"DATABASE_URL={_database_url!r} names no database file: write sqlite:///relative/path.db (three "
        "slashes) or sqlite:////absolute/path.db (four)")
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database host that does not answer fails a connection in seconds instead of hanging it
    # (and the request, task or metrics refresh waiting on it); a URL's own value wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers wait for each other instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATA_DIR.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# --- Redis (Celery broker and result backend, caches).
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0", r"rediss?://\S+|unix://\S+")

# --- Celery.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery", r"[A-Za-z0-9._\-]{1,100}")

# --- Kafka and the event store.
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", r"[\w.\-]+:\d+(,[\w.\-]+:\d+)*")
KAFKA_TOPIC_PREFIX = env_str("KAFKA_TOPIC_PREFIX", "", r"[A-Za-z0-9._\-]{0,100}")
KAFKA_TOPIC_PARTITIONS = env_int("KAFKA_TOPIC_PARTITIONS", 12, minimum=1, maximum=10000)
KAFKA_REPLICATION_FACTOR = env_int("KAFKA_REPLICATION_FACTOR", 1, minimum=1, maximum=10)
# retention.ms of the event topics (365 days) and the snapshot topics (90 days); -1: for ever.
KAFKA_EVENT_RETENTION_MS = env_int("KAFKA_EVENT_RETENTION_MS", 31_536_000_000, minimum=-1)
KAFKA_SNAPSHOT_RETENTION_MS = env_int("KAFKA_SNAPSHOT_RETENTION_MS", 7_776_000_000, minimum=-1)
KAFKA_COMPRESSION = env_str("KAFKA_COMPRESSION", "lz4", r"none|gzip|snappy|lz4|zstd")
KAFKA_MESSAGE_TIMEOUT_MS = env_int("KAFKA_MESSAGE_TIMEOUT_MS", 10000, minimum=1000)
KAFKA_PUBLISH_ENABLED = env_bool("KAFKA_PUBLISH_ENABLED", True)

EVENTSTORE = {
    # Aggregate types that may hold streams; each has a topic eventstore.<type>.
    "STREAM_TYPES": env_list("EVENTSTORE_STREAM_TYPES", "child,parent,conversation", r"[a-z][a-z0-9_]{0,39}"),
    # Largest serialized event (payload plus metadata), below Kafka's 1 MB message limit.
    "MAX_EVENT_BYTES": env_int("EVENTSTORE_MAX_EVENT_BYTES", 900_000, minimum=1024, maximum=1_000_000),
    # The outbox relay leaves events younger than this to the publisher that appended them.
    "RELAY_GRACE_SECONDS": env_float("EVENTSTORE_RELAY_GRACE_SECONDS", 2.0),
    "RELAY_INTERVAL_SECONDS": env_float("EVENTSTORE_RELAY_INTERVAL_SECONDS", 1.0, minimum=0.1),
    "RELAY_BATCH_SIZE": env_int("EVENTSTORE_RELAY_BATCH_SIZE", 5000, minimum=1),
    # Readiness reports Kafka publishing as down once an event has waited this long.
    "PUBLISH_LAG_ALERT_SECONDS": env_float("EVENTSTORE_PUBLISH_LAG_ALERT_SECONDS", 30.0, minimum=1.0),
    # A snapshot every N events, per stream type ("child=10,conversation=50"); 0 switches it off.
    "SNAPSHOT_FREQUENCY": env_int("EVENTSTORE_SNAPSHOT_FREQUENCY", 10, minimum=0),
    "SNAPSHOT_FREQUENCIES": env_frequencies("EVENTSTORE_SNAPSHOT_FREQUENCIES"),
    "SNAPSHOTS_KEPT": env_int("EVENTSTORE_SNAPSHOTS_KEPT", 2, minimum=1),
    # Hot aggregates cached in Redis for this long (0: no cache).
    "AGGREGATE_CACHE_SECONDS": env_int("EVENTSTORE_AGGREGATE_CACHE_SECONDS", 300, minimum=0),
}

# --- Personal data: per-subject data keys, wrapped by a master key (crypto-shredding).
# TEDDY_MASTER_KEYS: base64 of 32 random bytes; several comma-separated during a rotation,
# the first wraps new data keys. Required: without it no personal data can be read or written.
TEDDY_MASTER_KEYS = env_master_keys("TEDDY_MASTER_KEYS")

# --- The read side: projectors in the Celery workers, and the parents' API.
PROJECTIONS = {
    # Each worker process runs one thread per projector (one of all holds each projector's lock).
    "RUN_IN_WORKER": env_bool("PROJECTIONS_RUN_IN_WORKER", True),
    "BATCH_SIZE": env_int("PROJECTIONS_BATCH_SIZE", 5000, minimum=1, maximum=100_000),
    # After a batch's first record, how long a projector waits for more before applying them.
    "LINGER_MS": env_int("PROJECTIONS_LINGER_MS", 10, minimum=0, maximum=1000),
    # How long a read with ?min_version= waits for the read model before answering stale.
    "READ_YOUR_WRITES_WAIT_SECONDS": env_float("PROJECTIONS_READ_YOUR_WRITES_WAIT_SECONDS", 2.0, maximum=30.0),
    # After a rebuild switches over, the old generation's rows are kept this long for reads
    # that started before the switch, then deleted.
    "SWITCH_GRACE_SECONDS": env_float("PROJECTIONS_SWITCH_GRACE_SECONDS", 3.0, maximum=600.0),
    # Readiness reports the projections down once an event has waited this long for them.
    "LAG_ALERT_SECONDS": env_float("PROJECTIONS_LAG_ALERT_SECONDS", 30.0, minimum=1.0),
}

CELERY_BEAT_SCHEDULE = {
    "relay-outbox": {
        "task": "eventsourcing_app.tasks.relay_outbox",
        "schedule": EVENTSTORE["RELAY_INTERVAL_SECONDS"],
        "options": {"expires": 10},
    },
}

REST_FRAMEWORK = {
    # Token first: an anonymous request is answered 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "eventsourcing_app.api.errors.TeddyAutoSchema",
    "EXCEPTION_HANDLER": "eventsourcing_app.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("API_THROTTLE_ANON", "60/min", r"\d+/(s|sec|m|min|h|hour|d|day)"),
        "user": env_str("API_THROTTLE_USER", "1200/min", r"\d+/(s|sec|m|min|h|hour|d|day)"),
        "auth": env_str("API_THROTTLE_AUTH", "20/min", r"\d+/(s|sec|m|min|h|hour|d|day)"),
    },
}

# Throttle counts shared by every web worker (Redis), not kept per process.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "teddy-cache",
    }
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Teddy parents' API",
    "DESCRIPTION": (
        "Your children, their profiles, conversations, safety alerts and timeline, and the changes you make. "
        "Authenticate with `Authorization: Token <key>` (POST /api/v1/auth/token/). Every error has the body "
        "`{\"error\": {\"status\", \"code\", \"message\", \"fields\"}}`. Reads come from read models that "
        "follow the events within moments; pass ?min_version= (or X-Min-Version) to read your own write."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ConsentMethodEnum": "eventsourcing_app.domain.parent.CONSENT_METHODS",
        "AlertStateEnum": "eventsourcing_app.api.serializers.ALERT_STATES",
    },
}

# --- Operations: logs and metrics.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO", r"DEBUG|INFO|WARNING|ERROR|CRITICAL")
# plain: readable lines (the local run); json: one JSON object per line, for a log collector.
LOG_FORMAT = env_str("LOG_FORMAT", "plain", r"plain|json")
# One access-log line per request, in that format, with the request's ids (instead of the WSGI
# server's own access log). Off by default: the development server logs requests itself.
LOG_REQUESTS = env_bool("LOG_REQUESTS", False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "eventsourcing_app.observability.LogContextFilter"}},
    "formatters": {
        "plain": {"()": "eventsourcing_app.observability.PlainFormatter"},
        "json": {"()": "eventsourcing_app.observability.json_formatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers off: its lines go through the console handler like all others
        # (one line each, in LOG_FORMAT), also with DJANGO_DEBUG and under runserver.
        "django": {"handlers": [], "propagate": True},
        "django.server": {"handlers": [], "propagate": True},
        "django.db.backends": {"level": "WARNING"},
    },
}
# Prometheus multiprocess mode: every process writes its metrics to files in this directory
# and /metrics adds up those of all processes that share it (in docker-compose, a container's
# processes; in the local run, all of them). Unset: each process keeps its own, as for a test
# or a command. prometheus_client reads the variable itself; it is checked here so that a bad
# one stops the process at once.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "", r"([^-\s].*)?")
if not PROMETHEUS_MULTIPROC_DIR:
    # Set but empty is unset here; prometheus_client would write its files into the working directory.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
# A Celery worker's own /metrics on this port (0: none), served by its main process for all
# its pool processes: in production each container has its own metrics directory and is
# scraped on its own. Needs PROMETHEUS_MULTIPROC_DIR (the pool processes' values are in it).
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)
if WORKER_METRICS_PORT and not PROMETHEUS_MULTIPROC_DIR:
    raise ImproperlyConfigured(f"WORKER_METRICS_PORT={WORKER_METRICS_PORT} needs PROMETHEUS_MULTIPROC_DIR: a worker's "
                               "pool processes report through that directory; set it, or WORKER_METRICS_PORT=0")
if PROMETHEUS_MULTIPROC_DIR:
    try:
        Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=PROMETHEUS_MULTIPROC_DIR):
            pass  # every process writes its metrics there: fail now, with the variable's name
    except OSError as exc:
        raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR={PROMETHEUS_MULTIPROC_DIR!r} is not a directory this "
                                   f"process can write to ({exc.strerror or exc})") from None
