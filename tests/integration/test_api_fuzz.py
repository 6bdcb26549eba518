"""Schemathesis against the live OpenAPI schema of the parents' API (/api/schema/), through
Django's WSGI application, against the real store, database, broker and a Celery worker.

Every operation is fuzzed (positive and negative data, and the coverage phase's boundary
cases) as a parent with a valid token. Half of the generated cases carry the parent's real
child, conversation and alert ids, and bodies also come with a valid age and the real login,
so that fuzzing gets past the 404 and the first validation into the commands and queries.
Checked on every answer:
- no 5xx (`not_a_server_error`);
- a documented answer matches its documented schema (`response_schema_conformance`);
- every non-2xx answer, documented or not (405, 415, ...), has the one error body
  {"error": {"status", "code", "message", "fields"}}, `status` equal to the HTTP status.
And once the module is done: every operation fuzzed answered 2xx at least once (the fuzzing
reached the working path, it did not only bounce off validation).

The data is derandomized (the same cases every run) so that a failure reproduces; drop
`derandomize` locally to explore further.
"""
from __future__ import annotations

import uuid

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from eventsourcing_app.application import Actor
from eventsourcing_app.application.accounts import create_parent_account
from eventsourcing_app.application.children import register_child_with_consent
from eventsourcing_app.application.conversations import (
    end_conversation, raise_safety_flag, record_message, start_conversation, summarize_conversation,
)
from eventsourcing_app.domain.child import MAX_AGE, MIN_AGE
from tests.integration.helpers import wait_until

BEAR = Actor.system("device-service")
PASSWORD = "correct-horse-battery"
GENEROUS_RATES = {"anon": "100000/min", "user": "100000/min", "auth": "100000/min"}
# Withdrawing consent deactivates the child: it gets a child of its own, so that the other
# commands keep reaching an active one.
WITHDRAWAL = "DELETE /api/v1/children/{child_id}/consent/"
TOKEN = "POST /api/v1/auth/token/"

# Loaded at collection (the schema needs no database): one test per operation. (Schemathesis'
# lazy `from_fixture` loader does not run under this pytest: it sets `Node._nodeid`.)
with pytest.MonkeyPatch.context() as patch:
    # Anonymous, from the address of every test client before it (the counts are in Redis).
    patch.setattr(SimpleRateThrottle, "THROTTLE_RATES", GENEROUS_RATES)
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())

REAL: dict[str, str] = {}  # the family's ids and login, set by the `family` fixture before any case is made
OBSERVED: dict[str, set[int]] = {}  # operation -> statuses answered


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # The generated values, or the same parameters with the family's real ids (None: the
    # operation has no path parameters).
    if not isinstance(path_parameters, dict) or not set(path_parameters) & {"child_id", "conversation_id", "alert_id"}:
        return st.just(path_parameters)
    child = REAL["withdrawal_child_id"] if context.operation.label == WITHDRAWAL else REAL["child_id"]
    real = {"child_id": child, "conversation_id": REAL["conversation_id"], "alert_id": REAL["alert_id"]}
    injected = {name: real.get(name, value) for name, value in path_parameters.items()}
    # Also a real id with a NUL in it, which schemathesis never generates in a path (it was a 500).
    with_nul = {name: f"{value[:3]}\x00{value[3:]}" for name, value in injected.items()}
    return st.sampled_from([path_parameters, injected, with_nul])


@schema.hook
def flatmap_body(context, body):
    # The schema cannot say that a child is 3 to 13, nor which login exists: also try the
    # generated body with those right.
    if not isinstance(body, dict):
        return st.just(body)
    variants = [body]
    if context.operation.label == TOKEN:
        variants.append({**body, "username": REAL["username"], "password": PASSWORD})
    age = body.get("age")
    if isinstance(age, int) and not isinstance(age, bool):
        variants.append({**body, "age": MIN_AGE + abs(age) % (MAX_AGE - MIN_AGE + 1)})
    return st.sampled_from(variants)


VALID_BODIES = {  # the two commands whose rules are the domain's, not the schema's
    "POST /api/v1/children/": lambda age: {"name": "Kim", "age": age, "consent_method": "signed_form"},
    "PATCH /api/v1/children/{child_id}/": lambda age: {"age": age},
}


@schema.hook
def flatmap_case(context, case):
    # The generated case, or the same one with a body of only valid values (the optional
    # fields of PATCH are mostly generated empty or absent).
    make = VALID_BODIES.get(context.operation.label)
    if make is None:
        return st.just(case)

    def with_valid_body(age: int):
        case.body, case.media_type = make(age), "application/json"
        return case

    return st.one_of(st.just(case), st.integers(MIN_AGE, MAX_AGE).map(with_valid_body))


@schema.hook
def after_call(context, case, response):
    OBSERVED.setdefault(case.operation.label, set()).add(response.status_code)


def make_child(account, owner, tag: str) -> int:
    return register_child_with_consent(actor=owner, parent_id=account.parent_id, child_id=f"c-{tag}", name="Robin",
                                       age=7, consent_method="signed_form", device_id=f"bear-{tag}",
                                       udid=f"udid-{tag}").version


@pytest.fixture(scope="module")
def family(store, celery_worker, django_db_blocker) -> dict:
    """A parent account with two children, and a conversation with two safety flags (so that
    acknowledging one leaves another), in every read model the fuzzed ids need."""
    tag = uuid.uuid4().hex[:10]
    with django_db_blocker.unblock():
        email = f"fuzz.{tag}@example.com"
        account = create_parent_account(email=email, password=PASSWORD)
        owner = Actor.user(account.user_id, parent_id=account.parent_id)
        child_id, withdrawal_child_id, conversation_id = f"c-{tag}", f"c-{tag}-w", f"v-{tag}"
        make_child(account, owner, tag)
        make_child(account, owner, f"{tag}-w")
        start_conversation(actor=BEAR, conversation_id=conversation_id, child_id=child_id)
        record_message(actor=BEAR, conversation_id=conversation_id, speaker="child", text="hello bear")
        raise_safety_flag(actor=BEAR, conversation_id=conversation_id, category="bullying", severity="high")
        raise_safety_flag(actor=BEAR, conversation_id=conversation_id, category="self_harm", severity="critical")
        end_conversation(actor=BEAR, conversation_id=conversation_id)
        version = summarize_conversation(actor=BEAR, conversation_id=conversation_id,
                                         summary="Robin talked about school.").version
        store.flush(10)

        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {account.token}")
        conversation_at = {"HTTP_X_MIN_VERSION": f"conversation.{conversation_id}@{version}"}
        for path, headers in [(f"/api/v1/children/{child_id}/?min_version=1", {}),
                              (f"/api/v1/children/{withdrawal_child_id}/?min_version=1", {}),
                              (f"/api/v1/conversations/{conversation_id}/", conversation_at),
                              ("/api/v1/alerts/", conversation_at),
                              (f"/api/v1/children/{child_id}/timeline/", conversation_at)]:
            # Polled: the worker's projection threads may still be starting.
            wait_until(lambda: (r := api.get(path, **headers)).status_code == 200
                       and r.headers.get("X-Read-Model-Stale") != "true", timeout=60)
    REAL.update(child_id=child_id, withdrawal_child_id=withdrawal_child_id, conversation_id=conversation_id,
                alert_id=f"{conversation_id}.1", username=email)
    return {"token": account.token, **REAL}


@pytest.fixture(scope="module")
def quick_reads():
    """Fuzzed ?min_version= / X-Min-Version values are mostly far ahead of any stream: each read
    would wait the full read-your-writes bound (2 s). That wait is tested in test_api_access."""
    from django.conf import settings as django_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(django_settings, "PROJECTIONS",
                      {**django_settings.PROJECTIONS, "READ_YOUR_WRITES_WAIT_SECONDS": 0.02})
        # Hundreds of requests a minute from one token: the throttles are not what is fuzzed.
        patch.setattr(SimpleRateThrottle, "THROTTLE_RATES", GENEROUS_RATES)
        # The WSGI client of schemathesis sends Host: localhost.
        patch.setattr(django_settings, "ALLOWED_HOSTS", [*django_settings.ALLOWED_HOSTS, "localhost"])
        yield


@pytest.fixture(scope="module")
def reached_the_working_path():
    """After the module: each operation fuzzed here answered 2xx at least once."""
    yield
    missing = sorted(label for label, statuses in OBSERVED.items() if not any(200 <= s < 300 for s in statuses))
    assert not missing, f"fuzzing never got a 2xx from {missing}: {[sorted(OBSERVED[m]) for m in missing]}"


def documented_error_shape(ctx, response, case):
    """Every non-2xx answer has the API's one error body, whatever its status."""
    if 200 <= response.status_code < 300:
        return None
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["error"], f"not the error shape: {response.text[:300]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"status", "code", "message", "fields"}, \
        f"not the error shape: {response.text[:300]}"
    assert error["status"] == response.status_code, f"status {error['status']} in a {response.status_code} answer"
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    fields = error["fields"]
    assert fields is None or (isinstance(fields, dict) and all(
        isinstance(messages, list) and all(isinstance(m, str) for m in messages) for messages in fields.values())), \
        error
    return None


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_operation_fails_or_breaks_the_error_shape(case, family, quick_reads, reached_the_working_path):
    case.call_and_validate(headers={"Authorization": f"Token {family['token']}"},
                           checks=[not_a_server_error, response_schema_conformance, documented_error_shape])


PATH_OPERATIONS = [(method.upper(), path) for path, item in schema.raw_schema["paths"].items() for method in item
                   if "{" in path]


@pytest.mark.parametrize("method,path", PATH_OPERATIONS, ids=[f"{m} {p}" for m, p in PATH_OPERATIONS])
def test_an_id_with_a_nul_character_is_not_found(family, quick_reads, method, path):
    """PostgreSQL text cannot hold a NUL: such an id used to reach the database and answer 500."""
    real = {"child_id": family["child_id"], "conversation_id": family["conversation_id"],
            "alert_id": family["alert_id"]}
    for name, value in real.items():
        path = path.replace("{" + name + "}", value[:3] + "%00" + value[3:])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {family['token']}")
    response = api.generic(method, path, data="{}", content_type="application/json")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x7f"])
def test_a_min_version_header_with_a_control_character_is_refused(family, quick_reads, control):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {family['token']}")
    response = api.get("/api/v1/children/", HTTP_X_MIN_VERSION=f"child.{family['child_id']}{control}@1")
    assert response.status_code == 400, response.content
    assert "X-Min-Version" in response.json()["error"]["fields"]
