-- Console sessions: an admin key exchanged for a cookie. Only the token's SHA-256 is kept.
CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    api_key_id  uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- Sent back in X-CSRF-Token on every state-changing request made with the cookie.
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
