"""Building aggregates for integration tests, through the public API."""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve_http(app):
    """Serves a WSGI app on a free port of 127.0.0.1 from a thread of this process (it shares
    the test database); yields its base URL."""
    from django.conf import settings

    hosts = settings.ALLOWED_HOSTS
    settings.ALLOWED_HOSTS = [*hosts, "127.0.0.1"]
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        settings.ALLOWED_HOSTS = hosts
