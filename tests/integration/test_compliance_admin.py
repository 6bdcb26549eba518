"""The compliance admin over HTTP (Django's test client; the browser tests are in
test_compliance_browser.py): roles, masking, reveal with the access log, diffs, state at a
version, exports, erasure and integrity checks, and nothing editable for anyone.
"""
from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.admin.utils import quote
from django.test import Client

from eventsourcing_app.models import AccessRecord, Event, SubjectKey
from tests.integration.compliance_helpers import make_family, staff_user

CHILD_URL = "/admin/eventsourcing_app/stream/{}/change/"
EVENT_URL = "/admin/eventsourcing_app/event/{}/change/"
SUBJECT_URL = "/admin/eventsourcing_app/subjectkey/{}/change/"


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def family(store):
    from eventsourcing_app.domain import Child
    from eventsourcing_app.eventstore import get_event_sourcing_service

    family = make_family()
    get_event_sourcing_service().create_snapshot_sync(Child, family.child_id)
    return family


@pytest.fixture
def officer():
    return staff_user("privacy-officer")


@pytest.fixture
def compliance_user():
    return staff_user("compliance")


def text(response) -> str:
    return response.content.decode()


def test_the_roles_come_from_the_migration_and_a_superuser_gains_nothing_over_personal_data(family):
    superuser = login(staff_user(None, superuser=True))
    page = superuser.get(EVENT_URL.format(family.age_event.pk))
    assert page.status_code == 200
    assert family.child_name not in text(page) and "•••" in text(page)
    assert 'id="reveal-form"' not in text(page)
    refused = superuser.post(f"/admin/eventsourcing_app/event/{family.age_event.pk}/reveal/", {"reason": "curious root"})
    assert refused.status_code == 403 and "privacy-officer" in text(refused)
    assert not AccessRecord.objects.filter(reason="curious root").exists()
    # A staff user in no group sees nothing of the audit trail.
    assert login(staff_user(None)).get("/admin/eventsourcing_app/event/").status_code == 403


def test_a_compliance_user_sees_which_update_changed_the_age_without_seeing_the_age(family, compliance_user):
    client = login(compliance_user)
    page = text(client.get(EVENT_URL.format(family.age_event.pk)))
    assert 'data-field="age"' in page  # the change names the field ...
    assert ">7<" not in page and family.child_name not in page  # ... not its values
    assert family.age_correlation in page
    stream = text(client.get(CHILD_URL.format(quote(f"child.{family.child_id}"))))
    # Five events; only one of them changed the age.
    assert stream.count('data-field="age"') == 2  # registration (set) and the update
    assert 'id="reveal-form"' not in stream and "erase-subject" not in stream


def test_an_officer_reveals_an_event_with_a_reason_and_the_access_log_records_it(family, officer):
    client = login(officer)
    without = client.post(f"/admin/eventsourcing_app/event/{family.age_event.pk}/reveal/", {"reason": " "})
    assert without.status_code == 400 and "give the reason" in text(without)
    assert '<span class="mono">7</span>' not in text(without) and not AccessRecord.objects.filter(user_id=officer.pk)
    shown = client.post(f"/admin/eventsourcing_app/event/{family.age_event.pk}/reveal/",
                        {"reason": "parent access request #81"}, HTTP_X_CORRELATION_ID="reveal-req-81")
    assert shown.status_code == 200
    page = text(shown)
    assert '<span class="mono">6</span>' in page and '<span class="mono">7</span>' in page  # before / after
    record = AccessRecord.objects.get(reason="parent access request #81")
    assert (record.action, record.scope, record.username, record.decrypted) == ("reveal", "event", officer.username, True)
    assert record.event_ids == [str(family.age_event.event_id)] and record.correlation_id == "reveal-req-81"
    log = text(client.get("/admin/eventsourcing_app/accessrecord/", {"q": f"child.{family.child_id}"}))
    assert "parent access request #81" in log


def test_the_state_at_any_version_is_rebuilt_from_events(family, officer):
    client = login(officer)
    url = CHILD_URL.format(quote(f"child.{family.child_id}"))
    masked = text(client.get(url, {"state_at": 2}))
    assert 'id="state"' in masked and "•••" in masked
    revealed = text(client.post(f"/admin/eventsourcing_app/stream/{quote(f'child.{family.child_id}')}/reveal/?state_at=2",
                                {"reason": "regulator question 12"}))
    state = revealed.split('id="state"')[1].split("</table>")[0]
    assert '<tr data-field="age"><th>age</th><td><span class="mono">6</span>' in state
    assert "dinosaurs" in state
    bad = client.get(url, {"state_at": 99})
    assert bad.status_code == 200 and "give a version from 1 to" in text(bad)


def test_search_finds_a_child_by_its_bare_id_and_by_prefix(family, compliance_user):
    client = login(compliance_user)
    by_bare_id = text(client.get("/admin/eventsourcing_app/stream/", {"q": family.child_id}))
    assert f"child.{family.child_id}" in by_bare_id
    by_prefix = text(client.get("/admin/eventsourcing_app/stream/", {"q": f"child.{family.child_id[:10]}"}))
    assert f"child.{family.child_id}" in by_prefix
    events = text(client.get("/admin/eventsourcing_app/event/", {"q": family.age_correlation}))
    assert events.count('class="field-position_link"') == 2
    by_subject = text(client.get("/admin/eventsourcing_app/event/", {"subject": family.child_id}))
    assert by_subject.count('class="field-position_link"') == 5  # the child's own stream


def test_exports_are_masked_for_compliance_decrypted_for_officers_and_recorded(family, compliance_user, officer):
    stream = f"child.{family.child_id}"
    masked = login(compliance_user).post(f"/admin/eventsourcing_app/event/export/?stream={stream}",
                                         {"format": "csv", "reason": "audit sample 2026-12", "decrypt": "on"})
    assert masked.status_code == 403  # decrypting is for privacy officers
    masked = login(compliance_user).post(f"/admin/eventsourcing_app/event/export/?stream={stream}",
                                         {"format": "csv", "reason": "audit sample 2026-12"})
    assert masked.status_code == 200 and masked["Content-Disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(b"".join(masked.streaming_content).decode())))
    assert [int(r["version"]) for r in rows] == [1, 2, 3, 4, 5]
    assert family.child_name not in json.dumps(rows) and json.loads(rows[0]["payload"])["name"] == "•••"
    clear = login(officer).post(f"/admin/eventsourcing_app/event/export/?correlation_id={family.age_correlation}",
                                {"format": "json", "reason": "case 99 evidence", "decrypt": "on"})
    document = json.loads(b"".join(clear.streaming_content))
    assert [e["event_type"] for e in document["events"]] == ["ChildProfileUpdated", "SafetySettingsChanged"]
    assert document["events"][0]["payload"]["changes"] == {"age": 7}
    records = AccessRecord.objects.filter(action="export", reason__in=["audit sample 2026-12", "case 99 evidence"])
    assert sorted((r.scope, r.decrypted, r.event_count) for r in records) == [("correlation", True, 2),
                                                                              ("stream", False, 5)]
    # A data subject's export is for privacy officers only.
    subject = quote(f"child:{family.child_id}")
    assert login(compliance_user).post(f"/admin/eventsourcing_app/subjectkey/{subject}/export/",
                                       {"format": "json", "reason": "not mine to do"}).status_code == 403


def test_an_erasure_from_the_admin_leaves_no_name_anywhere_and_integrity_still_verifies(family, officer,
                                                                                     compliance_user):
    client = login(officer)
    subject = quote(f"child:{family.child_id}")
    wrong = client.post(f"/admin/eventsourcing_app/subjectkey/{subject}/erase/",
                        {"child_id": "child-other", "reason_code": "parent_request", "note": "ticket 5"})
    assert wrong.status_code == 400 and "type the child id" in text(wrong)
    assert SubjectKey.objects.get(pk=f"child:{family.child_id}").destroyed_at is None
    done = client.post(f"/admin/eventsourcing_app/subjectkey/{subject}/erase/",
                       {"child_id": family.child_id, "reason_code": "parent_request", "note": "ticket 5 from the parent"},
                       HTTP_X_CORRELATION_ID="erase-req-5")
    assert done.status_code == 302
    erasure = Event.objects.get(stream_id=f"child.{family.child_id}", event_type="ChildDataErased")
    assert erasure.actor == f"user:{officer.pk}" and erasure.correlation_id == "erase-req-5"
    assert AccessRecord.objects.filter(action="erase", target=f"child.{family.child_id}",
                                       reason="ticket 5 from the parent").exists()
    pages = [SUBJECT_URL.format(subject), CHILD_URL.format(quote(f"child.{family.child_id}")),
             EVENT_URL.format(family.age_event.pk), f"/admin/eventsourcing_app/event/?subject={family.child_id}"]
    for user in (officer, compliance_user):
        for url in pages:
            page = login(user).get(url)
            assert page.status_code == 200 and family.child_name not in text(page), url
    revealed = client.post(f"/admin/eventsourcing_app/stream/{quote(f'child.{family.child_id}')}/reveal/?state_at=2",
                           {"reason": "after the erasure"})
    assert revealed.status_code == 200 and family.child_name not in text(revealed) and "erased" in text(revealed)
    assert "$enc" not in text(revealed)
    export = client.post(f"/admin/eventsourcing_app/subjectkey/{subject}/export/",
                         {"format": "json", "reason": "proof of erasure"})
    body = b"".join(export.streaming_content).decode()
    assert export.status_code == 200 and family.child_name not in body and "$enc" not in body
    verified = client.post(f"/admin/eventsourcing_app/subjectkey/{subject}/verify/")
    assert verified.status_code == 200 and "verified:" in text(verified), text(verified)
    assert AccessRecord.objects.filter(action="verify", scope="subject", target=family.child_id).exists()


def test_verify_of_a_stream_and_of_everything_is_shown_and_recorded(family, compliance_user):
    client = login(compliance_user)
    url = f"/admin/eventsourcing_app/stream/{quote(f'child.{family.child_id}')}/verify/"
    assert "Verify now" in text(client.get(url))
    result = client.post(url, {"reason": "regulator's request #12"})
    assert result.status_code == 200 and 'class="ok"' in text(result)
    assert AccessRecord.objects.filter(action="verify", scope="stream", username=compliance_user.username,
                                       reason="regulator's request #12").exists()
    unknown = client.post(f"/admin/eventsourcing_app/stream/{quote('child.no-such-child')}/verify/")
    assert unknown.status_code == 400 and "does not exist" in text(unknown)


AUDIT_MODELS = ("stream", "event", "snapshot", "subjectkey", "accessrecord", "deadletter", "projectorstate")


def _some_pk(model: str, family) -> str:
    from django.apps import apps

    row = apps.get_model("eventsourcing_app", model).objects.order_by("-pk").first()
    return quote(row.pk) if row is not None else None


@pytest.mark.parametrize("role", ["superuser", "privacy-officer", "compliance"])
def test_no_add_change_or_delete_for_anyone_and_no_traceback(family, role, caplog):
    user = staff_user(None, superuser=True) if role == "superuser" else staff_user(role)
    client = login(user)
    AccessRecord.objects.create(at=family.age_event.occurred_at, user_id=user.pk, username=user.username,
                                action="verify", scope="store", target="everything", reason="", correlation_id="-")
    for model in AUDIT_MODELS:
        base = f"/admin/eventsourcing_app/{model}/"
        listing = text(client.get(base))
        assert f'href="{base}add/"' not in listing and 'name="action"' not in listing, model
        pk = _some_pk(model, family)
        if pk is not None:  # the read side's records exist only once a projector met trouble
            detail = client.get(f"{base}{pk}/change/")
            assert detail.status_code == 200, (model, detail.status_code)
            assert 'name="_save"' not in text(detail), model
            if model != "subjectkey":  # a child's page links to the erasure (its own confirmation page)
                assert "deletelink" not in text(detail), model
        pk = pk or "1"
        with caplog.at_level("WARNING", logger="django.request"):
            assert client.get(f"{base}add/").status_code == 403
            assert client.post(f"{base}add/", {}).status_code == 403
            assert client.get(f"{base}{pk}/delete/").status_code == 403
            assert client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403
            assert client.post(f"{base}{pk}/change/", {}).status_code == 403
            assert client.post(base, {"action": "delete_selected", "_selected_action": [pk]}).status_code == 403
        assert not any(record.exc_info for record in caplog.records), model
        history = client.get(f"{base}{pk}/history/")
        assert history.status_code == 302 and history["Location"].endswith(f"/{pk}/change/")
    assert Event.objects.filter(pk=family.age_event.pk).exists()


def test_the_access_log_cannot_be_changed_even_through_the_orm_or_sql(compliance_user):
    from django.db import connection, transaction

    from eventsourcing_app.eventstore.errors import ImmutableEventError

    entry = AccessRecord.objects.create(at=compliance_user.date_joined, user_id=compliance_user.pk,
                                        username=compliance_user.username, action="verify", scope="store",
                                        target="everything", reason="", correlation_id="-")
    with pytest.raises(ImmutableEventError):
        entry.save()
    with pytest.raises(ImmutableEventError):
        AccessRecord.objects.filter(pk=entry.pk).update(reason="rewritten")
    with pytest.raises(Exception, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE compliance_access_record SET reason = 'x' WHERE id = %s", [entry.pk])
    with pytest.raises(Exception, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM compliance_access_record WHERE id = %s", [entry.pk])
    assert AccessRecord.objects.get(pk=entry.pk).reason == ""


def test_failed_admin_logins_are_limited(compliance_user):
    client = Client()
    for _ in range(4):
        assert client.post("/admin/login/", {"username": compliance_user.username, "password": "wrong"}).status_code == 200
    # The fifth failure locks the user name out from this address, even with the right password.
    assert client.post("/admin/login/", {"username": compliance_user.username, "password": "wrong"}).status_code == 429
    locked = client.post("/admin/login/", {"username": compliance_user.username, "password": "a-long-compliance-password"})
    assert locked.status_code == 429
    # Others are not locked out by it.
    other = staff_user("compliance")
    assert Client().post("/admin/login/", {"username": other.username,
                                           "password": "a-long-compliance-password"}).status_code == 302


def test_joining_or_leaving_a_compliance_group_is_in_the_access_log_whoever_does_it():
    from django.contrib.auth.models import Group

    from eventsourcing_app.observability import event_context

    root = staff_user(None, superuser=True)
    with event_context(correlation_id="grant-self", actor=f"user:{root.pk}"):
        root.groups.add(Group.objects.get(name="privacy-officer"))  # a superuser grants themselves the role
        root.groups.remove(Group.objects.get(name="privacy-officer"))
    records = AccessRecord.objects.filter(action="role", target__startswith=f"user:{root.pk} ").order_by("id")
    assert [(r.username, r.outcome, r.correlation_id) for r in records] == [
        (root.username, "joined privacy-officer", "grant-self"), (root.username, "left privacy-officer", "grant-self")]


def test_only_the_two_groups_grant_anything_and_what_they_hold_is_recorded(family):
    from django.contrib.auth.models import Group, Permission

    from eventsourcing_app.application import compliance
    from eventsourcing_app.observability import event_context

    reveal = Permission.objects.get(codename="reveal_personal_data")
    user = staff_user("compliance")
    user.user_permissions.add(reveal)  # given to the user directly ...
    helpers, _ = Group.objects.get_or_create(name=f"helpers-{user.pk}")
    helpers.permissions.add(reveal)
    user.groups.add(helpers)  # ... or through another group: neither counts
    fresh = type(user).objects.get(pk=user.pk)
    assert not compliance.may(fresh, "reveal_personal_data") and compliance.may(fresh, "view_event")
    assert login(fresh).post(f"/admin/eventsourcing_app/event/{family.age_event.pk}/reveal/",
                             {"reason": "through a side door"}).status_code == 403
    # Re-adding a member names nobody new; changing what a role holds is recorded.
    compliance_group = Group.objects.get(name="compliance")
    before = AccessRecord.objects.filter(action="role").count()
    compliance_group.user_set.add(user)
    assert AccessRecord.objects.filter(action="role").count() == before
    with event_context(actor="system:tests"):
        compliance_group.permissions.add(reveal)
        compliance_group.permissions.remove(reveal)
    changes = AccessRecord.objects.filter(action="role", target="group compliance").order_by("-id")[:2]
    assert [r.outcome for r in reversed(changes)] == ["gained permission reveal_personal_data",
                                                      "lost permission reveal_personal_data"]


def test_the_commands_export_and_erasure_are_in_the_access_log_too(family, officer, tmp_path):
    from django.core.management import call_command

    target = f"child.{family.child_id}"
    call_command("export_child", family.child_id, "-o", str(tmp_path / "export.json"), "--actor", f"user:{officer.pk}")
    call_command("forget_child", family.child_id, "--reason", "parent_request", "--actor", f"user:{officer.pk}",
                 stdout=io.StringIO(), stderr=io.StringIO())
    records = AccessRecord.objects.filter(target=target).order_by("id")
    assert [(r.action, r.username, r.decrypted, r.outcome.split(" ")[0]) for r in records] == [
        ("export", officer.username, True, "handed"), ("erase", officer.username, False, "requested"),
        ("erase", officer.username, False, "done:")]
    assert records[0].event_count == len(sum(json.loads((tmp_path / "export.json").read_text())["streams"].values(), []))


def test_a_permission_given_outside_the_two_groups_does_not_open_the_audit_trail(family):
    from django.contrib.auth.models import Permission

    user = staff_user(None)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_event", "view_accessrecord"]))
    client = login(type(user).objects.get(pk=user.pk))
    assert client.get("/admin/eventsourcing_app/event/").status_code == 403
    assert client.get(f"/admin/eventsourcing_app/event/{family.age_event.pk}/change/").status_code == 403
    assert client.get("/admin/eventsourcing_app/accessrecord/export/").status_code == 403
    assert "Event store" not in text(client.get("/admin/"))


class _RolledBack(Exception):
    pass


def test_renaming_or_deleting_a_role_group_is_recorded_and_removing_a_non_member_is_not():
    from django.contrib.auth.models import Group
    from django.db import transaction

    outsider = staff_user(None)
    before = AccessRecord.objects.filter(action="role").count()
    Group.objects.get(name="privacy-officer").user_set.remove(outsider)  # was never a member
    assert AccessRecord.objects.filter(action="role").count() == before
    member = staff_user("compliance")
    try:  # the shared database keeps its groups: both changes are rolled back after the checks
        with transaction.atomic():
            group = Group.objects.get(name="compliance")
            group.name = "compliance-renamed"
            group.save()
            renamed = AccessRecord.objects.filter(action="role", target="group compliance-renamed").get()
            assert renamed.outcome.startswith("renamed from 'compliance'") and member.username in renamed.outcome
            Group.objects.get(name="privacy-officer").delete()
            assert AccessRecord.objects.filter(action="role", target="group privacy-officer",
                                               outcome__startswith="deleted").exists()
            raise _RolledBack
    except _RolledBack:
        pass
    assert Group.objects.filter(name__in=["compliance", "privacy-officer"]).count() == 2
