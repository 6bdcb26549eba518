"""Building aggregates for integration tests, through the public API."""
from __future__ import annotations

import time
import uuid

from eventsourcing_app.domain import Child, ChildId, DeviceId, ParentId


def new_child(name: str = "Alice", age: int = 6) -> Child:
    child = Child(id=ChildId(f"child-{uuid.uuid4().hex[:10]}"), parent_id=ParentId(f"parent-{uuid.uuid4().hex[:6]}"),
                  device_id=DeviceId(f"bear-{uuid.uuid4().hex[:6]}"), name=name, age=age, udid="udid-0001")
    child.register_child()
    return child


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05):
    """Polls until condition() is truthy; returns its value or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s: {condition}")
