//! `attempts`: each webhook request made, with what came back.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::attempts;

/// One attempt as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    /// Id.
    pub id: Uuid,
    /// Its delivery.
    pub delivery_id: Uuid,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// How long until the answer (or the error).
    pub duration_ms: i32,
    /// schedule or replay.
    pub trigger: String,
    /// The API key that asked for a replay.
    pub triggered_by: Option<Uuid>,
    /// Headers sent.
    pub request_headers: serde_json::Value,
    /// Status received.
    pub response_status: Option<i32>,
    /// Headers received.
    pub response_headers: Option<serde_json::Value>,
    /// The first 16 KiB of the body received.
    pub response_body: Option<String>,
    /// timeout, connect, dns, tls, blocked_destination, invalid_response.
    pub error_class: Option<String>,
    /// Details of the error.
    pub error_detail: Option<String>,
}

/// A delivery's attempts, oldest first.
pub async fn attempts_of(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Vec<Attempt>> {
    attempts::table
        .filter(attempts::delivery_id.eq(id))
        .order(attempts::started_at.asc())
        .select(Attempt::as_select())
        .load(conn)
        .await
}
