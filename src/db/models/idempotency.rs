//! `idempotency_keys`: which events a request with an `Idempotency-Key` created.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bytea, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// How long a key is remembered.
pub const RETENTION_HOURS: i64 = 24;

/// A request already made with this key.
#[derive(Debug, Clone, QueryableByName)]
pub struct IdempotencyRecord {
    /// SHA-256 over the request's path and body.
    #[diesel(sql_type = Bytea)]
    pub request_hash: Vec<u8>,
    /// The events it created.
    #[diesel(sql_type = Array<SqlUuid>)]
    pub event_ids: Vec<Uuid>,
    /// When.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// The outcome of [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// The key is new (or its record expired): this request owns it.
    Fresh,
    /// A request with this key was already committed within the last 24 hours.
    Existing(IdempotencyRecord),
}

/// Records that this transaction creates `event_ids` for the API key `api_key_id`'s
/// idempotency key `key`, unless a live record for it exists.
///
/// Keys are scoped to the API key that used them (`idempotency_records`). Records written
/// before that (`idempotency_keys`, global, with no owner) are still honoured until they
/// expire, but only for the very same request (same hash), so that a retry across the
/// upgrade is still recognised while another key's different request under the same
/// idempotency key is neither refused (`409` would reveal it) nor squatted.
///
/// If another transaction is inserting the same key right now, PostgreSQL makes this one
/// wait for it on the primary key: when it commits, this one sees its record (`Existing`);
/// when it rolls back, this one takes the key. So two concurrent requests with one key
/// create one set of events.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    api_key_id: Uuid,
    key: &str,
    request_hash: &[u8],
    event_ids: &[Uuid],
) -> QueryResult<Claim> {
    let legacy: Option<IdempotencyRecord> = diesel::sql_query(format!(
        "SELECT request_hash, event_ids, created_at FROM idempotency_keys \
          WHERE key = $1 AND request_hash = $2 \
            AND created_at >= now() - interval '{RETENTION_HOURS} hours'"
    ))
    .bind::<Text, _>(key)
    .bind::<Bytea, _>(request_hash)
    .get_result(conn)
    .await
    .optional()?;
    if let Some(record) = legacy {
        return Ok(Claim::Existing(record));
    }
    let inserted = diesel::sql_query(format!(
        "INSERT INTO idempotency_records AS k (api_key_id, key, request_hash, event_ids) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (api_key_id, key) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, event_ids = EXCLUDED.event_ids, \
               created_at = now() \
           WHERE k.created_at < now() - interval '{RETENTION_HOURS} hours'"
    ))
    .bind::<SqlUuid, _>(api_key_id)
    .bind::<Text, _>(key)
    .bind::<Bytea, _>(request_hash)
    .bind::<Array<SqlUuid>, _>(event_ids)
    .execute(conn)
    .await?;
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let existing: IdempotencyRecord = diesel::sql_query(
        "SELECT request_hash, event_ids, created_at FROM idempotency_records \
          WHERE api_key_id = $1 AND key = $2",
    )
    .bind::<SqlUuid, _>(api_key_id)
    .bind::<Text, _>(key)
    .get_result(conn)
    .await?;
    Ok(Claim::Existing(existing))
}
