//! `sessions`: console sign-ins.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::api_key::ApiKey;
use crate::db::schema::{api_keys, sessions};

/// A stored session.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    /// SHA-256 of the cookie's token.
    pub token_hash: Vec<u8>,
    /// The admin key that signed in.
    pub api_key_id: Uuid,
    /// The CSRF token state-changing requests must echo.
    pub csrf_token: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: DateTime<Utc>,
}

/// Stores a session.
pub async fn insert(conn: &mut AsyncPgConnection, session: &Session) -> QueryResult<()> {
    diesel::insert_into(sessions::table)
        .values(session)
        .execute(conn)
        .await
        .map(drop)
}

/// The unexpired session with this token hash, with its key.
pub async fn find_live(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
) -> QueryResult<Option<(Session, ApiKey)>> {
    sessions::table
        .inner_join(api_keys::table)
        .filter(sessions::token_hash.eq(token_hash))
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .select((Session::as_select(), ApiKey::as_select()))
        .first(conn)
        .await
        .optional()
}

/// Ends a session; returns whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, token_hash: &[u8]) -> QueryResult<bool> {
    diesel::delete(sessions::table.find(token_hash))
        .execute(conn)
        .await
        .map(|n| n > 0)
}

/// Deletes expired sessions.
pub async fn purge_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(sessions::table.filter(sessions::expires_at.le(diesel::dsl::now)))
        .execute(conn)
        .await
}
