-- Webhook endpoints: where events are POSTed, which ones, and how.

CREATE TABLE endpoints (
    id                          uuid PRIMARY KEY,
    url                         text NOT NULL,
    description                 text NOT NULL DEFAULT '',
    -- Empty: every type. Otherwise exact event types.
    event_types                 text[] NOT NULL DEFAULT '{}',
    -- Empty: every stream. Otherwise exact names or prefixes ending in '*'.
    stream_patterns             text[] NOT NULL DEFAULT '{}',
    enabled                     boolean NOT NULL DEFAULT true,
    disabled_reason             text,
    -- Signing key bytes (shown to users as whsec_ + base64).
    secret                      bytea NOT NULL,
    -- After a rotation, the previous key keeps signing until it expires.
    previous_secret             bytea,
    previous_secret_expires_at  timestamptz,
    -- Deliveries per second (NULL: unlimited) and attempts in flight at once.
    rate_limit                  integer CHECK (rate_limit > 0),
    max_in_flight               integer NOT NULL DEFAULT 10 CHECK (max_in_flight > 0),
    ordered                     boolean NOT NULL DEFAULT false,
    -- Static extra request headers, {"name": "value"}.
    headers                     jsonb NOT NULL DEFAULT '{}',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
