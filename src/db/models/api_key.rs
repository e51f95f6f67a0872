//! `api_keys`: hashed bearer keys with their role and stream prefixes.

use chrono::{DateTime, SubsecRound as _, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::api_keys;
use crate::domain::{ApiKeySecret, Role};

/// A stored key (without the key itself, which is never stored).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKey {
    /// Key id, used to delete it.
    pub id: Uuid,
    /// SHA-256 of the key.
    pub key_hash: Vec<u8>,
    /// First characters of the key, for display.
    pub key_prefix: String,
    /// `admin`, `publisher` or `subscriber`.
    pub role: String,
    /// For subscribers: the stream-name prefixes it may read.
    pub stream_prefixes: Vec<String>,
    /// Free text from whoever created it.
    pub description: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Held long-polls and SSE streams it may have open per instance (`None`: the
    /// instance's `HERALD_MAX_WAITERS_PER_KEY`).
    pub max_held: Option<i32>,
}

impl ApiKey {
    /// A new record for `secret`.
    pub fn new(
        secret: &ApiKeySecret,
        role: Role,
        prefixes: Vec<String>,
        description: String,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            key_hash: secret.hash(),
            key_prefix: secret.display_prefix(),
            role: role.as_str().to_owned(),
            stream_prefixes: prefixes,
            description,
            created_at: Utc::now().trunc_subsecs(6),
            max_held: None,
        }
    }

    /// The role, parsed.
    pub fn role(&self) -> Role {
        // The CHECK constraint allows only the three names; anything else is treated as the
        // least privileged role rather than trusted.
        Role::parse(&self.role).unwrap_or(Role::Subscriber)
    }
}

/// Stores a key.
pub async fn insert(conn: &mut AsyncPgConnection, key: &ApiKey) -> QueryResult<()> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .execute(conn)
        .await
        .map(drop)
}

/// The key whose hash is `hash`, if any.
pub async fn find_by_hash(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
) -> QueryResult<Option<ApiKey>> {
    api_keys::table
        .filter(api_keys::key_hash.eq(hash))
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()
}

/// All keys, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ApiKey>> {
    api_keys::table
        .order(api_keys::id.asc())
        .select(ApiKey::as_select())
        .load(conn)
        .await
}

/// The key with this id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApiKey>> {
    api_keys::table
        .find(id)
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()
}

/// Which of `ids` still exist.
pub async fn existing(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    api_keys::table
        .filter(api_keys::id.eq_any(ids))
        .select(api_keys::id)
        .load(conn)
        .await
}

/// Deletes a key; returns whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::delete(api_keys::table.find(id))
        .execute(conn)
        .await
        .map(|n| n > 0)
}

/// How many admin keys exist.
pub async fn count_admins(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    api_keys::table
        .filter(api_keys::role.eq(Role::Admin.as_str()))
        .count()
        .get_result(conn)
        .await
}

/// Takes a transaction-scoped advisory lock that serialises admin-key bootstrapping across
/// instances starting at once.
pub async fn lock_bootstrap(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(4847524144)")
        .execute(conn)
        .await
        .map(drop)
}
