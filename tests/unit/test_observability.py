"""Correlation ids travel from the code that queues a Celery task to the worker running it."""
from __future__ import annotations

from types import SimpleNamespace


class FakeTask:
    """What the signals see of a task: its name and its request (with the message headers)."""

    def __init__(self, name: str, **headers) -> None:
        self.name, self.request = name, SimpleNamespace(**headers)

from celery.signals import before_task_publish, task_postrun, task_prerun

from eventsourcing_app.observability import (
    connect_celery_signals,
    current_actor,
    current_correlation_id,
    event_context,
)

connect_celery_signals()


def test_a_task_runs_in_the_context_of_the_code_that_queued_it():
    headers: dict = {}
    with event_context(correlation_id="req-77", actor="user:5"):
        before_task_publish.send(sender="t", headers=headers)
    assert headers["teddy_correlation_id"] == "req-77" and headers["teddy_actor"] == "user:5"

    task = FakeTask("eventsourcing_app.tasks.create_snapshot", **headers)
    task_prerun.send(sender=task, task_id="task-1", task=task)
    assert (current_correlation_id(), current_actor()) == ("req-77", "user:5")
    task_postrun.send(sender=task, task_id="task-1", task=task)
    assert current_correlation_id() is None


def test_a_task_queued_without_context_gets_its_own_correlation_id():
    task = FakeTask("eventsourcing_app.tasks.relay_outbox")
    task_prerun.send(sender=task, task_id="task-2", task=task)
    assert (current_correlation_id(), current_actor()) == ("task-2", "system:eventsourcing_app.tasks.relay_outbox")
    task_postrun.send(sender=task, task_id="task-2", task=task)
