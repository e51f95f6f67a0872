CREATE INDEX deliveries_endpoint_error_idx ON deliveries (endpoint_id, updated_at DESC)
    WHERE last_error IS NOT NULL;
ALTER TABLE endpoints DROP COLUMN last_error, DROP COLUMN last_error_at;
