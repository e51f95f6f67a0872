//! `events` (and the per-stream counters in `streams` that give them their seq).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bytea, Double, Integer, Json, Jsonb, Nullable, Text, Timestamptz,
    Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::delivery::{Claimed, endpoint_matches_event, fan_out_from_ev};
use crate::db::schema::events;
use crate::db::{RawJson, prepared};
use crate::domain::{EventType, StreamName};

/// A stored event.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct Event {
    /// Herald's id (UUIDv7).
    pub id: Uuid,
    /// The stream it belongs to.
    pub stream: String,
    /// Its position in the stream, from 1, gapless, in commit order.
    pub seq: i64,
    /// Its type, such as `payment.succeeded`.
    pub event_type: String,
    /// The producer's JSON, byte for byte.
    pub payload: RawJson,
    /// When it was stored (the database's clock at insert).
    pub created_at: DateTime<Utc>,
}

/// An event that has been validated but not yet stored.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Chosen before the insert so that idempotency records can name it.
    pub id: Uuid,
    /// Target stream.
    pub stream: StreamName,
    /// Event type.
    pub event_type: EventType,
    /// Payload.
    pub payload: RawJson,
}

impl PendingEvent {
    /// A new event with a fresh UUIDv7 id.
    pub fn new(stream: StreamName, event_type: EventType, payload: RawJson) -> Self {
        Self {
            id: Uuid::now_v7(),
            stream,
            event_type,
            payload,
        }
    }
}

/// Claiming at insert: the instance that commits an event attempts its deliveries from
/// memory, so their first attempt needs no claim query (see `delivery::worker`).
#[derive(Debug, Clone)]
pub struct InsertClaim {
    /// The claim token the deliveries are inserted with.
    pub token: Uuid,
    /// How long the claim lasts.
    pub lease_secs: f64,
    /// Endpoints not to claim for (the instance has enough of theirs in hand).
    pub skip_endpoints: Vec<Uuid>,
    /// When the claim was made, before the statement was sent: the lease ends no sooner
    /// than `lease_secs` after this.
    pub issued_at: std::time::Instant,
}

/// One row of the ingest statement's answer: a stream's counter, or a delivery claimed
/// at insert.
#[derive(QueryableByName)]
struct IngestRow {
    #[diesel(sql_type = Nullable<Text>)]
    stream: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_seq: Option<i64>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    delivery_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    event_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    endpoint_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    url: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    secret: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    previous_secret: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    headers: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Integer>)]
    max_in_flight: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    rate_limit: Option<i32>,
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pending: i64,
}

/// The ingest statement: counters, events and deliveries in one round trip, so a group
/// of events needs no `BEGIN`/`COMMIT` of its own (one statement is one transaction).
///
/// `$1`/`$2`: each stream and how many events it gets, sorted by name (counter rows are
/// locked in that order, so two groups touching the same streams cannot deadlock).
/// `$3`..`$7`: the events, each with its 1-based position among its stream's events in
/// this group; its seq is the counter's new value minus the stream's count plus that
/// position. `$8`..`$10`: the claim at insert (see `delivery::fan_out_from_ev`).
const INGEST: &str = concat!(
    "WITH c AS ( \
       INSERT INTO streams AS s (name, last_seq) \
       SELECT name, n FROM unnest($1::text[], $2::int8[]) AS t(name, n) ORDER BY name \
       ON CONFLICT (name) DO UPDATE \
         SET last_seq = s.last_seq + EXCLUDED.last_seq, updated_at = now() \
       RETURNING s.name, s.last_seq), \
     ev AS ( \
       INSERT INTO events (id, stream, seq, event_type, payload, created_at) \
       SELECT t.id, t.stream, c.last_seq - k.n + t.nth, t.event_type, t.payload, now() \
         FROM unnest($3::uuid[], $4::text[], $5::int8[], $6::text[], $7::json[]) \
                AS t(id, stream, nth, event_type, payload) \
         JOIN unnest($1::text[], $2::int8[]) AS k(name, n) ON k.name = t.stream \
         JOIN c ON c.name = t.stream \
       RETURNING id, stream, seq, event_type), ",
    fan_out_from_ev!(),
    " SELECT c.name AS stream, c.last_seq, NULL::uuid AS delivery_id, NULL::uuid AS event_id, \
            NULL::uuid AS endpoint_id, NULL::text AS url, NULL::bytea AS secret, \
            NULL::bytea AS previous_secret, NULL::jsonb AS headers, NULL::int4 AS max_in_flight, \
            NULL::int4 AS rate_limit, now() AS now, \
            (SELECT count(*) FROM inserted WHERE status = 'pending') AS pending \
       FROM c \
     UNION ALL \
     SELECT NULL, NULL, i.id, i.event_id, e.id, e.url, e.secret, \
            CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END, \
            e.headers, e.max_in_flight, e.rate_limit, now(), 0 \
       FROM inserted i JOIN endpoints e ON e.id = i.endpoint_id \
      WHERE i.status = 'delivering'"
);

/// Stores `pending` and returns them as stored, in input order, with a webhook delivery
/// for every endpoint that subscribes to each; with `claim`, the deliveries this instance
/// may attempt at once are returned claimed. One statement: run it alone (it is its own
/// transaction) or in the caller's transaction.
///
/// Each stream's counter row is advanced once by the number of its events. The row lock
/// that this takes is held until commit, so a later writer of the same stream waits for this
/// transaction: seq order is commit order, and a reader that has seen seq N can never later
/// find an event below N.
pub async fn insert_all(
    conn: &mut AsyncPgConnection,
    pending: Vec<PendingEvent>,
    claim: Option<&InsertClaim>,
) -> QueryResult<Stored> {
    if pending.is_empty() {
        return Ok(Stored::default());
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    let nths: Vec<i64> = pending
        .iter()
        .map(|event| {
            let n = counts.entry(event.stream.as_str()).or_default();
            *n += 1;
            *n
        })
        .collect();
    let names: Vec<&str> = counts.keys().copied().collect();
    let increments: Vec<i64> = counts.values().copied().collect();
    let ids: Vec<Uuid> = pending.iter().map(|e| e.id).collect();
    let streams: Vec<&str> = pending.iter().map(|e| e.stream.as_str()).collect();
    let types: Vec<&str> = pending.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<&RawJson> = pending.iter().map(|e| &e.payload).collect();
    let no_skip = Vec::new();
    let rows: Vec<IngestRow> = prepared(
        diesel::sql_query(INGEST)
            .bind::<Array<Text>, _>(&names)
            .bind::<Array<BigInt>, _>(&increments)
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<Text>, _>(&streams)
            .bind::<Array<BigInt>, _>(&nths)
            .bind::<Array<Text>, _>(&types)
            .bind::<Array<Json>, _>(&payloads)
            .bind::<Nullable<SqlUuid>, _>(claim.map(|c| c.token))
            .bind::<Double, _>(claim.map_or(0.0, |c| c.lease_secs))
            .bind::<Array<SqlUuid>, _>(claim.map_or(&no_skip, |c| &c.skip_endpoints)),
    )
    .load(conn)
    .await?;

    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    let mut now = Utc::now();
    let mut pending_deliveries = 0;
    let mut claimed_rows = Vec::new();
    for row in rows {
        now = row.now;
        match (&row.stream, row.last_seq) {
            (Some(stream), Some(last_seq)) => {
                pending_deliveries = usize::try_from(row.pending).unwrap_or(0);
                let count = counts.get(stream.as_str()).copied().unwrap_or(0);
                first.insert(stream.clone(), last_seq - count + 1);
            }
            _ => claimed_rows.push(row),
        }
    }
    let events: Vec<Event> = pending
        .into_iter()
        .zip(nths)
        .map(|(p, nth)| Event {
            id: p.id,
            seq: first.get(p.stream.as_str()).map_or(0, |s| s + nth - 1),
            stream: p.stream.into_inner(),
            event_type: p.event_type.into_inner(),
            payload: p.payload,
            created_at: now,
        })
        .collect();
    let claimed = claimed_deliveries(&events, claimed_rows);
    Ok(Stored {
        events,
        pending_deliveries,
        claimed,
        claimed_with: claim.map(|c| (c.token, c.issued_at)),
    })
}

/// The deliveries claimed at insert, with what sending them needs.
fn claimed_deliveries(events: &[Event], rows: Vec<IngestRow>) -> Vec<Claimed> {
    if rows.is_empty() {
        return Vec::new();
    }
    let by_id: std::collections::HashMap<Uuid, &Event> = events.iter().map(|e| (e.id, e)).collect();
    rows.into_iter()
        .filter_map(|row| {
            let event = by_id.get(&row.event_id?)?;
            Some(Claimed {
                id: row.delivery_id?,
                attempts: 1,
                replay_requested: false,
                replay_requested_by: None,
                event_id: event.id,
                stream: event.stream.clone(),
                seq: event.seq,
                event_type: event.event_type.clone(),
                payload: event.payload.0.get().to_owned(),
                event_created_at: event.created_at,
                endpoint_id: row.endpoint_id?,
                url: row.url?,
                secret: row.secret?,
                previous_secret: row.previous_secret,
                headers: row.headers.unwrap_or(serde_json::Value::Null),
                max_in_flight: row.max_in_flight.unwrap_or(1),
                rate_limit: row.rate_limit,
                ordered: false,
            })
        })
        .collect()
}

/// Stores `pending` with one delivery, to `endpoint_id` only, whatever the endpoints'
/// filters say (an endpoint's test event). Returns it as stored, and the delivery's id.
pub async fn insert_for_endpoint(
    conn: &mut AsyncPgConnection,
    pending: PendingEvent,
    endpoint_id: Uuid,
) -> QueryResult<(Stored, Uuid)> {
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Timestamptz)]
        created_at: DateTime<Utc>,
    }
    let delivery_id = Uuid::now_v7();
    // One statement, so the counter's row lock orders it with every other writer of the
    // stream exactly as `insert_all` does.
    let inserted: Inserted = diesel::sql_query(
        "WITH c AS ( \
           INSERT INTO streams AS s (name, last_seq) VALUES ($1, 1) \
           ON CONFLICT (name) DO UPDATE SET last_seq = s.last_seq + 1, updated_at = now() \
           RETURNING s.last_seq, now() AS now), \
         ev AS ( \
           INSERT INTO events (id, stream, seq, event_type, payload, created_at) \
           SELECT $2, $1, c.last_seq, $3, $4, c.now FROM c \
           RETURNING id, stream, seq, event_type, created_at), \
         d AS ( \
           INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                   next_attempt_at, created_at, updated_at) \
           SELECT $5, ev.id, $6, ev.stream, ev.seq, ev.event_type, 'pending', now(), \
                  clock_timestamp(), now() FROM ev \
           RETURNING id) \
         SELECT ev.seq, ev.created_at FROM ev, d",
    )
    .bind::<Text, _>(pending.stream.as_str())
    .bind::<SqlUuid, _>(pending.id)
    .bind::<Text, _>(pending.event_type.as_str())
    .bind::<Json, _>(&pending.payload)
    .bind::<SqlUuid, _>(delivery_id)
    .bind::<SqlUuid, _>(endpoint_id)
    .get_result(conn)
    .await?;
    let event = Event {
        id: pending.id,
        stream: pending.stream.into_inner(),
        seq: inserted.seq,
        event_type: pending.event_type.into_inner(),
        payload: pending.payload,
        created_at: inserted.created_at,
    };
    let stored = Stored {
        events: vec![event],
        pending_deliveries: 1,
        ..Stored::default()
    };
    Ok((stored, delivery_id))
}

/// What a transaction stored ([`insert_all`], [`insert_for_endpoint`]). "Commit, then
/// notify": once the transaction has committed, it goes to `Notifier::committed`, which
/// wakes this instance's readers and worker, tells the other instances, and gives back the
/// events to answer with. Dropping it unnotified would leave readers waiting for the
/// fallback check, so it must be used.
#[derive(Debug, Default)]
#[must_use = "hand it to Notifier::committed once the transaction has committed"]
pub struct Stored {
    /// The events, in input order.
    pub events: Vec<Event>,
    /// Webhook deliveries created for them that are due now (for any instance's worker).
    pub pending_deliveries: usize,
    /// Deliveries claimed at insert, for this instance's worker to attempt now.
    pub claimed: Vec<Claimed>,
    /// The token they were claimed with, and when the claim was made.
    pub claimed_with: Option<(Uuid, std::time::Instant)>,
}

/// The event with this id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Event>> {
    events::table
        .find(id)
        .select(Event::as_select())
        .first(conn)
        .await
        .optional()
}

/// The events with these ids, in the order of `ids` (missing ones are skipped).
pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Event>> {
    let mut found: std::collections::HashMap<Uuid, Event> = events::table
        .filter(events::id.eq_any(ids))
        .select(Event::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// Up to `limit` events of `stream` with `seq > after`, in seq order.
/// The newest `limit` events of `stream` after `after`, oldest first: one read however long
/// the stream's history is.
pub async fn list_latest_after(
    conn: &mut AsyncPgConnection,
    stream: &str,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Event>> {
    let mut events: Vec<Event> = events::table
        .filter(events::stream.eq(stream))
        .filter(events::seq.gt(after))
        .order(events::seq.desc())
        .limit(limit)
        .select(Event::as_select())
        .load(conn)
        .await?;
    events.reverse();
    Ok(events)
}

pub async fn list_after(
    conn: &mut AsyncPgConnection,
    stream: &str,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Event>> {
    events::table
        .filter(events::stream.eq(stream))
        .filter(events::seq.gt(after))
        .order(events::seq.asc())
        .limit(limit)
        .select(Event::as_select())
        .load(conn)
        .await
}
