//! Telling hubs that streams changed: this instance's at once, other instances' through
//! `NOTIFY`, sent after the commit and coalesced.
//!
//! `NOTIFY` inside a write transaction would make every event commit take PostgreSQL's
//! cluster-wide notify lock, serialising all ingest. Instead, [`Notifier::committed`] is
//! called after an event's transaction commits: it wakes this instance's hub directly and
//! queues the stream; a background task sends the queued streams a few milliseconds later
//! in as few `NOTIFY`s as fit PostgreSQL's 8000-byte payload limit, in autocommit, on a
//! pooled connection. A lost or late `NOTIFY` only delays other instances by up to the
//! fallback check's interval: notifications are hints, never the source of truth.
//!
//! Payload: the sending instance's id on the first line, then one `seq<TAB>stream` line per
//! stream (the highest committed seq), so a listener can skip its own instance's messages
//! and streams it already knows to be at that seq.
//!
//! The same sender carries the two other kinds of notice, whose state lives in their own
//! modules: who else is there ([`super::presence`]) and what the workers and console feeds
//! must learn about deliveries ([`crate::delivery::signals`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::sql_types::{Array, Text};
use diesel_async::RunQueryDsl as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::Hub;
use super::presence::{PRESENCE_BEAT, Presence};
use super::{CHANNEL, DELIVERIES_CHANNEL};
use crate::db::models::event::{Event, InsertClaim, Stored};
use crate::db::{DbPool, prepared};
use crate::delivery::queue::LocalQueue;
use crate::delivery::signals::{DeliverySignals, Notice};
use crate::metrics::{Metrics, inc};

/// The second line of a deliveries `NOTIFY` that only reports recorded attempts.
pub const CHANGED_ONLY: &str = "changed";
/// How long changes are gathered before one `NOTIFY` carries them.
pub const COALESCE: Duration = Duration::from_millis(3);
/// Stays under PostgreSQL's 8000-byte payload limit.
const MAX_PAYLOAD: usize = 7900;

/// The after-commit hook, and the sender of every `NOTIFY`.
#[derive(Debug)]
pub struct Notifier {
    instance: Uuid,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Streams committed here since the last `NOTIFY`, with their highest seq.
    pending: Mutex<HashMap<String, i64>>,
    /// Wakes the sender.
    wake: Notify,
    /// Worker wake-ups and the console feed.
    deliveries: DeliverySignals,
    /// Who else is there.
    presence: Presence,
    /// This instance's webhook worker's queue, when it sends webhooks: ingest claims new
    /// deliveries for it at insert, and they are handed over after the commit.
    queue: Option<Arc<LocalQueue>>,
}

impl Notifier {
    /// A notifier for the instance `instance`; `delivery_wake` wakes this instance's
    /// webhook worker, whose queue is `queue` (`None` on an instance that sends none).
    pub fn new(
        instance: Uuid,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        delivery_wake: Arc<Notify>,
        queue: Option<Arc<LocalQueue>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            instance,
            hub,
            metrics,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            deliveries: DeliverySignals::new(delivery_wake),
            presence: Presence::new(instance),
            queue,
        })
    }

    /// Notes a notification that arrived from the instance `from` (this one's own
    /// announcement, or word from another instance); `second_line` is the payload's second
    /// line, if any. A newcomer's hello is answered.
    pub fn heard_from(&self, from: Uuid, second_line: Option<&str>) {
        if self.presence.heard_from(from, second_line) {
            self.wake.notify_one();
        }
    }

    /// Has this instance say hello (its listener has just started listening).
    pub fn announce(&self) {
        self.presence.announce();
        self.wake.notify_one();
    }

    /// Waits (up to `timeout`) until this instance's announcement has come back through
    /// its own `LISTEN`, so every instance listening has it too. Returns whether it did.
    pub async fn wait_announced(&self, timeout: Duration) -> bool {
        self.presence.wait_announced(timeout).await
    }

    /// The claim an ingest statement should make for this instance's worker, if any.
    pub fn insert_claim(&self) -> Option<InsertClaim> {
        self.queue.as_ref()?.insert_claim()
    }

    /// The id of this instance, as its `NOTIFY`s carry it.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Wakes this instance's webhook worker (another instance made deliveries due).
    pub fn wake_worker(&self) {
        self.deliveries.due_elsewhere();
    }

    /// A receiver that sees a new value whenever deliveries change.
    pub fn watch_deliveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.deliveries.watch()
    }

    /// Says that deliveries changed on another instance (its `NOTIFY` arrived).
    pub fn remote_deliveries_changed(&self) {
        self.deliveries.changed_elsewhere();
    }

    /// Says that attempts were recorded here: this instance's feed learns at once, other
    /// instances' through a coalesced `NOTIFY` that does not wake their workers.
    pub fn deliveries_changed(&self) {
        self.deliveries.changed_here();
        self.wake.notify_one();
    }

    /// Says that deliveries became due outside of an event commit (a replay).
    pub fn deliveries_due(&self) {
        self.deliveries.due_here();
        self.wake.notify_one();
    }

    /// "Commit, then notify", the one way stored events reach anyone: records that events
    /// (and their webhook deliveries) have committed, hands the deliveries claimed at
    /// insert to this instance's worker, wakes the hub and queues the cross-instance
    /// `NOTIFY`; gives back the events to answer with. The group commit, the idempotent
    /// publish and the test event all end here.
    pub fn committed(&self, mut stored: Stored) -> Vec<Event> {
        if let (Some(queue), Some((token, at))) = (&self.queue, stored.claimed_with)
            && !stored.claimed.is_empty()
        {
            queue.hand_over(std::mem::take(&mut stored.claimed), token, at);
            self.deliveries.changed_here();
        }
        if stored.pending_deliveries > 0 {
            self.deliveries.due_here();
            self.wake.notify_one();
        }
        let events = &stored.events;
        if events.is_empty() {
            return stored.events;
        }
        let mut by_stream: HashMap<&str, Vec<&Event>> = HashMap::new();
        for event in events {
            by_stream
                .entry(event.stream.as_str())
                .or_default()
                .push(event);
        }
        self.metrics.events_ingested.increment(events.len() as u64);
        let mut latest: HashMap<&str, i64> = HashMap::with_capacity(by_stream.len());
        for (stream, mut committed) in by_stream {
            committed.sort_by_key(|e| e.seq);
            self.hub.committed(stream, &committed);
            latest.insert(stream, committed.last().map_or(0, |e| e.seq));
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (stream, seq) in latest {
            let entry = pending.entry(stream.to_owned()).or_default();
            *entry = (*entry).max(seq);
        }
        drop(pending);
        self.wake.notify_one();
        stored.events
    }

    /// Sends queued changes until `cancel`, then sends what is left.
    pub async fn run(self: Arc<Self>, pool: DbPool, cancel: CancellationToken) {
        let mut again: Option<Duration> = None;
        let mut beat = tokio::time::interval(PRESENCE_BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = beat.tick() => self.presence.beat(),
                () = tokio::time::sleep(again.unwrap_or(Duration::MAX)), if again.is_some() => {}
                () = cancel.cancelled() => {
                    self.flush(&pool, true).await;
                    return;
                }
            }
            tokio::time::sleep(COALESCE).await;
            again = self.flush(&pool, false).await;
        }
    }

    /// Sends what is queued in one statement. A feed-only change is held back until
    /// `FEED_INTERVAL` after the last one (unless `all`); returns when to call again
    /// for it.
    ///
    /// An instance that has heard from no other lately sends only its announcements: the
    /// hints would reach nobody but its own listener. A new instance says [`HELLO`] as
    /// soon as it listens, and serves only once it has heard its own (so every instance
    /// listening has it); they answer "here", as each does every `PRESENCE_BEAT`.
    /// Anything missed in between is made up by the fallback check and the workers' poll.
    async fn flush(&self, pool: &DbPool, all: bool) -> Option<Duration> {
        let mut channels: Vec<&str> = Vec::new();
        let mut payloads: Vec<String> = Vec::new();
        for word in self.presence.take_due() {
            channels.push(CHANNEL);
            payloads.push(format!("{}\n{word}", self.instance));
        }
        let alone = self.presence.alone();
        let (notice, again) = self.deliveries.take_notice(all);
        if let Some(notice) = notice
            && !alone
        {
            channels.push(DELIVERIES_CHANNEL);
            payloads.push(match notice {
                Notice::Due => self.instance.to_string(),
                Notice::Changed => format!("{}\n{CHANGED_ONLY}", self.instance),
            });
        }
        let changes: Vec<(String, i64)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        // Alone, the hints would reach nobody but this instance's own listener: its hubs
        // were told at once.
        let streams = if alone {
            self.metrics
                .hints_unsent_alone
                .increment(changes.len() as u64);
            Vec::new()
        } else {
            encode(self.instance, &changes)
        };
        let count = streams.len();
        for payload in streams {
            channels.push(CHANNEL);
            payloads.push(payload);
        }
        if payloads.is_empty() {
            return again;
        }
        let sent = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            prepared(
                diesel::sql_query(
                    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)",
                )
                .bind::<Array<Text>, _>(&channels)
                .bind::<Array<Text>, _>(&payloads),
            )
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        match sent {
            Ok(_) => {
                for _ in 0..count {
                    inc(&self.metrics.notifications_sent);
                }
            }
            // Other instances catch up through their fallback check (and their workers'
            // poll).
            Err(err) => tracing::warn!(error = %err, "could not send notifications"),
        }
        again
    }
}

/// Splits changes into payloads under the size limit.
pub fn encode(instance: Uuid, changes: &[(String, i64)]) -> Vec<String> {
    let header = instance.to_string();
    let mut payloads = Vec::new();
    let mut current = header.clone();
    for (stream, seq) in changes {
        let line = format!("\n{seq}\t{stream}");
        if current.len() + line.len() > MAX_PAYLOAD && current.len() > header.len() {
            payloads.push(std::mem::replace(&mut current, header.clone()));
        }
        current.push_str(&line);
    }
    if current.len() > header.len() {
        payloads.push(current);
    }
    payloads
}

/// Reads a payload: the sender's id and its `(stream, seq)` changes. Malformed lines are
/// skipped (a hint is only a hint).
pub fn decode(payload: &str) -> Option<(Uuid, Vec<(String, i64)>)> {
    let mut lines = payload.lines();
    let instance = Uuid::parse_str(lines.next()?).ok()?;
    let changes = lines
        .filter_map(|line| {
            let (seq, stream) = line.split_once('\t')?;
            Some((stream.to_owned(), seq.parse().ok()?))
        })
        .collect();
    Some((instance, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_under_the_limit() {
        let instance = Uuid::now_v7();
        let changes: Vec<(String, i64)> = (0..200)
            .map(|i| (format!("{}:{i}", "s".repeat(150)), i64::from(i) * 1_000_000))
            .collect();
        let payloads = encode(instance, &changes);
        assert!(payloads.len() > 1);
        let mut decoded = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD);
            let (from, mut part) = decode(payload).unwrap();
            assert_eq!(from, instance);
            decoded.append(&mut part);
        }
        assert_eq!(decoded, changes);
    }

    #[test]
    fn garbage_is_not_a_payload() {
        assert!(decode("hello").is_none());
        let (_, changes) = decode(&format!("{}\nnot-a-line\n5\tok", Uuid::nil())).unwrap();
        assert_eq!(changes, vec![("ok".to_owned(), 5)]);
    }
}
