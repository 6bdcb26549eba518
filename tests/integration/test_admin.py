"""The audit trail in the admin: readable by staff, editable by nobody."""
from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model

from eventsourcing_app.models import Event
from tests.conftest import unique_stream
from tests.events import NoteRecorded


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser(f"auditor-{uuid.uuid4().hex[:6]}", password="x-long-password")
    client.force_login(user)
    return client


def test_staff_browse_streams_and_events_with_decoded_payloads(staff_client, store):
    stream_id = unique_stream()
    store.append_events_sync(stream_id, [NoteRecorded(text="bedtime story", n=1)], correlation_id="corr-admin")
    event = Event.objects.get(stream_id=stream_id)

    listing = staff_client.get("/admin/eventsourcing_app/event/", {"q": "corr-admin"})
    assert listing.status_code == 200 and stream_id in listing.content.decode()
    detail = staff_client.get(f"/admin/eventsourcing_app/event/{event.pk}/change/")
    assert detail.status_code == 200
    assert "bedtime story" in detail.content.decode()
    assert bytes(event.chain_hash).hex() in detail.content.decode()
    assert staff_client.get(f"/admin/eventsourcing_app/stream/{stream_id}/change/").status_code == 200


def test_nobody_can_add_change_or_delete_through_the_admin(staff_client, store):
    stream_id = unique_stream()
    store.append_events_sync(stream_id, [NoteRecorded(text="original", n=1)])
    event = Event.objects.get(stream_id=stream_id)
    assert staff_client.get("/admin/eventsourcing_app/event/add/").status_code == 403
    assert staff_client.post(f"/admin/eventsourcing_app/event/{event.pk}/change/",
                             {"event_type": "Forged"}).status_code == 403
    assert staff_client.post(f"/admin/eventsourcing_app/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Event.objects.get(pk=event.pk).event_type == "test.NoteRecorded"
    assert bytes(Event.objects.get(pk=event.pk).payload) == b'{"n":1,"text":"original"}'
