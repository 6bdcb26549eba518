"""Database-enforced immutability of events, and the one-statement append on PostgreSQL.

- Triggers refuse UPDATE of any event column but the Kafka position columns, DELETE of
  event rows and TRUNCATE of the events table (PostgreSQL and SQLite).
- Storage settings and index trimming for the append and position-recording paths.
- `eventstore_append(...)` (PostgreSQL) locks the stream row, checks the expected version,
  recognises an idempotent re-append, inserts the events with their chain hashes and moves
  the stream version, in one round trip.
"""
from django.db import migrations

POSTGRES_FORWARD = r"""
-- Recording Kafka positions updates event rows; free space on each page lets PostgreSQL do
-- it in place (a HOT update: the positions are in no index) instead of writing new index entries.
ALTER TABLE eventstore_event SET (fillfactor = 80);
ALTER TABLE eventstore_stream SET (fillfactor = 70);
-- Django adds a LIKE-pattern index beside a varchar primary key; stream ids are never searched by pattern.
DO $$
DECLARE v_index text;
BEGIN
    FOR v_index IN SELECT indexname FROM pg_indexes
                    WHERE tablename = 'eventstore_stream' AND indexname LIKE 'eventstore_stream_stream_id%_like'
    LOOP
        EXECUTE format('DROP INDEX %I', v_index);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION eventstore_event_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'stored events are immutable: DELETE of event % refused', OLD.event_id
            USING ERRCODE = 'restrict_violation';
    ELSIF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'stored events are immutable: TRUNCATE of % refused', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.position, NEW.event_id, NEW.stream_id, NEW.version, NEW.event_type, NEW.schema_version,
        NEW.occurred_at, NEW.correlation_id, NEW.causation_id, NEW.actor, NEW.data_subject, NEW.payload,
        NEW.chain_hash)
       IS DISTINCT FROM
       (OLD.position, OLD.event_id, OLD.stream_id, OLD.version, OLD.event_type, OLD.schema_version,
        OLD.occurred_at, OLD.correlation_id, OLD.causation_id, OLD.actor, OLD.data_subject, OLD.payload,
        OLD.chain_hash) THEN
        RAISE EXCEPTION 'stored events are immutable: UPDATE of event % refused (only Kafka positions may be recorded)', OLD.event_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER eventstore_event_no_update BEFORE UPDATE ON eventstore_event
    FOR EACH ROW EXECUTE FUNCTION eventstore_event_immutable();
CREATE TRIGGER eventstore_event_no_delete BEFORE DELETE ON eventstore_event
    FOR EACH ROW EXECUTE FUNCTION eventstore_event_immutable();
CREATE TRIGGER eventstore_event_no_truncate BEFORE TRUNCATE ON eventstore_event
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_event_immutable();

-- p_expected: >= 0 exact version, -1 no stream, -2 any, -4 stream exists.
-- Returns the outcome ('appended', 'idempotent', 'conflict'), the stream version after the
-- call (the actual version on conflict), the published version before the call and the
-- global positions and chain hashes of the events.
CREATE OR REPLACE FUNCTION eventstore_append(
    p_stream_id text, p_stream_type text, p_expected bigint, p_now timestamptz,
    p_event_ids uuid[], p_event_types text[], p_schema_versions int[], p_occurred_at timestamptz[],
    p_correlation_ids text[], p_causation_ids text[], p_actors text[], p_subjects text[], p_payloads bytea[],
    p_digests bytea[], p_key_subject text, p_key_wrapped bytea, p_key_master text
) RETURNS TABLE(outcome text, stream_version bigint, published_version bigint, positions bigint[], hashes bytea[])
LANGUAGE plpgsql AS $$
DECLARE
    v_count int := cardinality(p_event_ids);
    v_version bigint;
    v_published bigint;
    v_hash bytea;
    v_hashes bytea[] := ARRAY[]::bytea[];
    v_found_stream text;
    v_found_version bigint;
    v_matches int;
    v_positions bigint[];
BEGIN
    SELECT s.version, s.published_version, s.last_hash INTO v_version, v_published, v_hash
      FROM eventstore_stream s WHERE s.stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        v_version := 0;
    END IF;

    -- The same event ids already stored: success if at the very place asked for, else an error.
    SELECT e.stream_id, e.version INTO v_found_stream, v_found_version
      FROM eventstore_event e WHERE e.event_id = p_event_ids[1];
    IF FOUND THEN
        SELECT count(*) INTO v_matches
          FROM unnest(p_event_ids) WITH ORDINALITY AS x(id, n)
          JOIN eventstore_event e ON e.event_id = x.id
         WHERE e.stream_id = v_found_stream AND e.version = v_found_version + x.n - 1;
        IF v_found_stream = p_stream_id AND v_matches = v_count
           AND (p_expected IN (-2, -4) OR p_expected = v_found_version - 1
                OR (p_expected = -1 AND v_found_version = 1)) THEN
            SELECT array_agg(e.position ORDER BY e.version) INTO v_positions
              FROM eventstore_event e
             WHERE e.stream_id = p_stream_id AND e.version BETWEEN v_found_version AND v_found_version + v_count - 1;
            RETURN QUERY SELECT 'idempotent'::text, v_found_version + v_count - 1, v_published, v_positions, NULL::bytea[];
            RETURN;
        END IF;
        RAISE EXCEPTION 'event id % is already stored as stream % version %', p_event_ids[1], v_found_stream, v_found_version
            USING ERRCODE = 'unique_violation', HINT = 'eventstore:duplicate-event';
    END IF;

    IF (p_expected >= 0 AND p_expected <> v_version)
       OR (p_expected = -1 AND v_version <> 0)
       OR (p_expected = -4 AND v_version = 0) THEN
        RETURN QUERY SELECT 'conflict'::text, v_version, v_published, NULL::bigint[], NULL::bytea[];
        RETURN;
    END IF;

    -- A data key made for this append (a new subject): stored here, unless another writer
    -- stored one first, in which case the caller encrypts again with that one.
    IF p_key_subject IS NOT NULL THEN
        INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at)
        VALUES (p_key_subject, p_key_wrapped, p_key_master, p_now)
        ON CONFLICT (subject) DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'key_exists'::text, v_version, v_published, NULL::bigint[], NULL::bytea[];
            RETURN;
        END IF;
    END IF;

    IF v_published IS NULL THEN
        INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, last_hash, created_at, updated_at)
        VALUES (p_stream_id, p_stream_type, 0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, p_now, p_now)
        ON CONFLICT (stream_id) DO NOTHING;
        SELECT s.version, s.published_version, s.last_hash INTO v_version, v_published, v_hash
          FROM eventstore_stream s WHERE s.stream_id = p_stream_id FOR UPDATE;
        -- Another writer created the stream meanwhile: check the expectation again.
        IF (p_expected >= 0 AND p_expected <> v_version) OR (p_expected = -1 AND v_version <> 0) THEN
            RETURN QUERY SELECT 'conflict'::text, v_version, v_published, NULL::bigint[], NULL::bytea[];
            RETURN;
        END IF;
    END IF;

    FOR i IN 1..v_count LOOP
        v_hash := sha256(v_hash || int8send(v_version + i) || p_digests[i]);
        v_hashes[i] := v_hash;  -- in place; `v_hashes || v_hash` would copy the array each time
    END LOOP;

    WITH inserted AS (
        INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version, occurred_at,
                                      correlation_id, causation_id, actor, data_subject, payload, chain_hash)
        SELECT x.id, p_stream_id, v_version + x.n, x.etype, x.sver, x.occ, x.corr, x.caus, x.actor, x.subject,
               x.payload, v_hashes[x.n]
          FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_occurred_at, p_correlation_ids,
                      p_causation_ids, p_actors, p_subjects, p_payloads)
               WITH ORDINALITY AS x(id, etype, sver, occ, corr, caus, actor, subject, payload, n)
         ORDER BY x.n
        RETURNING position, version
    )
    SELECT array_agg(inserted.position ORDER BY inserted.version) INTO v_positions FROM inserted;

    UPDATE eventstore_stream SET version = v_version + v_count, last_hash = v_hash, updated_at = p_now
     WHERE stream_id = p_stream_id;

    INSERT INTO privacy_subject_stream (subject, stream_id)
    SELECT DISTINCT s, p_stream_id FROM unnest(p_subjects) AS s WHERE s IS NOT NULL
    ON CONFLICT (subject, stream_id) DO NOTHING;

    RETURN QUERY SELECT 'appended'::text, v_version + v_count, v_published, v_positions, v_hashes;
END $$;
"""

POSTGRES_BACKWARD = r"""
DROP FUNCTION IF EXISTS eventstore_append(text, text, bigint, timestamptz, uuid[], text[], int[], timestamptz[], text[], text[], text[], text[], bytea[], bytea[], text, bytea, text);
DROP TRIGGER IF EXISTS eventstore_event_no_update ON eventstore_event;
DROP TRIGGER IF EXISTS eventstore_event_no_delete ON eventstore_event;
DROP TRIGGER IF EXISTS eventstore_event_no_truncate ON eventstore_event;
DROP FUNCTION IF EXISTS eventstore_event_immutable();
"""

SQLITE_FORWARD = [
    """CREATE TRIGGER eventstore_event_no_update BEFORE UPDATE OF
         position, event_id, stream_id, version, event_type, schema_version, occurred_at,
         correlation_id, causation_id, actor, data_subject, payload, chain_hash ON eventstore_event
       BEGIN SELECT RAISE(ABORT, 'stored events are immutable: UPDATE refused (only Kafka positions may be recorded)'); END""",
    """CREATE TRIGGER eventstore_event_no_delete BEFORE DELETE ON eventstore_event
       BEGIN SELECT RAISE(ABORT, 'stored events are immutable: DELETE refused'); END""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS eventstore_event_no_update",
    "DROP TRIGGER IF EXISTS eventstore_event_no_delete",
]


def _run(schema_editor, postgres: str, sqlite: list[str]) -> None:
    # Executed without parameters, so that '%' in PL/pgSQL messages is not a placeholder.
    vendor = schema_editor.connection.vendor
    statements = [postgres] if vendor == "postgresql" else sqlite if vendor == "sqlite" else []
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def forward(apps, schema_editor):
    _run(schema_editor, POSTGRES_FORWARD, SQLITE_FORWARD)


def backward(apps, schema_editor):
    _run(schema_editor, POSTGRES_BACKWARD, SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("eventsourcing_app", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
