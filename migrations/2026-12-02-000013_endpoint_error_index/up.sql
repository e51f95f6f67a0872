-- An endpoint's most recent error (endpoint health in the overview). Without it, finding
-- it walked all of the endpoint's deliveries; deliveries with an error are few (a success
-- clears it), so this index is small.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_endpoint_error_idx
    ON deliveries (endpoint_id, updated_at DESC) WHERE last_error IS NOT NULL;
