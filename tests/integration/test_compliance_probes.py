"""The compliance admin probed as a hostile user would: malformed ids and query strings, form
fields with NUL bytes and invisible reasons, users without the rights, CSRF-less posts, lookups
through the query string on columns the admin never shows, a failing access log, and (over
real HTTP, against admin server processes of their own) two officers erasing one child at
once, reveals racing an erasure and a writer process appending while the child is erased.

What must hold: nothing personal leaves without an access-log record; after an erasure no
page, export or reveal shows the child's data; bad input gets a clear 4xx, never a 500.
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from eventsourcing_app.models import AccessRecord, Event, SubjectKey
from tests.conftest import LOG_DIR
from tests.integration.compliance_helpers import make_family, staff_user
from tests.integration.conftest import REPO, process_env

E = "/admin/eventsourcing_app/event/"
S = "/admin/eventsourcing_app/stream/"
K = "/admin/eventsourcing_app/subjectkey/"
A = "/admin/eventsourcing_app/accessrecord/"
SNAP = "/admin/eventsourcing_app/snapshot/"
COUNT_OR_OFFSET = re.compile(r"\bCOUNT\s*\(|\bOFFSET\b", re.IGNORECASE)


def login(user, **options) -> Client:
    client = Client(raise_request_exception=False, **options)
    client.force_login(user)
    return client


def body(response) -> str:
    if response.streaming:
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


@pytest.fixture
def family(store):
    """make_family's child, also with a paired bear and a conversation that names the child."""
    from eventsourcing_app.application import Actor
    from eventsourcing_app.application.children import pair_device
    from eventsourcing_app.application.conversations import record_message, start_conversation

    family = make_family("probe")
    system = Actor.system("tests")
    family.udid = f"udid-{uuid.uuid4().hex[:10]}"
    family.conversation_id = f"conv-{family.child_id}"
    pair_device(actor=system, child_id=family.child_id, device_id=f"bear-{family.child_id}", udid=family.udid)
    start_conversation(actor=system, conversation_id=family.conversation_id, child_id=family.child_id)
    record_message(actor=system, conversation_id=family.conversation_id, speaker="child",
                   text=f"my name is {family.child_name}")
    return family


@pytest.fixture
def officer():
    return staff_user("privacy-officer")


@pytest.fixture
def auditor():
    return staff_user("compliance")


def personal_values(family) -> list[str]:
    return [family.child_name, family.udid, "Ana Parent", f"{family.parent_id[-8:]}@example.com"]


def leaks(text: str, family) -> list[str]:
    return [v for v in personal_values(family) + ["$enc"] if v in text]


# --- the access log and erasure ---------------------------------------------------------

def test_an_erasure_whose_note_the_access_log_cannot_store_is_refused_not_done_unrecorded(family, officer):
    """A NUL byte in the note: PostgreSQL refuses it in the access log's text column. The
    erasure must not happen without its record (and the officer gets a 400, not a 500)."""
    subject = f"child:{family.child_id}"
    response = login(officer).post(f"{K}{quote(subject)}/erase/", {
        "child_id": family.child_id, "reason_code": "parent_request", "note": "ticket 77\x00 from the parent"})
    erased = SubjectKey.objects.get(pk=subject).destroyed_at is not None
    recorded = AccessRecord.objects.filter(action="erase", target=f"child.{family.child_id}").exists()
    assert not (erased and not recorded), f"erased without an access-log record (HTTP {response.status_code})"
    assert response.status_code == 400, response.status_code


def test_an_erasure_is_not_done_when_its_access_log_record_cannot_be_written(family, officer, monkeypatch):
    """The access log's insert fails (a full disk, a dropped connection): the erasure must not
    go through unrecorded (its request is recorded before anything is erased)."""
    from django.db import DatabaseError

    def refuse(self, *args, **kwargs):
        raise DatabaseError("simulated: the access log cannot be written")

    monkeypatch.setattr(AccessRecord, "save", refuse)
    subject = f"child:{family.child_id}"
    login(officer).post(f"{K}{quote(subject)}/erase/", {
        "child_id": family.child_id, "reason_code": "parent_request", "note": "ticket 78 from the parent"})
    monkeypatch.undo()
    erased = SubjectKey.objects.get(pk=subject).destroyed_at is not None
    recorded = AccessRecord.objects.filter(action="erase", target=f"child.{family.child_id}").exists()
    assert recorded or not erased, "the child was erased and the access log has no record of it"


def test_a_reveal_or_export_is_not_shown_when_its_record_cannot_be_written(family, officer, monkeypatch):
    from django.db import DatabaseError

    def refuse(self, *args, **kwargs):
        raise DatabaseError("simulated: the access log cannot be written")

    monkeypatch.setattr(AccessRecord, "save", refuse)
    client = login(officer)
    stream = quote(f"child.{family.child_id}")
    shown = [client.post(f"{E}{family.age_event.pk}/reveal/", {"reason": "case 12 review"}),
             client.post(f"{S}{stream}/reveal/?state_at=2", {"reason": "case 12 review"}),
             client.post(f"{E}export/?stream=child.{family.child_id}",
                         {"format": "json", "reason": "case 12 review", "decrypt": "on"}),
             client.post(f"{K}{quote('child:' + family.child_id)}/export/", {"format": "json", "reason": "case 12"})]
    for response in shown:
        assert response.status_code >= 400 and not leaks(body(response), family), response.status_code
    monkeypatch.undo()
    assert not AccessRecord.objects.filter(user_id=officer.pk).exists()


def test_the_access_log_names_the_child_of_a_decrypted_export_however_the_query_is_padded(family, officer):
    """A parameter with no effect on the selection (?o=, the sort order) padded to 600
    characters must not push the filter that chose the child out of the record of a decrypted
    export."""
    response = login(officer).post(f"{E}export/?o={'1' * 600}&subject={family.child_id}",
                                   {"format": "json", "reason": "case 7 evidence", "decrypt": "on"})
    assert response.status_code == 200 and family.child_name in body(response)  # exported in clear ...
    record = AccessRecord.objects.get(user_id=officer.pk, action="export")
    assert record.decrypted and family.child_id in record.target, f"... but the record says {record.target[-80:]!r}"
    assert record.subject == f"child:{family.child_id}" and "o=" not in record.criteria


def test_a_reason_of_invisible_characters_is_no_reason(family, officer):
    """Five zero-width spaces are no reason anybody can read in the access log."""
    response = login(officer).post(f"{E}{family.age_event.pk}/reveal/", {"reason": "\u200b" * 5})
    assert response.status_code == 400, "a reveal with an invisible reason was accepted"
    assert not AccessRecord.objects.filter(user_id=officer.pk).exists()


# --- bad input gets a clear 4xx, never a 500 ----------------------------------------------

BAD_GETS = [
    E + "?actor=%00", E + "?subject=%00", E + "?correlation_id=%00", E + "?causation_id=%00", E + "?stream=%00",
    E + "?event_type=%00", E + "?payload=x", S + "?after=%00", S + "?stream_type=%00", S + "?version__regex=(",
    K + "?after=%00", K + "?wrapped_key__gt=x", A + "?username=%00", S + "%00/change/", E + "export/?after=abc",
    E + "export/?stream=%00", A + "export/?after=abc", "/admin/r/{stream_ct}/%00/", "/admin/r/{subject_ct}/%00/",
]


@pytest.mark.parametrize("url", BAD_GETS)
def test_malformed_query_strings_and_ids_get_a_clear_error_not_a_500(url, auditor, caplog):
    from django.contrib.contenttypes.models import ContentType

    cts = {f"{m}_ct": ContentType.objects.get(app_label="eventsourcing_app", model=m).pk
           for m in ("stream", "subjectkey")}
    url = url.format(stream_ct=cts["stream_ct"], subject_ct=cts["subjectkey_ct"])
    with caplog.at_level(logging.ERROR):
        response = login(auditor).get(url)
    assert response.status_code in (200, 302, 400, 404), (url, response.status_code)
    if any(lookup in url for lookup in ("payload=", "version__regex=", "wrapped_key__gt=", "after=")):
        assert response.status_code == 400, (url, response.status_code)  # refused, never honoured or skipped
    assert not tracebacks(caplog), (url, tracebacks(caplog))


@pytest.mark.parametrize("action", ["reveal", "export", "verify"])
def test_a_nul_byte_in_a_form_field_or_object_id_gets_a_clear_error_not_a_500(action, family, officer, caplog):
    client = login(officer)
    with caplog.at_level(logging.ERROR):
        if action == "reveal":
            response = client.post(f"{E}{family.age_event.pk}/reveal/", {"reason": "ticket\x00 81 from the parent"})
        elif action == "export":
            response = client.post(f"{E}export/?stream=child.{family.child_id}",
                                   {"format": "csv", "reason": "ticket\x00 81 from the parent"})
        else:
            response = client.post(f"{S}%00/verify/")
    assert response.status_code in (400, 404), response.status_code
    assert not tracebacks(caplog)
    assert not leaks(body(response), family)


def test_a_bad_page_cursor_is_named_in_the_error(auditor):
    """?after=abc is sent on to ?e=1, which shows the first page with no word about the cursor
    (and ?after=abc&e=1 is Django's "Something's wrong with your database installation")."""
    client = login(auditor)
    page = client.get(E, {"after": "abc"}, follow=True)
    assert "after" in body(page) and "abc" in body(page), "the bad cursor is dropped without an error"
    again = client.get(E, {"after": "abc", "e": "1"})
    assert "database installation" not in body(again)


# --- the rules of the audit pages ---------------------------------------------------------

def test_query_string_lookups_on_columns_the_admin_never_shows_are_not_an_oracle(family, auditor):
    """Any ?<field>__<lookup>= on the model passes Django's lookup_allowed. On PostgreSQL a
    bytea column is compared as its hex text, so ?wrapped_key__startswith=\\x<hex> walks a
    subject's wrapped data key out hex digit by hex digit ("never the key"), and
    ?payload__contains=<hex> searches raw payload bytes, ciphertext included (a scan of the
    events table); none of it is recorded in the access log."""
    client = login(auditor)
    subject = f"child:{family.child_id}"
    wrapped = bytes(SubjectKey.objects.get(pk=subject).wrapped_key)
    wrong = bytes([wrapped[0] ^ 0xFF])

    def rows(params):
        return body(client.get(K, {"q": subject, **params})).count('class="field-subject_link"')

    assert rows({}) == 1
    answers = {"right first byte": rows({"wrapped_key__startswith": "\\x" + wrapped[:1].hex()}),
               "wrong first byte": rows({"wrapped_key__startswith": "\\x" + wrong.hex()}),
               "right master key": rows({"master_key_id": SubjectKey.objects.get(pk=subject).master_key_id}),
               "wrong master key": rows({"master_key_id": "mk-not-this-one"})}
    assert len(set(answers.values())) == 1, f"the list answers questions about the data key: {answers}"
    stream = {"stream": f"child.{family.child_id}"}
    every = body(client.get(E, stream)).count('class="field-position_link"')
    envelopes = body(client.get(E, {**stream, "payload__contains": b"$enc".hex()})).count('class="field-position_link"')
    assert envelopes in (0, every), f"the list searches the raw payload bytes: {envelopes} of {every} events match"


def test_a_staff_user_in_no_group_learns_nothing_from_the_action_pages(family):
    """The event list answers 403 to staff in no group, but the export, erase and verify pages
    answer 200 with event counts for any filter (who did what, how often) and confirm which
    children exist."""
    client = login(staff_user(None))
    subject = quote(f"child:{family.child_id}")
    for url in (f"{E}export/?actor=system:tests", f"{E}export/?stream=child.{family.child_id}", f"{A}export/",
                f"{K}{subject}/export/", f"{K}{subject}/erase/"):
        response = client.get(url)
        assert response.status_code == 403, (url, response.status_code)


def test_the_admin_autocomplete_does_not_count_or_offset(family, auditor):
    client = login(auditor)
    with CaptureQueriesContext(connection) as captured:
        client.get("/admin/autocomplete/", {"app_label": "eventsourcing_app", "model_name": "event",
                                            "field_name": "stream", "term": "child", "page": "2"})
    bad = [q["sql"] for q in captured.captured_queries if COUNT_OR_OFFSET.search(q["sql"])]
    assert not bad, f"/admin/autocomplete/ counts the streams table and skips with OFFSET: {bad}"


@pytest.mark.parametrize("url", ["/admin/eventsourcing_app/deadletter/", "/admin/eventsourcing_app/deadletter/?_facets=1",
                                 "/admin/eventsourcing_app/projectorstate/"])
def test_the_read_side_pages_do_not_count_either(url, auditor):
    with CaptureQueriesContext(connection) as captured:
        assert login(auditor).get(url).status_code == 200
    bad = [q["sql"] for q in captured.captured_queries if COUNT_OR_OFFSET.search(q["sql"])]
    assert not bad, f"{url}: {bad}"


# --- masking, refusals and bounds -----------------------------------------------------------

def test_no_page_or_masked_export_shows_personal_data_or_ciphertext_to_compliance_or_a_superuser(family, auditor):
    from eventsourcing_app.domain import Child
    from eventsourcing_app.eventstore import get_event_sourcing_service
    from eventsourcing_app.models import Snapshot

    get_event_sourcing_service().create_snapshot_sync(Child, family.child_id)
    streams = [f"child.{family.child_id}", f"parent.{family.parent_id}", f"conversation.{family.conversation_id}"]
    positions = list(Event.objects.filter(stream_id__in=streams).values_list("position", flat=True))
    snapshot = Snapshot.objects.filter(stream_id=streams[0]).values_list("pk", flat=True).first()
    urls = [f"{K}{quote('child:' + family.child_id)}/change/", f"{K}{quote('parent:' + family.parent_id)}/change/",
            f"{E}?subject={family.child_id}", f"{E}?q={family.age_correlation}", f"{S}?q={family.child_id}",
            f"{SNAP}?q={streams[0]}", f"{SNAP}{snapshot}/change/", f"{A}?q=child.{family.child_id}"]
    urls += [f"{S}{quote(s)}/change/" for s in streams] + [f"{S}{quote(streams[0])}/change/?state_at={v}"
                                                        for v in range(1, 8)]
    urls += [f"{E}{p}/change/" for p in positions]
    for user in (auditor, staff_user(None, superuser=True)):
        client = login(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200 and not leaks(body(response), family), (user, url)
    client = login(auditor)
    for stream in streams:
        for export_format in ("csv", "json"):
            response = client.post(f"{E}export/?stream={stream}", {"format": export_format, "reason": "audit sample"})
            assert response.status_code == 200 and not leaks(body(response), family), (stream, export_format)


def test_a_superuser_and_a_compliance_user_cannot_reveal_decrypt_export_a_subject_or_erase(family, auditor):
    subject = quote(f"child:{family.child_id}")
    for user in (staff_user(None, superuser=True), auditor):
        client = login(user)
        attempts = [client.post(f"{E}{family.age_event.pk}/reveal/", {"reason": "just looking around"}),
                    client.post(f"{S}{quote('child.' + family.child_id)}/reveal/?state_at=2",
                                {"reason": "just looking around"}),
                    client.post(f"{E}export/?stream=child.{family.child_id}",
                                {"format": "json", "reason": "just looking around", "decrypt": "on"}),
                    client.post(f"{K}{subject}/export/", {"format": "json", "reason": "just looking around"}),
                    client.post(f"{K}{subject}/erase/", {"child_id": family.child_id, "reason_code": "parent_request",
                                                         "note": "just looking around"})]
        for response in attempts:
            assert response.status_code == 403 and not leaks(body(response), family), response.status_code
        # Each attempt is on the record as refused, and nothing more.
        assert set(AccessRecord.objects.filter(user_id=user.pk).values_list("scope", flat=True)) == {"refused"}
        assert AccessRecord.objects.filter(user_id=user.pk).count() == len(attempts)
    assert SubjectKey.objects.get(pk=f"child:{family.child_id}").destroyed_at is None


def test_get_never_acts_and_posts_without_the_csrf_token_are_refused(family, officer):
    subject = quote(f"child:{family.child_id}")
    client = login(officer)
    gets = [f"{E}{family.age_event.pk}/reveal/?reason=a+good+reason", f"{S}{quote('child.' + family.child_id)}/reveal/",
            f"{K}{subject}/erase/?child_id={family.child_id}&reason_code=parent_request&note=ticket+9",
            f"{K}{subject}/export/?format=json&reason=ticket+9", f"{S}verify/", f"{K}{subject}/verify/"]
    for url in gets:
        response = client.get(url)
        assert response.status_code == 200 and not leaks(body(response), family), url
    no_token = login(officer, enforce_csrf_checks=True)
    posts = [(f"{E}{family.age_event.pk}/reveal/", {"reason": "a good reason"}),
             (f"{K}{subject}/export/", {"format": "json", "reason": "ticket 9"}),
             (f"{K}{subject}/erase/", {"child_id": family.child_id, "reason_code": "parent_request", "note": "ticket 9"}),
             (f"{K}{subject}/verify/", {})]
    for url, data in posts:
        assert no_token.post(url, data).status_code == 403, url
    assert not AccessRecord.objects.filter(user_id=officer.pk).exists()
    assert SubjectKey.objects.get(pk=f"child:{family.child_id}").destroyed_at is None


def test_reasons_and_formats_out_of_bounds_are_refused_with_nothing_recorded(family, officer):
    client = login(officer)
    for reason in ("", "abcd", "    abcd    ", "x" * 2001, "y" * 5000):
        response = client.post(f"{E}{family.age_event.pk}/reveal/", {"reason": reason})
        assert response.status_code == 400, reason
        assert "give the reason" in body(response) or "keep it under" in body(response)
        assert family.child_name not in body(response)
    for export_format in ("xml", "", "csv\x00", "JSON"):
        response = client.post(f"{E}export/?stream=child.{family.child_id}",
                               {"format": export_format, "reason": "ticket 31 evidence", "decrypt": "on"})
        assert response.status_code == 400, export_format
        assert "choose csv or json" in body(response) or "holds a NUL character" in body(response), export_format
    assert not AccessRecord.objects.filter(user_id=officer.pk).exists()
    shown = client.post(f"{E}{family.age_event.pk}/reveal/", {"reason": "x" * 2000})
    assert shown.status_code == 200 and AccessRecord.objects.filter(user_id=officer.pk, action="reveal").count() == 1


def test_odd_object_ids_answer_404_or_a_clear_page(family, officer, caplog):
    client = login(officer)
    parent = quote(f"parent:{family.parent_id}")
    child_stream = f"child.{family.child_id}"
    not_found = [f"{S}child_3Anope/change/", f"{S}{'x' * 5000}/change/", f"{S}{child_stream.replace('.', '_2E')}x/change/",
                 f"{E}abc/change/", f"{E}99999999999999999999999/change/", f"{E}-1/change/", f"{E}abc/reveal/",
                 f"{K}{quote('child:nope')}/change/", f"{K}{quote('child:nope')}/erase/", f"{K}{parent}/erase/",
                 f"{K}{parent}/export/", f"{K}{quote(child_stream)}/erase/", f"{K}{family.child_id}/erase/",
                 f"{K}{family.age_event.pk}/change/", f"{S}{family.age_event.pk}/change/"]
    with caplog.at_level(logging.ERROR):
        for url in not_found:
            assert client.get(url).status_code == 404, url
        for url in (f"{K}{parent}/erase/", f"{K}{quote('child:nope')}/erase/"):
            assert client.post(url, {"child_id": "nope", "reason_code": "parent_request",
                                     "note": "ticket 1 from the parent"}).status_code == 404
        parent_page = client.get(f"{K}{parent}/change/")
        assert parent_page.status_code == 200 and "erase-subject" not in body(parent_page)
        stream = f"{S}{quote(child_stream)}/change/"
        for params, expected in ((("from", "-5"), 200), (("from", "1e9"), 400), (("from", "abc"), 400),
                                 (("state_at", "0"), 200), (("state_at", "1e9"), 200), (("state_at", "abc"), 200),
                                 (("state_at", "99999999999999999999"), 200)):
            response = client.get(stream, dict([params]))
            assert response.status_code == expected, params
            if params[0] == "state_at":
                assert "give a version from 1 to" in body(response), params
        for params in ({"before": "5", "after": "7"}, {"o": "1"}, {"p": "abc"}, {"all": "1"}, {"_facets": "1"},
                       {"recorded_at_from": "2026-01-01"}):
            assert client.get(E, params).status_code == 200, params
        for bad_date in ("99999-01-01", "2026-13-01", "yesterday"):  # refused, not dropped (that would widen it)
            response = client.get(E, {"recorded_at_from": bad_date})
            assert response.status_code == 400 and "is not a date" in body(response), bad_date
        too_long = client.get(E, {"q": "x" * 100000})
        assert too_long.status_code == 400 and "longer than" in body(too_long)
        assert client.get(E, {"q": "\x00"}).status_code == 400
        assert client.get(E, {"_to_field": "payload"}).status_code == 400
        assert client.get(E, {"stream__last_hash": "x"}).status_code == 400
    assert not [m for m in tracebacks(caplog) if "Internal Server Error" in m]


def test_every_method_but_get_on_an_audit_record_is_refused(family, officer):
    client = login(officer)
    event = f"{E}{family.age_event.pk}/"
    for url in (event + "change/", f"{S}{quote('child.' + family.child_id)}/change/",
                f"{K}{quote('child:' + family.child_id)}/change/"):
        for method in ("PUT", "PATCH", "DELETE"):
            assert client.generic(method, url).status_code == 403, (method, url)
    assert client.generic("DELETE", event + "delete/").status_code == 403
    assert Event.objects.filter(pk=family.age_event.pk).exists()


# --- across processes: admin servers of their own -----------------------------------------------

SERVER = r"""
import sys, django
django.setup()
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from django.core.wsgi import get_wsgi_application
class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
server = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=Server, handler_class=Quiet)
open(sys.argv[1], "w").write(str(server.server_port))
server.serve_forever()
"""

WRITER = r"""
import json, sys, django
django.setup()
from eventsourcing_app.application import Actor
from eventsourcing_app.application.children import update_child_profile
from eventsourcing_app.application.conversations import record_message
from eventsourcing_app.eventstore import get_event_store
child_id, conversation_id, tag, out = sys.argv[1:5]
written, errors = [], []
for i in range(400):
    name = f"Writer{i}{tag}"
    for command in (lambda: update_child_profile(actor=Actor.system("writer"), child_id=child_id,
                                                 changes={"name": name}),
                    lambda: record_message(actor=Actor.system("writer"), conversation_id=conversation_id,
                                           speaker="child", text=f"call me {name}")):
        try:
            command()
            written.append(name)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    if len(errors) >= 6:
        break
get_event_store().flush(10)
json.dump({"written": written, "errors": errors}, open(out, "w"))
"""


def _env() -> dict:
    return process_env(LOG_LEVEL="WARNING")


@pytest.fixture(scope="module")
def admin_servers(store, tmp_path_factory):
    """Two admin server processes of their own (each its own event store, key cache and publisher)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("admin-servers")
    processes, bases = [], []
    for n in range(2):
        port_file = work / f"port-{n}"
        log = open(LOG_DIR / f"probe-admin-server-{n}.log", "ab")
        processes.append(subprocess.Popen([sys.executable, "-c", SERVER, str(port_file)], cwd=REPO, env=_env(),
                                          stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert processes[-1].poll() is None and time.monotonic() < deadline, f"admin server {n} did not start"
            time.sleep(0.1)
        bases.append(f"http://127.0.0.1:{port_file.read_text()}")
    yield bases
    for process in processes:
        process.terminate()
        process.wait(20)


def http_session(user) -> requests.Session:
    client = Client()
    client.force_login(user)
    session = requests.Session()
    session.cookies.set(settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    return session


def post_form(session: requests.Session, base: str, url: str, data: dict) -> requests.Response:
    if "csrftoken" not in session.cookies:
        assert session.get(base + url, timeout=60).status_code == 200
    return session.post(base + url, data={**data, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                        allow_redirects=False, timeout=120)


def erase_form(family, note: str) -> dict:
    return {"child_id": family.child_id, "reason_code": "parent_request", "note": note}


def assert_erased_everywhere(family, officer, names: list[str]) -> None:
    """As the officer: reveals of every page of the child's streams, the subject export, the
    state; none shows any of `names`, and integrity verifies."""
    from eventsourcing_app.application.privacy import streams_of_child

    client = login(officer)
    for stream in streams_of_child(family.child_id):
        version = Event.objects.filter(stream_id=stream).order_by("-version").values_list("version", flat=True)[0]
        for start in range(0, version, 50):
            page = body(client.post(f"{S}{quote(stream)}/reveal/?from={start}&state_at={version}",
                                    {"reason": "proof of erasure"}))
            found = [n for n in names if n in page]
            assert not found and "$enc" not in page and "cannot be decrypted" not in page, (stream, start, found[:3])
    export = body(client.post(f"{K}{quote('child:' + family.child_id)}/export/",
                              {"format": "json", "reason": "proof of erasure"}))
    assert not [n for n in names if n in export] and "$enc" not in export
    verified = client.post(f"{K}{quote('child:' + family.child_id)}/verify/")
    assert verified.status_code == 200 and "verified:" in body(verified), body(verified)[-2000:]


def test_two_officers_erasing_one_child_at_once_from_two_processes(admin_servers, family):
    officers = [staff_user("privacy-officer") for _ in admin_servers]
    sessions = [http_session(o) for o in officers]
    url = f"{K}{quote('child:' + family.child_id)}/erase/"
    for session, base in zip(sessions, admin_servers):
        assert session.get(base + url, timeout=60).status_code == 200
    barrier, answers = threading.Barrier(2), [None, None]

    def erase(n):
        barrier.wait()
        answers[n] = post_form(sessions[n], admin_servers[n], url, erase_form(family, f"ticket {n} at the same time"))

    threads = [threading.Thread(target=erase, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert [a.status_code for a in answers] == [302, 302], [(a.status_code, a.text[-500:]) for a in answers]
    assert Event.objects.filter(stream_id=f"child.{family.child_id}", event_type="ChildDataErased").count() == 1
    assert SubjectKey.objects.get(pk=f"child:{family.child_id}").destroyed_at is not None
    records = AccessRecord.objects.filter(action="erase", target=f"child.{family.child_id}")
    # Each officer's request is recorded before it runs, and how it ended after.
    assert sorted(r.user_id for r in records if r.outcome.startswith("requested")) == sorted(o.pk for o in officers)
    assert sorted(r.user_id for r in records if r.outcome.startswith("done")) == sorted(o.pk for o in officers)
    assert_erased_everywhere(family, officers[0], personal_values(family))


def test_reveals_racing_an_erasure_in_another_process_show_nothing_once_it_is_done(admin_servers, family):
    revealer, eraser = staff_user("privacy-officer"), staff_user("privacy-officer")
    reveal_session, erase_session = http_session(revealer), http_session(eraser)
    stream = quote(f"child.{family.child_id}")
    version = Event.objects.filter(stream_id=f"child.{family.child_id}").count()
    reveal_url = f"{S}{stream}/reveal/?state_at={version}"
    assert reveal_session.get(admin_servers[0] + f"{S}{stream}/change/", timeout=60).status_code == 200
    seen, stop, erased_at = [], threading.Event(), []

    def reveal_loop():
        while not stop.is_set():
            sent = time.monotonic()
            response = post_form(reveal_session, admin_servers[0], reveal_url, {"reason": "racing the erasure"})
            seen.append((sent, response.status_code, response.text))

    worker = threading.Thread(target=reveal_loop)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(seen) < 3:
            assert time.monotonic() < deadline and worker.is_alive(), "the reveals do not get through"
            time.sleep(0.05)
        done = post_form(erase_session, admin_servers[1], f"{K}{quote('child:' + family.child_id)}/erase/",
                         erase_form(family, "ticket 404 while someone reads"))
        erased_at.append(time.monotonic())
        assert done.status_code == 302, done.text[-1000:]
        deadline = time.monotonic() + 20
        while sum(1 for s, *_ in seen if s > erased_at[0]) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(120)
    assert all(code == 200 for _, code, _ in seen), [code for _, code, _ in seen]
    assert not [text for _, _, text in seen if "$enc" in text or "cannot be decrypted" in text]
    before = [text for sent, _, text in seen if sent < erased_at[0]]
    assert any(family.child_name in t for t in before), "no reveal before the erasure showed the name"
    after = [text for sent, _, text in seen if sent > erased_at[0]]
    assert after and not [t for t in after if family.child_name in t or family.udid in t]
    assert all("erased" in t for t in after)
    assert AccessRecord.objects.filter(user_id=revealer.pk, action="reveal").count() == len(seen)


def test_a_writer_process_appending_while_an_officer_erases_leaves_nothing_readable(admin_servers, family, tmp_path):
    officer = staff_user("privacy-officer")
    session = http_session(officer)
    tag = uuid.uuid4().hex[:6]
    out = tmp_path / "writer.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, family.child_id, family.conversation_id, tag, str(out)],
                              cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "writer.err", "w"))
    try:
        deadline = time.monotonic() + 60
        while not Event.objects.filter(stream_id=f"child.{family.child_id}", version__gte=20).exists():
            assert writer.poll() is None and time.monotonic() < deadline, Path(tmp_path / "writer.err").read_text()
            time.sleep(0.05)
        done = post_form(session, admin_servers[0], f"{K}{quote('child:' + family.child_id)}/erase/",
                         erase_form(family, "ticket 500 mid-write"))
        assert done.status_code == 302, done.text[-1000:]
        assert writer.wait(180) == 0, Path(tmp_path / "writer.err").read_text()[-3000:]
    finally:
        if writer.poll() is None:
            writer.kill()
    result = json.loads(out.read_text())
    assert result["written"] and result["errors"], result  # it wrote, and met the erasure
    assert all("erased" in e.lower() for e in result["errors"]), result["errors"]
    child_stream = f"child.{family.child_id}"
    last = Event.objects.filter(stream_id=child_stream).order_by("-version").values_list("event_type", flat=True)[0]
    assert last == "ChildDataErased"
    assert SubjectKey.objects.get(pk=f"child:{family.child_id}").destroyed_at is not None
    assert_erased_everywhere(family, officer, personal_values(family) + result["written"])
