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
    streams (name) {
        name -> Text,
        last_seq -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(api_keys, events, idempotency_keys, streams);
