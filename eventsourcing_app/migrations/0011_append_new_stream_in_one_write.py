"""Appends and publication records with less work per event (PostgreSQL only).

- `eventstore_append(...)` writes a new stream's row once, with the version and chain hash
  the append ends with, instead of inserting it empty, reading it again and updating it: a
  single-event append to a new stream (a new child, a new conversation) is two statements and
  one row version shorter. Everything else is as in 0004.
- The trigger that keeps events immutable fires only for UPDATEs that name an immutable
  column (`BEFORE UPDATE OF ...`): recording Kafka positions, an UPDATE of the Kafka columns
  alone, no longer runs a PL/pgSQL function per event row, and an UPDATE that names any other
  column is refused exactly as before.
"""
from django.db import migrations

_IMMUTABLE_COLUMNS = (
    "position, event_id, stream_id, version, event_type, schema_version, occurred_at, recorded_at, correlation_id, causation_id, actor, data_subject, payload, chain_hash"
)

POSTGRES_FORWARD = r"""
CREATE OR REPLACE FUNCTION eventstore_append(
    p_stream_id text, p_stream_type text, p_expected bigint,
    p_event_ids uuid[], p_event_types text[], p_schema_versions int[], p_occurred_at timestamptz[],
    p_correlation_ids text[], p_causation_ids text[], p_actors text[], p_subjects text[], p_payloads bytea[],
    p_digests bytea[], p_key_subject text, p_key_wrapped bytea, p_key_master text, p_distinct_subjects text[],
    p_subject_wrapped bytea[]
) RETURNS TABLE(outcome text, stream_version bigint, published_version bigint, positions bigint[], hashes bytea[],
                detail text, epoch int)
LANGUAGE plpgsql AS $$
DECLARE
    v_count int := cardinality(p_event_ids);
    v_now timestamptz := clock_timestamp();
    v_version bigint := 0;
    v_published bigint;
    v_epoch int;
    v_hash bytea;
    v_closed text;
    v_new boolean := false;  -- this call created the stream's row, in its final state
    v_hashes bytea[] := ARRAY[]::bytea[];
    v_positions bigint[];
    v_subjects text[] := coalesce(p_distinct_subjects, ARRAY[]::text[]);  -- the distinct non-null p_subjects
    v_existing int;
    v_locked int;
    v_erased text;
    v_changed text;
    v_outcome text;
    v_detail text;
    f_outcome text;
    f_version bigint;
    f_positions bigint[];
    f_detail text;
BEGIN
    -- The caller (the store's recorder) lists the distinct subjects: cheaper in the client
    -- than here on every append. A list left empty by mistake is caught (a full check would
    -- cost every append; whoever can call this function can also write the tables directly).
    IF cardinality(v_subjects) = 0 AND p_subjects[1] IS NOT NULL THEN
        RAISE EXCEPTION 'eventstore_append: p_distinct_subjects must list every subject of p_subjects';
    END IF;
    v_existing := cardinality(v_subjects) - (CASE WHEN p_key_subject = ANY(v_subjects) THEN 1 ELSE 0 END);
    -- One subtransaction: a refusal (raised as ES001) or a unique violation undoes whatever
    -- this call wrote (a new stream row, a new key) and becomes an outcome, not an error.
    BEGIN
        SELECT s.version, s.published_version, s.publication_epoch, s.last_hash, s.migrated_to
          INTO v_version, v_published, v_epoch, v_hash, v_closed
          FROM eventstore_stream s WHERE s.stream_id = p_stream_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            v_version := 0;
            IF p_expected >= 1 OR p_expected = -4 THEN
                v_outcome := 'conflict';
                RAISE SQLSTATE 'ES001';
            END IF;
            -- A new stream's row is written once, with the version and chain hash the append
            -- ends with (a refusal below undoes it with the subtransaction).
            v_hash := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
            FOR i IN 1..v_count LOOP
                v_hash := sha256(v_hash || int8send(i::bigint) || p_digests[i]);
                v_hashes[i] := v_hash;
            END LOOP;
            v_now := clock_timestamp();
            INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, last_hash, created_at, updated_at)
            VALUES (p_stream_id, p_stream_type, v_count, 0, v_hash, v_now, v_now)
            ON CONFLICT (stream_id) DO NOTHING
            RETURNING eventstore_stream.published_version, eventstore_stream.publication_epoch INTO v_published, v_epoch;
            v_new := FOUND;
            IF NOT v_new THEN
                -- Another writer committed the row meanwhile: checked like any other.
                v_hashes := ARRAY[]::bytea[];
                SELECT s.version, s.published_version, s.publication_epoch, s.last_hash, s.migrated_to
                  INTO v_version, v_published, v_epoch, v_hash, v_closed
                  FROM eventstore_stream s WHERE s.stream_id = p_stream_id FOR NO KEY UPDATE;
            END IF;
        END IF;
        -- recorded_at: once the stream is ours (after any wait for another writer of it), so
        -- that within a stream it follows the order of the commits.
        IF NOT v_new THEN
            v_now := clock_timestamp();
        END IF;
        IF v_closed IS NOT NULL THEN
            v_outcome := 'closed';
            v_detail := v_closed;
            RAISE SQLSTATE 'ES001';
        END IF;
        IF (p_expected >= 0 AND p_expected <> v_version) OR (p_expected = -1 AND v_version <> 0)
           OR (p_expected = -4 AND v_version = 0) THEN
            v_outcome := 'conflict';
            RAISE SQLSTATE 'ES001';
        END IF;

        IF p_key_subject IS NOT NULL THEN
            INSERT INTO privacy_subject_key (subject, wrapped_key, master_key_id, created_at)
            VALUES (p_key_subject, p_key_wrapped, p_key_master, v_now)
            ON CONFLICT (subject) DO NOTHING;
            IF NOT FOUND THEN
                v_outcome := 'key_exists';
                v_detail := p_key_subject;
                RAISE SQLSTATE 'ES001';
            END IF;
        END IF;
        IF v_existing > 0 THEN
            -- Each subject's advisory lock, shared (in the lock manager: no row is written):
            -- an erasure takes it exclusively, so it waits for this append, and an append that
            -- comes after the erasure waits for its commit and then sees the key destroyed.
            PERFORM pg_advisory_xact_lock_shared(24263, hashtext(x.s))
               FROM unnest(v_subjects) AS x(s) WHERE x.s IS DISTINCT FROM p_key_subject;
            -- The caller names the stored key it encrypted with: another one (a key it made
            -- in a transaction that rolled back, while another process stored its own) is
            -- refused, and the caller encrypts again with the stored key.
            SELECT count(*), min(k.subject) FILTER (WHERE k.wrapped_key IS NULL),
                   min(k.subject) FILTER (WHERE k.wrapped_key IS NOT NULL AND x.w IS NOT NULL AND k.wrapped_key <> x.w)
              INTO v_locked, v_erased, v_changed
              FROM privacy_subject_key k
              JOIN unnest(v_subjects, p_subject_wrapped) AS x(s, w) ON x.s = k.subject
             WHERE k.subject IS DISTINCT FROM p_key_subject;
            IF v_erased IS NOT NULL THEN
                v_outcome := 'erased';
                v_detail := v_erased;
                RAISE SQLSTATE 'ES001';
            END IF;
            IF v_changed IS NOT NULL THEN
                v_outcome := 'key_changed';
                v_detail := v_changed;
                RAISE SQLSTATE 'ES001';
            END IF;
            IF v_locked < v_existing THEN
                v_outcome := 'key_missing';
                SELECT min(x.s) INTO v_detail FROM unnest(v_subjects) AS x(s)
                 WHERE NOT EXISTS (SELECT 1 FROM privacy_subject_key k WHERE k.subject = x.s);
                RAISE SQLSTATE 'ES001';
            END IF;
        END IF;

        IF NOT v_new THEN
            FOR i IN 1..v_count LOOP
                v_hash := sha256(v_hash || int8send(v_version + i) || p_digests[i]);
                v_hashes[i] := v_hash;  -- in place; `v_hashes || v_hash` would copy the array each time
            END LOOP;
        END IF;

        WITH inserted AS (
            INSERT INTO eventstore_event (event_id, stream_id, version, event_type, schema_version, occurred_at,
                                          recorded_at, correlation_id, causation_id, actor, data_subject, payload,
                                          chain_hash)
            SELECT x.id, p_stream_id, v_version + x.n, x.etype, x.sver, x.occ, v_now, x.corr, x.caus, x.actor,
                   x.subject, x.payload, v_hashes[x.n]
              FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_occurred_at, p_correlation_ids,
                          p_causation_ids, p_actors, p_subjects, p_payloads)
                   WITH ORDINALITY AS x(id, etype, sver, occ, corr, caus, actor, subject, payload, n)
             ORDER BY x.n
            RETURNING position, version
        )
        SELECT array_agg(inserted.position ORDER BY inserted.version) INTO v_positions FROM inserted;

        IF NOT v_new THEN
            UPDATE eventstore_stream SET version = v_version + v_count, last_hash = v_hash, updated_at = v_now
             WHERE stream_id = p_stream_id;
        END IF;

        IF cardinality(v_subjects) > 0 THEN
            INSERT INTO privacy_subject_stream (subject, stream_id)
            SELECT x.s, p_stream_id FROM unnest(v_subjects) AS x(s)
            ON CONFLICT (subject, stream_id) DO NOTHING;
        END IF;
    EXCEPTION
        WHEN SQLSTATE 'ES001' THEN
            IF v_outcome = 'conflict' THEN
                -- The same events may be stored already (a retry after a timeout): a success.
                SELECT f.outcome, f.last_version, f.positions, f.detail INTO f_outcome, f_version, f_positions, f_detail
                  FROM eventstore_find_stored(p_stream_id, p_event_ids, p_expected) AS f;
                IF FOUND THEN
                    v_outcome := f_outcome;
                    v_version := coalesce(f_version, v_version);
                    v_positions := f_positions;
                    v_detail := f_detail;
                END IF;
            END IF;
            RETURN QUERY SELECT v_outcome, v_version, v_published, v_positions, NULL::bytea[], v_detail, v_epoch;
            RETURN;
        WHEN unique_violation THEN
            -- An id of the batch was stored meanwhile (a concurrent identical append, or the
            -- same ids elsewhere). Whatever this call wrote is undone; say what is stored.
            SELECT f.outcome, f.last_version, f.positions, f.detail INTO f_outcome, f_version, f_positions, f_detail
              FROM eventstore_find_stored(p_stream_id, p_event_ids, p_expected) AS f;
            IF FOUND THEN
                v_outcome := f_outcome;
                v_version := coalesce(f_version, v_version);
                v_positions := f_positions;
                v_detail := f_detail;
            ELSE
                v_outcome := 'conflict';
                SELECT s.version INTO v_version FROM eventstore_stream s WHERE s.stream_id = p_stream_id;
            END IF;
            RETURN QUERY SELECT v_outcome, coalesce(v_version, 0::bigint), v_published, v_positions, NULL::bytea[], v_detail, v_epoch;
            RETURN;
    END;
    RETURN QUERY SELECT 'appended'::text, v_version + v_count, v_published, v_positions, v_hashes, NULL::text, v_epoch;
END $$;
""" + f"""
DROP TRIGGER IF EXISTS eventstore_event_no_update ON eventstore_event;
CREATE TRIGGER eventstore_event_no_update BEFORE UPDATE OF {_IMMUTABLE_COLUMNS} ON eventstore_event
    FOR EACH ROW EXECUTE FUNCTION eventstore_event_immutable();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # Executed without parameters, so that '%' in PL/pgSQL messages is not a placeholder.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES_FORWARD)


class Migration(migrations.Migration):
    # Not reversible, like 0004: an event store is restored from a backup, not migrated back.
    dependencies = [("eventsourcing_app", "0010_stream_progress_held_index")]
    operations = [migrations.RunPython(forward)]
