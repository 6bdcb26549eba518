"""Erasure (crypto-shredding) across processes, under races, with Redis down, and after a stream migration.

Proven here, against the real PostgreSQL, Redis, Tansu broker and separate OS processes:
- an erasure made by one process (`manage.py forget_child`) is refused for new personal data by
  every other process: one that heard the Redis broadcast (and dropped the key from memory within
  seconds, without touching the child) and one that never heard it (its Redis is unreachable, it
  still holds the key): the database itself refuses, and nothing is stored;
- the erasure event records who asked, why and the request's correlation id; a bad reason changes
  nothing; a second erasure records nothing new;
- appends racing an erasure either committed before the key was destroyed (and read as None now)
  or were refused; no event of the subject is recorded after the key's `destroyed_at`;
- with Redis unreachable an erasure still completes and leaves nothing that opens again; saves
  crossing the snapshot threshold do not wait for Celery's (unreachable) broker;
- the database never deletes a key row nor restores a destroyed key;
- a stream migration under concurrent appends loses nothing and closes the old stream; erasing the
  new id erases the old id's data too (events, conversations, exports).
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from io import StringIO

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, connections, transaction

from devtools.embedded import free_port
from eventsourcing_app.application import (
    Actor,
    erase_child_data,
    export_child_data,
    grant_consent,
    record_message,
    register_child,
    register_parent,
    start_conversation,
)
from eventsourcing_app.domain import (
    Child,
    ChildDataErased,
    ChildId,
    Conversation,
    ConversationId,
    DomainError,
    MessageRecorded,
    SafetySettingsChanged,
)
from eventsourcing_app.eventstore import (
    ConcurrencyError,
    EventSourcingRepositoryImpl,
    StreamClosedError,
    SubjectErasedError,
    deserialize_event,
    get_aggregate_cache,
    get_event_sourcing_service,
)
from eventsourcing_app.models import Event, Stream, SubjectKey
from eventsourcing_app.observability import event_context
from eventsourcing_app.operations.migration import migrate_stream
from tests.conftest import LOG_DIR, RUN_ID
from tests.integration.conftest import REPO, process_env
from tests.integration.helpers import wait_until

NAME = "Zephyrine"  # distinctive, so that a search for it in exports and raw bytes means something
SECRET = "my secret hiding place is the blue cupboard"
ACTOR = Actor.system("erasure-tests")
MARK = "@@peer "  # prefixes the peer's replies on its stdout (anything else there is noise)


# --- families, built through the application layer ----------------------------------------------

@dataclass
class Family:
    parent_id: str
    child_id: str
    device_id: str
    conversation_ids: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return f"child:{self.child_id}"

    @property
    def child_stream(self) -> str:
        return f"child.{self.child_id}"

    @property
    def conversation_streams(self) -> list[str]:
        return [f"conversation.{c}" for c in self.conversation_ids]


def family_ids(conversations: int = 1) -> Family:
    suffix = uuid.uuid4().hex[:10]
    return Family(f"parent-{suffix}", f"child-{suffix}", f"bear-{suffix}",
                  [f"conv-{suffix}-{i}" for i in range(conversations)])


def new_family(conversations: int = 1) -> Family:
    """A parent with consent, a registered child called NAME with a paired bear, and conversations
    in which the child says its name and a secret."""
    family = family_ids(conversations)
    register_parent(actor=ACTOR, parent_id=family.parent_id, email=f"{family.parent_id}@example.org",
                    name="Robin Parent")
    grant_consent(actor=ACTOR, parent_id=family.parent_id, child_id=family.child_id, method="signed_form")
    register_child(actor=ACTOR, child_id=family.child_id, parent_id=family.parent_id, name=NAME, age=7,
                   device_id=family.device_id, udid="udid-zephyrine-bear")
    for conversation_id in family.conversation_ids:
        start_conversation(actor=ACTOR, conversation_id=conversation_id, child_id=family.child_id)
        record_message(actor=ACTOR, conversation_id=conversation_id, speaker="child",
                       text=f"Hi Teddy, I am {NAME} and {SECRET}")
    return family


# --- what is stored ---------------------------------------------------------------------------

def stored_state(*stream_ids) -> dict:
    """Each stream's version and number of event rows."""
    return {s: (Stream.objects.get(pk=s).version, Event.objects.filter(stream_id=s).count()) for s in stream_ids}


def last_event(store, stream_id):
    stored = store.load_events_sync(stream_id)[-1]
    return stored, deserialize_event(stored)


def key_row(subject: str) -> tuple:
    row = SubjectKey.objects.values_list("wrapped_key", "master_key_id", "destroyed_at").get(pk=subject)
    return (bytes(row[0]) if row[0] is not None else None, row[1], row[2])


def export_text(child_id: str) -> str:
    return json.dumps(export_child_data(actor=Actor.system("dsar"), child_id=child_id), default=str)


# --- other OS processes -------------------------------------------------------------------------

def unreachable_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def django_env(kafka_settings, **changes) -> dict:
    """The environment of another Django process on the test database, broker and Redis."""
    return process_env(kafka_settings, **{"REDIS_URL": settings.REDIS_URL, **changes})


def run_manage(kafka_settings, *args, timeout: float = 120, **env_changes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=django_env(kafka_settings, **env_changes),
                          capture_output=True, text=True, timeout=timeout)


# A long-running Django process that runs one JSON request per stdin line and answers on stdout.
PEER_SCRIPT = r'''
import json, os, sys
from eventsourcing_app.application import (Actor, grant_consent, register_child, register_parent, start_conversation,
                                           update_child_profile)
from eventsourcing_app.domain import ChildId, ChildProfileUpdated, Conversation
from eventsourcing_app.eventstore import get_event_sourcing_service, get_event_store

MARK = "@@peer "
store = get_event_store()
service = get_event_sourcing_service()
keys = store.field_protection.keys
actor = Actor.system("peer")


def op_family(parent_id, child_id, device_id, conversation_id, name):
    register_parent(actor=actor, parent_id=parent_id, email=parent_id + "@example.org", name="Robin Parent")
    grant_consent(actor=actor, parent_id=parent_id, child_id=child_id, method="signed_form")
    register_child(actor=actor, child_id=child_id, parent_id=parent_id, name=name, age=7, device_id=device_id,
                   udid="udid-peer-bear")
    start_conversation(actor=actor, conversation_id=conversation_id, child_id=child_id)
    return store.get_stream_version_sync("child." + child_id)


def op_profile(child_id, interests):
    """Through the application command (the repository and service)."""
    return update_child_profile(actor=actor, child_id=child_id, changes={"interests": interests}).version


def op_say(conversation_id, text):
    """A message for the child, saved through the service from the conversation as loaded."""
    conversation = service.load_aggregate_sync(Conversation, conversation_id)
    conversation.record_message("child", text)
    service.save_aggregate_sync(conversation)
    return conversation.version


def op_append_profile(child_id, interests):
    """A profile change appended to the child's stream at its exact current version."""
    stream_id = "child." + child_id
    event = ChildProfileUpdated(child_id=ChildId(child_id), changes={"interests": interests})
    version = store.get_stream_version_sync(stream_id)
    return store.append_events_sync(stream_id, [event], expected_version=version).last_version


def op_holds(subject):
    return keys.holds(subject)


OPS = {name[3:]: fn for name, fn in dict(globals()).items() if name.startswith("op_")}


def reply(**message):
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


reply(ok=True, result=os.getpid())
while True:
    line = sys.stdin.readline()
    if not line:
        break
    request = json.loads(line)
    try:
        reply(ok=True, result=OPS[request["op"]](**request["args"]))
    except Exception as exc:
        reply(ok=False, error=type(exc).__name__, message=str(exc))
'''


class PeerError(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


class Peer:
    """Another OS process (`manage.py shell`) holding its own store, key cache and broadcast listener."""

    def __init__(self, name: str, env: dict) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"peer-{name}-{RUN_ID}.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", PEER_SCRIPT], cwd=REPO, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name=f"peer-{name}-reader", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(MARK):
                self._replies.put(json.loads(line[len(MARK):]))
        self._replies.put(None)  # the process ended

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _next_reply(self, timeout: float):
        try:
            message = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"peer {self.name} gave no answer within {timeout}s; log:\n{self._log_tail()}") from None
        if message is None:
            raise AssertionError(f"peer {self.name} exited ({self.process.poll()}); log:\n{self._log_tail()}")
        if not message["ok"]:
            raise PeerError(message["error"], message["message"])
        return message["result"]

    def wait_ready(self, timeout: float = 90) -> int:
        return self._next_reply(timeout)

    def call(self, op: str, timeout: float = 60, **args):
        self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.process.stdin.flush()
        return self._next_reply(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()


@pytest.fixture
def start_peers(kafka_settings, store):
    """Starts peer processes (each with its own environment changes); kills them all afterwards."""
    peers: list[Peer] = []

    def start(**env_changes_by_name) -> list[Peer]:
        started = []
        for name, changes in env_changes_by_name.items():
            peer = Peer(name, django_env(kafka_settings, **changes))
            peers.append(peer)
            started.append(peer)
        for peer in started:
            peer.wait_ready()
        return started

    yield start
    for peer in peers:
        peer.close()


# --- 1. across processes ------------------------------------------------------------------------

def test_an_erasure_by_another_process_is_refused_everywhere_and_broadcast_keys_are_dropped(start_peers,
                                                                                              kafka_settings):
    family = family_ids()
    conversation_id, subject = family.conversation_ids[0], family.subject
    # A hears erasure broadcasts; C cannot (its Redis is unreachable), like a process that missed one.
    a, c = start_peers(a={}, c={"REDIS_URL": unreachable_redis_url()})
    a.call("family", parent_id=family.parent_id, child_id=family.child_id, device_id=family.device_id,
           conversation_id=conversation_id, name=NAME)
    assert a.call("profile", child_id=family.child_id, interests=["dragons", "space"]) == 2
    assert a.call("holds", subject=subject) is True
    assert c.call("say", conversation_id=conversation_id, text=f"I am {NAME}") == 2
    assert c.call("holds", subject=subject) is True

    done = run_manage(kafka_settings, "forget_child", family.child_id, "--reason", "parent_request")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data key destroyed" in done.stdout
    assert key_row(subject)[0] is None

    # The broadcast: A drops the key within seconds, without touching the child.
    wait_until(lambda: a.call("holds", subject=subject) is False, timeout=10, interval=0.2)
    # C never heard of the erasure and still holds the key in memory ...
    assert c.call("holds", subject=subject) is True

    # ... but nobody can store personal data for the child any more: the database refuses.
    streams = (family.child_stream, f"conversation.{conversation_id}")
    before, subject_events = stored_state(*streams), Event.objects.filter(data_subject=subject).count()
    attempts = [
        (a, "say", {"conversation_id": conversation_id, "text": f"{NAME} is back"}),
        (a, "append_profile", {"child_id": family.child_id, "interests": ["volcanoes"]}),
        (c, "say", {"conversation_id": conversation_id, "text": f"{NAME} is back"}),  # with the stale key
        (c, "append_profile", {"child_id": family.child_id, "interests": ["volcanoes"]}),
    ]
    for peer, op, args in attempts:
        with pytest.raises(PeerError) as refused:
            peer.call(op, **args)
        assert refused.value.error == "SubjectErasedError", (peer.name, op, refused.value)
        assert "was erased" in refused.value.message
    assert stored_state(*streams) == before
    assert Event.objects.filter(data_subject=subject).count() == subject_events
    # the refusal made C drop the key too
    assert c.call("holds", subject=subject) is False


# --- 2. the erasure's audit trail ----------------------------------------------------------------

def test_the_erasure_event_records_who_asked_why_and_the_requests_correlation_id(store):
    by_command = new_family()
    out = StringIO()
    call_command("forget_child", by_command.child_id, reason="parent_request", actor="user:42", stdout=out)
    assert "data key destroyed" in out.getvalue()
    stored, event = last_event(store, by_command.child_stream)
    assert isinstance(event, ChildDataErased)
    assert (event.erased_by, event.reason, stored.metadata.actor) == ("user:42", "parent_request", "user:42")

    by_request = new_family()
    with event_context(correlation_id="req-123"):
        report = erase_child_data(actor=Actor.staff(42), child_id=by_request.child_id, reason="parent_request")
    assert report.key_destroyed and by_request.subject in report.subjects
    stored, event = last_event(store, by_request.child_stream)
    assert isinstance(event, ChildDataErased) and report.erasure_version == stored.version
    assert (event.erased_by, event.reason) == ("user:42", "parent_request")
    assert (stored.metadata.actor, stored.metadata.correlation_id) == ("user:42", "req-123")
    assert Event.objects.get(event_id=stored.metadata.event_id).correlation_id == "req-123"

    # A second erasure: the key was already gone, and nothing new is recorded.
    for child in (by_command, by_request):
        before = stored_state(child.child_stream, *child.conversation_streams)
        again = erase_child_data(actor=Actor.staff(42), child_id=child.child_id, reason="parent_request")
        assert not again.key_destroyed and "was already gone" in str(again)
        out = StringIO()
        call_command("forget_child", child.child_id, reason="parent_request", actor="user:42", stdout=out)
        assert "was already gone" in out.getvalue()
        assert stored_state(child.child_stream, *child.conversation_streams) == before
        assert Event.objects.filter(stream_id=child.child_stream, event_type="ChildDataErased").count() == 1


def test_an_unknown_erasure_reason_is_refused_before_anything_changes(store):
    family = new_family()
    streams = (family.child_stream, *family.conversation_streams)
    before, key_before = stored_state(*streams), key_row(family.subject)
    with pytest.raises(DomainError, match="erasure reason 'felt_like_it' is not one of"):
        erase_child_data(actor=Actor.staff(42), child_id=family.child_id, reason="felt_like_it")
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("forget_child", family.child_id, reason="felt_like_it", stdout=StringIO())
    assert stored_state(*streams) == before
    assert key_row(family.subject) == key_before and key_before[0] is not None
    child = EventSourcingRepositoryImpl(Child, cache=False).load_sync(family.child_id)
    assert (child.erased, child.name) == (False, NAME)


def while_writers_run(threads, stop: threading.Event, *, until, action):
    """Starts the writer threads, runs `action` once `until()` holds (they are busy), lets the
    writers finish on their own (they stop at a refusal), and always stops them in the end."""
    try:
        for thread in threads:
            thread.start()
        wait_until(until, timeout=30)
        result = action()
        for thread in threads:
            thread.join(timeout=60)
        return result
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


# --- 3. appends racing an erasure --------------------------------------------------------------

RACING_WRITERS = 8


def test_appends_racing_an_erasure_committed_before_the_key_was_destroyed_or_were_refused(store):
    family = new_family(conversations=RACING_WRITERS)
    outcomes: dict[str, list[tuple[str, str]]] = {s: [] for s in family.conversation_streams}
    stop = threading.Event()

    def writer(conversation_id: str) -> None:
        stream_id = f"conversation.{conversation_id}"
        mine = outcomes[stream_id]
        try:
            version = store.get_stream_version_sync(stream_id)
            refusals = 0
            while refusals < 5 and not stop.is_set() and len(mine) < 5000:
                event = MessageRecorded(conversation_id=ConversationId(conversation_id),
                                        child_id=ChildId(family.child_id), sequence=version, speaker="child",
                                        text=f"{NAME} says message {version}")
                try:
                    version = store.append_events_sync(stream_id, [event], expected_version=version).last_version
                    mine.append(("committed", event.event_id))
                except SubjectErasedError:
                    refusals += 1
                    mine.append(("refused", event.event_id))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            mine.append(("error", repr(exc)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(c,)) for c in family.conversation_ids]
    report = while_writers_run(
        threads, stop, until=lambda: all(sum(k == "committed" for k, _ in o) >= 5 for o in outcomes.values()),
        action=lambda: erase_child_data(actor=Actor.system("race"), child_id=family.child_id,
                                        reason="parent_request"))
    assert report.key_destroyed
    assert not any(t.is_alive() for t in threads)

    destroyed_at = key_row(family.subject)[2]
    assert destroyed_at is not None
    for stream_id, mine in outcomes.items():
        kinds = [kind for kind, _ in mine]
        assert "error" not in kinds, [o for o in mine if o[0] == "error"]
        assert "refused" in kinds, f"{stream_id}: the writer never saw the erasure"
        first_refusal = kinds.index("refused")
        assert set(kinds[first_refusal:]) == {"refused"}, f"{stream_id}: an append got through after a refusal"
        committed = [e for kind, e in mine if kind == "committed"]
        refused = [e for kind, e in mine if kind == "refused"]
        stored = store.load_events_sync(stream_id)
        # ConversationStarted, the first message, then exactly the appends that were told they committed
        assert [e.metadata.event_id for e in stored[2:]] == committed
        assert not Event.objects.filter(event_id__in=refused).exists()
        texts = [deserialize_event(e).text for e in stored if e.event_type == "MessageRecorded"]
        assert texts == [None] * (len(committed) + 1)
    # Nothing of the child's was recorded after its key was destroyed.
    recorded = list(Event.objects.filter(data_subject=family.subject).order_by("recorded_at")
                    .values_list("stream_id", "version", "recorded_at"))
    assert len(recorded) == sum(len([k for k, _ in o if k == "committed"]) + 1 for o in outcomes.values()) + 1
    late = [row for row in recorded if row[2] > destroyed_at]
    assert not late, (f"{len(late)} events of {family.subject} recorded after its key was destroyed at "
                      f"{destroyed_at}, e.g. {late[:3]}")
    _, erased = last_event(store, family.child_stream)
    assert isinstance(erased, ChildDataErased)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def someone_waits_for(pid: int) -> bool:
    """Whether another database session is waiting for a lock the session `pid` holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [pid])
        return cursor.fetchone()[0] > 0


def test_an_append_begun_while_an_erasure_waits_for_a_command_in_flight_is_not_recorded_after_it(store):
    """The same race, made deterministic: a command has appended a message in its still open
    transaction when the erasure starts (so the erasure waits for it); another message is then
    appended. It must be refused, or be recorded before the key's recorded destruction."""
    family = new_family(conversations=2)
    in_flight, second = family.conversation_streams
    appended, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def message(stream_id: str, text: str) -> MessageRecorded:
        return MessageRecorded(conversation_id=ConversationId(stream_id.split(".", 1)[1]),
                               child_id=ChildId(family.child_id), sequence=2, speaker="child", text=text)

    def command_in_flight() -> None:
        try:
            with transaction.atomic():
                first = message(in_flight, f"{NAME} begins")
                store.append_events_sync(in_flight, [first], expected_version=2)
                outcome["in_flight"] = first.event_id
                outcome["in_flight_pid"] = backend_pid()
                appended.set()
                release.wait(timeout=30)
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            outcome["in_flight_error"] = repr(exc)
            appended.set()
        finally:
            connections.close_all()

    def erase() -> None:
        try:
            outcome["report"] = erase_child_data(actor=Actor.system("race"), child_id=family.child_id,
                                                 reason="parent_request")
        except Exception as exc:  # noqa: BLE001
            outcome["erase_error"] = repr(exc)
        finally:
            connections.close_all()

    def append_second() -> None:
        event = message(second, f"{NAME} continues")
        try:
            store.append_events_sync(second, [event], expected_version=2)
            outcome["second"] = ("committed", event.event_id)
        except SubjectErasedError:
            outcome["second"] = ("refused", event.event_id)
        except Exception as exc:  # noqa: BLE001
            outcome["second"] = ("error", repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=command_in_flight), threading.Thread(target=erase),
               threading.Thread(target=append_second)]
    try:
        threads[0].start()
        assert appended.wait(timeout=30) and "in_flight_error" not in outcome, outcome
        threads[1].start()
        wait_until(lambda: someone_waits_for(outcome["in_flight_pid"]), timeout=10)  # the erasure waits
        threads[2].start()
        threads[2].join(timeout=3)  # refused at once, or waits for the erasure (which waits for the command)
    finally:
        release.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(timeout=60)
    assert "erase_error" not in outcome and outcome["report"].key_destroyed, outcome
    kind, detail = outcome["second"]
    assert kind in ("committed", "refused"), detail

    destroyed_at = key_row(family.subject)[2]
    first = Event.objects.get(event_id=outcome["in_flight"])
    assert first.recorded_at <= destroyed_at  # the command in flight committed before the erasure
    if kind == "committed":
        recorded_at = Event.objects.get(event_id=detail).recorded_at
        assert recorded_at <= destroyed_at, (
            f"a message appended while the erasure waited was recorded at {recorded_at}, after the key's recorded "
            f"destruction at {destroyed_at}")
    else:
        assert not Event.objects.filter(event_id=detail).exists()
    late = Event.objects.filter(data_subject=family.subject, recorded_at__gt=destroyed_at)
    assert not late.exists(), list(late.values_list("stream_id", "version", "recorded_at"))
    for stream_id in family.conversation_streams:
        texts = [deserialize_event(e).text for e in store.load_events_sync(stream_id) if e.event_type == "MessageRecorded"]
        assert set(texts) == {None}


# --- 4. with Redis unreachable -------------------------------------------------------------------

def test_an_erasure_with_redis_unreachable_completes_and_nothing_stale_opens_again(store, kafka_settings):
    family = new_family()
    service = get_event_sourcing_service()
    repository = EventSourcingRepositoryImpl(Child)
    assert repository.load_sync(family.child_id).name == NAME  # the cache holds the child now
    client = redis.Redis.from_url(settings.REDIS_URL)
    cache_key = get_aggregate_cache().key(family.child_stream)
    assert client.exists(cache_key)

    done = run_manage(kafka_settings, "forget_child", family.child_id, "--reason", "parent_request",
                      REDIS_URL=unreachable_redis_url())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data key destroyed" in done.stdout
    # what could not be done without Redis is said, not hidden
    assert "broadcast to other processes" in done.stdout and "dropping cached aggregates" in done.stdout
    # the erasure itself is complete: recorded and the key destroyed
    _, event = last_event(store, family.child_stream)
    assert isinstance(event, ChildDataErased) and event.reason == "parent_request"
    wrapped, master_id, destroyed_at = key_row(family.subject)
    assert wrapped is None and master_id is None and destroyed_at is not None

    # Redis never heard of it: the entry is still there, and this process still holds the key ...
    assert client.exists(cache_key)
    assert store.field_protection.keys.holds(family.subject)
    # ... yet the stale entry does not open: the load sees the key gone, and drops the entry.
    loaded = repository.load_sync(family.child_id)
    assert loaded.erased and loaded.name is None and loaded.age is None
    assert repository.last_load.started_from != "cache"
    assert not client.exists(cache_key)
    conversation = service.load_aggregate_sync(Conversation, family.conversation_ids[0])
    assert [m.text for m in conversation.messages] == [None]
    assert NAME not in export_text(family.child_id)
    # and new personal data is refused
    before = stored_state(*family.conversation_streams)
    conversation.record_message("child", f"{NAME} again")
    with pytest.raises(SubjectErasedError, match="was erased"):
        service.save_aggregate_sync(conversation)
    assert stored_state(*family.conversation_streams) == before


SAVE_WHILE_CELERY_IS_DOWN = r'''
import json, time
from eventsourcing_app.bootstrap import current
from eventsourcing_app.eventstore import get_event_sourcing_service
from tests.integration.helpers import new_child

service = get_event_sourcing_service()
child = new_child(name="Zephyrine")
service.save_aggregate_sync(child)  # version 1: connections, the data key and the producer are made here
timings = {}
for i in range(2, 22):
    child.change_safety_settings("moderate" if i % 2 else "strict", 30 + i)
    started = time.monotonic()
    service.save_aggregate_sync(child)
    timings[child.version] = time.monotonic() - started
scheduler = current().snapshot_scheduler()
print("@@result " + json.dumps({"stream": child.stream_id, "timings": timings, "pending": scheduler.pending,
                                "sent": scheduler.sent}), flush=True)
'''


def test_saves_crossing_the_snapshot_threshold_return_quickly_while_celerys_broker_is_unreachable(kafka_settings,
                                                                                                  store):
    assert settings.EVENTSTORE["SNAPSHOT_FREQUENCY"] == 10 and "child" not in settings.EVENTSTORE["SNAPSHOT_FREQUENCIES"]
    done = run_manage(kafka_settings, "shell", "-c", SAVE_WHILE_CELERY_IS_DOWN, REDIS_URL=unreachable_redis_url())
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("@@result "))
    result = json.loads(line[len("@@result "):])
    timings = {int(version): seconds for version, seconds in result["timings"].items()}
    assert timings[10] < 2.0 and timings[20] < 2.0, timings  # the saves that crossed the threshold
    assert max(timings.values()) < 2.0, timings
    assert store.get_stream_version_sync(result["stream"]) == 21
    # the snapshot was asked for, and is kept for a retry rather than blocking the save
    assert result["sent"] == 0 and result["pending"] >= 1, result


# --- 5. key rows are guarded -----------------------------------------------------------------

def test_the_database_never_deletes_a_key_row_nor_restores_a_destroyed_key(store):
    family = new_family()
    subject = family.subject
    wrapped, master_id, _ = key_row(subject)
    assert wrapped is not None

    def refused(sql, params, match):
        with pytest.raises(DatabaseError, match=match), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)

    refused("DELETE FROM privacy_subject_key WHERE subject = %s", [subject], "never deleted")
    with pytest.raises(DatabaseError, match="never deleted"), transaction.atomic():
        SubjectKey.objects.filter(pk=subject).delete()
    assert key_row(subject)[0] == wrapped

    erase_child_data(actor=Actor.staff(42), child_id=family.child_id, reason="parent_request")
    destroyed = key_row(subject)
    assert destroyed[0] is None and destroyed[2] is not None

    refused("UPDATE privacy_subject_key SET wrapped_key = %s, master_key_id = %s, destroyed_at = NULL "
            "WHERE subject = %s", [wrapped, master_id, subject], "cannot be restored")
    with pytest.raises(DatabaseError, match="cannot be restored"), transaction.atomic():
        SubjectKey.objects.filter(pk=subject).update(wrapped_key=wrapped, master_key_id=master_id)
    refused("DELETE FROM privacy_subject_key WHERE subject = %s", [subject], "never deleted")
    assert key_row(subject) == destroyed
    child = EventSourcingRepositoryImpl(Child, cache=False).load_sync(family.child_id)
    assert child.erased and child.name is None


# --- 6. stream migration under concurrent appends, then erasure of the new id -------------------

MIGRATION_WRITERS = 2
LEVELS = ("strict", "moderate", "relaxed")


def test_a_migration_under_concurrent_appends_loses_nothing_and_erasing_the_new_id_erases_both(store):
    old = new_family()
    conversation_id = old.conversation_ids[0]
    old_stream = old.child_stream
    new_id = f"child-{uuid.uuid4().hex[:10]}"
    new_stream = f"child.{new_id}"
    successes: list[list[tuple[str, int]]] = [[] for _ in range(MIGRATION_WRITERS)]
    closed: list[list[StreamClosedError]] = [[] for _ in range(MIGRATION_WRITERS)]
    conflicts, errors = [0] * MIGRATION_WRITERS, []
    stop = threading.Event()

    def writer(index: int) -> None:
        try:
            version = store.get_stream_version_sync(old_stream)
            n = 0
            while not stop.is_set() and n < 20_000:
                n += 1
                event = SafetySettingsChanged(child_id=ChildId(old.child_id), content_filter_level=LEVELS[n % 3],
                                              daily_time_limit_minutes=(index * 500 + n) % 1440)
                try:
                    version = store.append_events_sync(old_stream, [event], expected_version=version).last_version
                    successes[index].append((event.event_id, version))
                except ConcurrencyError as exc:  # the other writer was first: retry at the actual version
                    conflicts[index] += 1
                    version = exc.actual_version
                except StreamClosedError as exc:
                    closed[index].append(exc)
                    return
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(MIGRATION_WRITERS)]
    report = while_writers_run(
        threads, stop, until=lambda: all(len(s) >= 20 for s in successes),
        action=lambda: migrate_stream(old_stream, new_stream, actor="system:erasure-tests", chunk=7))

    assert not errors, errors
    assert all(len(c) == 1 for c in closed), "every writer is stopped by the closed stream"
    for error in (c[0] for c in closed):
        assert error.migrated_to == new_stream and new_stream in str(error)
    # Every append the writers were told succeeded is in the old stream, at that version ...
    old_events = store.load_events_sync(old_stream)
    at_version = {e.version: e.metadata.event_id for e in old_events}
    acknowledged = [s for mine in successes for s in mine]
    assert all(at_version.get(version) == event_id for event_id, version in acknowledged)
    assert len(old_events) == 1 + len(acknowledged)  # the registration, then the writers' changes
    # ... and copied into the new one, in order, with nothing lost
    new_events = store.load_events_sync(new_stream)
    assert report.copied == len(new_events) and report.dropped == 0
    assert store.get_stream_version_sync(new_stream) == store.get_stream_version_sync(old_stream) - report.dropped

    def comparable(stored, child_id):
        event = deserialize_event(stored)
        data = {k: v for k, v in event.data().items() if k != "child_id"}
        return stored.event_type, stored.metadata.timestamp, data, event.child_id == child_id

    assert [comparable(e, new_id) for e in new_events] == [comparable(e, old.child_id) for e in old_events]
    assert Stream.objects.get(pk=old_stream).migrated_to == new_stream
    assert Stream.objects.get(pk=new_stream).migrated_from == old_stream
    # Appends to the old stream after the migration are refused, naming the new stream.
    late = SafetySettingsChanged(child_id=ChildId(old.child_id), content_filter_level="relaxed",
                                 daily_time_limit_minutes=5)
    with pytest.raises(StreamClosedError, match=new_stream) as refused:
        store.append_events_sync(old_stream, [late], expected_version=len(old_events))
    assert refused.value.migrated_to == new_stream
    assert store.get_stream_version_sync(old_stream) == len(old_events)

    # Before the erasure both ids' exports hold the name (so the search below means something).
    assert NAME in export_text(new_id) and NAME in export_text(old.child_id)
    out = StringIO()
    call_command("forget_child", new_id, reason="parent_request", stdout=out)
    assert "data key destroyed" in out.getvalue()
    assert key_row(f"child:{new_id}")[0] is None and key_row(old.subject)[0] is None  # aliases: both keys

    for child_id in (new_id, old.child_id):
        export = export_child_data(actor=Actor.system("dsar"), child_id=child_id)
        text = json.dumps(export, default=str)
        assert NAME not in text and "cupboard" not in text, child_id
        assert {new_stream, old_stream, f"conversation.{conversation_id}"} <= set(export["streams"]), child_id
        payloads = [entry["data"] for entries in export["streams"].values() for entry in entries]
        assert not any(NAME in json.dumps(data, default=str) for data in payloads)
        messages = [entry["data"] for entry in export["streams"][f"conversation.{conversation_id}"]
                    if entry["event_type"] == "MessageRecorded"]
        assert [m["text"] for m in messages] == [None]
    registered_old = deserialize_event(store.load_events_sync(old_stream, 1, 1)[0])
    registered_new = deserialize_event(store.load_events_sync(new_stream, 1, 1)[0])
    assert (registered_old.name, registered_old.age, registered_old.udid) == (None, None, None)
    assert (registered_new.name, registered_new.age) == (None, None)
    service = get_event_sourcing_service()
    assert [m.text for m in service.load_aggregate_sync(Conversation, conversation_id).messages] == [None]
    assert service.load_aggregate_sync(Child, new_id).erased
    assert EventSourcingRepositoryImpl(Child, cache=False).load_sync(old.child_id).name is None
