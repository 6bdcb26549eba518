"""Shared fixtures. Unit tests need nothing running; integration tests (tests/integration)
use the real PostgreSQL (a test database made by pytest-django), Redis, a Tansu broker
started for the session, and real Celery workers."""
from __future__ import annotations

import uuid
from pathlib import Path


RUN_ID = uuid.uuid4().hex[:8]
LOG_DIR = Path(__file__).resolve().parent.parent / "var" / "test-logs"


def unique_stream(stream_type: str = "child") -> str:
    """A stream id no other test uses (the test database is shared by the whole session)."""
    return f"{stream_type}.{uuid.uuid4().hex[:12]}"
