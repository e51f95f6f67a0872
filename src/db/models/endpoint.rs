//! `endpoints`: webhook subscriptions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::prepared::prepared;
use crate::db::schema::endpoints;

/// A stored endpoint.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = endpoints, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub struct Endpoint {
    /// Id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event types it receives (empty: all).
    pub event_types: Vec<String>,
    /// Stream names or `prefix*` patterns it receives (empty: all).
    pub stream_patterns: Vec<String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it was disabled, when Herald disabled it.
    pub disabled_reason: Option<String>,
    /// Current signing key.
    pub secret: Vec<u8>,
    /// The key before the last rotation, still signing until it expires.
    pub previous_secret: Option<Vec<u8>>,
    /// When the previous key stops signing.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Deliveries per second, if limited.
    pub rate_limit: Option<i32>,
    /// Attempts in flight at once.
    pub max_in_flight: i32,
    /// Per-stream seq order.
    pub ordered: bool,
    /// Static extra headers, as a JSON object of strings.
    pub headers: serde_json::Value,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// When it started failing (no success since); `None` while healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// Its last successful delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The last error an attempt met (written by the recorder, never by an update of the
    /// endpoint's settings).
    #[diesel(skip_update)]
    pub last_error: Option<String>,
    /// When.
    #[diesel(skip_update)]
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Stores a new endpoint.
pub async fn insert(conn: &mut AsyncPgConnection, endpoint: &Endpoint) -> QueryResult<()> {
    diesel::insert_into(endpoints::table)
        .values(endpoint)
        .execute(conn)
        .await
        .map(drop)
}

/// All endpoints, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Endpoint>> {
    endpoints::table
        .order(endpoints::id.asc())
        .select(Endpoint::as_select())
        .load(conn)
        .await
}

/// The endpoint with this id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Endpoint>> {
    endpoints::table
        .find(id)
        .select(Endpoint::as_select())
        .first(conn)
        .await
        .optional()
}

/// The endpoint with this id, locked until the end of the transaction.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<Endpoint>> {
    endpoints::table
        .find(id)
        .select(Endpoint::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Writes every field of `endpoint` back.
pub async fn save(conn: &mut AsyncPgConnection, endpoint: &Endpoint) -> QueryResult<()> {
    diesel::update(endpoints::table.find(endpoint.id))
        .set(endpoint)
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes an endpoint; returns whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::delete(endpoints::table.find(id))
        .execute(conn)
        .await
        .map(|n| n > 0)
}

/// Disables an endpoint, saying why; returns whether this disabled it (false when it was
/// disabled already, or is gone).
pub async fn disable(conn: &mut AsyncPgConnection, id: Uuid, reason: &str) -> QueryResult<bool> {
    diesel::update(
        endpoints::table
            .find(id)
            .filter(endpoints::enabled.eq(true)),
    )
    .set((
        endpoints::enabled.eq(false),
        endpoints::disabled_reason.eq(reason),
        endpoints::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
    .map(|n| n > 0)
}

/// Notes a success. Returns when the endpoint had been failing since, if it had (it has
/// recovered). Writes only when something changes or the last success is over 10 s old,
/// so that a busy endpoint's successes do not each update its row.
pub async fn note_success(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<DateTime<Utc>>> {
    #[derive(QueryableByName)]
    struct Was {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        failing_since: Option<DateTime<Utc>>,
    }
    let was: Option<Was> = diesel::sql_query(
        "WITH old AS (SELECT failing_since FROM endpoints WHERE id = $1) \
         UPDATE endpoints SET failing_since = NULL, last_success_at = now() \
          WHERE id = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL \
                             OR last_success_at < now() - interval '10 seconds') \
         RETURNING (SELECT failing_since FROM old) AS failing_since",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    Ok(was.and_then(|w| w.failing_since))
}

/// Notes each endpoint's last error (`(endpoint, error)` pairs). An error the same as the
/// one noted less than 10 s before is not written again, so that an endpoint failing on
/// every attempt does not have its row rewritten by every batch.
pub async fn note_errors(conn: &mut AsyncPgConnection, errors: &[(Uuid, &str)]) -> QueryResult<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let (ids, texts): (Vec<Uuid>, Vec<&str>) = errors.iter().copied().unzip();
    prepared(
        diesel::sql_query(
            "UPDATE endpoints e SET last_error = u.error, last_error_at = now() \
               FROM unnest($1::uuid[], $2::text[]) AS u(id, error) \
              WHERE e.id = u.id AND (e.last_error IS DISTINCT FROM u.error \
                    OR e.last_error_at IS NULL OR e.last_error_at < now() - interval '10 seconds')",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(texts),
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Notes a failure; disables the endpoint if it has had no success for `disable_after`.
/// Returns whether it was disabled now.
pub async fn note_failure(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    disable_after: std::time::Duration,
    reason: &str,
) -> QueryResult<bool> {
    diesel::sql_query(
        "UPDATE endpoints SET failing_since = now() WHERE id = $1 AND failing_since IS NULL",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(conn)
    .await?;
    let disabled = diesel::sql_query(
        "UPDATE endpoints SET enabled = false, disabled_reason = $3, updated_at = now() \
          WHERE id = $1 AND enabled AND failing_since < now() - make_interval(secs => $2)",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Double, _>(disable_after.as_secs_f64())
    .bind::<diesel::sql_types::Text, _>(reason)
    .execute(conn)
    .await?;
    Ok(disabled == 1)
}
