"""Personal data: encrypted wherever it is stored, erased everywhere by destroying one key."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from kafka import KafkaConsumer, TopicPartition

from eventsourcing_app.domain import Child, Conversation, ConversationId, DomainEvent, Parent, ParentId
from eventsourcing_app.eventstore import (
    EventSourcingRepositoryImpl,
    get_aggregate_cache,
    get_event_sourcing_service,
)
from eventsourcing_app.models import Snapshot, SubjectKey
from eventsourcing_app.operations.verify import verify_integrity
from eventsourcing_app.privacy.keyring import MasterKeyError, MasterKeyring
from eventsourcing_app.privacy.keys import SubjectErasedError, SubjectKeys
from tests.integration.conftest import REPO, STREAM_TYPES, database_url
from tests.integration.helpers import new_child

NAME = "Zephyrine"  # distinctive, so that a search for it in raw bytes means something
SECRET = "my secret hiding place is the blue cupboard"


@pytest.fixture
def family(store):
    """A parent with consent, a child with a conversation and snapshots, all published."""
    service = get_event_sourcing_service()
    child = new_child(name=NAME, age=7)
    parent = Parent(ParentId(child.parent_id))
    parent.register(email="robin@example.org", name="Robin Parent")
    parent.grant_consent(child.id, "signed_form")
    service.save_aggregate_sync(parent)
    child.update_profile({"interests": ["dragons", "space"]})
    service.save_aggregate_sync(child)
    talk = Conversation(ConversationId(f"conv-{uuid.uuid4().hex[:10]}"))
    talk.start(child.id, child.device_id)
    talk.record_message("child", f"Hi Teddy, I am {NAME} and {SECRET}")
    talk.record_message("bear", "Thank you for telling me!")
    talk.end()
    talk.summarize(f"{NAME} talked about a hiding place")
    service.save_aggregate_sync(talk)
    service.create_snapshot_sync(Child, child.id)
    service.create_snapshot_sync(Conversation, talk.id)
    EventSourcingRepositoryImpl(Child).load_sync(child.id)  # fills the cache
    assert store.flush(30)
    return child, talk, parent


def raw_mirror_bytes(stream_ids) -> bytes:
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload FROM eventstore_event WHERE stream_id = ANY(%s)", [list(stream_ids)])
        events = b"".join(bytes(row[0]) for row in cursor.fetchall())
        cursor.execute("SELECT state FROM eventstore_snapshot WHERE stream_id = ANY(%s)", [list(stream_ids)])
        snapshots = b"".join(bytes(row[0]) for row in cursor.fetchall())
    return events + snapshots


def raw_kafka_bytes(kafka_settings, stream_ids) -> bytes:
    """Every record of the streams' event and snapshot topics, read with kafka-python."""
    wanted = {s.encode() for s in stream_ids}
    topics = [kafka_settings.event_topic(t) for t in STREAM_TYPES] + [kafka_settings.snapshot_topic(t) for t in STREAM_TYPES]
    consumer = KafkaConsumer(bootstrap_servers=kafka_settings.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        found = b""
        for record in consumer:
            if record.key in wanted:
                found += (record.value or b"") + b"".join(v or b"" for _, v in record.headers)
        return found
    finally:
        consumer.close()


def raw_cache_bytes(stream_ids) -> bytes:
    client = redis.Redis.from_url(settings.REDIS_URL)
    return b"".join(client.get(get_aggregate_cache().key(s)) or b"" for s in stream_ids)


def test_no_plaintext_personal_data_in_the_mirror_kafka_snapshots_or_cache(family, kafka_settings):
    child, talk, parent = family
    streams = [child.stream_id, talk.stream_id, parent.stream_id]
    mirror, kafka, cache = raw_mirror_bytes(streams), raw_kafka_bytes(kafka_settings, streams), raw_cache_bytes(streams)
    assert b'"$enc"' in mirror and b'"$enc"' in kafka and b'"$enc"' in cache  # the data is there, encrypted
    assert Snapshot.objects.filter(stream_id__in=streams).count() == 2
    for secret in (NAME, "cupboard", "robin@example.org", "Robin Parent", "dragons"):
        for where, blob in (("mirror", mirror), ("kafka", kafka), ("cache", cache)):
            assert secret.encode() not in blob, f"{secret!r} in plaintext in the {where}"
    # ... and reads give it back
    loaded = get_event_sourcing_service().load_aggregate_sync(Child, child.id)
    assert (loaded.name, loaded.age, loaded.interests) == (NAME, 7, ["dragons", "space"])


def test_forget_child_erases_the_childs_data_everywhere_and_the_chains_still_verify(family, kafka_settings, capsys):
    child, talk, parent = family
    service = get_event_sourcing_service()
    call_command("forget_child", child.id, reason="parent_request")
    assert "data key destroyed" in capsys.readouterr().out

    for repository in (EventSourcingRepositoryImpl(Child), EventSourcingRepositoryImpl(Child, cache=False)):
        erased = repository.load_sync(child.id)
        assert erased.erased and erased.name is None and erased.age is None and erased.interests in (None, [])
    conversation = service.load_aggregate_sync(Conversation, talk.id)
    assert NAME not in json.dumps(conversation.to_snapshot(), default=str)
    exported = json.dumps(_export(child.id))
    assert NAME not in exported and "cupboard" not in exported
    assert not Snapshot.objects.filter(stream_id__in=[child.stream_id, talk.stream_id]).exists()
    assert raw_cache_bytes([child.stream_id, talk.stream_id]) == b""
    assert SubjectKey.objects.get(pk=f"child:{child.id}").wrapped_key is None
    # the parent's own data is untouched
    assert service.load_aggregate_sync(Parent, parent.id).name == "Robin Parent"
    # the immutable log is unchanged: every chain still verifies, also against Kafka
    for stream_id in (child.stream_id, talk.stream_id, parent.stream_id):
        assert verify_integrity(stream_id, kafka_settings=kafka_settings).ok
    # new personal data for the erased child is refused
    more = Conversation(ConversationId(f"conv-{uuid.uuid4().hex[:10]}"))
    more.start(child.id, child.device_id)
    more.record_message("child", "hello again")
    with pytest.raises(SubjectErasedError, match="was erased"):
        service.save_aggregate_sync(more)
    # a second erasure is harmless
    call_command("forget_child", child.id, reason="parent_request")
    assert "was already gone" in capsys.readouterr().out


def test_forget_child_refuses_an_unknown_child():
    with pytest.raises(CommandError, match="no child nobody-here"):
        call_command("forget_child", "nobody-here", reason="parent_request")


def _export(child_id):
    from eventsourcing_app.application import Actor, export_child_data

    return export_child_data(actor=Actor.system("test"), child_id=child_id)


def test_export_child_writes_everything_held_decrypted(family, tmp_path, capsys):
    child, talk, parent = family
    target = tmp_path / "export.json"
    call_command("export_child", child.id, output=str(target))
    export = json.loads(target.read_text())
    assert export["subject"] == f"child:{child.id}" and not export["erased"]
    assert export["child"]["name"] == NAME
    texts = [e["data"].get("text") for e in export["streams"][talk.stream_id]]
    assert f"Hi Teddy, I am {NAME} and {SECRET}" in texts
    assert [e["event_type"] for e in export["streams"][parent.stream_id]] == ["ParentalConsentGranted"]
    assert export["consent"]["method"] == "signed_form"
    with pytest.raises(CommandError):
        call_command("export_child", "nobody-here")


def test_rotating_the_master_key_rewraps_data_keys_without_touching_events(family):
    child, _, _ = family
    old_key, new_key = settings.TEDDY_MASTER_KEYS[0], os.urandom(32)
    events_before = raw_mirror_bytes([child.stream_id])
    rotate = SubjectKeys(MasterKeyring([new_key, old_key]))
    assert rotate.rewrap_all() >= 1
    try:
        only_new = SubjectKeys(MasterKeyring([new_key]))
        only_new.check_master_keys()
        wrapped = SubjectKey.objects.values_list("wrapped_key", "master_key_id").get(pk=f"child:{child.id}")
        assert wrapped[1] == only_new.keyring.current_id
        with pytest.raises(MasterKeyError, match="does not hold"):
            SubjectKeys(MasterKeyring([old_key])).check_master_keys()
        assert raw_mirror_bytes([child.stream_id]) == events_before
    finally:
        SubjectKeys(MasterKeyring([old_key, new_key])).rewrap_all()  # back, for the rest of the session
    assert get_event_sourcing_service().load_aggregate_sync(Child, child.id).name == NAME


def test_a_wrong_master_key_stops_start_up_with_a_clear_message(family):
    wrong = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "DATABASE_URL": database_url(), "TEDDY_MASTER_KEYS": wrong}
    done = subprocess.run([sys.executable, "manage.py", "check", "--database", "default"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "privacy.E001" in done.stderr and "which TEDDY_MASTER_KEYS does not hold" in done.stderr
    # in-process too: a wrong key is an error, never garbage
    keys = SubjectKeys(MasterKeyring([base64.b64decode(wrong)]))
    with pytest.raises(MasterKeyError):
        keys.key_for_reading(f"child:{family[0].id}")


@pytest.mark.parametrize("recorder", ["postgres", "portable"])
def test_a_key_made_first_by_another_process_is_the_one_used(store, recorder):
    from eventsourcing_app.eventstore import EventStore, deserialize_event
    from eventsourcing_app.eventstore.recorders import DjangoRecorder
    from eventsourcing_app.privacy.cipher import decrypt_fields

    writer = store if recorder == "postgres" else EventStore(
        recorder=DjangoRecorder(), stream_types=store.stream_types, max_event_bytes=store.max_event_bytes,
        kafka_settings=store.kafka_settings)
    child = new_child(name=NAME)
    subject = f"child:{child.id}"
    elsewhere = SubjectKeys(MasterKeyring(settings.TEDDY_MASTER_KEYS))  # another process's key cache
    existing = elsewhere.key_for_writing(subject)  # it made the subject's key first
    writer.append_events_sync(child.stream_id, child.get_domain_events(), expected_version=0)

    stored = writer.load_events_sync(child.stream_id)[0]
    data = json.loads(stored.payload)
    assert decrypt_fields(data, existing, subject, stored.event_id)["name"] == NAME
    assert deserialize_event(stored).name == NAME
    assert SubjectKey.objects.filter(pk=subject).count() == 1


def test_a_data_key_rolled_back_with_its_transaction_is_never_used(store):
    from django.db import transaction

    from eventsourcing_app.eventstore import deserialize_event

    child = new_child(name=NAME)
    with pytest.raises(RuntimeError), transaction.atomic():
        store.append_events_sync(child.stream_id, child.get_domain_events(), expected_version=0)
        raise RuntimeError("the surrounding work failed")
    assert not SubjectKey.objects.filter(pk=f"child:{child.id}").exists()
    store.append_events_sync(child.stream_id, child.get_domain_events(), expected_version=0)
    assert deserialize_event(store.load_events_sync(child.stream_id)[0]).name == NAME


@dataclass
class SharedNote(DomainEvent, event_type="test.SharedNote"):
    """A note whose personal text belongs to whichever subject wrote it: one stream, several subjects."""

    writer: str
    text: str

    data_subject = ("test", "writer")
    sensitive_fields = ("text",)


def test_a_stream_of_several_subjects_loads_each_ones_data_and_an_erasure_hides_only_its_own(store):
    from django.db import transaction

    from eventsourcing_app.eventstore import deserialize_event

    stream_id, alice, bob = f"test.shared-{uuid.uuid4().hex[:8]}", f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    written = [SharedNote(writer=alice, text="alice 1"), SharedNote(writer=bob, text="bob 1"),
               SharedNote(writer=alice, text="alice 2"), SharedNote(writer=bob, text="bob 2")]
    store.append_events_sync(stream_id, written[:1], expected_version=0)
    store.append_events_sync(stream_id, written[1:], expected_version=1)

    def texts(from_version=1):
        return [deserialize_event(e).text for e in store.load_events_sync(stream_id, from_version=from_version)]

    assert texts() == ["alice 1", "bob 1", "alice 2", "bob 2"]
    assert texts(from_version=2) == ["bob 1", "alice 2", "bob 2"]  # the first event loaded is bob's

    protection = store.field_protection
    with transaction.atomic():
        assert protection.destroy_keys([f"test:{bob}"]) == [f"test:{bob}"]
    protection.announce_erasure([f"test:{bob}"])
    assert texts() == ["alice 1", None, "alice 2", None]
    assert texts(from_version=2) == [None, "alice 2", None]
    assert texts(from_version=3) == ["alice 2", None]
