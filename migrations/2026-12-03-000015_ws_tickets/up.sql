-- Single-use tickets for browser WebSockets (a browser cannot send an Authorization header
-- with a WebSocket): POST /v1/ws/tickets with the key makes one valid for 60 s; GET
-- /v1/ws?ticket= takes it (deleting it) and acts as that key. Stored hashed, like keys,
-- and in the database so that any instance can take a ticket any other made.
CREATE TABLE ws_tickets (
    ticket_hash bytea PRIMARY KEY,
    api_key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ws_tickets_expires_at ON ws_tickets (expires_at);
