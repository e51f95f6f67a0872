-- Deliveries counted by endpoint, status and the minute they were created, kept as they
-- change, so that the overview and endpoint health read a few thousand counter rows
-- instead of counting a day of deliveries (11.5 s at 2.3 million; see docs/scaling.md).
--
-- Statement-level triggers write the changes: each statement that inserts, updates or
-- deletes deliveries adds one signed count per (minute, endpoint, status) it touched, in
-- the same transaction, so the counts are exact at every commit. Writers do not contend
-- for one row: each adds to its own shard (its backend pid modulo 16). A background task
-- (src/rollup.rs) folds shards together once a minute is closed, minutes into hours once
-- they are more than an hour old, and drops what is older than two days.
CREATE TABLE delivery_counts (
    bucket timestamptz NOT NULL,   -- the minute (span 1) or hour (span 60) of created_at
    span smallint NOT NULL,
    endpoint_id uuid NOT NULL,
    status text NOT NULL,
    shard smallint NOT NULL,       -- the writer's shard, -1 once folded
    n bigint NOT NULL,
    PRIMARY KEY (bucket, span, endpoint_id, status, shard)
);

-- Rows are upserted in primary-key order, the order the fold locks them in, so a writer
-- and the fold never deadlock.
CREATE FUNCTION herald_count_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_counts AS c (bucket, span, endpoint_id, status, shard, n)
        SELECT date_trunc('minute', created_at), 1, endpoint_id, status,
               pg_backend_pid() % 16, count(*)
          FROM new_rows GROUP BY 1, 3, 4 ORDER BY 1, 3, 4
        ON CONFLICT (bucket, span, endpoint_id, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_counts AS c (bucket, span, endpoint_id, status, shard, n)
        SELECT date_trunc('minute', created_at), 1, endpoint_id, status,
               pg_backend_pid() % 16, -count(*)
          FROM old_rows GROUP BY 1, 3, 4 ORDER BY 1, 3, 4
        ON CONFLICT (bucket, span, endpoint_id, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        INSERT INTO delivery_counts AS c (bucket, span, endpoint_id, status, shard, n)
        SELECT date_trunc('minute', created_at), 1, endpoint_id, status,
               pg_backend_pid() % 16, sum(delta)
          FROM (SELECT created_at, endpoint_id, status, 1 AS delta FROM new_rows
                UNION ALL
                SELECT created_at, endpoint_id, status, -1 FROM old_rows) AS changed
         GROUP BY 1, 3, 4 HAVING sum(delta) <> 0 ORDER BY 1, 3, 4
        ON CONFLICT (bucket, span, endpoint_id, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();

-- What an existing installation already holds (the last two days; nothing older is read).
-- The triggers above are in place in this same transaction, which holds off writers of
-- deliveries until it commits: the counts start exact.
INSERT INTO delivery_counts (bucket, span, endpoint_id, status, shard, n)
SELECT CASE WHEN created_at < date_trunc('hour', now()) - interval '1 hour'
            THEN date_trunc('hour', created_at) ELSE date_trunc('minute', created_at) END,
       CASE WHEN created_at < date_trunc('hour', now()) - interval '1 hour' THEN 60 ELSE 1 END,
       endpoint_id, status, -1, count(*)
  FROM deliveries
 WHERE created_at >= now() - interval '2 days'
 GROUP BY 1, 2, 3, 4;
