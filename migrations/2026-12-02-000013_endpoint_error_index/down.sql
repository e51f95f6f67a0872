DROP INDEX CONCURRENTLY IF EXISTS deliveries_endpoint_error_idx;
