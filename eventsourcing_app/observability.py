"""Correlation ids for logs and event metadata, carried through a request or task, and the
log lines that show them.

A request may send `X-Correlation-ID`; otherwise one is made. The event store puts it, the
causation id and the actor on every event appended in that context. Every log record carries
them as `correlation_id`, `causation_id` and `actor`, with `stream_id` while the store works
on a stream (or given by the line itself, for lines about one event); LOG_FORMAT=json writes
each record as one JSON object, the default is a readable line.
"""
from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_causation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("causation_id", default=None)
_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)
_stream_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("stream_id", default=None)

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,100}")


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def current_causation_id() -> str | None:
    return _causation_id.get()


def current_actor() -> str | None:
    actor = _actor.get()
    return actor() if callable(actor) else actor


@contextmanager
def event_context(
    *, correlation_id: str | None = None, causation_id: str | None = None, actor=None
) -> Iterator[None]:
    """Sets the correlation id, causation id and actor (a string, or a function that returns
    one when an event is appended) for the events appended inside."""
    tokens = []
    if correlation_id is not None:
        tokens.append((_correlation_id, _correlation_id.set(correlation_id)))
    if causation_id is not None:
        tokens.append((_causation_id, _causation_id.set(causation_id)))
    if actor is not None:
        tokens.append((_actor, _actor.set(actor)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


@contextmanager
def stream_context(stream_id: str) -> Iterator[None]:
    """Log lines written inside name this stream."""
    token = _stream_id.set(stream_id)
    try:
        yield
    finally:
        _stream_id.reset(token)


def event_log_fields(metadata) -> dict:
    """`extra=` for a line about one stored event (its metadata), written outside the context
    that appended it: the publisher's thread, the relay, a projector."""
    return {"stream_id": metadata.stream_id, "correlation_id": metadata.correlation_id,
            "causation_id": metadata.causation_id, "actor": metadata.actor}


def _actor_for_log() -> str | None:
    # Never resolves a request's user for a log line (that may query the session store in the
    # middle of whatever is being logged): only an actor already known is shown.
    actor = _actor.get()
    if callable(actor):
        peek = getattr(actor, "peek", None)
        return peek() if peek is not None else None
    return actor


class LogContextFilter(logging.Filter):
    """Puts the context's ids on every record, unless the line gave its own (`extra=`). Django
    logs a request's 4xx/5xx after the middleware has left its context: the id is then taken
    from the request, which also gives the line its method and path (never the query string,
    which may hold search terms)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        request = fields.get("request")
        if request is not None and hasattr(request, "method") and "http_path" not in fields:
            record.http_method, record.http_path = request.method, printable(getattr(request, "path", ""))
            if fields.get("correlation_id") is None:
                record.correlation_id = getattr(request, "correlation_id", None)
        if fields.get("correlation_id") is None:
            record.correlation_id = _correlation_id.get()
        if fields.get("causation_id") is None:
            record.causation_id = _causation_id.get()
        if fields.get("stream_id") is None:
            record.stream_id = _stream_id.get()
        if fields.get("actor") is None:
            record.actor = _actor_for_log()
        return True


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger [cid=... stream=... actor=...] message`, naming only what is known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(context)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        shown = [f"{label}={getattr(record, name)}" for name, label in
                 (("correlation_id", "cid"), ("causation_id", "caused-by"), ("stream_id", "stream"), ("actor", "actor"))
                 if getattr(record, name, None)]
        record.context = f"[{' '.join(shown)}] " if shown else ""
        return super().format(record)


def json_formatter():
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, the
    context's ids (null when unknown), and whatever else the line gave in `extra=` (but the
    request object Django attaches, whose text holds the query string: http_method and
    http_path stand for it)."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(["levelname", "name", "message"], rename_fields={"levelname": "level", "name": "logger"},
                         timestamp=True, json_ensure_ascii=False, reserved_attrs=[*RESERVED_ATTRS, "request"])


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters escaped: a request path cannot forge a log line."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _RequestActor:
    """The actor of a request, read when an event is appended (DRF authenticates tokens inside
    the view and sets the user on this same request then)."""

    def __init__(self, request) -> None:
        self.request = request

    def __call__(self) -> str | None:
        return actor_of_request(self.request)

    def peek(self) -> str | None:
        from django.utils.functional import SimpleLazyObject, empty

        user = self.request.__dict__.get("user")
        if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
            return None
        return actor_of_request(self.request)


def actor_of_request(request) -> str | None:
    """"user:<id>" for an authenticated user, else None."""
    user = getattr(request, "user", None)
    return f"user:{user.pk}" if user is not None and user.is_authenticated else None


_request_logger = logging.getLogger("eventsourcing_app.requests")


class CorrelationIdMiddleware:
    """Takes the caller's X-Correlation-ID (if well-formed) or makes one, and echoes it back.
    With LOG_REQUESTS, writes one access-log line per request in the app's log format (method,
    path without the query string, which may hold search terms, status, milliseconds)."""

    def __init__(self, get_response):
        from django.conf import settings

        self.get_response = get_response
        self.log_requests = getattr(settings, "LOG_REQUESTS", False)

    def __call__(self, request):
        incoming = request.headers.get("X-Correlation-ID", "")
        correlation_id = incoming if _SAFE_ID.fullmatch(incoming) else str(uuid.uuid4())
        request.correlation_id = correlation_id  # for lines Django writes after this context ends
        started = time.perf_counter()
        with event_context(correlation_id=correlation_id, actor=_RequestActor(request)):
            response = self.get_response(request)
            if self.log_requests:
                elapsed = round((time.perf_counter() - started) * 1000, 1)
                method, path = printable(request.method or ""), printable(request.path)
                _request_logger.info("%s %s %s %.1fms", method, path, response.status_code, elapsed,
                                     extra={"method": method, "path": path, "status": response.status_code,
                                            "duration_ms": elapsed})
        response["X-Correlation-ID"] = correlation_id
        return response


_celery_connected = False


def connect_celery_signals() -> None:
    """Carries the correlation id, causation id and actor from the code that queues a task to
    the worker that runs it, so that events appended by tasks keep the request's context."""
    global _celery_connected
    if _celery_connected:
        return
    _celery_connected = True
    from celery.signals import before_task_publish, task_postrun, task_prerun

    contexts: dict[str, object] = {}

    @before_task_publish.connect(weak=False)
    def _add_context_headers(headers=None, **kwargs):
        if headers is not None:
            for name, value in (("correlation_id", current_correlation_id()), ("causation_id", current_causation_id()),
                                ("actor", current_actor())):
                if value is not None:
                    headers.setdefault(f"teddy_{name}", value)

    @task_prerun.connect(weak=False)
    def _enter_context(task_id=None, task=None, **kwargs):
        request = task.request if task is not None else None
        values = {name: getattr(request, f"teddy_{name}", None) for name in ("correlation_id", "causation_id", "actor")}
        values["correlation_id"] = values["correlation_id"] or str(task_id)
        if values["actor"] is None and task is not None:
            values["actor"] = f"system:{task.name}"
        context = event_context(**values)
        context.__enter__()
        contexts[task_id] = context

    @task_postrun.connect(weak=False)
    def _leave_context(task_id=None, **kwargs):
        context = contexts.pop(task_id, None)
        if context is not None:
            context.__exit__(None, None, None)
