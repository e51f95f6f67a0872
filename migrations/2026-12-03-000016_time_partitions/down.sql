-- Back to single tables: the partitions' rows are copied into plain tables (a rewrite of
-- all history; an operator's last resort, not an online step).
CREATE TABLE events_flat (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO events_flat SELECT * FROM events;
CREATE TABLE deliveries_flat (LIKE deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
          autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
INSERT INTO deliveries_flat SELECT * FROM deliveries;
CREATE TABLE attempts_flat (LIKE attempts INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO attempts_flat SELECT * FROM attempts;
DROP TABLE attempts, deliveries, events;
DROP FUNCTION herald_ensure_partitions(date, date);
DROP TABLE herald_partitions;
DROP FUNCTION herald_day_id(date);
ALTER TABLE events_flat RENAME TO events;
ALTER TABLE deliveries_flat RENAME TO deliveries;
ALTER TABLE attempts_flat RENAME TO attempts;
ALTER TABLE events ADD PRIMARY KEY (id), ADD UNIQUE (stream, seq);
ALTER TABLE deliveries ADD PRIMARY KEY (id),
    ADD FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE;
ALTER TABLE attempts ADD PRIMARY KEY (id),
    ADD FOREIGN KEY (delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE;
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
CREATE INDEX attempts_delivery_idx ON attempts (delivery_id, started_at);
CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_deliveries();
