-- An endpoint's failed deliveries (its page in the console), newest first. Without it, an
-- endpoint with none walks every failed delivery of every endpoint. See 000010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_endpoint_failed_idx
    ON deliveries (endpoint_id, created_at DESC, id DESC) WHERE status = 'failed';
