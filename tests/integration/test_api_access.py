"""Who may do what through the parents' API (/api/v1/), against the real store, database,
broker and a Celery worker whose projection threads feed the read models the API reads.

Proven here:
- the authorization matrix of every operation the OpenAPI schema lists: the owner parent gets
  their answer (2xx, or a 4xx about the input, never 403/404 on their own family); another
  parent gets 404 in the error shape, never the owner's child's name, and changes nothing; an
  anonymous caller (or an unknown token) gets 401 with `WWW-Authenticate`; staff and a
  compliance-like account (is_staff, no parent account) get 403 with no family data, by token
  and by admin session;
- the token endpoint: the right password gives a token that works, a wrong one 401, a staff
  login 403; it is throttled with the error shape;
- `?version=1` / `?as_of=` rebuild the profile from the events; a command answers its stream and
  version, and a read with `?min_version=` / `X-Min-Version` shows the change without sleeping;
  a read model that cannot catch up in the wait says so (`X-Read-Model-Stale: true`);
- a domain rule broken answers 400 naming the problem; an unknown field answers 400 naming it;
- an alert acknowledged through the API is listed as acknowledged by the parent's user;
- after `erase_child_data` no answer to the owner holds the child's name, and once the
  projectors saw the erasure no read-model row holds it, in clear or as ciphertext.
- a command on a child whose stream an operator migrated answers 409 naming the new stream.

Not here: a 409 from a concurrency conflict. Commands retry one on fresh state (the unit of
work) and the API takes no expected version, so no request provokes one deterministically.
"""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from eventsourcing_app.application import Actor
from eventsourcing_app.application.accounts import create_parent_account
from eventsourcing_app.application.children import register_child_with_consent
from eventsourcing_app.application.conversations import (
    end_conversation, raise_safety_flag, record_message, start_conversation, summarize_conversation,
)
from eventsourcing_app.application.privacy import erase_child_data
from eventsourcing_app.operations.migration import migrate_stream
from eventsourcing_app.readside.models import PROJECTION_MODELS, StreamProgress
from eventsourcing_app.readside.personal import SubjectKeyRing, child_subject
from eventsourcing_app.readside.projectors import PROJECTORS
from eventsourcing_app.readside.runner import active_generation
from tests.integration.helpers import wait_until

PASSWORD = "correct-horse-battery"
BEAR = Actor.system("device-service")  # the teddy bear's service records conversations, not the parent
User = get_user_model()


@pytest.fixture(scope="module", autouse=True)
def generous_throttles():
    """The matrix sends far more anonymous and token requests than the production rates allow
    from one address in a minute; DRF reads the rates into a class attribute at import."""
    rates = {"anon": "100000/min", "user": "100000/min", "auth": "100000/min"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
        yield rates


# --- building families through the application layer --------------------------------------

@dataclass
class Family:
    email: str
    parent_name: str
    user_id: int
    parent_id: str
    token: str
    actor: Actor
    child_id: str
    child_name: str
    conversation_id: str
    alert_id: str

    @property
    def secrets(self) -> list[str]:
        """What no one outside the family may read in a body."""
        return [self.child_name, self.email, self.parent_name, self.parent_id]


def uid() -> str:
    return uuid.uuid4().hex[:10]


def client_for(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def not_stale(response) -> bool:
    return response.status_code == 200 and response.headers.get("X-Read-Model-Stale") != "true"


def make_family(store, child_name: str = "Robin") -> Family:
    """A parent account (as `create_parent_account` makes it) with one child registered by that
    parent, and one ended, summarized conversation with a safety flag; returned once every
    read model the API reads has applied all of it (asked through the API itself)."""
    tag = uid()
    email, parent_name = f"owner.{tag}@example.com", f"Pat Owner {tag}"
    account = create_parent_account(email=email, password=PASSWORD, name=parent_name)
    owner = Actor.user(account.user_id, parent_id=account.parent_id)
    child_id, conversation_id = f"c-{tag}", f"v-{tag}"
    child = register_child_with_consent(actor=owner, parent_id=account.parent_id, child_id=child_id,
                                        name=child_name, age=7, consent_method="signed_form",
                                        device_id=f"bear-{tag}", udid=f"udid-{tag}")
    start_conversation(actor=BEAR, conversation_id=conversation_id, child_id=child_id)
    record_message(actor=BEAR, conversation_id=conversation_id, speaker="child", text=f"I am {child_name}")
    record_message(actor=BEAR, conversation_id=conversation_id, speaker="bear", text="Hello!")
    raise_safety_flag(actor=BEAR, conversation_id=conversation_id, category="bullying", severity="high")
    end_conversation(actor=BEAR, conversation_id=conversation_id)
    conversation = summarize_conversation(actor=BEAR, conversation_id=conversation_id,
                                          summary=f"{child_name} talked about school.")
    store.flush(10)
    family = Family(email, parent_name, account.user_id, account.parent_id, account.token, owner, child_id,
                    child_name, conversation_id, f"{conversation_id}.1")
    wait_for_read_models(family, child.version, conversation.version)
    return family


def wait_for_read_models(family: Family, child_version: int, conversation_version: int) -> None:
    api = client_for(family.token)
    child_at = {"HTTP_X_MIN_VERSION": f"child.{family.child_id}@{child_version}"}
    conversation_at = {"HTTP_X_MIN_VERSION": f"conversation.{family.conversation_id}@{conversation_version}"}
    # Polled (each read waits a bounded moment itself): the worker's projection threads may
    # still be starting when the first family of the session is made.
    for path, headers in [
        ("/api/v1/children/", child_at),  # dashboard
        (f"/api/v1/children/{family.child_id}/", child_at),  # profiles
        (f"/api/v1/conversations/{family.conversation_id}/", conversation_at),  # conversations
        ("/api/v1/alerts/", conversation_at),  # alerts
        (f"/api/v1/children/{family.child_id}/timeline/", conversation_at),  # timeline
    ]:
        wait_until(lambda: not_stale(api.get(path, **headers)), timeout=60)


@pytest.fixture(scope="module")
def world(store, celery_worker, django_db_blocker):
    """The owner's family (child "Robin"), another family (child "Sky"), a staff user and a
    compliance-like user, both without a parent account. Requests of the intruders change
    nothing (checked), so the module shares them."""
    with django_db_blocker.unblock():
        owner = make_family(store, "Robin")
        other = make_family(store, "Sky")
        staff = User.objects.create_user(f"staff-{uid()}", password=PASSWORD, is_staff=True, is_superuser=True)
        compliance = User.objects.create_user(f"compliance-{uid()}", password=PASSWORD, is_staff=True)
        # What a compliance officer holds in the admin: reading the audit trail, nothing of the API.
        compliance.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
        tokens = {"staff": Token.objects.create(user=staff).key,
                  "compliance": Token.objects.create(user=compliance).key}
    return {"owner": owner, "other": other, "staff": staff, "compliance": compliance, "tokens": tokens}


@pytest.fixture
def fresh_family(store, celery_worker) -> Family:
    """A family of the test alone: the owner's commands change it."""
    return make_family(store, "Robin")


# --- the operations -----------------------------------------------------------------------

@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # as the schema names it
    query: str = ""
    body: dict | None = None
    owner_status: int = 200
    owner_refusal: str | None = None  # with owner_status 400: what the owner is told about the input
    collection: bool = False  # lists the caller's own family: another parent gets theirs, not a 404

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}{self.query}"

    def path(self, family: Family) -> str:
        return (self.template.replace("{child_id}", family.child_id)
                .replace("{conversation_id}", family.conversation_id)
                .replace("{alert_id}", family.alert_id)) + self.query.replace(
            "{now}", datetime.now(timezone.utc).isoformat().replace("+", "%2B"))

    def payload(self, family: Family) -> dict | None:
        if self.body is None:
            return None
        return {k: (v.replace("{child_id}", family.child_id) if isinstance(v, str) else v)
                for k, v in self.body.items()}


OPERATIONS = [
    Operation("GET", "/api/v1/children/", collection=True),
    # Registering under the owner's child id: the owner is told it is taken (input), an intruder
    # must not take the child over.
    Operation("POST", "/api/v1/children/", body={"child_id": "{child_id}", "name": "Kim", "age": 5,
                                                 "consent_method": "signed_form"},
              owner_status=400, owner_refusal="registered already", collection=True),
    Operation("GET", "/api/v1/children/{child_id}/"),
    Operation("GET", "/api/v1/children/{child_id}/", query="?version=1"),
    Operation("GET", "/api/v1/children/{child_id}/", query="?as_of={now}"),
    Operation("PATCH", "/api/v1/children/{child_id}/", body={"age": 8}),
    # A bear is paired already: the owner is told to unpair it first; see the pairing test.
    Operation("POST", "/api/v1/children/{child_id}/device/", body={"device_id": "bear-new", "udid": "udid-new"},
              owner_status=400, owner_refusal="unpair it before pairing"),
    Operation("DELETE", "/api/v1/children/{child_id}/device/"),
    Operation("PUT", "/api/v1/children/{child_id}/safety-settings/",
              body={"content_filter_level": "relaxed", "daily_time_limit_minutes": 45}),
    # Consent is in force already: the owner is told so (input); see the test of granting it.
    Operation("POST", "/api/v1/children/{child_id}/consent/", body={"method": "video_call"}, owner_status=400,
              owner_refusal="already consented"),
    Operation("DELETE", "/api/v1/children/{child_id}/consent/"),
    Operation("GET", "/api/v1/children/{child_id}/conversations/"),
    Operation("GET", "/api/v1/children/{child_id}/talk-time/"),
    Operation("GET", "/api/v1/children/{child_id}/timeline/"),
    Operation("GET", "/api/v1/conversations/{conversation_id}/"),
    Operation("GET", "/api/v1/alerts/", collection=True),
    Operation("GET", "/api/v1/alerts/", query="?state=open", collection=True),
    Operation("POST", "/api/v1/alerts/{alert_id}/acknowledge/"),
]
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def send(client: APIClient, operation: Operation, family: Family):
    payload = operation.payload(family)
    return client.generic(operation.method, operation.path(family),
                          data=json.dumps(payload) if payload is not None else "", content_type="application/json")


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The one error body of the API: {"error": {"status", "code", "message", "fields"}}."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"status", "code", "message", "fields"}, error
    assert error["status"] == status and isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def text_of(response) -> str:
    return response.content.decode()


def stream_versions(store, family: Family) -> dict[str, int]:
    return {sid: store.get_stream_version_sync(sid)
            for sid in (f"parent.{family.parent_id}", f"child.{family.child_id}",
                        f"conversation.{family.conversation_id}")}


def test_the_matrix_covers_every_operation_of_the_schema():
    """A new endpoint without rows in this matrix fails here."""
    schema = APIClient().get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    documented = {(method.upper(), path) for path, ops in schema.json()["paths"].items() for method in ops}
    covered = {(op.method, op.template) for op in OPERATIONS} | {("POST", "/api/v1/auth/token/")}
    assert documented == covered


# --- the owner ----------------------------------------------------------------------------

@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.method not in MUTATING], ids=lambda op: op.id)
def test_the_owner_reads_their_family(world, operation):
    owner: Family = world["owner"]
    response = send(client_for(owner.token), operation, owner)
    assert response.status_code == operation.owner_status, response.content
    body = response.json()
    if operation.template == "/api/v1/children/":
        assert [(c["child_id"], c["name"], c["consent"]) for c in body] == [(owner.child_id, "Robin", "granted")]
    elif operation.template == "/api/v1/children/{child_id}/":
        assert (body["child_id"], body["parent_id"], body["name"], body["age"]) == \
               (owner.child_id, owner.parent_id, "Robin", 7)
        assert body["source"] == ("read_model" if not operation.query else "events")
    elif operation.template.endswith("/conversations/"):
        assert [(c["conversation_id"], c["summary"], c["messages"]) for c in body["results"]] == \
               [(owner.conversation_id, "Robin talked about school.", {"child": 1, "bear": 1})]
    elif operation.template.endswith("/talk-time/"):
        assert len(body) == 1 and set(body[0]) == {"day", "minutes"}
    elif operation.template.endswith("/timeline/"):
        titles = [entry["title"] for entry in body["results"]]
        assert "Registered" in titles and "Safety flag raised: bullying (high)" in titles
    elif operation.template == "/api/v1/conversations/{conversation_id}/":
        assert (body["conversation_id"], body["child_id"], len(body["flags"])) == \
               (owner.conversation_id, owner.child_id, 1)
    elif operation.template == "/api/v1/alerts/":
        assert [(a["alert_id"], a["state"]) for a in body["results"]] == [(owner.alert_id, "open")]
    else:
        raise AssertionError(f"no expectation for {operation.id}")


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.method in MUTATING], ids=lambda op: op.id)
def test_the_owner_changes_their_family(fresh_family, operation):
    response = send(client_for(fresh_family.token), operation, fresh_family)
    if operation.owner_status == 400:  # refused for what was asked, never as "not yours"
        error = assert_error(response, 400)
        assert fresh_family.child_id in error["message"] and operation.owner_refusal in error["message"]
        return
    assert response.status_code == operation.owner_status, response.content
    body = response.json()
    assert set(body) == {"stream_id", "version", "streams"}
    assert body["streams"][body["stream_id"]] == body["version"] > 1


# --- everyone else ------------------------------------------------------------------------

@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.id)
def test_another_parent_finds_nothing_of_the_family(store, world, operation):
    owner, other = world["owner"], world["other"]
    before = stream_versions(store, owner)
    response = send(client_for(other.token), operation, owner)
    assert "Robin" not in text_of(response) and owner.email not in text_of(response)
    if operation.collection and operation.method == "GET":
        assert response.status_code == 200  # their own family only
        assert owner.child_id not in text_of(response) and owner.conversation_id not in text_of(response)
        assert other.child_id in text_of(response)
    elif operation.method == "POST" and operation.template == "/api/v1/children/":
        assert_error(response, 400)  # the id is taken; the child stays the owner's (below)
    else:
        error = assert_error(response, 404, "not_found")
        assert error["fields"] is None
    assert stream_versions(store, owner) == before  # nothing was changed for the owner's family
    profile = client_for(owner.token).get(f"/api/v1/children/{owner.child_id}/")
    assert (profile.json()["parent_id"], profile.json()["name"]) == (owner.parent_id, "Robin")


@pytest.mark.parametrize("credentials", ["none", "unknown token"])
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.id)
def test_an_anonymous_caller_is_asked_to_authenticate(store, world, operation, credentials):
    owner = world["owner"]
    before = stream_versions(store, owner)
    client = client_for(None if credentials == "none" else uuid.uuid4().hex + uuid.uuid4().hex[:8])
    response = send(client, operation, owner)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Token"
    assert not any(secret in text_of(response) for secret in owner.secrets)
    assert stream_versions(store, owner) == before


@pytest.mark.parametrize("who,login", [("staff", "token"), ("staff", "session"),
                                       ("compliance", "token"), ("compliance", "session")])
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.id)
def test_staff_and_compliance_accounts_are_refused(store, world, operation, who, login):
    """They use the admin; the parents' API serves parent accounts only, and says so without
    a word of the family's data."""
    owner = world["owner"]
    before = stream_versions(store, owner)
    if login == "token":
        client = client_for(world["tokens"][who])
    else:  # logged in to the admin, then calling the API with that session
        client = APIClient()
        assert client.login(username=world[who].username, password=PASSWORD)
    response = send(client, operation, owner)
    error = assert_error(response, 403, "permission_denied")
    assert "parent accounts only" in error["message"]
    assert not any(secret in text_of(response) for secret in owner.secrets)
    assert owner.child_id not in text_of(response) and owner.conversation_id not in text_of(response)
    assert stream_versions(store, owner) == before


# --- the token endpoint -------------------------------------------------------------------

def test_the_right_password_gives_a_token_that_works(world):
    owner = world["owner"]
    response = APIClient().post("/api/v1/auth/token/", {"username": owner.email, "password": PASSWORD},
                                format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"token": owner.token}
    children = client_for(response.json()["token"]).get("/api/v1/children/")
    assert [c["name"] for c in children.json()] == ["Robin"]


def test_a_wrong_password_is_401(world):
    response = APIClient().post("/api/v1/auth/token/", {"username": world["owner"].email, "password": "wrong-one"},
                                format="json")
    error = assert_error(response, 401, "authentication_failed")
    assert "username or password is wrong" in error["message"]
    assert response.headers["WWW-Authenticate"] == "Token"
    assert "token" not in response.json()


def test_an_unknown_username_is_answered_like_a_wrong_password(world):
    """The answer must not tell which emails have accounts."""
    unknown = APIClient().post("/api/v1/auth/token/", {"username": f"nobody.{uid()}@example.com",
                                                       "password": PASSWORD}, format="json")
    wrong = APIClient().post("/api/v1/auth/token/", {"username": world["owner"].email, "password": "wrong-one"},
                             format="json")
    assert_error(unknown, 401)
    assert unknown.json() == wrong.json()


@pytest.mark.parametrize("who", ["staff", "compliance"])
def test_a_staff_login_gets_no_api_token(world, who):
    response = APIClient().post("/api/v1/auth/token/", {"username": world[who].username, "password": PASSWORD},
                                format="json")
    error = assert_error(response, 403, "permission_denied")
    assert "parent accounts only" in error["message"] and "token" not in response.json()


def test_the_token_endpoint_refuses_unknown_fields(world):
    response = APIClient().post("/api/v1/auth/token/", {"username": world["owner"].email, "password": PASSWORD,
                                                        "remember": True}, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["fields"] == {"remember": ["unknown field"]}


def test_guessing_passwords_is_throttled(world, generous_throttles, monkeypatch):
    monkeypatch.setitem(generous_throttles, "auth", "2/min")
    # An address of its own: the counts are per address, kept in Redis across tests.
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    client = APIClient(REMOTE_ADDR=address)
    answers = [client.post("/api/v1/auth/token/", {"username": world["owner"].email, "password": "wrong-one"},
                           format="json") for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    error = assert_error(answers[-1], 429, "throttled")
    assert "available in" in error["message"]
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60


# --- reading one's own writes, history ----------------------------------------------------

def test_a_change_is_read_back_with_its_version_and_the_old_one_rebuilt_from_events(fresh_family):
    api = client_for(fresh_family.token)
    before_change = datetime.now(timezone.utc)
    response = api.patch(f"/api/v1/children/{fresh_family.child_id}/", {"name": "Robbie"}, format="json")
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["stream_id"] == f"child.{fresh_family.child_id}" and result["version"] == 2

    # No sleep: the read waits (bounded) until the worker's projector applied that version.
    now = api.get(f"/api/v1/children/{fresh_family.child_id}/", {"min_version": result["version"]})
    assert now.status_code == 200 and "X-Read-Model-Stale" not in now.headers
    assert int(now.headers["X-Read-Model-Version"]) >= 2
    assert (now.json()["name"], now.json()["version"], now.json()["source"]) == ("Robbie", 2, "read_model")

    first = api.get(f"/api/v1/children/{fresh_family.child_id}/", {"version": 1}).json()
    assert (first["name"], first["version"], first["source"]) == ("Robin", 1, "events")
    then = api.get(f"/api/v1/children/{fresh_family.child_id}/", {"as_of": before_change.isoformat()}).json()
    assert (then["name"], then["version"], then["source"]) == ("Robin", 1, "events")


def test_a_registration_is_on_the_dashboard_for_the_header_version(fresh_family):
    api = client_for(fresh_family.token)
    child_id = f"c-{uid()}"
    # Consent first for a child not registered yet, then the registration uses it.
    consent = api.post(f"/api/v1/children/{child_id}/consent/", {"method": "video_call"}, format="json")
    assert consent.status_code == 200, consent.content
    assert consent.json()["stream_id"] == f"parent.{fresh_family.parent_id}"
    registered = api.post("/api/v1/children/", {"child_id": child_id, "name": "Kim", "age": 5}, format="json")
    assert registered.status_code == 201, registered.content
    assert (registered.json()["stream_id"], registered.json()["version"]) == (f"child.{child_id}", 1)

    listed = api.get("/api/v1/children/", HTTP_X_MIN_VERSION=f"child.{child_id}@1")
    assert listed.status_code == 200 and "X-Read-Model-Stale" not in listed.headers
    assert {(c["child_id"], c["name"], c["consent"], c["consent_method"]) for c in listed.json()} == {
        (fresh_family.child_id, "Robin", "granted", "signed_form"), (child_id, "Kim", "granted", "video_call")}


def test_a_version_not_reached_in_the_wait_is_answered_as_stale(world, settings):
    settings.PROJECTIONS = {**settings.PROJECTIONS, "READ_YOUR_WRITES_WAIT_SECONDS": 0.2}
    owner = world["owner"]
    response = client_for(owner.token).get(f"/api/v1/children/{owner.child_id}/", {"min_version": 1000})
    assert response.status_code == 200
    assert response.headers["X-Read-Model-Stale"] == "true"
    assert int(response.headers["X-Read-Model-Version"]) < 1000
    assert response.json()["name"] == "Robin"  # the answer is still what the read model has


def test_a_malformed_min_version_header_is_400(world):
    response = client_for(world["owner"].token).get("/api/v1/children/", HTTP_X_MIN_VERSION="child.c-1")
    error = assert_error(response, 400, "invalid")
    assert "X-Min-Version" in error["fields"]


# --- refused input ------------------------------------------------------------------------

def test_a_broken_domain_rule_is_400_naming_it(world, store):
    owner = world["owner"]
    before = stream_versions(store, owner)
    response = client_for(owner.token).patch(f"/api/v1/children/{owner.child_id}/", {"age": 99}, format="json")
    error = assert_error(response, 400, "invalid_age")
    assert "age" in error["message"] and "99" in error["message"]
    assert stream_versions(store, owner) == before


def test_a_bear_is_unpaired_and_another_paired(fresh_family):
    api = client_for(fresh_family.token)
    path = f"/api/v1/children/{fresh_family.child_id}/device/"
    assert api.delete(path).status_code == 200
    error = assert_error(api.delete(path), 400, "device_pairing_error")
    assert "no device paired" in error["message"]
    paired = api.post(path, {"device_id": "bear-new", "udid": "udid-new"}, format="json")
    assert paired.status_code == 200, paired.content
    profile = api.get(f"/api/v1/children/{fresh_family.child_id}/", {"min_version": paired.json()["version"]})
    assert (profile.json()["device_id"], profile.json()["udid"]) == ("bear-new", "udid-new")


@pytest.mark.parametrize("method,path,body", [
    ("PATCH", "/api/v1/children/{child_id}/", {"age": 8, "nickname": "Rob"}),
    ("PUT", "/api/v1/children/{child_id}/safety-settings/",
     {"content_filter_level": "strict", "daily_time_limit_minutes": 30, "bedtime": "20:00"}),
    ("POST", "/api/v1/children/", {"name": "Kim", "age": 5, "consent_method": "signed_form", "nickname": "K"}),
    ("POST", "/api/v1/children/{child_id}/device/", {"device_id": "bear-x", "udid": "u-x", "colour": "brown"}),
])
def test_an_unknown_field_is_400_naming_it(world, store, method, path, body):
    owner = world["owner"]
    before = stream_versions(store, owner)
    response = client_for(owner.token).generic(method, path.replace("{child_id}", owner.child_id),
                                               json.dumps(body), content_type="application/json")
    error = assert_error(response, 400, "invalid")
    unknown = (set(body) - {"age", "content_filter_level", "daily_time_limit_minutes", "name", "consent_method",
                            "device_id", "udid"}).pop()
    assert error["fields"] == {unknown: ["unknown field"]}
    assert stream_versions(store, owner) == before
    assert len(client_for(owner.token).get("/api/v1/children/").json()) == 1  # nothing registered


def test_a_command_on_a_migrated_child_is_409_naming_where_it_went(fresh_family, store):
    old, new = f"child.{fresh_family.child_id}", f"child.{fresh_family.child_id}-moved"
    migrate_stream(old, new, actor="system:operator-test")  # what `manage.py migrate_stream` does
    version = store.get_stream_version_sync(old)
    response = client_for(fresh_family.token).patch(f"/api/v1/children/{fresh_family.child_id}/", {"age": 8},
                                                   format="json")
    error = assert_error(response, 409, "conflict")
    assert new in error["message"]
    assert store.get_stream_version_sync(old) == version  # nothing was appended


# --- alerts -------------------------------------------------------------------------------

def test_an_acknowledged_alert_is_listed_as_acknowledged_by_the_parent(fresh_family):
    api = client_for(fresh_family.token)
    response = api.post(f"/api/v1/alerts/{fresh_family.alert_id}/acknowledge/")
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["stream_id"] == f"conversation.{fresh_family.conversation_id}"

    read_at = {"HTTP_X_MIN_VERSION": f"{result['stream_id']}@{result['version']}"}
    acknowledged = api.get("/api/v1/alerts/", {"state": "acknowledged"}, **read_at)
    assert "X-Read-Model-Stale" not in acknowledged.headers
    [alert] = acknowledged.json()["results"]
    assert (alert["alert_id"], alert["state"], alert["acknowledged_by"]) == \
           (fresh_family.alert_id, "acknowledged", f"user:{fresh_family.user_id}")
    assert alert["acknowledged_at"] is not None
    assert api.get("/api/v1/alerts/", {"state": "open"}, **read_at).json()["results"] == []
    # Again: the first acknowledgement stays the one on record.
    again = api.post(f"/api/v1/alerts/{fresh_family.alert_id}/acknowledge/")
    assert again.status_code == 200 and again.json()["version"] == result["version"]


def test_an_alert_id_that_is_not_one_is_404_explaining_the_form(world):
    error = assert_error(client_for(world["owner"].token).post("/api/v1/alerts/no-number/acknowledge/"), 404,
                         "not_found")
    assert "<conversation id>.<flag number>" in error["message"]


# --- erasure ------------------------------------------------------------------------------

def owner_answers(family: Family) -> dict[str, object]:
    api = client_for(family.token)
    paths = {
        "children": "/api/v1/children/",
        "profile": f"/api/v1/children/{family.child_id}/",
        "profile at version 1": f"/api/v1/children/{family.child_id}/?version=1",
        "conversations": f"/api/v1/children/{family.child_id}/conversations/",
        "conversation": f"/api/v1/conversations/{family.conversation_id}/",
        "timeline": f"/api/v1/children/{family.child_id}/timeline/",
        "alerts": "/api/v1/alerts/",
    }
    return {name: api.get(path) for name, path in paths.items()}


def read_model_rows(child_id: str) -> dict[str, list[str]]:
    """Every read-model row of the child in any generation, as PostgreSQL prints it."""
    rows = {}
    with connection.cursor() as cursor:
        for model in PROJECTION_MODELS:
            cursor.execute(f"SELECT row_to_json(t)::text FROM {model._meta.db_table} t WHERE child_id = %s",
                           [child_id])
            rows[model._meta.db_table] = [r[0] for r in cursor.fetchall()]
    return rows


def test_after_erasure_nothing_the_owner_reads_holds_the_childs_name(fresh_family, store):
    family = fresh_family
    before = owner_answers(family)
    assert all(r.status_code == 200 for r in before.values())
    assert "Robin" in text_of(before["profile"]) and "Robin" in text_of(before["conversations"])

    report = erase_child_data(actor=family.actor, child_id=family.child_id, reason="parent_request")
    assert report.key_destroyed

    # At once, before any projector saw the erasure: the child's key is gone.
    for name, response in owner_answers(family).items():
        assert response.status_code == 200, (name, response.content)
        assert "Robin" not in text_of(response), name
    subject = child_subject(family.child_id)
    keys = SubjectKeyRing([subject])
    assert keys.erased(subject)

    # Once every projector applied the erasure event, the ciphertext is purged as well.
    erased_at = store.get_stream_version_sync(f"child.{family.child_id}")
    for name, projector in PROJECTORS.items():
        if "child" in projector.stream_types:
            generation = active_generation(name)
            wait_until(lambda: StreamProgress.objects.filter(
                projector=name, generation=generation, stream_id=f"child.{family.child_id}",
                version__gte=erased_at).exists(), timeout=30)
    rows = read_model_rows(family.child_id)
    assert rows["readside_child_profile"] and rows["readside_family_child"] and rows["readside_conversation"]
    for table, texts in rows.items():
        for text in texts:
            assert "Robin" not in text, table
            row = json.loads(text)
            if "personal" in row:
                assert row["personal"] == {}, (table, row["personal"])

    after = owner_answers(family)
    assert all("Robin" not in text_of(r) for r in after.values())
    [child] = after["children"].json()
    assert (child["child_id"], child["name"], child["erased"], child["active"]) == (family.child_id, None, True, False)
    profile = after["profile"].json()
    assert (profile["name"], profile["age"], profile["udid"], profile["erased"]) == (None, None, None, True)
    assert after["profile at version 1"].json()["name"] is None
    assert [c["summary"] for c in after["conversations"].json()["results"]] == [None]


def test_read_your_writes_says_nothing_about_another_familys_streams(world, settings):
    """Waiting for another family's stream would tell its version (and that it exists): such a
    wait is not made, and no read-model header answers it."""
    settings.PROJECTIONS = {**settings.PROJECTIONS, "READ_YOUR_WRITES_WAIT_SECONDS": 0.2}
    owner, other = world["owner"], world["other"]
    api = client_for(other.token)
    for response in (
        api.get("/api/v1/children/", HTTP_X_MIN_VERSION=f"child.{owner.child_id}@1"),
        api.get(f"/api/v1/children/{owner.child_id}/", {"min_version": 1}),
        api.get("/api/v1/alerts/", HTTP_X_MIN_VERSION=f"conversation.{owner.conversation_id}@1"),
    ):
        assert "X-Read-Model-Version" not in response.headers and "X-Read-Model-Stale" not in response.headers
    # The owner's own wait is answered as before.
    mine = client_for(owner.token).get("/api/v1/children/", HTTP_X_MIN_VERSION=f"child.{owner.child_id}@1")
    assert mine.headers["X-Read-Model-Version"] == "1"


def test_another_parents_consent_for_the_same_child_id_shows_nowhere(store, world, fresh_family):
    """A parent may consent for a child id before registering it; another parent who consented
    for that id (and withdrew) stays invisible to the family that registered it."""
    from eventsourcing_app.application.parents import grant_consent, withdraw_consent

    owner, other = fresh_family, world["other"]
    child_id = f"shared-{uid()}"
    grant_consent(actor=other.actor, parent_id=other.parent_id, child_id=child_id, method="video_call")
    withdraw_consent(actor=other.actor, parent_id=other.parent_id, child_id=child_id)
    registered = client_for(owner.token).post("/api/v1/children/", {"child_id": child_id, "name": "Sky", "age": 6,
                                                                    "consent_method": "signed_form"}, format="json")
    assert registered.status_code == 201, registered.json()
    api = client_for(owner.token)
    listed = api.get("/api/v1/children/", HTTP_X_MIN_VERSION=f"child.{child_id}@1").json()
    assert [(c["consent"], c["consent_method"]) for c in listed if c["child_id"] == child_id] == \
           [("granted", "signed_form")]
    timeline = api.get(f"/api/v1/children/{child_id}/timeline/", {"min_version": 1}).json()["results"]
    assert {e["stream_id"] for e in timeline} <= {f"child.{child_id}", f"parent.{owner.parent_id}"}
    assert not any("video_call" in e["title"] or "withdrawn" in e["title"].lower() for e in timeline)


def test_forged_ids_and_cursors_are_client_errors(world):
    api = client_for(world["owner"].token)
    assert_error(api.post("/api/v1/alerts/x.²/acknowledge/"), 404, "not_found")
    forged = base64.b64encode(b"p=not-a-time").decode()
    response = api.get(f"/api/v1/children/{world['owner'].child_id}/conversations/", {"cursor": forged})
    assert_error(response, 400, "invalid")


def test_bad_query_values_are_client_errors_naming_what_was_wrong(world):
    api = client_for(world["owner"].token)
    child = world["owner"].child_id
    error = assert_error(api.get(f"/api/v1/children/{child}/conversations/", {"page_size": "abc"}), 400, "invalid")
    assert "page_size" in error["fields"]
    error = assert_error(api.get(f"/api/v1/children/{child}/", {"version": 99999}), 404, "not_found")
    assert "no version 99999" in error["message"]
    error = assert_error(api.get(f"/api/v1/children/{child}/", {"as_of": "2000-01-01T00:00:00Z"}), 404, "not_found")
    assert "had no events" in error["message"]
