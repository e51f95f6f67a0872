-- Endpoint health: when it started failing (NULL while healthy) and its last success.
ALTER TABLE endpoints
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN last_success_at timestamptz;
