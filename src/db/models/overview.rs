//! Aggregates for the console's overview: deliveries by status, the backlog, endpoint health.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Deliveries of one status created in the last hour and the last day.
#[derive(Debug, Clone, QueryableByName)]
pub struct StatusCount {
    /// Status.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Created in the last hour.
    #[diesel(sql_type = BigInt)]
    pub last_hour: i64,
    /// Created in the last 24 hours.
    #[diesel(sql_type = BigInt)]
    pub last_day: i64,
}

/// Deliveries by status over the last hour and day.
pub async fn status_counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<StatusCount>> {
    diesel::sql_query(
        "SELECT status, \
                count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS last_hour, \
                count(*) AS last_day \
           FROM deliveries WHERE created_at > now() - interval '1 day' GROUP BY status",
    )
    .load(conn)
    .await
}

/// The queue right now.
#[derive(Debug, Clone, QueryableByName)]
pub struct Backlog {
    /// Pending deliveries due now.
    #[diesel(sql_type = BigInt)]
    pub due: i64,
    /// Pending deliveries, due now or waiting for a retry.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Attempts in flight.
    #[diesel(sql_type = BigInt)]
    pub delivering: i64,
    /// When the oldest due delivery fell due.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_due_at: Option<DateTime<Utc>>,
}

/// The backlog.
pub async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<Backlog> {
    diesel::sql_query(
        "SELECT count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due, \
                count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'delivering') AS delivering, \
                min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS oldest_due_at \
           FROM deliveries WHERE status IN ('pending', 'delivering')",
    )
    .get_result(conn)
    .await
}

/// One endpoint's health.
#[derive(Debug, Clone, QueryableByName)]
pub struct EndpointHealth {
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// URL.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// Enabled.
    #[diesel(sql_type = Bool)]
    pub enabled: bool,
    /// Why it was disabled.
    #[diesel(sql_type = Nullable<Text>)]
    pub disabled_reason: Option<String>,
    /// Failing since.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Last success.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_success_at: Option<DateTime<Utc>>,
    /// Deliveries created in the last 24 h that succeeded.
    #[diesel(sql_type = BigInt)]
    pub succeeded_24h: i64,
    /// Deliveries created in the last 24 h that failed for good.
    #[diesel(sql_type = BigInt)]
    pub failed_24h: i64,
    /// Unfinished deliveries.
    #[diesel(sql_type = BigInt)]
    pub backlog: i64,
    /// The last error recorded for it.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
}

/// Every endpoint's health.
pub async fn endpoint_health(conn: &mut AsyncPgConnection) -> QueryResult<Vec<EndpointHealth>> {
    diesel::sql_query(
        "SELECT e.id, e.url, e.enabled, e.disabled_reason, e.failing_since, e.last_success_at, \
                count(d.id) FILTER (WHERE d.status = 'succeeded' AND d.created_at > now() - interval '1 day') AS succeeded_24h, \
                count(d.id) FILTER (WHERE d.status = 'failed' AND d.created_at > now() - interval '1 day') AS failed_24h, \
                count(d.id) FILTER (WHERE d.status IN ('pending', 'delivering')) AS backlog, \
                (SELECT x.last_error FROM deliveries x WHERE x.endpoint_id = e.id AND x.last_error IS NOT NULL \
                  ORDER BY x.updated_at DESC LIMIT 1) AS last_error \
           FROM endpoints e \
           LEFT JOIN deliveries d ON d.endpoint_id = e.id \
                AND (d.created_at > now() - interval '1 day' OR d.status IN ('pending', 'delivering')) \
          GROUP BY e.id ORDER BY e.id",
    )
    .load(conn)
    .await
}
