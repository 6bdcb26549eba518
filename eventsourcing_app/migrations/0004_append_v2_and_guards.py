"""The append function that holds under every interleaving, and the guards of snapshots and keys.

`eventstore_append(...)` (PostgreSQL) now
- records `recorded_at` with the database's clock, once it holds the stream row;
- refuses events for a closed (migrated) stream, naming the new stream;
- takes each data subject's advisory lock in shared mode and refuses personal data for a
  subject whose key was destroyed (an erasure takes that lock exclusively: it waits for appends
  in flight, and appends after it see the key gone), whose key row does not exist (a key
  rolled back), or whose stored key is not the one the caller encrypted with;
- never raises for an expected refusal: conflict, idempotent re-append, duplicate ids,
  erased subject, closed stream come back as an outcome, so a caller's transaction stays
  usable; every id of the batch is checked, and concurrent identical appends (also to a
  new stream) give one success and idempotent successes.

Triggers: snapshots are never updated (but for their Kafka position) and deleted only while
a permit row exists in the deleting transaction (pruning, erasure); data key rows are never
deleted and a destroyed key is never restored; `recorded_at` joins the immutable event columns.
"""
from django.db import migrations

POSTGRES_FORWARD = r"""
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
        NEW.occurred_at, NEW.recorded_at, NEW.correlation_id, NEW.causation_id, NEW.actor, NEW.data_subject,
        NEW.payload, NEW.chain_hash)
       IS DISTINCT FROM
       (OLD.position, OLD.event_id, OLD.stream_id, OLD.version, OLD.event_type, OLD.schema_version,
        OLD.occurred_at, OLD.recorded_at, OLD.correlation_id, OLD.causation_id, OLD.actor, OLD.data_subject,
        OLD.payload, OLD.chain_hash) THEN
        RAISE EXCEPTION 'stored events are immutable: UPDATE of event % refused (only Kafka positions may be recorded)', OLD.event_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION eventstore_snapshot_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.id, NEW.stream_id, NEW.version, NEW.aggregate_type, NEW.schema_version, NEW.state, NEW.seal,
            NEW.data_subject, NEW.created_at)
           IS DISTINCT FROM
           (OLD.id, OLD.stream_id, OLD.version, OLD.aggregate_type, OLD.schema_version, OLD.state, OLD.seal,
            OLD.data_subject, OLD.created_at) THEN
            RAISE EXCEPTION 'snapshots are immutable: UPDATE of the snapshot of % at version % refused', OLD.stream_id, OLD.version
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM eventstore_snapshot_delete_permit) THEN
        RAISE EXCEPTION 'snapshots are deleted only by pruning and erasure: % of eventstore_snapshot refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER eventstore_snapshot_no_update BEFORE UPDATE ON eventstore_snapshot
    FOR EACH ROW EXECUTE FUNCTION eventstore_snapshot_guard();
CREATE TRIGGER eventstore_snapshot_guarded_delete BEFORE DELETE ON eventstore_snapshot
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_snapshot_guard();
CREATE TRIGGER eventstore_snapshot_no_truncate BEFORE TRUNCATE ON eventstore_snapshot
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_snapshot_guard();

CREATE OR REPLACE FUNCTION privacy_subject_key_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'data keys are destroyed by erasure (wrapped key set to NULL), never deleted: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.subject IS DISTINCT FROM OLD.subject
       OR (OLD.wrapped_key IS NULL AND NEW.wrapped_key IS NOT NULL)
       OR (OLD.destroyed_at IS NOT NULL AND NEW.destroyed_at IS DISTINCT FROM OLD.destroyed_at) THEN
        RAISE EXCEPTION 'the data key of % was destroyed (erased); it cannot be restored or renamed', OLD.subject
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER privacy_subject_key_no_restore BEFORE UPDATE ON privacy_subject_key
    FOR EACH ROW EXECUTE FUNCTION privacy_subject_key_guard();
CREATE TRIGGER privacy_subject_key_no_delete BEFORE DELETE ON privacy_subject_key
    FOR EACH ROW EXECUTE FUNCTION privacy_subject_key_guard();
CREATE TRIGGER privacy_subject_key_no_truncate BEFORE TRUNCATE ON privacy_subject_key
    FOR EACH STATEMENT EXECUTE FUNCTION privacy_subject_key_guard();

DROP FUNCTION IF EXISTS eventstore_append(text, text, bigint, timestamptz, uuid[], text[], int[], timestamptz[], text[], text[], text[], text[], bytea[], bytea[], text, bytea, text);

-- Where the ids of a batch are already stored: 'idempotent' (all of them, in order, at the
-- place the expectation allows), 'duplicate' (some elsewhere; detail names one), or no row.
CREATE OR REPLACE FUNCTION eventstore_find_stored(p_stream_id text, p_event_ids uuid[], p_expected bigint)
RETURNS TABLE(outcome text, last_version bigint, positions bigint[], detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_count int := cardinality(p_event_ids);
    v_first_stream text;
    v_first_version bigint;
    v_matches int;
    v_id uuid;
    v_stream text;
    v_version bigint;
BEGIN
    SELECT x.id, e.stream_id, e.version INTO v_id, v_stream, v_version
      FROM unnest(p_event_ids) WITH ORDINALITY AS x(id, n)
      JOIN eventstore_event e ON e.event_id = x.id
     ORDER BY x.n LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT e.stream_id, e.version INTO v_first_stream, v_first_version
      FROM eventstore_event e WHERE e.event_id = p_event_ids[1];
    IF FOUND AND v_first_stream = p_stream_id
       AND (p_expected IN (-2, -4) OR p_expected = v_first_version - 1 OR (p_expected = -1 AND v_first_version = 1)) THEN
        SELECT count(*) INTO v_matches
          FROM unnest(p_event_ids) WITH ORDINALITY AS x(id, n)
          JOIN eventstore_event e ON e.event_id = x.id
         WHERE e.stream_id = p_stream_id AND e.version = v_first_version + x.n - 1;
        IF v_matches = v_count THEN
            RETURN QUERY SELECT 'idempotent'::text, v_first_version + v_count - 1,
                   (SELECT array_agg(e.position ORDER BY e.version) FROM eventstore_event e
                     WHERE e.stream_id = p_stream_id AND e.version BETWEEN v_first_version AND v_first_version + v_count - 1),
                   NULL::text;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 'duplicate'::text, NULL::bigint, NULL::bigint[],
           format('event id %s is already stored as stream %s version %s', v_id, v_stream, v_version);
END $$;

-- p_expected: >= 0 exact version, -1 no stream, -2 any, -4 stream exists.
-- Outcomes: 'appended', 'idempotent', 'conflict', 'duplicate', 'closed' (detail: the stream
-- it was migrated to), 'erased' (detail: the subject), 'key_exists' (a new data key lost a
-- race: encrypt with the stored one), 'key_missing' (detail: a subject without a key row),
-- 'key_changed' (detail: a subject whose stored key is not the one the caller used).
-- stream_version is the version after the call (the actual version on conflict); the
-- published version and the publication epoch are the stream's before the call.
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
            INSERT INTO eventstore_stream (stream_id, stream_type, version, published_version, last_hash, created_at, updated_at)
            VALUES (p_stream_id, p_stream_type, 0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, v_now, v_now)
            ON CONFLICT (stream_id) DO NOTHING;
            -- Ours, or the row another writer committed meanwhile (checked like any other).
            SELECT s.version, s.published_version, s.publication_epoch, s.last_hash, s.migrated_to
              INTO v_version, v_published, v_epoch, v_hash, v_closed
              FROM eventstore_stream s WHERE s.stream_id = p_stream_id FOR NO KEY UPDATE;
        END IF;
        -- recorded_at: once the stream is ours (after any wait for another writer of it), so
        -- that within a stream it follows the order of the commits.
        v_now := clock_timestamp();
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

        FOR i IN 1..v_count LOOP
            v_hash := sha256(v_hash || int8send(v_version + i) || p_digests[i]);
            v_hashes[i] := v_hash;  -- in place; `v_hashes || v_hash` would copy the array each time
        END LOOP;

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

        UPDATE eventstore_stream SET version = v_version + v_count, last_hash = v_hash, updated_at = v_now
         WHERE stream_id = p_stream_id;

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
"""

_EVENT_COLUMNS = ("position, event_id, stream_id, version, event_type, schema_version, occurred_at, recorded_at, "
                  "correlation_id, causation_id, actor, data_subject, payload, chain_hash")
_SNAPSHOT_COLUMNS = "id, stream_id, version, aggregate_type, schema_version, state, seal, data_subject, created_at"

# SQLite: adding columns (0003) rebuilt the events table, and its triggers went with it.
SQLITE_FORWARD = [
    "DROP TRIGGER IF EXISTS eventstore_event_no_update",
    "DROP TRIGGER IF EXISTS eventstore_event_no_delete",
    """CREATE TRIGGER eventstore_event_no_delete BEFORE DELETE ON eventstore_event
       BEGIN SELECT RAISE(ABORT, 'stored events are immutable: DELETE refused'); END""",
    f"""CREATE TRIGGER eventstore_event_no_update BEFORE UPDATE OF {_EVENT_COLUMNS} ON eventstore_event
       BEGIN SELECT RAISE(ABORT, 'stored events are immutable: UPDATE refused (only Kafka positions may be recorded)'); END""",
    f"""CREATE TRIGGER eventstore_snapshot_no_update BEFORE UPDATE OF {_SNAPSHOT_COLUMNS} ON eventstore_snapshot
       BEGIN SELECT RAISE(ABORT, 'snapshots are immutable: UPDATE refused'); END""",
    """CREATE TRIGGER eventstore_snapshot_guarded_delete BEFORE DELETE ON eventstore_snapshot
       WHEN NOT EXISTS (SELECT 1 FROM eventstore_snapshot_delete_permit)
       BEGIN SELECT RAISE(ABORT, 'snapshots are deleted only by pruning and erasure: DELETE refused'); END""",
    """CREATE TRIGGER privacy_subject_key_no_delete BEFORE DELETE ON privacy_subject_key
       BEGIN SELECT RAISE(ABORT, 'data keys are destroyed by erasure (wrapped key set to NULL), never deleted'); END""",
    """CREATE TRIGGER privacy_subject_key_no_restore BEFORE UPDATE ON privacy_subject_key
       WHEN NEW.subject IS NOT OLD.subject OR (OLD.wrapped_key IS NULL AND NEW.wrapped_key IS NOT NULL)
            OR (OLD.destroyed_at IS NOT NULL AND NEW.destroyed_at IS NOT OLD.destroyed_at)
       BEGIN SELECT RAISE(ABORT, 'the data key was destroyed (erased); it cannot be restored or renamed'); END""",
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


class Migration(migrations.Migration):
    # Not reversible: going back would leave 0002's triggers and append function pointing at
    # columns that no longer exist. An event store is restored from a backup, not migrated back.
    dependencies = [("eventsourcing_app", "0003_recorded_at_sealed_snapshots_poison_aliases")]
    operations = [migrations.RunPython(forward)]
