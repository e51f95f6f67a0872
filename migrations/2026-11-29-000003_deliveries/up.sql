-- Deliveries (one event to one endpoint) form the durable webhook queue; attempts are
-- their history. See docs/webhooks.md.

CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    -- No foreign key: a deleted endpoint's deliveries stay, as failed, for the record.
    endpoint_id      uuid NOT NULL,
    stream           text NOT NULL,
    seq              bigint NOT NULL,
    event_type       text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    -- pending: when the next attempt is due.
    next_attempt_at  timestamptz,
    -- delivering: the claim. It outlives the request timeout; an expired claim (a crashed
    -- worker) makes the delivery claimable again.
    lease_until      timestamptz,
    claim_token      uuid,
    -- Who asked for the next attempt, if it is a replay (an API key id, or NULL).
    replay_requested_by uuid,
    replay_requested boolean NOT NULL DEFAULT false,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased_idx ON deliveries (lease_until) WHERE status = 'delivering';
CREATE INDEX deliveries_newest_idx ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_endpoint_idx ON deliveries (endpoint_id, created_at DESC);
CREATE INDEX deliveries_unfinished_idx ON deliveries (endpoint_id, stream, seq)
    WHERE status IN ('pending', 'delivering');
CREATE INDEX deliveries_event_idx ON deliveries (event_id);

CREATE TABLE attempts (
    id               uuid PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    -- 'schedule' or 'replay'
    trigger          text NOT NULL,
    triggered_by     uuid,
    request_headers  jsonb NOT NULL,
    response_status  integer,
    response_headers jsonb,
    -- The first 16 KiB of the response body.
    response_body    text,
    -- timeout, connect, dns, tls, blocked_destination, invalid_response
    error_class      text,
    error_detail     text
);
CREATE INDEX attempts_delivery_idx ON attempts (delivery_id, started_at);
