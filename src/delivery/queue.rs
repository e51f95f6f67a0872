//! The deliveries this instance holds claimed and is about to attempt.
//!
//! Two kinds of claim fill it. Most deliveries are claimed *at insert*: the instance that
//! commits an event inserts its deliveries already `delivering` under its own claim token
//! and lease (`event::insert_all` with an [`InsertClaim`]), and after the commit hands them
//! over here with the event it already holds in memory. Their first attempt costs no
//! claim query and no read of the event. The rest (retries, replays, ordered and
//! rate-limited endpoints, work queued by API-only instances, expired leases) come from the
//! worker's claim query, which may claim a little ahead of what can be sent at once.
//!
//! Whatever waits here is covered by a lease in the database. An entry is attempted only
//! while its lease outlasts a whole request ([`Ready::sendable`]); one that waited too long
//! is released, so a delivery is never attempted twice at the same time.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::db::models::delivery::Claimed;
use crate::db::models::event::InsertClaim;

/// A claimed delivery waiting for a free slot.
#[derive(Debug)]
pub struct Ready {
    /// The delivery and what sending it needs.
    pub claimed: Claimed,
    /// The token it is claimed with.
    pub token: Uuid,
    /// When its lease ends, by this process's clock (measured from before the claiming
    /// statement was sent, so never later than the database's).
    pub lease_until: Instant,
}

impl Ready {
    /// Whether an attempt started now, lasting at most `timeout`, ends (with a second to
    /// spare for recording it) before the lease does.
    pub fn sendable(&self, now: Instant, timeout: Duration) -> bool {
        now + timeout + Duration::from_secs(1) <= self.lease_until
    }
}

/// The queue, shared by the ingest path (which fills it) and the worker (which drains it).
#[derive(Debug)]
pub struct LocalQueue {
    items: Mutex<VecDeque<Ready>>,
    /// Endpoints for which ingest should not claim at insert: the worker has enough of
    /// theirs in hand (set by the worker).
    skip: Mutex<Vec<Uuid>>,
    lease: Duration,
    /// Beyond this many waiting, ingest leaves new deliveries to the claim query.
    capacity: usize,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl LocalQueue {
    /// A queue for a worker whose claims last `lease`; `wake` wakes that worker.
    pub fn new(
        lease: Duration,
        capacity: usize,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            skip: Mutex::new(Vec::new()),
            lease,
            capacity,
            wake,
        }
    }

    /// The entries, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Ready>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many entries wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The claim an ingest statement about to run should make, or `None` when this
    /// instance already holds as much as it should.
    pub fn insert_claim(&self) -> Option<InsertClaim> {
        if self.len() >= self.capacity {
            return None;
        }
        let skip_endpoints = self
            .skip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(InsertClaim {
            token: Uuid::now_v7(),
            lease_secs: self.lease.as_secs_f64(),
            skip_endpoints,
            issued_at: Instant::now(),
        })
    }

    /// Takes deliveries claimed with `token` by a statement sent at `claimed_at`.
    pub fn hand_over(&self, claimed: Vec<Claimed>, token: Uuid, claimed_at: Instant) {
        if claimed.is_empty() {
            return;
        }
        let lease_until = claimed_at + self.lease;
        self.lock().extend(claimed.into_iter().map(|claimed| Ready {
            claimed,
            token,
            lease_until,
        }));
        self.wake.notify_one();
    }

    /// Sets the endpoints ingest should not claim for.
    pub fn set_skip(&self, endpoints: Vec<Uuid>) {
        *self.skip.lock().unwrap_or_else(PoisonError::into_inner) = endpoints;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_sendable_only_while_its_lease_outlasts_a_request() {
        let now = Instant::now();
        let ready = |left: u64| Ready {
            claimed: crate::db::models::delivery::Claimed::example(),
            token: Uuid::nil(),
            lease_until: now + Duration::from_secs(left),
        };
        let timeout = Duration::from_secs(15);
        assert!(ready(22).sendable(now, timeout));
        assert!(ready(16).sendable(now, timeout));
        assert!(!ready(15).sendable(now, timeout));
        assert!(!ready(0).sendable(now, timeout));
    }
}
