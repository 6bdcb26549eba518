"""Serialization, the event type registry, upcasting and the hash chain: no I/O."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pytest

from eventsourcing_app.domain import DomainEvent
from eventsourcing_app.eventstore import (
    EventMetadata,
    EventSerializationError,
    InvalidStreamIdError,
    MalformedEventError,
    StoredEvent,
    UnknownEventTypeError,
    deserialize_event,
    registry,
)
from eventsourcing_app.eventstore.integrity import (
    GENESIS_HASH,
    DigestHead,
    canonical_timestamp,
    content_digest,
    next_chain_hash,
    verify_chain,
)
from eventsourcing_app.eventstore.serialization import encode_payload, parse_stream_id
from tests.events import NoteRecorded, ProfileChanged, Unserializable

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=timezone.utc)


def stored(event_type: str, payload: bytes, schema_version: int = 1, version: int = 1, stream="test.s-1") -> StoredEvent:
    return StoredEvent(
        metadata=EventMetadata(event_id=str(uuid.uuid4()), stream_id=stream, event_type=event_type, version=version,
                               timestamp=NOW, schema_version=schema_version),
        payload=payload,
    )


@pytest.mark.parametrize("stream_id", ["child.child-123", "conversation.conv_456", "parent.P-789", "test.stream"])
def test_accepts_stream_ids_of_the_guides_form(stream_id):
    aggregate_type, aggregate_id = parse_stream_id(stream_id)
    assert f"{aggregate_type}.{aggregate_id}" == stream_id


@pytest.mark.parametrize("stream_id", [
    "", "child", "child.", ".child-1", "Child.c-1", "child.c 1", "child.c/1", "child.c-1.extra", "child.ü",
    "child." + "x" * 200, None, 42,
])
def test_rejects_malformed_stream_ids_with_the_expected_form(stream_id):
    with pytest.raises(InvalidStreamIdError, match="stream id"):
        parse_stream_id(stream_id)


def test_payload_is_canonical_json_of_the_event_data_only():
    event = NoteRecorded(text="Hallo, Bär", n=3)
    assert encode_payload(event) == '{"n":3,"text":"Hallo, Bär"}'.encode()


@pytest.mark.parametrize("value, message", [
    (object(), "cannot be stored as JSON"),
    ({1: "a"}, "key 1 that is not a string"),
    (float("nan"), "JSON cannot hold"),
    (datetime(2026, 1, 1), "naive datetime"),
    ({"nested": [set()]}, r"Unserializable.value.nested\[0\]"),
])
def test_non_serializable_fields_are_refused_naming_the_field(value, message):
    with pytest.raises(EventSerializationError, match=message):
        encode_payload(Unserializable(value=value))


def test_round_trip_restores_typed_fields():
    event = ProfileChanged(changes={"age": 7}, changed_at=NOW)
    decoded = deserialize_event(stored("test.ProfileChanged", encode_payload(event)))
    assert decoded.changes == {"age": 7}
    assert decoded.changed_at == NOW


def test_unknown_event_type_is_a_clear_error():
    with pytest.raises(UnknownEventTypeError, match="unknown event type 'test.NeverDefined'"):
        deserialize_event(stored("test.NeverDefined", b"{}"))


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON list, expected an object"),
    (b'{"text": "x", "colour": "red"}', r"fields \['colour'\]"),
    (b'{"n": 1}', "does not fit NoteRecorded"),
])
def test_malformed_payloads_are_clear_errors(payload, message):
    with pytest.raises(MalformedEventError, match=message):
        deserialize_event(stored("test.NoteRecorded", payload))


def test_a_schema_version_newer_than_the_code_is_refused():
    with pytest.raises(UnknownEventTypeError, match="newer than this code knows"):
        deserialize_event(stored("test.NoteRecorded", b'{"text":"x"}', schema_version=9))


@dataclass
class GreetingV1(DomainEvent, event_type="test.Greeting"):
    text: str


@dataclass
class GreetingV2(DomainEvent, event_type="test.Greeting"):
    text: str
    language: str

    @classmethod
    def from_v1(cls, old: GreetingV1) -> "GreetingV2":
        return cls(text=old.text, language="en")


@dataclass
class GreetingV3(DomainEvent, event_type="test.Greeting"):
    words: list
    language: str


@registry.upcaster("test.Greeting", from_version=2)
def _greeting_v2_to_v3(data: dict) -> dict:
    return {"words": data["text"].split(), "language": data["language"]}


def test_version_suffix_names_the_schema_version():
    assert (GreetingV1.event_type, GreetingV1.schema_version) == ("test.Greeting", 1)
    assert (GreetingV3.event_type, GreetingV3.schema_version) == ("test.Greeting", 3)


def test_old_events_are_upcast_step_by_step_to_the_newest_class():
    old = stored("test.Greeting", b'{"text":"hello little bear"}', schema_version=1)
    event = deserialize_event(old)
    assert isinstance(event, GreetingV3)
    assert event.words == ["hello", "little", "bear"] and event.language == "en"
    assert event.event_id == old.metadata.event_id and event.occurred_at == NOW


def test_the_registry_refuses_non_events_and_knows_the_newest_version():
    with pytest.raises(UnknownEventTypeError):
        registry.ensure_writable("not an event")
    assert registry.current_version("test.Greeting") == 3


def test_two_classes_cannot_claim_the_same_type_and_version():
    with pytest.raises(TypeError, match="both claim event type 'test.NoteRecorded' version 1"):
        @dataclass
        class NoteRecorded(DomainEvent, event_type="test.NoteRecorded"):  # noqa: F811
            other: str


def _chain(events):
    previous, out = GENESIS_HASH, []
    for e in events:
        previous = next_chain_hash(previous, e.version, content_digest(e.metadata, e.payload))
        out.append(replace(e, chain_hash=previous))
    return out


def test_chain_verifies_and_names_the_first_changed_version():
    events = _chain([stored("test.NoteRecorded", f'{{"text":"n{v}"}}'.encode(), version=v) for v in (1, 2, 3)])
    assert verify_chain(events) is None
    tampered = list(events)
    tampered[1] = replace(events[1], payload=events[1].payload.replace(b"n2", b"n9"))
    broken = verify_chain(tampered)
    assert (broken.stream_id, broken.version) == ("test.s-1", 2)


def test_chain_covers_metadata_and_detects_a_missing_event():
    events = _chain([stored("test.NoteRecorded", b'{"text":"x"}', version=v) for v in (1, 2, 3)])
    changed = list(events)
    changed[2] = replace(events[2], metadata=replace(events[2].metadata, actor="someone-else"))
    assert verify_chain(changed).version == 3
    assert verify_chain([events[0], events[2]]).version == 2


class FakeRecord:
    """What confluent-kafka hands a consumer: enough of a Message for the reader."""

    def __init__(self, headers, value=b"{}"):
        self._headers, self._value = headers, value

    def headers(self):
        return self._headers

    def value(self):
        return self._value

    def topic(self):
        return "eventstore.child"

    def partition(self):
        return 3

    def offset(self):
        return 42


@pytest.mark.parametrize("headers, message", [
    ([], r"headers \['event_id', 'stream_id', 'version', 'event_type', 'schema_version', 'timestamp'\] are missing"),
    ([("event_id", b"e"), ("stream_id", b"child.c-1"), ("version", b"one"), ("event_type", b"X"),
      ("schema_version", b"1"), ("timestamp", b"2026-01-01T00:00:00.000000Z")], "invalid literal"),
    ([("event_id", b"e"), ("stream_id", b"child.c-1"), ("version", b"1"), ("event_type", b"X"),
      ("schema_version", b"1"), ("timestamp", b"yesterday")], "does not match format"),
    ([("event_id", b"\xff\xfe")], "codec can't decode"),
])
def test_a_kafka_record_that_is_not_an_event_is_a_clear_error(headers, message):
    from eventsourcing_app.kafka.reader import stored_event_from_message

    with pytest.raises(MalformedEventError, match=r"Kafka record eventstore.child\[3\]@42 is not an event of this store"):
        stored_event_from_message(FakeRecord(headers))
    with pytest.raises(MalformedEventError, match=message):
        stored_event_from_message(FakeRecord(headers))


# Digests of stored events must never change: these were computed by the first implementation
# (the metadata as one JSON array, encoded by json), before the per-append encoding.
DIGEST_CASES = [
    (dict(event_id="0b7e7c2e-3f7a-4a57-9d55-6d1f0a8f7c11", stream_id="child.c-1", event_type="ChildRegistered",
          version=1, schema_version=1, timestamp=datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)),
     "5624c29ff1822035abf5af2a0eb5cf0dc5cb20d66359858bafea23a8240c4269"),
    (dict(event_id="5d1c8a8e-2b64-4c36-8f6e-0d2b1f9a4e22", stream_id="conversation.conv-\u00e9\"x",
          event_type="MessageRecorded", version=9, schema_version=3,
          timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5, minutes=30))),
          correlation_id="req-\u4e2d", causation_id="cause\\1", actor="user:7", data_subject="child:c-\u00fc"),
     "c862c2d5059111171728d77132ac34285972768da8454309f11859b67ab7748b"),
]


@pytest.mark.parametrize("fields, expected", DIGEST_CASES)
def test_content_digests_are_those_the_first_implementation_stored(fields, expected):
    payload = b'{"text":"hi \xc3\xa9"}'
    assert content_digest(EventMetadata(**fields), payload).hex() == expected
    # The per-append form the store uses gives the same bytes.
    head = DigestHead(fields["stream_id"], fields.get("correlation_id"), fields.get("causation_id"), fields.get("actor"))
    assert head.digest(fields["event_id"], fields["event_type"], fields["schema_version"],
                       canonical_timestamp(fields["timestamp"]), fields.get("data_subject"), payload).hex() == expected
