"""Correlation ids for logs and event metadata, carried through a request or task.

A request may send `X-Correlation-ID`; otherwise one is made. Log records carry it as
`correlation_id`, and the event store puts it on every event appended in that context.
"""
from __future__ import annotations

import contextvars
import logging
import re
import uuid
from contextlib import contextmanager
from typing import Iterator

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_causation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("causation_id", default=None)
_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)

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


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation_id.get() or "-"
        return True


def actor_of_request(request) -> str | None:
    """"user:<id>" for an authenticated user, else None."""
    user = getattr(request, "user", None)
    return f"user:{user.pk}" if user is not None and user.is_authenticated else None


class CorrelationIdMiddleware:
    """Takes the caller's X-Correlation-ID (if well-formed) or makes one, and echoes it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Correlation-ID", "")
        correlation_id = incoming if _SAFE_ID.fullmatch(incoming) else str(uuid.uuid4())
        # Read when an event is appended, not now: DRF authenticates (tokens) inside the view
        # and sets the user on this same request then.
        with event_context(correlation_id=correlation_id, actor=lambda: actor_of_request(request)):
            response = self.get_response(request)
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
