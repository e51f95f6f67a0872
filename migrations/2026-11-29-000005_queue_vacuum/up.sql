-- The delivery queue churns: every attempt rewrites its row. Vacuum it early and without
-- throttling, so its partial indexes stay small.
ALTER TABLE deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
