//! `deliveries`: the webhook queue (claims, outcomes, listing). Attempts are in `attempt`,
//! replays and recover in `replay`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Double, Integer, Jsonb, Nullable, Text, Timestamptz,
    Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::attempt::Attempt;
use crate::db::prepared;
use crate::db::schema::deliveries;

/// Where a delivery stands: the `deliveries.status` column.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// Claimed by an instance and being attempted (`lease_until`).
    Delivering,
    /// The receiver answered 2xx.
    Succeeded,
    /// No attempts left, or the endpoint was disabled or deleted.
    Failed,
}

impl DeliveryStatus {
    /// Every status, in the order a delivery moves through them.
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Delivering,
        Self::Succeeded,
        Self::Failed,
    ];

    /// The column's (and the API's) text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// The status named `raw`, if it is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl diesel::serialize::ToSql<Text, diesel::pg::Pg> for DeliveryStatus {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
    ) -> diesel::serialize::Result {
        <str as diesel::serialize::ToSql<Text, diesel::pg::Pg>>::to_sql(self.as_str(), out)
    }
}

impl diesel::deserialize::FromSql<Text, diesel::pg::Pg> for DeliveryStatus {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let raw = <String as diesel::deserialize::FromSql<Text, diesel::pg::Pg>>::from_sql(bytes)?;
        Self::parse(&raw).ok_or_else(|| format!("unknown delivery status {raw:?}").into())
    }
}

/// A delivery as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event's stream.
    pub stream: String,
    /// The event's seq.
    pub seq: i64,
    /// The event's type.
    pub event_type: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due (pending).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the current claim expires (delivering).
    pub lease_until: Option<DateTime<Utc>>,
    /// The current claim.
    pub claim_token: Option<Uuid>,
    /// Who asked for the next attempt, for replays.
    pub replay_requested_by: Option<Uuid>,
    /// Whether the next attempt is a replay.
    pub replay_requested: bool,
    /// Status code of the last answer.
    pub last_status_code: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The bulk replay or recover that last made it due, if any.
    pub replay_id: Option<Uuid>,
}

/// The rule for "endpoint `e` subscribes to event `ev`", shared by fan-out and recover:
/// no type filter or the event's type listed, and no stream filter (for streams outside
/// `herald:*`) or a pattern that matches, exactly or as a `prefix*`.
macro_rules! endpoint_matches_event {
    () => {
        "(cardinality(e.event_types) = 0 OR ev.event_type = ANY (e.event_types)) \
         AND ((cardinality(e.stream_patterns) = 0 AND NOT starts_with(ev.stream, 'herald:')) \
              OR EXISTS (SELECT 1 FROM unnest(e.stream_patterns) AS p \
                         WHERE p = ev.stream \
                            OR (right(p, 1) = '*' AND starts_with(ev.stream, left(p, -1)))))"
    };
}

/// Fan-out, as the part of the ingest statement (see `event::insert_all`) that follows
/// the events CTE `ev(id, stream, seq, event_type)`: a delivery for every endpoint that
/// matches each event. Disabled endpoints get it `failed` ("endpoint disabled"), so nothing
/// is silently dropped. The rest are `pending`, except where the inserting instance
/// claims them at once (`$8`, the claim token, is not null): those are inserted
/// `delivering` with its token and a lease of `$9` seconds, and the instance attempts them
/// from memory. Ordered and rate-limited endpoints, and those listed in `$10` (the
/// instance has enough of theirs in hand), are left to the claim query, which knows their
/// rules.
///
/// An endpoint without stream filters gets every stream except Herald's own `herald:*`
/// streams, which are opt-in (`"streams": ["herald:ops"]`): a catch-all endpoint should not
/// start receiving operational events, nor be told about its own failures.
macro_rules! fan_out_from_ev {
    () => {
        concat!(
            "inserted AS ( \
               INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                       attempts, next_attempt_at, lease_until, claim_token, \
                                       last_error, created_at, updated_at) \
               SELECT herald_uuid7(), ev.id, e.id, ev.stream, ev.seq, ev.event_type, x.status, \
                      CASE WHEN x.status = 'delivering' THEN 1 ELSE 0 END, \
                      CASE WHEN e.enabled THEN now() END, \
                      CASE WHEN x.status = 'delivering' THEN now() + make_interval(secs => $9) END, \
                      CASE WHEN x.status = 'delivering' THEN $8::uuid END, \
                      CASE WHEN e.enabled THEN NULL ELSE 'endpoint disabled' END, \
                      clock_timestamp(), now() \
               FROM ev JOIN endpoints e ON ",
            endpoint_matches_event!(),
            " CROSS JOIN LATERAL (SELECT CASE \
                   WHEN NOT e.enabled THEN 'failed' \
                   WHEN $8::uuid IS NOT NULL AND NOT e.ordered AND e.rate_limit IS NULL \
                        AND e.id <> ALL ($10::uuid[]) THEN 'delivering' \
                   ELSE 'pending' END AS status) AS x \
               RETURNING id, event_id, endpoint_id, status)"
        )
    };
}
pub(crate) use fan_out_from_ev;

pub(crate) use endpoint_matches_event;

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    /// Delivery id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Attempts including this one.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Whether this attempt is a replay, and who asked.
    #[diesel(sql_type = Bool)]
    pub replay_requested: bool,
    /// Who asked for the replay.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub replay_requested_by: Option<Uuid>,
    /// Event id (the `webhook-id`).
    #[diesel(sql_type = SqlUuid)]
    pub event_id: Uuid,
    /// Event stream.
    #[diesel(sql_type = Text)]
    pub stream: String,
    /// Event seq.
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// Event type.
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// Event payload, as JSON text.
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// Event time.
    #[diesel(sql_type = Timestamptz)]
    pub event_created_at: DateTime<Utc>,
    /// Endpoint id.
    #[diesel(sql_type = SqlUuid)]
    pub endpoint_id: Uuid,
    /// Endpoint URL.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// Signing key.
    #[diesel(sql_type = Bytea)]
    pub secret: Vec<u8>,
    /// Previous signing key while it is still valid.
    #[diesel(sql_type = Nullable<Bytea>)]
    pub previous_secret: Option<Vec<u8>>,
    /// Static headers.
    #[diesel(sql_type = Jsonb)]
    pub headers: serde_json::Value,
    /// The endpoint's in-flight limit.
    #[diesel(sql_type = Integer)]
    pub max_in_flight: i32,
    /// The endpoint's deliveries-per-second limit.
    #[diesel(sql_type = Nullable<Integer>)]
    pub rate_limit: Option<i32>,
    /// Whether the endpoint takes each stream in order.
    #[diesel(sql_type = Bool)]
    pub ordered: bool,
}

#[cfg(test)]
impl Claimed {
    /// A delivery for unit tests.
    pub fn example() -> Self {
        Self {
            id: Uuid::nil(),
            attempts: 1,
            replay_requested: false,
            replay_requested_by: None,
            event_id: Uuid::nil(),
            stream: "s".into(),
            seq: 1,
            event_type: "t".into(),
            payload: "{}".into(),
            event_created_at: Utc::now(),
            endpoint_id: Uuid::nil(),
            url: "http://example.com/".into(),
            secret: vec![1; 24],
            previous_secret: None,
            headers: serde_json::json!({}),
            max_in_flight: 10,
            rate_limit: None,
            ordered: false,
        }
    }
}

/// Claims up to `limit` due deliveries (and ones whose claim expired) for `lease_secs`,
/// skipping rows other workers hold, disabled endpoints, and, for ordered endpoints,
/// deliveries with an unfinished predecessor in their stream. No endpoint gets more than
/// its `room`: for the endpoints listed in `endpoints`, the matching entry of `rooms` (what
/// the worker may still hold of theirs), for the others their `max_in_flight`.
///
/// Run it on a connection with `enable_bitmapscan` off (see [`CLAIM_SESSION`]).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    limit: i64,
    lease_secs: f64,
    token: Uuid,
    endpoints: &[Uuid],
    rooms: &[i32],
) -> QueryResult<Vec<Claimed>> {
    prepared(
        diesel::sql_query(CLAIM)
            .bind::<BigInt, _>(limit)
            .bind::<Double, _>(lease_secs)
            .bind::<SqlUuid, _>(token)
            .bind::<Array<SqlUuid>, _>(endpoints)
            .bind::<Array<Integer>, _>(rooms),
    )
    .load(conn)
    .await
}

/// [`claim`]'s statement. Run on a connection set up with [`CLAIM_SESSION`]. The chosen
/// deliveries and their events are looked up by `id = ANY(ARRAY(...))`, an index
/// condition in every partition: as joins, a partition empty when the plan was made was
/// planned as a whole index scan filtered row by row (or hashed whole).
pub const CLAIM: &str = "WITH due AS ( \
           SELECT c.id, c.endpoint_id, c.next_attempt_at AS due_at, e.max_in_flight \
             FROM deliveries c JOIN endpoints e ON e.id = c.endpoint_id \
            WHERE c.status = 'pending' AND c.next_attempt_at <= now() AND e.enabled \
              AND (NOT e.ordered OR NOT EXISTS ( \
                    SELECT 1 FROM deliveries p \
                     WHERE p.endpoint_id = c.endpoint_id AND p.stream = c.stream \
                       AND p.seq < c.seq AND p.status IN ('pending', 'delivering'))) \
            ORDER BY c.next_attempt_at \
            LIMIT $1 * 4 \
            FOR UPDATE OF c SKIP LOCKED), \
         expired AS ( \
           SELECT c.id, c.endpoint_id, c.lease_until AS due_at, e.max_in_flight \
             FROM deliveries c JOIN endpoints e ON e.id = c.endpoint_id \
            WHERE c.status = 'delivering' AND c.lease_until < now() AND e.enabled \
            ORDER BY c.lease_until \
            LIMIT $1 \
            FOR UPDATE OF c SKIP LOCKED), \
         candidates AS (SELECT * FROM due UNION ALL SELECT * FROM expired), \
         ranked AS ( \
           SELECT k.id, k.due_at, \
                  row_number() OVER (PARTITION BY k.endpoint_id ORDER BY k.due_at) AS rn, \
                  COALESCE(b.room, k.max_in_flight) AS room \
             FROM candidates k \
             LEFT JOIN unnest($4::uuid[], $5::int4[]) AS b(endpoint_id, room) ON b.endpoint_id = k.endpoint_id), \
         chosen AS ( \
           SELECT id FROM ranked WHERE rn <= room ORDER BY due_at LIMIT $1), \
         claimed AS ( \
           UPDATE deliveries d \
              SET status = 'delivering', lease_until = now() + make_interval(secs => $2), \
                  claim_token = $3, attempts = d.attempts + 1, updated_at = now() \
            WHERE d.id = ANY(ARRAY(SELECT id FROM chosen)) \
           RETURNING d.*) \
         SELECT claimed.id, claimed.attempts, claimed.replay_requested, claimed.replay_requested_by, \
                ev.id AS event_id, ev.stream, ev.seq, ev.event_type, ev.payload::text AS payload, \
                ev.created_at AS event_created_at, e.id AS endpoint_id, e.url, e.secret, \
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret, \
                e.headers, e.max_in_flight, e.rate_limit, e.ordered \
           FROM claimed \
           JOIN events ev ON ev.id = claimed.event_id \
                         AND ev.id = ANY(ARRAY(SELECT event_id FROM claimed)) \
           JOIN endpoints e ON e.id = claimed.endpoint_id";

/// The session the worker's own claim connection runs: plain index scans, not bitmap
/// scans. An index scan marks the entries of rows that earlier claims moved on as dead as
/// it passes them, so the queue's partial indexes do not fill with dead entries that every
/// claim would re-read until the next vacuum (measured: 6-30 ms per claim after 40,000
/// deliveries, 0.1 ms with index scans). And no sequential scans: its generic plan is
/// cached per connection, and one made while a day partition was empty or small read it
/// whole for every delivery claimed until an analyze made PostgreSQL plan again
/// (`tests/api/plans.rs` checks the plan).
pub const CLAIM_SESSION: &str = "SET enable_bitmapscan = off; SET enable_seqscan = off";

/// The session the recorder's own connection runs: commits do not wait for their WAL
/// flush. What it writes is history and outcomes: a PostgreSQL crash that loses the last
/// moment of it leaves those deliveries `delivering` under a claim that expires, so they
/// are attempted again (at least once, never twice at the same time); no event and no
/// due delivery is lost. Events and claims are always committed synchronously.
///
/// Its batch statement runs with its generic plan, for the reason the ingest statement
/// does (`crate::ingest::INGEST_SESSION`): otherwise PostgreSQL planned it again on most
/// calls. And it never scans `deliveries` whole: every statement on this connection finds
/// its rows by id, but a plan made while the table was small (a fresh installation, or the
/// plan cached when the connection first ran the statement) joined the batch to a full
/// scan of the table, and kept doing so as the table grew (measured after 150,000
/// deliveries: 6,258 buffers and 65 ms for a batch of 9, against about 20 buffers per
/// delivery through the primary key). Since deliveries are partitioned by day, such a plan
/// also took the form of a merge or hash join over a whole index of each partition
/// (measured on a day partition analyzed at 500 rows that grew to 65,000 before the next
/// analyze: 40 ms per batch, PostgreSQL at 0.8 core for 200 deliveries a second), so
/// merge and hash joins and materialized inner sides are off too: the batch is joined to
/// the table by a nested loop of index probes, each in its event's partition only,
/// whatever the statistics say. (Repeating the batch's ids as `id = ANY(...)` bounded
/// the scans too, but PostgreSQL then joined them by comparing every pair: 40,000
/// comparisons for a batch of 200, 6-12 ms, and every partition searched for every id.)
pub const RECORD_SESSION: &str = "SET synchronous_commit = off; \
     SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
     SET enable_mergejoin = off; SET enable_hashjoin = off; SET enable_material = off";

/// Where an attempt leaves its delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Succeeded, pending (a retry) or failed.
    pub status: DeliveryStatus,
    /// For pending: when.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Status code received, if any.
    pub status_code: Option<i32>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A delivery's outcome to record where its claim still holds.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeOf<'a> {
    /// The delivery.
    pub id: Uuid,
    /// Its event: deliveries are partitioned by it, so the update finds the row in its
    /// day's partition instead of probing every day's.
    pub event_id: Uuid,
    /// The claim the attempt was made under.
    pub token: Uuid,
    /// Where the attempt leaves it.
    pub outcome: &'a Outcome,
}

/// [`record_many`]'s statement: the attempts inserted, the outcomes written where the
/// claim still holds. Run on a connection set up with [`RECORD_SESSION`], which makes
/// its plan a nested loop probing each row's own partition by index.
pub const RECORD_MANY: &str = "WITH a AS ( \
               INSERT INTO attempts (id, delivery_id, started_at, duration_ms, trigger, triggered_by, \
                                     request_headers, response_status, response_headers, \
                                     response_body, error_class, error_detail) \
               SELECT * FROM unnest($7::uuid[], $8::uuid[], $9::timestamptz[], $10::int4[], \
                                    $11::text[], $12::uuid[], $13::jsonb[], $14::int4[], \
                                    $15::jsonb[], $16::text[], $17::text[], $18::text[])) \
             UPDATE deliveries d SET status = u.status, next_attempt_at = u.next_at, \
                    lease_until = NULL, claim_token = NULL, last_status_code = u.code, \
                    last_error = u.err, replay_requested = false, replay_requested_by = NULL, \
                    updated_at = now() \
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int4[], \
                           $6::text[], $19::uuid[]) AS u(id, token, status, next_at, code, err, event_id) \
              WHERE d.event_id = u.event_id AND d.id = u.id AND d.claim_token = u.token \
             RETURNING d.id";

/// Records many attempts and their outcomes in one statement: outcomes only where the
/// claim still holds, attempts always (they happened). Returns the ids whose outcome was
/// recorded.
pub async fn record_many(
    conn: &mut AsyncPgConnection,
    items: &[OutcomeOf<'_>],
    attempts: &[&Attempt],
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    if items.is_empty() && attempts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
    let events: Vec<Uuid> = items.iter().map(|i| i.event_id).collect();
    let tokens: Vec<Uuid> = items.iter().map(|i| i.token).collect();
    let statuses: Vec<&str> = items.iter().map(|i| i.outcome.status.as_str()).collect();
    let next_at: Vec<Option<DateTime<Utc>>> =
        items.iter().map(|i| i.outcome.next_attempt_at).collect();
    let codes: Vec<Option<i32>> = items.iter().map(|i| i.outcome.status_code).collect();
    let errors: Vec<Option<&str>> = items.iter().map(|i| i.outcome.error.as_deref()).collect();
    let a_ids: Vec<Uuid> = attempts.iter().map(|a| a.id).collect();
    let a_deliveries: Vec<Uuid> = attempts.iter().map(|a| a.delivery_id).collect();
    let a_started: Vec<DateTime<Utc>> = attempts.iter().map(|a| a.started_at).collect();
    let a_durations: Vec<i32> = attempts.iter().map(|a| a.duration_ms).collect();
    let a_triggers: Vec<&str> = attempts.iter().map(|a| a.trigger.as_str()).collect();
    let a_by: Vec<Option<Uuid>> = attempts.iter().map(|a| a.triggered_by).collect();
    let a_request_headers: Vec<&serde_json::Value> =
        attempts.iter().map(|a| &a.request_headers).collect();
    let a_status: Vec<Option<i32>> = attempts.iter().map(|a| a.response_status).collect();
    let a_response_headers: Vec<Option<&serde_json::Value>> = attempts
        .iter()
        .map(|a| a.response_headers.as_ref())
        .collect();
    let a_bodies: Vec<Option<&str>> = attempts
        .iter()
        .map(|a| a.response_body.as_deref())
        .collect();
    let a_classes: Vec<Option<&str>> = attempts.iter().map(|a| a.error_class.as_deref()).collect();
    let a_details: Vec<Option<&str>> = attempts.iter().map(|a| a.error_detail.as_deref()).collect();
    let recorded: Vec<Id> = prepared(
        diesel::sql_query(RECORD_MANY)
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<SqlUuid>, _>(&tokens)
            .bind::<Array<Text>, _>(&statuses)
            .bind::<Array<Nullable<Timestamptz>>, _>(&next_at)
            .bind::<Array<Nullable<Integer>>, _>(&codes)
            .bind::<Array<Nullable<Text>>, _>(&errors)
            .bind::<Array<SqlUuid>, _>(&a_ids)
            .bind::<Array<SqlUuid>, _>(&a_deliveries)
            .bind::<Array<Timestamptz>, _>(&a_started)
            .bind::<Array<Integer>, _>(&a_durations)
            .bind::<Array<Text>, _>(&a_triggers)
            .bind::<Array<Nullable<SqlUuid>>, _>(&a_by)
            .bind::<Array<Jsonb>, _>(&a_request_headers)
            .bind::<Array<Nullable<Integer>>, _>(&a_status)
            .bind::<Array<Nullable<Jsonb>>, _>(&a_response_headers)
            .bind::<Array<Nullable<Text>>, _>(&a_bodies)
            .bind::<Array<Nullable<Text>>, _>(&a_classes)
            .bind::<Array<Nullable<Text>>, _>(&a_details)
            .bind::<Array<SqlUuid>, _>(&events),
    )
    .load(conn)
    .await?;
    Ok(recorded.into_iter().map(|r| r.id).collect())
}

/// Gives back claims that were never attempted (`(delivery, token)`): due now again, with
/// the attempt the claim counted taken back. Only where the claim still holds.
pub async fn release(conn: &mut AsyncPgConnection, claims: &[(Uuid, Uuid)]) -> QueryResult<usize> {
    if claims.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
    let tokens: Vec<Uuid> = claims.iter().map(|(_, token)| *token).collect();
    prepared(
        diesel::sql_query(
            "UPDATE deliveries d SET status = 'pending', next_attempt_at = now(), \
                    lease_until = NULL, claim_token = NULL, attempts = d.attempts - 1, \
                    updated_at = now() \
               FROM unnest($1::uuid[], $2::uuid[]) AS r(id, token) \
              WHERE d.id = r.id AND d.claim_token = r.token",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&tokens),
    )
    .execute(conn)
    .await
}

/// Marks an endpoint's unfinished deliveries failed (it was disabled or deleted).
pub async fn fail_unfinished(
    conn: &mut AsyncPgConnection,
    endpoint_id: Uuid,
    reason: &str,
) -> QueryResult<usize> {
    diesel::update(
        deliveries::table
            .filter(deliveries::endpoint_id.eq(endpoint_id))
            .filter(
                deliveries::status.eq_any([DeliveryStatus::Pending, DeliveryStatus::Delivering]),
            ),
    )
    .set((
        deliveries::status.eq(DeliveryStatus::Failed),
        deliveries::last_error.eq(reason),
        deliveries::next_attempt_at.eq(None::<DateTime<Utc>>),
        deliveries::lease_until.eq(None::<DateTime<Utc>>),
        deliveries::claim_token.eq(None::<Uuid>),
        deliveries::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
}

/// The delivery with this id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Delivery>> {
    deliveries::table
        .find(id)
        .select(Delivery::as_select())
        .first(conn)
        .await
        .optional()
}

/// Filters of `GET /v1/deliveries` (and of a bulk replay, stored as JSON while it
/// searches).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryFilter {
    /// Status.
    pub status: Option<DeliveryStatus>,
    /// Endpoint.
    pub endpoint_id: Option<Uuid>,
    /// Event type.
    pub event_type: Option<String>,
    /// Stream.
    pub stream: Option<String>,
    /// Last status code.
    pub status_code: Option<i32>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Last made due by this bulk replay or recover.
    pub replay_id: Option<Uuid>,
}

/// The deliveries matching `filter`, as a query to refine.
pub(super) fn filtered(filter: &DeliveryFilter) -> deliveries::BoxedQuery<'static, diesel::pg::Pg> {
    let mut query = deliveries::table.into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(deliveries::status.eq(status));
    }
    if let Some(endpoint_id) = filter.endpoint_id {
        query = query.filter(deliveries::endpoint_id.eq(endpoint_id));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(deliveries::event_type.eq(event_type.clone()));
    }
    if let Some(stream) = &filter.stream {
        query = query.filter(deliveries::stream.eq(stream.clone()));
    }
    if let Some(code) = filter.status_code {
        query = query.filter(deliveries::last_status_code.eq(code));
    }
    if let Some(since) = filter.since {
        query = query.filter(deliveries::created_at.ge(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(deliveries::created_at.lt(until));
    }
    if let Some(replay_id) = filter.replay_id {
        query = query.filter(deliveries::replay_id.eq(replay_id));
    }
    query
}

/// Candidates a filter with no index of its own (event type, stream, last status code)
/// may look through for one page: see [`list`].
pub const SCAN_BUDGET: i64 = 10_000;

impl DeliveryFilter {
    /// Whether the filter has a part no index answers (event type, stream, status code)
    /// and nothing that narrows the rows to a small set first: a search by it walks the
    /// history newest first, so it goes in bounded steps ([`search_boundary`]).
    pub fn needs_search(&self) -> bool {
        self.indexed_part().is_some()
    }

    /// The filter without the parts no index answers (event type, stream, status code),
    /// if it has any and the rest does not already narrow the rows to a small set.
    fn indexed_part(&self) -> Option<Self> {
        let unindexed =
            self.event_type.is_some() || self.stream.is_some() || self.status_code.is_some();
        let small =
            self.replay_id.is_some() || self.status.is_some_and(|s| s != DeliveryStatus::Succeeded);
        (unindexed && !small).then(|| Self {
            event_type: None,
            stream: None,
            status_code: None,
            ..self.clone()
        })
    }
}

/// Rows strictly older than the keyset cursor `(created_at, id)`.
///
/// The plain `created_at <= at` is implied by the rest, and is there for the planner: it
/// is the index condition that starts the newest-first walk at the cursor (the `OR`
/// alone would only be checked row by row).
fn older_than(
    query: deliveries::BoxedQuery<'static, diesel::pg::Pg>,
    (at, id): (DateTime<Utc>, Uuid),
) -> deliveries::BoxedQuery<'static, diesel::pg::Pg> {
    query.filter(deliveries::created_at.le(at)).filter(
        deliveries::created_at
            .lt(at)
            .or(deliveries::created_at.eq(at).and(deliveries::id.lt(id))),
    )
}

/// Where a search by `filter` below `cursor` stops if the filter needs bounding (see
/// [`DeliveryFilter::needs_search`]): at its `budget`-th candidate, newest first (the rows
/// matching the rest of the filter). `None` when the filter needs no bound or fewer
/// candidates are left: the search then goes to the end.
pub(super) async fn search_boundary(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    budget: i64,
) -> QueryResult<Option<(DateTime<Utc>, Uuid)>> {
    let Some(candidates) = filter.indexed_part() else {
        return Ok(None);
    };
    let mut query = filtered(&candidates);
    if let Some(cursor) = cursor {
        query = older_than(query, cursor);
    }
    query
        .order((deliveries::created_at.desc(), deliveries::id.desc()))
        .offset(budget - 1)
        .limit(1)
        .select((deliveries::created_at, deliveries::id))
        .first(conn)
        .await
        .optional()
}

/// `query` below the keyset `cursor` (if any) and down to `boundary` (if any), which
/// [`search_boundary`] gave.
pub(super) fn between(
    mut query: deliveries::BoxedQuery<'static, diesel::pg::Pg>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    boundary: Option<(DateTime<Utc>, Uuid)>,
) -> deliveries::BoxedQuery<'static, diesel::pg::Pg> {
    if let Some(cursor) = cursor {
        query = older_than(query, cursor);
    }
    if let Some((at, id)) = boundary {
        // `created_at >= at` stops the walk at the boundary (an index condition); the `OR`
        // alone is a row filter, and a rare match would walk on to the first day.
        query = query.filter(deliveries::created_at.ge(at)).filter(
            deliveries::created_at
                .gt(at)
                .or(deliveries::created_at.eq(at).and(deliveries::id.ge(id))),
        );
    }
    query
}

/// A page of [`list`].
#[derive(Debug)]
pub struct ListPage {
    /// Matches, newest first.
    pub deliveries: Vec<Delivery>,
    /// Where the search stopped without finding a full page: the oldest candidate it
    /// looked at (a cursor to go on from).
    pub stopped_at: Option<(DateTime<Utc>, Uuid)>,
}

/// Newest first, after the keyset cursor `(created_at, id)` if given.
///
/// A filter that no index answers is checked row by row along the newest-first order; a
/// rare match would walk the whole history. So such a search looks at no more than
/// [`SCAN_BUDGET`] candidates (the rows matching the rest of the filter) per call: if
/// they hold fewer than `limit` matches, the page says where it stopped, and the caller
/// goes on from there with the next call.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<ListPage> {
    let boundary = search_boundary(conn, filter, cursor, SCAN_BUDGET).await?;
    let deliveries: Vec<Delivery> = between(filtered(filter), cursor, boundary)
        .order((deliveries::created_at.desc(), deliveries::id.desc()))
        .limit(limit)
        .select(Delivery::as_select())
        .load(conn)
        .await?;
    let stopped_at = boundary.filter(|_| (deliveries.len() as i64) < limit);
    Ok(ListPage {
        deliveries,
        stopped_at,
    })
}
