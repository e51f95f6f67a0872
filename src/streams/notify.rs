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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::sql_types::{Array, Text};
use diesel_async::RunQueryDsl as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::Hub;
use super::{CHANNEL, DELIVERIES_CHANNEL};
use crate::db::DbPool;
use crate::db::models::event::Stored;
use crate::metrics::{Metrics, inc};

/// The second line of a deliveries `NOTIFY` that only reports recorded attempts.
pub const CHANGED_ONLY: &str = "changed";
/// How long changes are gathered before one `NOTIFY` carries them.
pub const COALESCE: Duration = Duration::from_millis(3);
/// Stays under PostgreSQL's 8000-byte payload limit.
const MAX_PAYLOAD: usize = 7900;

/// The after-commit hook.
#[derive(Debug)]
pub struct Notifier {
    instance: Uuid,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    pending: Mutex<HashMap<String, i64>>,
    wake: Notify,
    deliveries_due: std::sync::atomic::AtomicBool,
    deliveries_changed: std::sync::atomic::AtomicBool,
    delivery_wake: Arc<Notify>,
    /// Bumped whenever deliveries change, here or (through `NOTIFY`) elsewhere: what the
    /// console's live deliveries feed waits on.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Notifier {
    /// A notifier for the instance `instance`; `delivery_wake` wakes this instance's
    /// webhook worker.
    pub fn new(
        instance: Uuid,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        delivery_wake: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            instance,
            hub,
            metrics,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            deliveries_due: std::sync::atomic::AtomicBool::new(false),
            deliveries_changed: std::sync::atomic::AtomicBool::new(false),
            delivery_wake,
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The id of this instance, as its `NOTIFY`s carry it.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Wakes this instance's webhook worker (another instance made deliveries due).
    pub fn wake_worker(&self) {
        self.delivery_wake.notify_one();
    }

    /// A receiver that sees a new value whenever deliveries change.
    pub fn watch_deliveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Says that deliveries changed on another instance (its `NOTIFY` arrived).
    pub fn remote_deliveries_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Says that attempts were recorded here: this instance's feed learns at once, other
    /// instances' through a coalesced `NOTIFY` that does not wake their workers.
    pub fn deliveries_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.deliveries_changed
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Says that deliveries became due outside of an event commit (a replay).
    pub fn deliveries_due(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.delivery_wake.notify_one();
        self.deliveries_due
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Records that events (and their webhook deliveries) have committed.
    pub fn committed(&self, stored: &Stored) {
        if stored.pending_deliveries > 0 {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
            self.delivery_wake.notify_one();
            self.deliveries_due
                .store(true, std::sync::atomic::Ordering::Release);
            self.wake.notify_one();
        }
        let events = &stored.events;
        if events.is_empty() {
            return;
        }
        let mut latest: HashMap<&str, i64> = HashMap::new();
        for event in events {
            let seq = latest.entry(event.stream.as_str()).or_default();
            *seq = (*seq).max(event.seq);
        }
        self.metrics.events_ingested.increment(events.len() as u64);
        for (stream, seq) in &latest {
            self.hub.hint(stream, Some(*seq));
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (stream, seq) in latest {
            let entry = pending.entry(stream.to_owned()).or_default();
            *entry = (*entry).max(seq);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Sends queued changes until `cancel`, then sends what is left.
    pub async fn run(self: Arc<Self>, pool: DbPool, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = cancel.cancelled() => {
                    self.flush(&pool).await;
                    return;
                }
            }
            tokio::time::sleep(COALESCE).await;
            self.flush(&pool).await;
        }
    }

    async fn flush(&self, pool: &DbPool) {
        let due = self
            .deliveries_due
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let changed = self
            .deliveries_changed
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if due || changed {
            // "Due" wakes other workers (and tells their feeds); "changed" only tells feeds.
            let payload = if due {
                self.instance.to_string()
            } else {
                format!("{}\n{CHANGED_ONLY}", self.instance)
            };
            let sent = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                diesel::sql_query("SELECT pg_notify($1, $2)")
                    .bind::<Text, _>(DELIVERIES_CHANNEL)
                    .bind::<Text, _>(payload)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(err) = sent {
                tracing::warn!(error = %err, "could not notify other workers of new deliveries");
            }
        }
        let changes: Vec<(String, i64)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if changes.is_empty() {
            return;
        }
        let payloads = encode(self.instance, &changes);
        let count = payloads.len();
        let sent = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind::<Text, _>(CHANNEL)
                .bind::<Array<Text>, _>(&payloads)
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
            // Other instances catch up through their fallback check.
            Err(err) => tracing::warn!(error = %err, "could not send stream notifications"),
        }
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
