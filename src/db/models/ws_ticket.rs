//! `ws_tickets`: single-use, short-lived tickets that open a WebSocket as an API key.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Bytea, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::api_key::ApiKey;

/// Stores a ticket (by its hash) for `api_key_id` until `expires_at`.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    ticket_hash: &[u8],
    api_key_id: Uuid,
    expires_at: DateTime<Utc>,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO ws_tickets (ticket_hash, api_key_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind::<Bytea, _>(ticket_hash)
    .bind::<SqlUuid, _>(api_key_id)
    .bind::<Timestamptz, _>(expires_at)
    .execute(conn)
    .await
    .map(drop)
}

/// Takes the live ticket with this hash: it is deleted whatever it is, and its key is
/// returned if it had not expired. A ticket works once.
pub async fn take(
    conn: &mut AsyncPgConnection,
    ticket_hash: &[u8],
) -> diesel::QueryResult<Option<ApiKey>> {
    use diesel::{OptionalExtension as _, QueryDsl as _, SelectableHelper as _};

    use crate::db::schema::api_keys;
    #[derive(diesel::QueryableByName)]
    struct Taken {
        #[diesel(sql_type = SqlUuid)]
        api_key_id: Uuid,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        live: bool,
    }
    let taken: Option<Taken> = diesel::sql_query(
        "DELETE FROM ws_tickets WHERE ticket_hash = $1 \
         RETURNING api_key_id, expires_at > now() AS live",
    )
    .bind::<Bytea, _>(ticket_hash)
    .get_result(conn)
    .await
    .optional()?;
    let Some(taken) = taken.filter(|t| t.live) else {
        return Ok(None);
    };
    api_keys::table
        .find(taken.api_key_id)
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()
}

/// Deletes expired tickets (retention's pass).
pub async fn purge_expired(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM ws_tickets WHERE expires_at <= now()")
        .execute(conn)
        .await
}
