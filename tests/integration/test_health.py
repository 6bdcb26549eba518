"""Health endpoints and the guide's health check."""
from __future__ import annotations

import asyncio

import pytest

from devtools.embedded import free_port
from eventsourcing_app.eventstore import check_event_store_health


@pytest.fixture(autouse=True)
def patient_publishing_check(settings):
    """Other tests leave events in the shared database's outbox on purpose; here only the
    dependency named is to be down (the publishing check has tests of its own)."""
    settings.EVENTSTORE = {**settings.EVENTSTORE, "PUBLISH_LAG_ALERT_SECONDS": 10**9}
    settings.PROJECTIONS = {**settings.PROJECTIONS, "LAG_ALERT_SECONDS": 10**9}


def test_liveness(client):
    response = client.get("/health/")
    assert response.status_code == 200 and response.json() == {"status": "alive"}


def test_readiness_when_everything_is_up(client):
    response = client.get("/health/ready/")
    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "database": "up", "redis": "up", "kafka": "up", "kafka_publishing": "up", "projections": "up"}
    assert set(checks["kafka_publishing"]) == {"status", "backlog", "oldest_waiting_seconds", "held_by_poison_events"}


def test_readiness_names_kafka_when_it_is_down(client, settings):
    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{free_port()}"
    response = client.get("/health/ready/")
    assert response.status_code == 503
    assert response.json()["down"] == ["kafka"]
    assert response.json()["checks"]["kafka"]["error"]


def test_readiness_names_redis_when_it_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/health/ready/")
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]


def test_readiness_names_missing_topics(client, settings):
    settings.KAFKA_TOPIC_PREFIX = "never-provisioned."
    body = client.get("/health/ready/").json()
    assert body["down"] == ["kafka"] and "provision_topics" in body["checks"]["kafka"]["error"]


def test_the_guides_event_store_health_check(store):
    assert asyncio.run(check_event_store_health()) == {"status": "healthy", "component": "event_store"}


def test_readiness_names_projectors_that_leave_events_unapplied(client, settings, store):
    """A projector generation nobody feeds falls behind: once an event has waited longer than
    the limit, it is named (the child stream below is followed by these four)."""
    import uuid

    from eventsourcing_app.eventstore import get_event_sourcing_service
    from eventsourcing_app.readside.operations import overdue_projectors
    from eventsourcing_app.readside.projectors import PROJECTORS
    from tests.integration.helpers import new_child

    get_event_sourcing_service().save_aggregate_sync(new_child())
    unfed = {name: -(1 + uuid.uuid4().int % 10**9) for name in PROJECTORS}
    overdue, _ = overdue_projectors(0.0, unfed)
    assert {"dashboard", "profiles", "conversations", "timeline"} <= set(overdue)
    assert overdue_projectors(10**9, unfed)[0] == []
