//! `replays`, and making deliveries due again: one delivery's replay, a bulk replay of a
//! filter, and recovering an endpoint's events since a time.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::delivery::{
    DeliveryFilter, DeliveryStatus, between, endpoint_matches_event, filtered, find,
    search_boundary,
};
use crate::db::schema::{deliveries, replays};

/// Makes a delivery due now, as a replay asked for by `by`. Returns whether it was found
/// in a state that allows it (anything but `delivering`).
pub async fn request_replay(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    by: Uuid,
) -> QueryResult<Option<bool>> {
    let Some(delivery) = find(conn, id).await? else {
        return Ok(None);
    };
    if delivery.status == DeliveryStatus::Delivering {
        return Ok(Some(false));
    }
    Ok(Some(replay_ids(conn, &[id], by, None).await? == 1))
}

/// Makes these deliveries due now as a replay by `by` (part of the bulk replay `replay`,
/// if given), except those in flight.
async fn replay_ids(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    by: Uuid,
    replay: Option<Uuid>,
) -> QueryResult<usize> {
    diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(ids))
            .filter(deliveries::status.ne(DeliveryStatus::Delivering)),
    )
    .set((
        deliveries::status.eq(DeliveryStatus::Pending),
        deliveries::next_attempt_at.eq(diesel::dsl::now),
        deliveries::replay_requested.eq(true),
        deliveries::replay_requested_by.eq(Some(by)),
        deliveries::replay_id.eq(replay),
        deliveries::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
}

/// Makes up to `limit` of the deliveries `query` finds due now, as part of `replay`,
/// except those in flight. Returns how many it found and how many it made due (fewer
/// when some went in flight meanwhile).
async fn replay_found(
    conn: &mut AsyncPgConnection,
    query: deliveries::BoxedQuery<'static, diesel::pg::Pg>,
    limit: i64,
    replay: &Replay,
) -> QueryResult<(usize, usize)> {
    let ids: Vec<Uuid> = query
        .filter(deliveries::status.ne(DeliveryStatus::Delivering))
        .select(deliveries::id)
        .limit(limit)
        .load(conn)
        .await?;
    let mut replayed = 0;
    for chunk in ids.chunks(5000) {
        replayed += replay_ids(conn, chunk, replay.requested_by, Some(replay.id)).await?;
    }
    Ok((ids.len(), replayed))
}

/// A bulk replay or recover as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = replays, check_for_backend(diesel::pg::Pg))]
pub struct Replay {
    /// Id.
    pub id: Uuid,
    /// `filter` or `recover`.
    pub kind: String,
    /// What was asked for: the filter, or the endpoint and time range.
    pub criteria: serde_json::Value,
    /// The API key that asked.
    pub requested_by: Uuid,
    /// How many deliveries it made due.
    pub total: i64,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Older deliveries are still to be searched (see [`search_step`]).
    pub searching: bool,
    /// The filter as parsed, while it searches.
    pub search_filter: Option<serde_json::Value>,
    /// The oldest delivery searched so far: creation time.
    pub searched_to_at: Option<DateTime<Utc>>,
    /// ... and id.
    pub searched_to_id: Option<Uuid>,
}

impl Replay {
    /// A new replay of `kind` (`filter` or `recover`) asked for by `requested_by`; its
    /// total is set when it is stored.
    pub fn new(kind: &str, criteria: serde_json::Value, requested_by: Uuid) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            criteria,
            requested_by,
            total: 0,
            created_at: Utc::now(),
            searching: false,
            search_filter: None,
            searched_to_at: None,
            searched_to_id: None,
        }
    }
}

/// Makes every matching delivery that is not in flight due now, as the bulk replay
/// `replay` (at most `max`), and stores `replay` with its total. Returns how many.
pub async fn replay_matching(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
    mut replay: Replay,
    max: i64,
) -> QueryResult<usize> {
    let filter = filter.clone();
    conn.transaction(async |conn| {
        let (_, replayed) = replay_found(conn, filtered(&filter), max, &replay).await?;
        replay.total = i64::try_from(replayed).unwrap_or(i64::MAX);
        diesel::insert_into(replays::table)
            .values(&replay)
            .execute(conn)
            .await?;
        Ok(replayed)
    })
    .await
}

/// The `kind` of a recover's replay record.
pub const RECOVER_KIND: &str = "recover";

/// Candidates (deliveries matching the indexed part of the filter) one step of a
/// searching bulk replay looks through.
pub const SEARCH_STEP: i64 = super::delivery::SCAN_BUDGET;

/// Stores the bulk replay `replay` of `filter` (one that [`DeliveryFilter::needs_search`])
/// and takes its first step, in one transaction: if the step fails nothing is stored, so
/// a client that retries never starts the same replay twice. If older deliveries are
/// left, it is stored searching, and [`search_step`] goes on with it.
pub async fn start_search(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
    mut replay: Replay,
    max: i64,
) -> QueryResult<SearchStep> {
    replay.searching = true;
    replay.search_filter = Some(
        serde_json::to_value(filter)
            .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?,
    );
    let filter = filter.clone();
    conn.transaction(async |conn| {
        diesel::insert_into(replays::table)
            .values(&replay)
            .execute(conn)
            .await?;
        step(conn, &replay, &filter, max).await
    })
    .await
}

/// What one step of a searching replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchStep {
    /// The replay.
    pub replay_id: Uuid,
    /// Deliveries it made due.
    pub replayed: usize,
    /// Older deliveries are left for the next step.
    pub searching: bool,
}

/// One step of the oldest searching bulk replay that no other instance is stepping: looks
/// through the next [`SEARCH_STEP`] candidates below where the last step stopped, makes
/// the matches that are not in flight due (up to `max` for the whole replay), and commits
/// them with where it stopped, so a crash between steps loses nothing and repeats
/// nothing. `None` when there was no such replay.
pub async fn search_step(
    conn: &mut AsyncPgConnection,
    max: i64,
) -> QueryResult<Option<SearchStep>> {
    conn.transaction(async |conn| {
        let found = replays::table
            .filter(replays::searching)
            .order(replays::created_at)
            .select(Replay::as_select())
            .limit(1)
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        let Some(replay) = found else {
            return Ok(None);
        };
        if replay.kind == RECOVER_KIND {
            return match serde_json::from_value::<RecoverScope>(replay.criteria.clone()) {
                Ok(window) => recover_step(conn, &replay, &window).await.map(Some),
                Err(_) => end_unreadable(conn, replay.id).await.map(Some),
            };
        }
        let filter = replay
            .search_filter
            .clone()
            .map(serde_json::from_value::<DeliveryFilter>);
        let Some(Ok(filter)) = filter else {
            return end_unreadable(conn, replay.id).await.map(Some);
        };
        step(conn, &replay, &filter, max).await.map(Some)
    })
    .await
}

/// Ends the search of a replay whose stored filter or window cannot be read (not written
/// by this version): nothing can go on with it, and it must not hold up every replay after
/// it.
async fn end_unreadable(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<SearchStep> {
    tracing::error!(replay_id = %id, "a searching replay's filter is unreadable: its search ends");
    stop_searching(conn, id).await?;
    Ok(SearchStep {
        replay_id: id,
        replayed: 0,
        searching: false,
    })
}

async fn stop_searching(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(replays::table.find(id))
        .set((
            replays::searching.eq(false),
            replays::searched_to_at.eq(None::<DateTime<Utc>>),
            replays::searched_to_id.eq(None::<Uuid>),
        ))
        .execute(conn)
        .await
}

/// The step itself, in the caller's transaction (which holds `replay`'s row).
async fn step(
    conn: &mut AsyncPgConnection,
    replay: &Replay,
    filter: &DeliveryFilter,
    max: i64,
) -> QueryResult<SearchStep> {
    let cursor = replay.searched_to_at.zip(replay.searched_to_id);
    let boundary = search_boundary(conn, filter, cursor, SEARCH_STEP).await?;
    let room = (max - replay.total).max(0);
    let (found, replayed) = replay_found(
        conn,
        between(filtered(filter), cursor, boundary),
        room,
        replay,
    )
    .await?;
    let total = replay.total + i64::try_from(replayed).unwrap_or(i64::MAX);
    // At the cap (what was found cut by it, whether or not all were still replayable) the
    // search ends here: going on below the boundary would skip the matches left above it.
    let capped = i64::try_from(found).unwrap_or(i64::MAX) >= room;
    let next = boundary.filter(|_| !capped);
    end_step(conn, replay.id, total, next, replayed).await
}

/// Commits a step's progress: the replay's new `total`, and where the next step starts
/// (`None`: the search is over).
async fn end_step(
    conn: &mut AsyncPgConnection,
    replay_id: Uuid,
    total: i64,
    next: Option<(DateTime<Utc>, Uuid)>,
    replayed: usize,
) -> QueryResult<SearchStep> {
    diesel::update(replays::table.find(replay_id))
        .set((
            replays::total.eq(total),
            replays::searching.eq(next.is_some()),
            replays::searched_to_at.eq(next.map(|(at, _)| at)),
            replays::searched_to_id.eq(next.map(|(_, id)| id)),
        ))
        .execute(conn)
        .await?;
    Ok(SearchStep {
        replay_id,
        replayed,
        searching: next.is_some(),
    })
}

/// The bulk replay `id` and how many of its deliveries are in each status now.
pub async fn find_replay(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(Replay, Vec<(DeliveryStatus, i64)>)>> {
    let Some(replay) = replays::table
        .find(id)
        .select(Replay::as_select())
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let counts = deliveries::table
        .filter(deliveries::replay_id.eq(id))
        .group_by(deliveries::status)
        .select((deliveries::status, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    Ok(Some((replay, counts)))
}

/// How many deliveries match, not counting those in flight, up to `limit + 1` (a bulk
/// replay's preview): the count stops there, so its cost is bounded by `limit` whatever
/// the size of the matching set. A filter that [`DeliveryFilter::needs_search`] is counted
/// among the newest [`SEARCH_STEP`] candidates only: the second value is then how far
/// back that went, when older deliveries were left unsearched.
pub async fn count_replayable(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
    limit: i64,
) -> QueryResult<(i64, Option<DateTime<Utc>>)> {
    let boundary = search_boundary(conn, filter, None, SEARCH_STEP).await?;
    let found: Vec<i32> = between(filtered(filter), None, boundary)
        .filter(deliveries::status.ne(DeliveryStatus::Delivering))
        .select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .limit(limit + 1)
        .load(conn)
        .await?;
    Ok((
        i64::try_from(found.len()).unwrap_or(i64::MAX),
        boundary.map(|(at, _)| at),
    ))
}

/// What a recover replays: the endpoint's events created in `[since, until)`. Stored as the
/// replay's criteria, which every step reads back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoverScope {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Events created at or after it.
    pub since: DateTime<Utc>,
    /// Events created before it.
    pub until: DateTime<Utc>,
}

/// Events a recover looks through per step.
pub const RECOVER_STEP: i64 = SEARCH_STEP;

/// How much earlier than its `created_at` an event's id may have been made: the id is
/// given when the request is read, the time when the event is committed. A step scans ids
/// from this much before `since` and keeps only the events created in the window.
const ID_LEAD: std::time::Duration = std::time::Duration::from_secs(60);

/// Stores the recover `replay` of `window` and takes its first step, in one transaction
/// (as [`start_search`] does): the first [`RECOVER_STEP`] events of the window, oldest
/// first, made due again for the endpoint or given the delivery they lack. If more are
/// left, the replay is stored searching and [`search_step`] goes on with it, one
/// committed step at a time: a month of a busy installation's events (20 million) is
/// never one transaction.
pub async fn start_recover(
    conn: &mut AsyncPgConnection,
    window: &RecoverScope,
    mut replay: Replay,
) -> QueryResult<SearchStep> {
    replay.searching = true;
    let window = window.clone();
    conn.transaction(async |conn| {
        diesel::insert_into(replays::table)
            .values(&replay)
            .execute(conn)
            .await?;
        recover_step(conn, &replay, &window).await
    })
    .await
}

/// The smallest UUIDv7 of the millisecond `lead` before `at`.
fn id_floor(at: DateTime<Utc>, lead: std::time::Duration) -> Uuid {
    let at = at - chrono::Duration::from_std(lead).unwrap_or_default();
    crate::retention::cutoff_id(at.into(), std::time::Duration::ZERO)
}

/// One step of a recover, in the caller's transaction (which holds `replay`'s row): the
/// events with ids from where the last step stopped, up to the [`RECOVER_STEP`]th.
async fn recover_step(
    conn: &mut AsyncPgConnection,
    replay: &Replay,
    window: &RecoverScope,
) -> QueryResult<SearchStep> {
    #[derive(QueryableByName)]
    struct Boundary {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Timestamptz)]
        created_at: DateTime<Utc>,
    }
    let from = replay
        .searched_to_id
        .unwrap_or_else(|| id_floor(window.since, ID_LEAD));
    // Ids are made before their events' times: none made after `until` is in the window.
    let end = id_floor(
        window.until + chrono::Duration::milliseconds(1),
        std::time::Duration::ZERO,
    );
    // The first event this step leaves for the next.
    let boundary: Option<Boundary> = diesel::sql_query(
        "SELECT id, created_at FROM events WHERE id >= $1 AND id < $2 \
          ORDER BY id OFFSET $3 LIMIT 1",
    )
    .bind::<SqlUuid, _>(from)
    .bind::<SqlUuid, _>(end)
    .bind::<diesel::sql_types::BigInt, _>(RECOVER_STEP)
    .get_result(conn)
    .await
    .optional()?;
    let to = boundary.as_ref().map_or(end, |b| b.id);
    #[derive(QueryableByName)]
    struct Replayed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // The endpoint's failed or pending deliveries of these events made due, and a delivery
    // for each matching event that has none; one statement, one snapshot.
    let done: Replayed = diesel::sql_query(concat!(
        "WITH due AS ( \
           UPDATE deliveries d SET status = 'pending', next_attempt_at = now(), \
                  replay_requested = true, replay_requested_by = $4, replay_id = $5, \
                  updated_at = now() \
             FROM events ev \
            WHERE ev.id = d.event_id AND d.endpoint_id = $1 \
              AND ev.id >= $6 AND ev.id < $7 AND d.event_id >= $6 AND d.event_id < $7 \
              AND ev.created_at >= $2 AND ev.created_at < $3 \
              AND d.status IN ('failed', 'pending') \
           RETURNING 1), \
         created AS ( \
           INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                   next_attempt_at, replay_requested, replay_requested_by, \
                                   replay_id, created_at, updated_at) \
           SELECT herald_uuid7(), ev.id, e.id, ev.stream, ev.seq, ev.event_type, 'pending', \
                  now(), true, $4, $5, clock_timestamp(), now() \
             FROM events ev JOIN endpoints e ON e.id = $1 \
            WHERE ev.id >= $6 AND ev.id < $7 \
              AND ev.created_at >= $2 AND ev.created_at < $3 AND ",
        endpoint_matches_event!(),
        "   AND NOT EXISTS (SELECT 1 FROM deliveries x \
                             WHERE x.event_id = ev.id AND x.endpoint_id = e.id) \
            ORDER BY ev.id \
           RETURNING 1) \
         SELECT (SELECT count(*) FROM due) + (SELECT count(*) FROM created) AS n",
    ))
    .bind::<SqlUuid, _>(window.endpoint_id)
    .bind::<Timestamptz, _>(window.since)
    .bind::<Timestamptz, _>(window.until)
    .bind::<SqlUuid, _>(replay.requested_by)
    .bind::<SqlUuid, _>(replay.id)
    .bind::<SqlUuid, _>(from)
    .bind::<SqlUuid, _>(to)
    .get_result(conn)
    .await?;
    let replayed = usize::try_from(done.n).unwrap_or(0);
    let total = replay.total + i64::try_from(replayed).unwrap_or(i64::MAX);
    let next = boundary.map(|b| (b.created_at, b.id));
    end_step(conn, replay.id, total, next, replayed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A searching replay's filter is stored as JSON and read back by every later step,
    /// on any instance: every condition must survive the trip.
    #[test]
    fn a_stored_search_filter_reads_back_the_same() {
        let filter = DeliveryFilter {
            status: Some(DeliveryStatus::Succeeded),
            endpoint_id: Some(Uuid::now_v7()),
            event_type: Some("invoice.failed".into()),
            stream: Some("payment:42".into()),
            status_code: Some(503),
            since: Some("2026-11-01T00:00:00.123456Z".parse().unwrap()),
            until: Some("2026-12-01T00:00:00Z".parse().unwrap()),
            replay_id: Some(Uuid::now_v7()),
        };
        let stored = serde_json::to_value(&filter).unwrap();
        let read: DeliveryFilter = serde_json::from_value(stored).unwrap();
        assert_eq!(read, filter);
        let empty: DeliveryFilter =
            serde_json::from_value(serde_json::to_value(DeliveryFilter::default()).unwrap())
                .unwrap();
        assert_eq!(empty, DeliveryFilter::default());
    }
}
