-- Bulk replays and recovers, so an operator can follow one to the end: each is a row here,
-- and the deliveries it made due point at it. A delivery replayed again later points at
-- the later replay. See docs/webhooks.md ("Replays").
CREATE TABLE replays (
    id            uuid PRIMARY KEY,
    -- 'filter' (POST /v1/deliveries/replay) or 'recover' (POST /v1/endpoints/{id}/recover)
    kind          text NOT NULL CHECK (kind IN ('filter', 'recover')),
    -- The filter, or {endpoint_id, since, until}, as the request gave it.
    criteria      jsonb NOT NULL,
    requested_by  uuid NOT NULL,
    -- How many deliveries it made due.
    total         bigint NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX replays_created_idx ON replays (created_at);

ALTER TABLE deliveries ADD COLUMN replay_id uuid;
CREATE INDEX deliveries_replay_idx ON deliveries (replay_id) WHERE replay_id IS NOT NULL;
