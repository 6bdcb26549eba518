"""Optimistic concurrency under real contention: threads race on one stream."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connections

from eventsourcing_app.eventstore import ConcurrencyError, EventStore
from eventsourcing_app.eventstore.integrity import verify_chain
from eventsourcing_app.eventstore.recorders import DjangoRecorder
from eventsourcing_app.models import Event
from eventsourcing_app.operations.relay import relay_outbox
from tests.conftest import unique_stream
from tests.events import NoteRecorded
from tests.kafka_helpers import records_by_stream

THREADS, ROUNDS = 16, 200


@pytest.fixture(params=["postgres", "portable"])
def racing_store(request, store) -> EventStore:
    if request.param == "postgres":
        return store
    return EventStore(recorder=DjangoRecorder(), stream_types=store.stream_types, publisher=store.publisher,
                      max_event_bytes=store.max_event_bytes, kafka_settings=store.kafka_settings)


def test_exactly_one_writer_wins_each_round_and_versions_have_no_gaps(racing_store, store):
    stream_id = unique_stream("conversation")
    barrier = threading.Barrier(THREADS)
    outcomes: list[Counter] = [Counter() for _ in range(ROUNDS)]
    winners: dict[int, str] = {}
    lock = threading.Lock()

    def writer(index: int) -> None:
        try:
            for round_ in range(ROUNDS):
                event = NoteRecorded(text=f"writer {index} round {round_}", n=index)
                barrier.wait(timeout=30)
                try:
                    racing_store.append_events_sync(stream_id, [event], expected_version=round_)
                    outcome = "won"
                    with lock:
                        winners[round_ + 1] = event.event_id
                except ConcurrencyError as error:
                    outcome = "conflict" if error.actual_version == round_ + 1 else f"wrong actual {error.actual_version}"
                with lock:
                    outcomes[round_][outcome] += 1
                barrier.wait(timeout=30)  # next round only once everybody has seen this one
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert all(o == Counter(won=1, conflict=THREADS - 1) for o in outcomes), [o for o in outcomes if o["won"] != 1][:3]
    stored = racing_store.load_events_sync(stream_id)
    assert [e.version for e in stored] == list(range(1, ROUNDS + 1))
    assert [e.metadata.event_id for e in stored] == [winners[v] for v in range(1, ROUNDS + 1)]
    assert Event.objects.filter(stream_id=stream_id).count() == ROUNDS
    assert verify_chain(stored) is None

    # Kafka holds exactly the committed events, once each, in stream order.
    assert store.flush(60)
    relay_outbox(store)
    in_kafka = records_by_stream(store.kafka_settings, "conversation", [stream_id])[stream_id]
    assert [r.metadata.event_id for r in in_kafka] == [winners[v] for v in range(1, ROUNDS + 1)]
