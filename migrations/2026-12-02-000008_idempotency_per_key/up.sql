-- Idempotency keys belong to the API key that used them: two API keys never share one,
-- and nobody can squat a key another publisher will use. A new table, so that instances
-- still running the previous version (which use `idempotency_keys`) keep working during a
-- rolling deploy; the records there stay valid until they expire (24 h) and are purged.
CREATE TABLE idempotency_records (
    api_key_id   uuid NOT NULL,
    key          text NOT NULL,
    -- SHA-256 over the request path and body: the same key with another body is a conflict.
    request_hash bytea NOT NULL,
    event_ids    uuid[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_records_created_at_idx ON idempotency_records (created_at);
