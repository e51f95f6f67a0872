-- Failed deliveries are few (what an operator looks for first) but were found by scanning
-- every delivery: the console's "failed" filter and the bulk-replay preview took 224 ms
-- and 620 ms at 2.3 million deliveries. A partial index holds only them, newest first as
-- the list pages. Built CONCURRENTLY (outside a transaction, see metadata.toml; one
-- statement per migration, since several in one would run as one transaction) so that an
-- installation with history keeps writing while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_failed_idx
    ON deliveries (created_at DESC, id DESC) WHERE status = 'failed';
