//! Worker wake-ups and the console's live deliveries feed: who learns that deliveries
//! became due or changed, here and (through `streams::notify`'s `NOTIFY`) elsewhere.
//!
//! Deliveries made due here (a commit with deliveries, a replay) wake this instance's
//! worker at once and other instances' workers through a "due" `NOTIFY`. Attempts recorded
//! here tell this instance's feed at once and other instances' feeds through a
//! "changed" `NOTIFY`, sent at most every [`FEED_INTERVAL`] and waking no worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// How often, at most, other instances' console feeds are told that attempts were
/// recorded here (the console redraws at most every 250 ms anyway).
pub const FEED_INTERVAL: Duration = Duration::from_millis(100);

/// What other instances should be told about deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Deliveries became due: wake your workers (and your feeds).
    Due,
    /// Attempts were recorded: tell your feeds.
    Changed,
}

/// The signals about this instance's deliveries.
#[derive(Debug)]
pub struct DeliverySignals {
    /// Wakes this instance's webhook worker.
    worker: Arc<Notify>,
    /// Bumped whenever deliveries change, here or elsewhere: what the console's live
    /// deliveries feed waits on.
    changes: watch::Sender<u64>,
    /// Other instances are owed a [`Notice::Due`].
    due: AtomicBool,
    /// Other instances are owed a [`Notice::Changed`].
    changed: AtomicBool,
    /// When a notice was last sent.
    sent: Mutex<Option<Instant>>,
}

impl DeliverySignals {
    /// Signals whose wake-ups go to the worker waiting on `worker`.
    pub fn new(worker: Arc<Notify>) -> Self {
        Self {
            worker,
            changes: watch::Sender::new(0),
            due: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            sent: Mutex::new(None),
        }
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Deliveries became due here: this worker wakes now, others are owed a notice.
    pub fn due_here(&self) {
        self.bump();
        self.worker.notify_one();
        self.due.store(true, Ordering::Release);
    }

    /// Deliveries changed here (attempts recorded, or claimed at insert): this feed learns
    /// now, others' are owed a notice.
    pub fn changed_here(&self) {
        self.bump();
        self.changed.store(true, Ordering::Release);
    }

    /// Another instance made deliveries due.
    pub fn due_elsewhere(&self) {
        self.bump();
        self.worker.notify_one();
    }

    /// Another instance recorded attempts.
    pub fn changed_elsewhere(&self) {
        self.bump();
    }

    /// Wakes this instance's worker.
    pub fn wake_worker(&self) {
        self.worker.notify_one();
    }

    /// A receiver that sees a new value whenever deliveries change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The notice owed to other instances now, marked as sent, and, when a "changed"
    /// notice is held back for [`FEED_INTERVAL`] (unless `all`), when to ask again.
    pub fn take_notice(&self, all: bool) -> (Option<Notice>, Option<Duration>) {
        if self.due.swap(false, Ordering::AcqRel) {
            *self.sent.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.changed.store(false, Ordering::Release);
            return (Some(Notice::Due), None);
        }
        if !self.changed.load(Ordering::Acquire) {
            return (None, None);
        }
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = sent
            .map(|at| FEED_INTERVAL.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        if wait.is_zero() || all {
            self.changed.store(false, Ordering::Release);
            *sent = Some(Instant::now());
            (Some(Notice::Changed), None)
        } else {
            (None, Some(wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_wins_over_changed_and_changed_notices_are_spaced() {
        let signals = DeliverySignals::new(Arc::new(Notify::new()));
        let feed = signals.watch();
        assert_eq!(signals.take_notice(false), (None, None));
        signals.changed_here();
        signals.due_here();
        assert!(feed.has_changed().unwrap());
        assert_eq!(signals.take_notice(false), (Some(Notice::Due), None));
        signals.changed_here();
        let (notice, again) = signals.take_notice(false);
        assert_eq!(notice, None, "within FEED_INTERVAL of the last notice");
        assert!(again.is_some_and(|d| d <= FEED_INTERVAL));
        assert_eq!(signals.take_notice(true), (Some(Notice::Changed), None));
    }
}
