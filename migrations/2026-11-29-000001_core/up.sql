-- The durable core: streams with their sequence counters, events, idempotency records and
-- API keys. See docs/architecture.md for why seq comes from a per-stream counter row.

CREATE TABLE streams (
    name       text PRIMARY KEY,
    -- The seq of the newest event. Incremented in the transaction that inserts the event,
    -- so the row lock orders writers of one stream: commit order equals seq order.
    last_seq   bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    -- UUIDv7: time-ordered, so retention can purge by id range without another index.
    id         uuid PRIMARY KEY,
    stream     text NOT NULL,
    seq        bigint NOT NULL CHECK (seq > 0),
    event_type text NOT NULL,
    -- json, not jsonb: the producer's bytes are kept exactly (key order, number spelling)
    -- and ingest skips the jsonb conversion.
    payload    json NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT events_stream_seq_key UNIQUE (stream, seq)
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    -- SHA-256 of the key; the key itself is never stored.
    key_hash        bytea NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    -- The first characters of the key, so operators can tell keys apart.
    key_prefix      text NOT NULL,
    role            text NOT NULL CHECK (role IN ('admin', 'publisher', 'subscriber')),
    stream_prefixes text[] NOT NULL DEFAULT '{}',
    description     text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    -- SHA-256 over the request path and body: the same key with another body is a conflict.
    request_hash bytea NOT NULL,
    event_ids    uuid[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
