"""The audit pages on 1,000,000 events: each page costs a bounded number of queries, none of
them counts the table or skips rows with OFFSET, and the planner walks indexes instead of
scanning the events table (asserted on the SQL and the plans, never on time).

The million events are inserted with one SQL statement in a transaction that is rolled back
at the end: the rest of the suite never sees them.
"""
from __future__ import annotations

import re
import uuid

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.integration.compliance_helpers import staff_user

EVENTS = 1_000_000
STREAMS = 10_000
MAX_QUERIES = 12
FORBIDDEN = re.compile(r"\bCOUNT\s*\(|\bOFFSET\b", re.IGNORECASE)


class _Rollback(Exception):
    pass


@pytest.fixture
def million_events(store):
    tag = uuid.uuid4().hex[:8]
    prefix = f"test.scale{tag}-"
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("""
                    INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version,
                                                   publication_epoch, last_hash, created_at, updated_at)
                    SELECT %s || s, 'test', %s, CASE WHEN s = 7 THEN 90 ELSE %s END, 0, '\\x00'::bytea,
                           now() - interval '30 days', now()
                    FROM generate_series(0, %s - 1) AS s""", [prefix, EVENTS // STREAMS, EVENTS // STREAMS, STREAMS])
                cursor.execute("""
                    INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version,
                        occurred_at, recorded_at, correlation_id, causation_id, actor, data_subject, payload,
                        chain_hash, kafka_topic, kafka_partition, kafka_offset, published_at)
                    SELECT md5(%s || i)::uuid, %s || (i %% %s), i / %s + 1,
                           (ARRAY['test.NoteRecorded', 'test.NoteEdited', 'test.Rare'])[CASE WHEN i %% 100000 = 7 THEN 3
                                                                                          ELSE 1 + i %% 2 END],
                           1, now() - (%s - i) * interval '2 seconds', now(), 'scale-' || %s || '-' || (i / 3),
                           NULL, 'user:' || (i %% 500), NULL, '{"n": 1}'::bytea, '\\x00'::bytea,
                           'eventstore.test', i %% 6, i,
                           CASE WHEN i %% %s = 7 AND i / %s + 1 > 90 THEN NULL ELSE now() END
                    FROM generate_series(0, %s - 1) AS i""",
                               [tag, prefix, STREAMS, STREAMS, EVENTS, tag, STREAMS, STREAMS, EVENTS])
                cursor.execute("ANALYZE eventstore_event")
                cursor.execute("ANALYZE eventstore_stream")
            yield {"tag": tag, "prefix": prefix}
            raise _Rollback
    except _Rollback:
        pass


def _page(client, url, params=None):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params or {})
    assert response.status_code == 200, (url, params, response.status_code)
    queries = [q["sql"] for q in captured.captured_queries]
    bad = [q for q in queries if FORBIDDEN.search(q)]
    assert not bad, f"{url} {params}: a full count or an offset scan: {bad}"
    assert len(queries) <= MAX_QUERIES, f"{url} {params}: {len(queries)} queries: {queries}"
    return response, queries


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_event_and_stream_pages_stay_index_walks_on_a_million_events(million_events):
    client = Client()
    client.force_login(staff_user("compliance"))
    tag, prefix = million_events["tag"], million_events["prefix"]
    events = "/admin/eventsourcing_app/event/"
    first, _ = _page(client, events)
    body = first.content.decode()
    older = re.search(r'href="(\?after=\d+)" class="keyset-older"', body)
    assert older, "the first page links to the next one"
    second, queries = _page(client, events + older.group(1).replace("&amp;", "&"))
    assert 'class="keyset-newer"' in second.content.decode()
    # Each filter with the index its page must walk (a backward walk of the primary key that
    # reads every row to find a rare value would also be "no sequential scan").
    for params, index in (({"event_type": "test.Rare"}, "eventstore_event_type"),
                          ({"actor": "user:17"}, "eventstore_event_actor"),
                          ({"actor": "user:17", "after": "500000"}, "eventstore_event_actor"),
                          ({"correlation_id": f"scale-{tag}-1000"}, "eventstore_event_correlation"),
                          ({"stream": f"{prefix}42"}, "eventstore_event_stream_version"),
                          ({"q": f"scale-{tag}-1000"}, "eventstore_event_correlation"),
                          ({"recorded_at_from": "2020-01-01", "recorded_at_to": "2020-01-02"},
                           "eventstore_event_recorded_brin"),
                          ({"published": "no"}, "eventstore_event_stream_version"),
                          ({"q": f"{prefix}42"}, None), ({"_facets": "True"}, None)):
        response, queries = _page(client, events, params)
        main = [q for q in queries if "FROM \"eventstore_event\"" in q and "LIMIT 101" in q]
        assert len(main) == 1, (params, queries)
        plan = _plan(main[0])
        assert "Seq Scan on eventstore_event" not in plan, (params, plan)
        assert index is None or index in plan, (params, index, plan)
    # (other tests may leave events of their own unpublished: count those of stream 7 only)
    unpublished = _page(client, events, {"published": "no", "stream": f"{prefix}7"})[0].content.decode()
    assert unpublished.count('class="field-position_link"') == 10  # versions 91-100
    rare = _page(client, events, {"event_type": "test.Rare"})[0].content.decode()
    assert rare.count('class="field-position_link"') == 10  # every 100,000th event
    streams = "/admin/eventsourcing_app/stream/"
    for params in ({}, {"q": f"{prefix}42"}, {"q": prefix}, {"stream_type": "test"}):
        response, queries = _page(client, streams, params)
        main = [q for q in queries if "FROM \"eventstore_stream\"" in q and "LIMIT 101" in q]
        assert len(main) == 1 and "Seq Scan on eventstore_stream" not in _plan(main[0]), (params, queries)
    # A stream of 100 events: its page, and its timeline's second page.
    from django.contrib.admin.utils import quote

    _page(client, f"{streams}{quote(prefix + '42')}/change/")
    _page(client, f"{streams}{quote(prefix + '42')}/change/", {"from": "50"})
