//! The waiters of this instance, per stream, and the one read that serves them all.
//!
//! A held request (long-poll or SSE) subscribes to its stream's slot *before* it reads the
//! database, so no commit can slip between its read and its wait. When a stream changes
//! (a hint from this instance's commits, from another instance's `NOTIFY`, or from the
//! fallback check), the hub runs a single fetch for that stream: it waits a couple of
//! milliseconds so that events committing together arrive together, reads every event after
//! the last seq it knows, keeps them (already serialized) in the slot's short history, and
//! wakes the subscribers. Each subscriber takes what is newer than its own cursor. A stream
//! nobody waits on costs nothing; 10,000 waiters on one stream cost one read per change,
//! and none for a commit of this instance that follows what the slot holds
//! ([`Hub::committed`]).
//!
//! Holding a request holds no database connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub use super::event_json::EventJson;
use crate::db::models::event::{self, Event};
use crate::db::{DbError, DbPool};
use crate::metrics::{Metrics, inc};

/// How long a fetch waits after its first hint, to take events that commit together in one read.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);
/// Events a fetch reads at a time.
const FETCH_LIMIT: i64 = 1000;
/// Events kept per watched stream for subscribers that wake up later.
const HISTORY: usize = 1024;

#[derive(Debug)]
struct SlotState {
    /// The highest seq this slot has read (or the cursor its first waiter held).
    known: i64,
    /// Whether `known` is a seq this slot read from the database (not a client's cursor):
    /// then, with every commit since hinted to the slot, what it holds is the stream's
    /// end as far as this instance can know, and a new reader needs no read of its own.
    verified: bool,
    /// The most recent events read, oldest first.
    recent: VecDeque<Arc<EventJson>>,
}

#[derive(Debug)]
struct Slot {
    name: String,
    state: Mutex<SlotState>,
    changed: watch::Sender<i64>,
    /// Tasks that follow many streams ([`Wakeups`]), by subscription key.
    listeners: Mutex<HashMap<u64, Arc<Wakeups>>>,
    subscribers: AtomicUsize,
    fetching: AtomicBool,
    dirty: AtomicBool,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listeners(&self) -> MutexGuard<'_, HashMap<u64, Arc<Wakeups>>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every subscriber: those waiting on [`Subscription::changed`] and the tasks
    /// listening through [`Wakeups`].
    fn announce(&self, known: i64) {
        self.changed.send_replace(known);
        for (key, wakeups) in self.listeners().iter() {
            wakeups.wake(*key);
        }
    }
}

/// How one task that follows many streams (a WebSocket) learns which of them changed,
/// without a task or a future per stream: each of its subscriptions is registered with
/// the stream's slot under a key, and a change queues the key and wakes the task.
#[derive(Debug, Default)]
pub struct Wakeups {
    ready: Mutex<Vec<u64>>,
    notify: Notify,
}

impl Wakeups {
    /// Wake-ups for one task.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn wake(&self, key: u64) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
        self.notify.notify_one();
    }

    /// Waits until some subscription has news (at once if news came since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The keys of the subscriptions woken since the last call, each once, in key order.
    pub fn take(&self) -> Vec<u64> {
        let mut keys =
            std::mem::take(&mut *self.ready.lock().unwrap_or_else(PoisonError::into_inner));
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// The hub could not take another waiter.
#[derive(Debug, thiserror::Error)]
#[error("too many held requests")]
pub struct HubFull;

/// The per-instance registry of held requests.
pub struct Hub {
    pool: DbPool,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    max_waiters: usize,
    waiters: AtomicUsize,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("waiters", &self.waiters())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose fetches run on the current runtime.
    pub fn new(pool: DbPool, metrics: Arc<Metrics>, max_waiters: usize) -> Arc<Self> {
        Arc::new(Self {
            pool,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            max_waiters,
            waiters: AtomicUsize::new(0),
            slots: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests held now.
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    /// Streams with at least one held request.
    pub fn watched_streams(&self) -> usize {
        self.slots().len()
    }

    /// Each watched stream with the last seq this hub has seen of it.
    pub fn watched(&self) -> Vec<(String, i64)> {
        self.slots()
            .values()
            .map(|slot| (slot.name.clone(), slot.state().known))
            .collect()
    }

    /// Registers a waiter on `stream` whose cursor is `after`.
    pub fn subscribe(self: &Arc<Self>, stream: &str, after: i64) -> Result<Subscription, HubFull> {
        let taken = self.waiters.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max_waiters {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            return Err(HubFull);
        }
        let slot = {
            let mut slots = self.slots();
            let slot = slots
                .entry(stream.to_owned())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        name: stream.to_owned(),
                        state: Mutex::new(SlotState {
                            known: after,
                            verified: false,
                            recent: VecDeque::new(),
                        }),
                        changed: watch::channel(after).0,
                        listeners: Mutex::new(HashMap::new()),
                        subscribers: AtomicUsize::new(0),
                        fetching: AtomicBool::new(false),
                        dirty: AtomicBool::new(false),
                    })
                })
                .clone();
            slot.subscribers.fetch_add(1, Ordering::AcqRel);
            slot
        };
        // A cursor below what the slot knows does not move the slot: such a reader reads
        // its own pages (see `Subscription::caught_up` for the one case that lowers it).
        let changed = slot.changed.subscribe();
        Ok(Subscription {
            hub: self.clone(),
            slot,
            changed,
            key: None,
        })
    }

    /// Registers a waiter on `stream` whose cursor is `after`, woken through `wakeups`
    /// under its [`Subscription::key`] instead of [`Subscription::changed`].
    pub fn subscribe_to(
        self: &Arc<Self>,
        stream: &str,
        after: i64,
        wakeups: &Arc<Wakeups>,
    ) -> Result<Subscription, HubFull> {
        let mut subscription = self.subscribe(stream, after)?;
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        subscription.slot.listeners().insert(key, wakeups.clone());
        subscription.key = Some(key);
        Ok(subscription)
    }

    /// Says that `stream` may have changed, up to `last_seq` if known. If anyone waits on
    /// it and the change is news, one fetch is scheduled (or the running one reads again).
    pub fn hint(self: &Arc<Self>, stream: &str, last_seq: Option<i64>) {
        let Some(slot) = self.slots().get(stream).cloned() else {
            return;
        };
        if last_seq.is_some_and(|seq| seq <= slot.state().known) {
            return;
        }
        self.schedule_fetch(slot);
    }

    /// Events this instance has just committed on `stream`, in seq order. A watched
    /// stream whose slot holds everything up to just before them takes them as they are
    /// and wakes its waiters: no read, no batching delay. Otherwise (a seq in between that
    /// this instance has not seen, committed elsewhere or by another committer that has
    /// not told the hub yet) it is a [`Hub::hint`]: the slot reads the stream.
    ///
    /// Safe because seq order is commit order: when `events` commit, every seq below
    /// theirs is committed, so a slot at `events[0].seq - 1` holds the stream's end.
    pub fn committed(self: &Arc<Self>, stream: &str, events: &[&Event]) {
        let Some(slot) = self.slots().get(stream).cloned() else {
            return;
        };
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let contiguous = events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let known = {
            let mut state = slot.state();
            if last.seq <= state.known {
                return;
            }
            if !contiguous || first.seq != state.known + 1 {
                drop(state);
                self.schedule_fetch(slot);
                return;
            }
            state.verified = true;
            for event in events {
                state
                    .recent
                    .push_back(Arc::new(EventJson::new((*event).clone())));
            }
            while state.recent.len() > HISTORY {
                state.recent.pop_front();
            }
            state.known = last.seq;
            state.known
        };
        inc(&self.metrics.hub_pushes);
        slot.announce(known);
    }

    /// Makes every watched stream re-check (after the LISTEN connection was lost).
    pub fn hint_all(self: &Arc<Self>) {
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        for slot in slots {
            self.schedule_fetch(slot);
        }
    }

    fn schedule_fetch(self: &Arc<Self>, slot: Arc<Slot>) {
        slot.dirty.store(true, Ordering::Release);
        if !slot.fetching.swap(true, Ordering::AcqRel) {
            self.runtime.spawn(self.clone().fetch(slot));
        }
    }

    async fn fetch(self: Arc<Self>, slot: Arc<Slot>) {
        tokio::time::sleep(BATCH_DELAY).await;
        loop {
            slot.dirty.store(false, Ordering::Release);
            let (from, verified) = {
                let state = slot.state();
                (state.known, state.verified)
            };
            // A slot that has not read its stream yet starts from its first waiter's
            // cursor, which may be far behind (a reader catching up): it reads only the
            // stream's tail, once; readers behind that read their own pages.
            match self.read(&slot.name, from, !verified).await {
                Ok(events) => {
                    let full = verified && events.len() as i64 == FETCH_LIMIT;
                    self.publish(&slot, from, events);
                    if full {
                        continue;
                    }
                }
                Err(err) => {
                    // Waiters keep waiting; the fallback check will hint again.
                    tracing::warn!(stream = %slot.name, error = %err, "stream read failed");
                    slot.fetching.store(false, Ordering::Release);
                    return;
                }
            }
            if slot.dirty.load(Ordering::Acquire) {
                continue;
            }
            slot.fetching.store(false, Ordering::Release);
            // A hint that came between the check and the store saw `fetching` set and left
            // the work to us: take it back if nobody else has.
            if !slot.dirty.load(Ordering::Acquire) || slot.fetching.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    async fn read(&self, stream: &str, after: i64, tail: bool) -> Result<Vec<Event>, DbError> {
        let mut conn = self.pool.get().await?;
        inc(&self.metrics.hub_reads);
        Ok(if tail {
            event::list_latest_after(&mut conn, stream, after, FETCH_LIMIT).await?
        } else {
            event::list_after(&mut conn, stream, after, FETCH_LIMIT).await?
        })
    }

    fn publish(&self, slot: &Slot, from: i64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let known = {
            let mut state = slot.state();
            if state.known != from {
                // The cursor was lowered while we read; the next round reads from there.
                slot.dirty.store(true, Ordering::Release);
                return;
            }
            state.verified = true;
            if events.first().is_some_and(|e| e.seq != from + 1) {
                // Not contiguous with what the slot holds (a tail read): the history
                // starts again here, so that `take` never skips the events between.
                state.recent.clear();
            }
            for event in events {
                state.known = event.seq;
                state.recent.push_back(Arc::new(EventJson::new(event)));
            }
            while state.recent.len() > HISTORY {
                state.recent.pop_front();
            }
            state.known
        };
        slot.announce(known);
    }
}

/// What a subscriber finds after a wake-up.
#[derive(Debug)]
pub enum Taken {
    /// Events after its cursor, in seq order.
    Events(Vec<Arc<EventJson>>),
    /// Nothing newer than its cursor.
    Nothing,
    /// Its cursor is older than the slot's history: read the database.
    Gap,
}

/// One held request's registration. Dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    changed: watch::Receiver<i64>,
    key: Option<u64>,
}

impl Subscription {
    /// The stream.
    pub fn stream(&self) -> &str {
        &self.slot.name
    }

    /// The key [`Wakeups`] name this subscription by (0 if it has none: see
    /// [`Hub::subscribe_to`]).
    pub fn key(&self) -> u64 {
        self.key.unwrap_or(0)
    }

    /// Says that this subscriber's own read reached the stream's end at `after` (it found
    /// nothing after it, or a short page ending there). The slot only moves forward, except
    /// here: a slot created from a cursor beyond the stream's end (a client's made-up
    /// cursor) must come down to where the stream really ends, or it would skip the events
    /// between, for every reader of the stream, also one that caught up with a page of
    /// events. Only a slot that has not read the stream yet is lowered. A reader that is
    /// merely behind (a full page) never gets here, and one at the end never lowers a slot
    /// below the end, so catching up from an old cursor never makes the slot re-read
    /// history for the stream's other waiters.
    pub fn caught_up(&self, after: i64) {
        let mut state = self.slot.state();
        // A slot that has read the stream knows better: its `known` was committed, maybe
        // after this subscriber's read, and lowering it would drop those events from the
        // slot and leave its waiters asleep.
        if !state.verified && after < state.known {
            state.known = after;
            state.recent.retain(|e| e.seq <= after);
            drop(state);
            // A commit between this subscriber's read and now was hinted while the slot
            // still stood at the made-up cursor, and ignored as old news: look again.
            self.hub.schedule_fetch(self.slot.clone());
        }
    }

    /// What a new reader at `after` would read, if the slot already knows: `Some(events)`
    /// (empty: nothing yet, hold) when the slot has read the stream and its history covers
    /// the cursor; `None` when the reader must read the database itself. Subscribing
    /// first means a commit that this answer misses still wakes the reader.
    pub fn peek(&self, after: i64, limit: usize) -> Option<Vec<Arc<EventJson>>> {
        if !self.slot.state().verified {
            return None;
        }
        match self.take(after, limit) {
            Taken::Events(events) => Some(events),
            Taken::Nothing => Some(Vec::new()),
            Taken::Gap => None,
        }
    }

    /// Waits until the slot has read something new.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            // The slot (and its sender) lives as long as this subscription; unreachable,
            // but never spin.
            std::future::pending::<()>().await;
        }
    }

    /// Up to `limit` events after `after` from the slot's history.
    pub fn take(&self, after: i64, limit: usize) -> Taken {
        let state = self.slot.state();
        let Some(last) = state.recent.back() else {
            return Taken::Nothing;
        };
        if last.seq <= after {
            return Taken::Nothing;
        }
        if state
            .recent
            .front()
            .is_some_and(|first| first.seq > after + 1)
        {
            return Taken::Gap;
        }
        Taken::Events(
            state
                .recent
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.slot.listeners().remove(&key);
        }
        self.hub.waiters.fetch_sub(1, Ordering::AcqRel);
        let mut slots = self.hub.slots();
        if self.slot.subscribers.fetch_sub(1, Ordering::AcqRel) == 1
            && slots
                .get(&self.slot.name)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            slots.remove(&self.slot.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakeups_name_each_woken_subscription_once_and_keep_a_wake_that_came_early() {
        let wakeups = Wakeups::new();
        wakeups.wake(7);
        wakeups.wake(3);
        wakeups.wake(7);
        // Woken before anyone waited: the wait returns at once.
        tokio::time::timeout(Duration::from_secs(1), wakeups.notified())
            .await
            .expect("a wake before the wait is kept");
        assert_eq!(wakeups.take(), vec![3, 7]);
        assert!(wakeups.take().is_empty());
    }
}
