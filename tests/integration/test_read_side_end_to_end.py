"""End to end, over real HTTP: a parent's command goes through the application layer into the
store, is published to Kafka, applied by the projection threads of a real Celery worker, and a
GET with ?min_version= shows it at once (no sleep, no polling by the test).

Also: events appended from several OS processes to one stream reach the read model without
waiting for the outbox relay's grace period (a later version published first is a gap the
projector fills from the mirror), and a killed worker's projectors are taken over.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from django.core.wsgi import get_wsgi_application

from eventsourcing_app.application.accounts import create_parent_account
from tests.integration.conftest import REPO, process_env
from tests.integration.helpers import serve_http
from tests.kafka_helpers import records_by_stream


@pytest.fixture(scope="module")
def http_server():
    with serve_http(get_wsgi_application()) as base:
        yield base


def call(base: str, method: str, path: str, token: str | None = None, body: dict | None = None):
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_a_command_over_http_reaches_the_read_model_through_kafka_and_the_worker(
        store, kafka_settings, celery_worker, http_server):
    tag = uuid.uuid4().hex[:10]
    account = create_parent_account(email=f"e2e-{tag}@example.com", password="a-long-test-password-1")
    status, _, token = call(http_server, "POST", "/api/v1/auth/token/",
                            body={"username": account.username, "password": "a-long-test-password-1"})
    assert status == 200 and token["token"] == account.token

    status, _, created = call(http_server, "POST", "/api/v1/children/", account.token,
                              {"child_id": f"c-{tag}", "name": "Juniper", "age": 8, "consent_method": "signed_form"})
    assert status == 201, created
    assert created["stream_id"] == f"child.c-{tag}" and created["version"] == 1

    status, headers, profile = call(http_server, "GET", f"/api/v1/children/c-{tag}/?min_version=1", account.token)
    assert status == 200, profile
    assert "X-Read-Model-Stale" not in headers
    assert (profile["name"], profile["age"], profile["version"]) == ("Juniper", 8, 1)

    status, _, changed = call(http_server, "PATCH", f"/api/v1/children/c-{tag}/", account.token, {"age": 9})
    assert status == 200 and changed["version"] == 2
    status, headers, profile = call(http_server, "GET", f"/api/v1/children/c-{tag}/?min_version=2", account.token)
    assert profile["age"] == 9 and headers.get("X-Read-Model-Version") == "2"
    # The dashboard is its own projector: the header form of read-your-writes waits for it.
    request_headers = {"X-Min-Version": f"child.c-{tag}@1"}
    req = urllib.request.Request(http_server + "/api/v1/children/", headers={
        "Authorization": f"Token {account.token}", **request_headers})
    with urllib.request.urlopen(req, timeout=30) as response:
        listed = json.loads(response.read())
        assert "X-Read-Model-Stale" not in response.headers
    assert [c["name"] for c in listed if c["child_id"] == f"c-{tag}"] == ["Juniper"]

    # The events went through Kafka (the read model was fed from there, not from the mirror).
    on_topic = records_by_stream(kafka_settings, "child", [f"child.c-{tag}"])[f"child.c-{tag}"]
    assert sorted({e.version for e in on_topic}) == [1, 2]


WRITER = """
import sys, django
django.setup()
from eventsourcing_app.application import Actor, Conflict
from eventsourcing_app.application.children import update_child_profile
from eventsourcing_app.eventstore import get_event_store
child_id, count, worker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(count):
    for attempt in range(5):  # a Conflict says "try again" (the handler gave up after its own retries)
        try:
            update_child_profile(actor=Actor.system(f"writer-{worker}"), child_id=child_id,
                                 changes={"interests": [f"w{worker}-{i}"]})
            break
        except Conflict:
            if attempt == 4:
                raise
get_event_store().flush(10)
"""


def test_events_from_several_processes_to_one_stream_reach_the_read_model_without_the_relay(
        store, celery_worker, http_server):
    """Each process publishes its own appends: a version can reach Kafka before the previous
    one (another process's) does. The projector fills that gap from the mirror at once; the
    relay, whose grace period is long here, has nothing to do with it."""
    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.children import register_child_with_consent
    from tests.integration.helpers import wait_until

    tag = uuid.uuid4().hex[:10]
    account = create_parent_account(email=f"multi-{tag}@example.com", password="a-long-test-password-1")
    register_child_with_consent(actor=Actor.system("tests"), parent_id=account.parent_id, child_id=f"c-{tag}",
                                name="Quinn", age=6, consent_method="signed_form")
    env = process_env()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, f"c-{tag}", "15", str(n)], cwd=REPO, env=env)
               for n in range(4)]
    assert [w.wait(180) for w in writers] == [0, 0, 0, 0]
    final = store.get_stream_version_sync(f"child.c-{tag}")
    assert final == 61
    status, headers, profile = call(http_server, "GET", f"/api/v1/children/c-{tag}/?min_version={final}",
                                    account.token)
    assert status == 200 and "X-Read-Model-Stale" not in headers, headers
    assert profile["version"] == final
    timeline = wait_until(lambda: _timeline_versions(http_server, account.token, f"c-{tag}", final))
    assert timeline == list(range(final, 0, -1))


def _timeline_versions(base, token, child_id, expected_top):
    versions, path = [], f"/api/v1/children/{child_id}/timeline/?page_size=100&min_version={expected_top}"
    while path:
        status, _, page = call(base, "GET", path, token)
        versions += [e["version"] for e in page["results"] if e["stream_id"] == f"child.{child_id}"]
        path = page["next"] and page["next"].replace(base, "")
    return versions if versions and versions[0] == expected_top else None
