//! `events` (and the per-stream counters in `streams` that give them their seq).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Json, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::RawJson;
use crate::db::schema::events;
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

#[derive(QueryableByName)]
struct Counter {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    last_seq: i64,
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// Stores `pending` in the caller's transaction and returns them as stored, in input order,
/// with a webhook delivery for every endpoint that subscribes to each.
///
/// Each stream's counter row is advanced once by the number of its events. The row lock
/// that this takes is held until commit, so a later writer of the same stream waits for this
/// transaction: seq order is commit order, and a reader that has seen seq N can never later
/// find an event below N. Counters are locked in name order so that two batches touching the
/// same streams cannot deadlock.
pub async fn insert_all(
    conn: &mut AsyncPgConnection,
    pending: Vec<PendingEvent>,
) -> QueryResult<Stored> {
    if pending.is_empty() {
        return Ok(Stored {
            events: Vec::new(),
            pending_deliveries: 0,
        });
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &pending {
        *counts.entry(event.stream.as_str()).or_default() += 1;
    }
    let names: Vec<&str> = counts.keys().copied().collect();
    let increments: Vec<i64> = counts.values().copied().collect();
    let counters: Vec<Counter> = diesel::sql_query(
        "INSERT INTO streams AS s (name, last_seq) \
         SELECT name, n FROM unnest($1::text[], $2::int8[]) AS t(name, n) ORDER BY name \
         ON CONFLICT (name) DO UPDATE \
           SET last_seq = s.last_seq + EXCLUDED.last_seq, updated_at = now() \
         RETURNING s.name, s.last_seq, now() AS now",
    )
    .bind::<Array<Text>, _>(&names)
    .bind::<Array<BigInt>, _>(&increments)
    .load(conn)
    .await?;

    // The next seq to hand out per stream: the first of this batch's block.
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    let mut now = Utc::now();
    for counter in counters {
        let count = counts[counter.name.as_str()];
        now = counter.now;
        next.insert(counter.name, counter.last_seq - count + 1);
    }
    let rows: Vec<Event> = pending
        .into_iter()
        .map(|p| {
            let seq = next.get_mut(p.stream.as_str()).map_or(0, |s| {
                *s += 1;
                *s - 1
            });
            Event {
                id: p.id,
                stream: p.stream.into_inner(),
                seq,
                event_type: p.event_type.into_inner(),
                payload: p.payload,
                created_at: now,
            }
        })
        .collect();
    // One statement with one array per column: the same SQL whatever the row count, so it
    // is prepared once per connection, and binding five arrays is far cheaper than
    // 6 x N scalar parameters.
    let ids: Vec<Uuid> = rows.iter().map(|e| e.id).collect();
    let streams: Vec<&str> = rows.iter().map(|e| e.stream.as_str()).collect();
    let seqs: Vec<i64> = rows.iter().map(|e| e.seq).collect();
    let types: Vec<&str> = rows.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<&RawJson> = rows.iter().map(|e| &e.payload).collect();
    // The events and their webhook deliveries in one statement: one round trip, and the
    // deliveries come from the rows just inserted.
    #[derive(QueryableByName)]
    struct Pending {
        #[diesel(sql_type = BigInt)]
        pending: i64,
    }
    let inserted: Pending = diesel::sql_query(format!(
        "WITH ev AS ( \
           INSERT INTO events (id, stream, seq, event_type, payload, created_at) \
           SELECT id, stream, seq, event_type, payload, $6 \
           FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::json[]) \
             AS t(id, stream, seq, event_type, payload) \
           RETURNING id, stream, seq, event_type), \
         {}",
        crate::db::models::delivery::FAN_OUT_FROM_EV
    ))
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Text>, _>(&streams)
    .bind::<Array<BigInt>, _>(&seqs)
    .bind::<Array<Text>, _>(&types)
    .bind::<Array<Json>, _>(&payloads)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .await?;
    let pending_deliveries = usize::try_from(inserted.pending).unwrap_or(0);
    Ok(Stored {
        events: rows,
        pending_deliveries,
    })
}

/// Stores `pending` with one delivery, to `endpoint_id` only, whatever the endpoints'
/// filters say (an endpoint's test event). Returns the event and the delivery's id.
pub async fn insert_for_endpoint(
    conn: &mut AsyncPgConnection,
    pending: PendingEvent,
    endpoint_id: Uuid,
) -> QueryResult<(Event, Uuid)> {
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
    Ok((event, delivery_id))
}

/// What [`insert_all`] stored.
#[derive(Debug)]
pub struct Stored {
    /// The events, in input order.
    pub events: Vec<Event>,
    /// Webhook deliveries created for them that are due now.
    pub pending_deliveries: usize,
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
