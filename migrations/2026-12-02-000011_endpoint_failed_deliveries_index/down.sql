DROP INDEX CONCURRENTLY IF EXISTS deliveries_endpoint_failed_idx;
