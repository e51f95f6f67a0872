//! Aggregates for the console's overview: deliveries by status, the backlog, endpoint health.
//!
//! Counts by status come from `delivery_counts` (migration 000012), which triggers keep as
//! deliveries change and [`fold`] compacts, never from counting `deliveries`. Its rows are
//! minutes (the last hour or two) and hours, so the windows are whole buckets: "the last
//! hour" is the current minute and the 59 before it, "the last day" starts at the top of
//! the hour 24 hours ago (24 to 25 hours). The backlog reads only unfinished deliveries
//! (partial indexes), and each endpoint's health is on its row (its last error included,
//! migration 000017), so nothing here grows with history. Each is read once, by endpoint:
//! the handler sums the totals.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::delivery::DeliveryStatus;
use crate::db::prepared::prepared;

/// Deliveries of one endpoint and status created in the last hour and the last day.
#[derive(Debug, Clone, QueryableByName)]
pub struct StatusCount {
    /// Endpoint.
    #[diesel(sql_type = SqlUuid)]
    pub endpoint_id: Uuid,
    /// Status.
    #[diesel(sql_type = Text)]
    pub status: DeliveryStatus,
    /// Created in the last hour.
    #[diesel(sql_type = BigInt)]
    pub last_hour: i64,
    /// Created in the last 24 hours.
    #[diesel(sql_type = BigInt)]
    pub last_day: i64,
}

/// Where the day's window starts: the top of the hour 24 hours ago.
const DAY_WINDOW: &str = "date_trunc('hour', now() - interval '1 day')";

/// Deliveries by endpoint and status over the last hour and day: one read of the day's
/// counter rows for both the totals and each endpoint's health.
pub async fn status_counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<StatusCount>> {
    // Prepared: planned once per connection (with a day partition per day kept,
    // planning it on every call cost more than running it).
    prepared(diesel::sql_query(format!(
        "SELECT endpoint_id, status, \
                coalesce(sum(n) FILTER (WHERE span = 1 AND \
                    bucket >= date_trunc('minute', now()) - interval '59 minutes'), 0)::int8 \
                  AS last_hour, \
                coalesce(sum(n), 0)::int8 AS last_day \
           FROM delivery_counts WHERE bucket >= {DAY_WINDOW} GROUP BY endpoint_id, status"
    )))
    .load(conn)
    .await
}

/// Folds `delivery_counts` together: each writer's shard into one row once its minute is
/// closed, minutes into hours once they are more than an hour old, and drops buckets more
/// than two days old (nothing reads them). Rows are locked in primary-key order, the order
/// the triggers write in, so the fold and writers never deadlock. Returns the rows folded.
pub async fn fold(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::sql_query(
        "WITH doomed AS ( \
           SELECT bucket, span, endpoint_id, status, shard FROM delivery_counts \
            WHERE (shard >= 0 AND bucket < date_trunc('minute', now()) - interval '1 minute') \
               OR (span = 1 AND bucket < date_trunc('hour', now()) - interval '1 hour') \
               OR bucket < date_trunc('hour', now()) - interval '2 days' \
            ORDER BY bucket, span, endpoint_id, status, shard \
            FOR UPDATE), \
         moved AS ( \
           DELETE FROM delivery_counts c USING doomed d \
            WHERE (c.bucket, c.span, c.endpoint_id, c.status, c.shard) \
                = (d.bucket, d.span, d.endpoint_id, d.status, d.shard) \
           RETURNING c.bucket, c.span, c.endpoint_id, c.status, c.n) \
         INSERT INTO delivery_counts AS c (bucket, span, endpoint_id, status, shard, n) \
         SELECT f.bucket, f.span, f.endpoint_id, f.status, -1, sum(f.n) \
           FROM (SELECT CASE WHEN m.bucket < date_trunc('hour', now()) - interval '1 hour' \
                             THEN date_trunc('hour', m.bucket) ELSE m.bucket END AS bucket, \
                        CASE WHEN m.bucket < date_trunc('hour', now()) - interval '1 hour' \
                             THEN 60 ELSE 1 END::int2 AS span, \
                        m.endpoint_id, m.status, m.n \
                   FROM moved m \
                  WHERE m.bucket >= date_trunc('hour', now()) - interval '2 days') AS f \
          GROUP BY 1, 2, 3, 4 HAVING sum(f.n) <> 0 ORDER BY 1, 2, 3, 4 \
         ON CONFLICT (bucket, span, endpoint_id, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n",
    )
    .execute(conn)
    .await
}

/// One endpoint's queue right now.
#[derive(Debug, Clone, QueryableByName)]
pub struct Backlog {
    /// Endpoint.
    #[diesel(sql_type = SqlUuid)]
    pub endpoint_id: Uuid,
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

/// The backlog by endpoint (endpoints with none are left out). It reads only unfinished
/// deliveries (partial indexes).
pub async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Backlog>> {
    prepared(diesel::sql_query(
        "SELECT endpoint_id, \
                count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due, \
                count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'delivering') AS delivering, \
                min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS oldest_due_at \
           FROM deliveries WHERE status IN ('pending', 'delivering') GROUP BY endpoint_id",
    ))
    .load(conn)
    .await
}

/// The backlog summed over endpoints.
pub fn total_backlog(by_endpoint: &[Backlog]) -> Backlog {
    let mut total = Backlog {
        endpoint_id: Uuid::nil(),
        due: 0,
        pending: 0,
        delivering: 0,
        oldest_due_at: None,
    };
    for b in by_endpoint {
        total.due += b.due;
        total.pending += b.pending;
        total.delivering += b.delivering;
        total.oldest_due_at = match (total.oldest_due_at, b.oldest_due_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    total
}

/// What an endpoint's row says about its health.
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
    /// The last error an attempt met.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// When.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Every endpoint's health as its row keeps it (the recorder writes failures, successes
/// and the last error there); the counts come from [`status_counts`] and [`backlog`].
pub async fn endpoint_health(conn: &mut AsyncPgConnection) -> QueryResult<Vec<EndpointHealth>> {
    prepared(diesel::sql_query(
        "SELECT id, url, enabled, disabled_reason, failing_since, last_success_at, \
                last_error, last_error_at \
           FROM endpoints ORDER BY id",
    ))
    .load(conn)
    .await
}
