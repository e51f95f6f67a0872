//! Diesel's view of the tables, kept in the form `diesel print-schema` writes.
//! The migrations under `migrations/` are the source of truth.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        key_hash -> Bytea,
        key_prefix -> Text,
        role -> Text,
        stream_prefixes -> Array<Text>,
        description -> Text,
        created_at -> Timestamptz,
        max_held -> Nullable<Int4>,
    }
}

diesel::table! {
    attempts (id) {
        id -> Uuid,
        delivery_id -> Uuid,
        started_at -> Timestamptz,
        duration_ms -> Int4,
        trigger -> Text,
        triggered_by -> Nullable<Uuid>,
        request_headers -> Jsonb,
        response_status -> Nullable<Int4>,
        response_headers -> Nullable<Jsonb>,
        response_body -> Nullable<Text>,
        error_class -> Nullable<Text>,
        error_detail -> Nullable<Text>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Uuid,
        event_id -> Uuid,
        endpoint_id -> Uuid,
        stream -> Text,
        seq -> Int8,
        event_type -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Nullable<Timestamptz>,
        lease_until -> Nullable<Timestamptz>,
        claim_token -> Nullable<Uuid>,
        replay_requested_by -> Nullable<Uuid>,
        replay_requested -> Bool,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        replay_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    endpoints (id) {
        id -> Uuid,
        url -> Text,
        description -> Text,
        event_types -> Array<Text>,
        stream_patterns -> Array<Text>,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        secret -> Bytea,
        previous_secret -> Nullable<Bytea>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        rate_limit -> Nullable<Int4>,
        max_in_flight -> Int4,
        ordered -> Bool,
        headers -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        failing_since -> Nullable<Timestamptz>,
        last_success_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        last_error_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    events (id) {
        id -> Uuid,
        stream -> Text,
        seq -> Int8,
        event_type -> Text,
        payload -> Json,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        request_hash -> Bytea,
        event_ids -> Array<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_records (api_key_id, key) {
        api_key_id -> Uuid,
        key -> Text,
        request_hash -> Bytea,
        event_ids -> Array<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        api_key_id -> Uuid,
        csrf_token -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    streams (name) {
        name -> Text,
        last_seq -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    replays (id) {
        id -> Uuid,
        kind -> Text,
        criteria -> Jsonb,
        requested_by -> Uuid,
        total -> Int8,
        created_at -> Timestamptz,
        searching -> Bool,
        search_filter -> Nullable<Jsonb>,
        searched_to_at -> Nullable<Timestamptz>,
        searched_to_id -> Nullable<Uuid>,
    }
}

diesel::joinable!(attempts -> deliveries (delivery_id));
diesel::joinable!(sessions -> api_keys (api_key_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    attempts,
    deliveries,
    endpoints,
    events,
    idempotency_keys,
    idempotency_records,
    replays,
    sessions,
    streams
);
