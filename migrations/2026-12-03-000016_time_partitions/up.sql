-- Time partitions (docs/scaling.md, "Time partitions"): events, deliveries and attempts are
-- split by UTC day, so retention drops a day as whole tables instead of deleting it row by
-- row (86 s per million events while the rest of the database waits its turn).
--
--   events      by id          (UUIDv7: a range of ids is a range of time)
--   deliveries  by event_id    (a delivery lives, and goes, with its event: replays of an
--                               old event land in the old event's day)
--   attempts    by started_at  (an attempt's own time: retries go on for days)
--
-- Unique indexes must contain the partition key on a partitioned table, so the ones that
-- do not (deliveries' and attempts' ids, events' (stream, seq)) are made on each partition
-- (herald_ensure_partitions). Foreign keys between the three are dropped: dropping a
-- referenced partition would make PostgreSQL look for referencing rows in every partition
-- of the other table (a join over all of history); retention drops a day's three
-- partitions together instead, which is what the cascades did.
--
-- An installation with history keeps it: the current tables become each parent's first
-- partition, 'legacy', holding everything before the next UTC midnight, and are dropped
-- whole once that is past retention. Attaching them reads each table once to check that
-- bound (no rewrite, no index build). A new installation has no legacy partitions.

-- The smallest UUIDv7 of a UTC day's first millisecond: ids of that day and later sort at
-- or above it, ids of earlier days below.
CREATE FUNCTION herald_day_id(d date) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM d::timestamp) * 1000)::bigint), 12, '0')
            || '70008000000000000000')::uuid
$$;

-- The partitions there are: each holds rows from `since` (NULL: everything before) to
-- `until`, exclusive, and is named <table>_<suffix>.
CREATE TABLE herald_partitions (
    suffix text PRIMARY KEY,
    since date,
    until date NOT NULL
);

ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
-- Triggers with transition tables cannot be on a partition; they move to the parent.
DROP TRIGGER deliveries_count_insert ON deliveries;
DROP TRIGGER deliveries_count_update ON deliveries;
DROP TRIGGER deliveries_count_delete ON deliveries;

ALTER TABLE events RENAME TO events_legacy;
ALTER TABLE deliveries RENAME TO deliveries_legacy;
ALTER TABLE attempts RENAME TO attempts_legacy;
-- Index names are per schema: the parents' indexes take the old names.
DO $$
DECLARE i record;
BEGIN
    FOR i IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
              WHERE x.indrelid IN ('events_legacy'::regclass, 'deliveries_legacy'::regclass,
                                   'attempts_legacy'::regclass)
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', i.relname, i.relname || '_legacy');
    END LOOP;
END
$$;

CREATE TABLE events (LIKE events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (id);
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id);

CREATE TABLE deliveries (LIKE deliveries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_id);
-- The same definitions as before, so that the legacy table's indexes are attached, not
-- built again.
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_endpoint_error_idx ON deliveries (endpoint_id, updated_at DESC)
    WHERE last_error IS NOT NULL;
CREATE INDEX deliveries_endpoint_failed_idx ON deliveries (endpoint_id, created_at DESC, id DESC)
    WHERE status = 'failed';
CREATE INDEX deliveries_endpoint_idx ON deliveries (endpoint_id, created_at DESC);
CREATE INDEX deliveries_event_idx ON deliveries (event_id);
CREATE INDEX deliveries_failed_idx ON deliveries (created_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX deliveries_leased_idx ON deliveries (lease_until) WHERE status = 'delivering';
CREATE INDEX deliveries_newest_idx ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_replay_idx ON deliveries (replay_id) WHERE replay_id IS NOT NULL;
CREATE INDEX deliveries_unfinished_idx ON deliveries (endpoint_id, stream, seq)
    WHERE status IN ('pending', 'delivering');
CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();

CREATE TABLE attempts (LIKE attempts_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (started_at);
CREATE INDEX attempts_delivery_idx ON attempts (delivery_id, started_at);

-- Creates the day partitions from `first_day` to `last_day` that do not exist yet (days the
-- legacy partitions cover are skipped), each with its own unique indexes and the delivery
-- queue's vacuum settings (migration 000005). Returns how many days it created. Safe to
-- call from several instances at once. Attaching a new, empty table takes only a SHARE
-- UPDATE EXCLUSIVE lock on the parent: publishing and delivery go on meanwhile.
CREATE FUNCTION herald_ensure_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    s text;
    legacy_until date;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('herald_ensure_partitions'));
    SELECT until INTO legacy_until FROM herald_partitions WHERE suffix = 'legacy';
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        CONTINUE WHEN legacy_until IS NOT NULL AND d < legacy_until;
        s := 'p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN EXISTS (SELECT 1 FROM herald_partitions WHERE suffix = s);

        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       'events_' || s);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (stream, seq)',
                       'events_' || s || '_stream_seq_key', 'events_' || s);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'events_' || s, herald_day_id(d), herald_day_id(d + 1));

        EXECUTE format('CREATE TABLE %I (LIKE deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
                       'WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, '
                       'autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)',
                       'deliveries_' || s);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', 'deliveries_' || s || '_pkey',
                       'deliveries_' || s);
        EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'deliveries_' || s, herald_day_id(d), herald_day_id(d + 1));

        EXECUTE format('CREATE TABLE %I (LIKE attempts INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       'attempts_' || s);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', 'attempts_' || s || '_pkey',
                       'attempts_' || s);
        EXECUTE format('ALTER TABLE attempts ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'attempts_' || s, d::timestamp AT TIME ZONE 'UTC',
                       (d + 1)::timestamp AT TIME ZONE 'UTC');

        INSERT INTO herald_partitions (suffix, since, until) VALUES (s, d, d + 1);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

DO $$
DECLARE
    b date := (now() AT TIME ZONE 'UTC')::date + 1;
BEGIN
    IF EXISTS (SELECT 1 FROM events_legacy) OR EXISTS (SELECT 1 FROM deliveries_legacy)
       OR EXISTS (SELECT 1 FROM attempts_legacy) THEN
        -- A valid CHECK that implies the partition's bound spares ATTACH its own scan.
        EXECUTE format('ALTER TABLE events_legacy ADD CONSTRAINT events_legacy_until CHECK (id < %L)',
                       herald_day_id(b));
        EXECUTE format('ALTER TABLE deliveries_legacy ADD CONSTRAINT deliveries_legacy_until '
                       'CHECK (event_id < %L)', herald_day_id(b));
        EXECUTE format('ALTER TABLE attempts_legacy ADD CONSTRAINT attempts_legacy_until '
                       'CHECK (started_at < %L)', b::timestamp AT TIME ZONE 'UTC');
        EXECUTE format('ALTER TABLE events ATTACH PARTITION events_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', herald_day_id(b));
        EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION deliveries_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', herald_day_id(b));
        EXECUTE format('ALTER TABLE attempts ATTACH PARTITION attempts_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', b::timestamp AT TIME ZONE 'UTC');
        INSERT INTO herald_partitions (suffix, since, until) VALUES ('legacy', NULL, b);
    ELSE
        DROP TABLE events_legacy, deliveries_legacy, attempts_legacy;
    END IF;
END
$$;

SELECT herald_ensure_partitions((now() AT TIME ZONE 'UTC')::date,
                                (now() AT TIME ZONE 'UTC')::date + 2);
