//! The worker: attempts what this instance holds claimed, and claims more.
//!
//! Deliveries reach the worker's [`LocalQueue`] two ways. New events' deliveries are
//! claimed *at insert* by the ingest statement of the instance that commits them, and
//! handed over after the commit with everything sending needs: the first attempt costs no
//! database round trip before the request. Everything else (retries, replays, ordered and
//! rate-limited endpoints, deliveries queued by API-only instances or left by a crashed
//! one) is claimed by the claim query: `FOR UPDATE SKIP LOCKED` (so instances never take
//! the same row), on the worker's own connection, prepared once.
//!
//! Every claim carries a token and a lease of the request timeout plus a margin; the row
//! lock is released when the claim commits, before any HTTP request, and a crashed
//! worker's claims become claimable again when their lease runs out. An outcome is
//! recorded only while the token still matches, and an entry is attempted only while its
//! lease outlasts a whole request (else it is released), so a delivery is never attempted
//! twice at the same time, and a late writer cannot overwrite a newer claim.
//!
//! Fairness: `HERALD_DELIVERY_CONCURRENCY` attempts run at once per instance, and each
//! endpoint gets at most its `max_in_flight` of them (counted per instance), so a slow or
//! dead endpoint ties up only its own share and never delays healthy ones. Per endpoint,
//! the worker holds at most about [`HOLD_AHEAD`] of work (by its recent attempt times)
//! beyond what is in flight: enough that a finished attempt starts the next one from memory
//! at once, never so much that a lease would run out while waiting.
//!
//! Wake-ups: a hand-over or a finished attempt nudges the worker to start what it holds
//! (and to claim more if its last claim was full); new due deliveries elsewhere (`NOTIFY`),
//! replays and retries falling due wake it to claim; a poll every second is the fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::limits::{EndpointState, claim_verdicts, rooms};
use super::queue::{LocalQueue, Ready};
use super::recorder::Message;
use super::sender::Sender;

use crate::db::models::delivery::{self, Claimed};
use crate::db::models::event::PendingEvent;
use crate::db::{Dedicated, RawJson};
use crate::domain::retry::RetrySchedule;
use crate::domain::{EventType, StreamName};
use crate::ingest::Ingest;
use crate::metrics::Metrics;

/// How long a claim outlives the request timeout: half of it, and at least 5 s.
pub fn lease_for(timeout: Duration) -> Duration {
    timeout + (timeout / 2).max(Duration::from_secs(5))
}
/// The slow fallback poll.
const POLL: Duration = Duration::from_secs(1);
/// Most deliveries claimed per query.
const CLAIM_BATCH: usize = 256;
/// How much work, by its recent attempt times, the worker holds per endpoint beyond what
/// is in flight. Well inside the lease's margin over the request timeout (at least 5 s).
pub const HOLD_AHEAD: Duration = Duration::from_secs(2);

/// The stream Herald's own operational events go to.
pub const OPS_STREAM: &str = "herald:ops";

/// What the worker is told at start.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Where the worker opens its own claim connection.
    pub database_url: String,
    /// Connect timeout for it.
    pub connect_timeout: Duration,
    /// Delays between attempts.
    pub schedule: RetrySchedule,
    /// Per-attempt timeout (the claim lasts longer).
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// An endpoint with no success for this long is disabled.
    pub disable_after: Duration,
}

/// The worker's configuration and shared parts.
pub struct Worker {
    sender: Sender,
    pub(super) schedule: RetrySchedule,
    lease: Duration,
    timeout: Duration,
    concurrency: usize,
    pub(super) disable_after: Duration,
    /// Wakes the loop to claim: deliveries became due.
    pub(super) wake: Arc<Notify>,
    /// Wakes the loop to start what it holds (and claim more if the last claim was full).
    pub(super) nudge: Arc<Notify>,
    pub(super) metrics: Arc<Metrics>,
    ops: Ingest,
    pub(super) notifier: Arc<crate::streams::notify::Notifier>,
    queue: Arc<LocalQueue>,
    endpoints: Mutex<HashMap<Uuid, EndpointState>>,
    /// Until when each endpoint's last success counts as written (see the recorder).
    pub(super) health_noted: Mutex<HashMap<Uuid, Instant>>,
    /// When this instance last announced each endpoint's recovery (`endpoint.recovered`
    /// at most once a minute per endpoint, however often a flapping receiver recovers).
    pub(super) recovery_announced: Mutex<HashMap<Uuid, Instant>>,
    /// Claims run on a connection of their own, with plain index scans (see
    /// `delivery::CLAIM_SESSION`).
    claim_conn: Dedicated,
    /// Records are written on a connection of their own, with `synchronous_commit` off:
    /// see the recorder.
    pub(super) record_conn: Dedicated,
    permits: Arc<Semaphore>,
    records: mpsc::UnboundedSender<Message>,
    recorder_rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// The last claim returned all it asked for: there is probably more.
    more_due: AtomicBool,
    /// Endpoints whose last claim took all the room they had.
    cut_short: Mutex<std::collections::HashSet<Uuid>>,
    /// Something held waits only for a rate-limit token.
    rate_waiting: AtomicBool,
    /// The earliest retry this worker scheduled, so that short retry delays do not wait
    /// for the poll.
    soonest_retry: Mutex<Option<chrono::DateTime<Utc>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What a worker is wired to.
#[expect(
    missing_debug_implementations,
    reason = "holds the pool, which has no Debug"
)]
pub struct WorkerParts {
    /// The HTTP sender.
    pub sender: Sender,
    /// Notified when deliveries become due.
    pub wake: Arc<Notify>,
    /// The queue ingest hands claimed deliveries to (its wake is `nudge`).
    pub queue: Arc<LocalQueue>,
    /// Notified when the queue has something new.
    pub nudge: Arc<Notify>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where operational events are published.
    pub ops: Ingest,
    /// The after-commit hook.
    pub notifier: Arc<crate::streams::notify::Notifier>,
}

impl Worker {
    /// A worker; operational events (`endpoint.disabled`, ...) are published through
    /// `parts.ops`.
    pub fn new(parts: WorkerParts, settings: WorkerSettings) -> Arc<Self> {
        let (records, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            sender: parts.sender,
            schedule: settings.schedule,
            lease: lease_for(settings.timeout),
            timeout: settings.timeout,
            concurrency: settings.concurrency,
            disable_after: settings.disable_after,
            wake: parts.wake,
            nudge: parts.nudge,
            metrics: parts.metrics,
            ops: parts.ops,
            notifier: parts.notifier,
            queue: parts.queue,
            endpoints: Mutex::new(HashMap::new()),
            health_noted: Mutex::new(HashMap::new()),
            recovery_announced: Mutex::new(HashMap::new()),
            claim_conn: Dedicated::new(
                &settings.database_url,
                settings.connect_timeout,
                "herald-worker",
                delivery::CLAIM_SESSION,
            ),
            record_conn: Dedicated::new(
                &settings.database_url,
                settings.connect_timeout,
                "herald-recorder",
                delivery::RECORD_SESSION,
            ),
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            records,
            recorder_rx: Mutex::new(Some(rx)),
            more_due: AtomicBool::new(false),
            cut_short: Mutex::new(std::collections::HashSet::new()),
            rate_waiting: AtomicBool::new(false),
            soonest_retry: Mutex::new(None),
        })
    }

    fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, EndpointState>> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs until `cancel`, then gives back what it holds unattempted, waits (up to the
    /// lease) for attempts in flight and writes their records.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let rx = self
            .recorder_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(rx) = rx else {
            tracing::error!("the worker was started twice");
            return;
        };
        let recorder = tokio::spawn(self.clone().run_recorder(rx));
        let mut claim = true;
        loop {
            self.dispatch();
            if claim {
                self.claim_more().await;
            }
            let pause = self.pause();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => claim = true,
                () = self.nudge.notified() => claim = self.more_due(),
                () = tokio::time::sleep(pause) => claim = true,
            }
        }
        let held: Vec<(Uuid, Uuid)> = self
            .queue
            .lock()
            .drain(..)
            .map(|r| (r.claimed.id, r.token))
            .collect();
        if !held.is_empty() {
            let _ = self.records.send(Message::Release(held));
        }
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(self.lease, self.permits.acquire_many(all)).await;
        // Every attempt has handed over its record: let the recorder write the rest.
        let _ = self.records.send(Message::Stop);
        let _ = recorder.await;
    }

    /// How long to sleep when nothing wakes the worker: the poll interval, or less when a
    /// retry this worker scheduled falls due sooner or a held delivery waits for a rate
    /// token.
    fn pause(&self) -> Duration {
        let poll = if self.rate_waiting.load(Ordering::Acquire) {
            Duration::from_millis(20)
        } else {
            POLL
        };
        let mut soonest = self
            .soonest_retry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *soonest {
            Some(at) => match (at - Utc::now()).to_std() {
                Ok(left) if left < poll => left,
                Ok(_) => poll,
                Err(_) => {
                    *soonest = None;
                    Duration::ZERO
                }
            },
            None => poll,
        }
    }

    /// Remembers a retry's time, so the loop wakes for it.
    pub(super) fn note_retry(&self, at: chrono::DateTime<Utc>) {
        let mut soonest = self
            .soonest_retry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if soonest.is_none_or(|s| at < s) {
            *soonest = Some(at);
        }
    }

    /// Starts every held delivery that capacity, its endpoint's in-flight limit and rate
    /// allow, in the order they came; gives back those whose lease would not outlast a
    /// request; tells ingest which endpoints it holds enough of.
    fn dispatch(self: &Arc<Self>) {
        let now = Instant::now();
        let mut released = Vec::new();
        let mut started = Vec::new();
        let mut rate_waiting = false;
        {
            let mut items = self.queue.lock();
            let mut endpoints = self.endpoints();
            let mut kept = std::collections::VecDeque::with_capacity(items.len());
            while let Some(ready) = items.pop_front() {
                if !ready.sendable(now, self.timeout) {
                    released.push((ready.claimed.id, ready.token));
                    continue;
                }
                let state = endpoints
                    .entry(ready.claimed.endpoint_id)
                    .or_insert_with(|| EndpointState::new(&ready.claimed));
                state.update(&ready.claimed);
                if self.permits.available_permits() == 0 {
                    kept.push_back(ready);
                    kept.extend(items.drain(..));
                    break;
                }
                if !state.try_start() {
                    rate_waiting |= state.in_flight < state.max_in_flight;
                    kept.push_back(ready);
                    continue;
                }
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => started.push((ready, permit)),
                    Err(_) => {
                        state.in_flight -= 1;
                        kept.push_back(ready);
                    }
                }
            }
            *items = kept;
            // Ingest leaves new deliveries of endpoints with no room to the claim query.
            self.queue.set_skip(
                rooms(&items, &endpoints)
                    .into_iter()
                    .filter(|(_, room)| *room == 0)
                    .map(|(id, _)| id)
                    .collect(),
            );
        }
        self.rate_waiting.store(rate_waiting, Ordering::Release);
        if !released.is_empty() {
            tracing::debug!(
                count = released.len(),
                "giving back claims that waited too long"
            );
            let _ = self.records.send(Message::Release(released));
        }
        for (ready, permit) in started {
            self.spawn_attempt(ready, permit);
        }
    }

    fn spawn_attempt(self: &Arc<Self>, ready: Ready, permit: tokio::sync::OwnedSemaphorePermit) {
        let worker = self.clone();
        // Whatever an attempt logs carries what it is about.
        let span = tracing::info_span!(
            "webhook_attempt",
            delivery_id = %ready.claimed.id,
            endpoint_id = %ready.claimed.endpoint_id,
            event_id = %ready.claimed.event_id,
            attempt = ready.claimed.attempts,
        );
        tokio::spawn(
            async move {
                let sent = worker.sender.send(&ready.claimed).await;
                let endpoint_id = ready.claimed.endpoint_id;
                let took = sent.duration;
                let record = worker.build_record(ready.claimed, ready.token, sent);
                if let Some(state) = worker.endpoints().get_mut(&endpoint_id) {
                    state.finished(took);
                }
                if worker
                    .records
                    .send(Message::Record(Box::new(record)))
                    .is_err()
                {
                    // The recorder is gone: the claim expires and the delivery is retried.
                    tracing::warn!("attempt finished after the recorder stopped");
                }
                drop(permit);
                worker.dispatch();
                if worker.queue.is_empty() {
                    worker.nudge.notify_one();
                }
            }
            .instrument(span),
        );
    }

    /// Claims as much as the worker should hold, in batches, into the queue.
    async fn claim_more(self: &Arc<Self>) {
        loop {
            let (ids, rooms, held) = self.claim_rooms();
            let limit = (self.concurrency * 2).saturating_sub(held).min(CLAIM_BATCH);
            if limit == 0 {
                return;
            }
            let token = Uuid::now_v7();
            let claimed_at = Instant::now();
            let batch = match self.claim(limit as i64, token, &ids, &rooms).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "could not claim deliveries");
                    return;
                }
            };
            let full = batch.len() == limit;
            let cut = self.note_claimed(&batch, &ids, &rooms);
            tracing::debug!(
                limit,
                claimed = batch.len(),
                full,
                cut,
                "claimed deliveries"
            );
            self.more_due.store(full, Ordering::Release);
            let lease_until = claimed_at + self.lease;
            self.queue
                .lock()
                .extend(batch.into_iter().map(|claimed| Ready {
                    claimed,
                    token,
                    lease_until,
                }));
            self.dispatch();
            if !full {
                return;
            }
        }
    }

    /// Whether a claim now would probably find something: the last one returned all it
    /// asked for, or an endpoint whose last claim took all the room it had has room again.
    /// (An endpoint's first claim takes only its `max_in_flight`, and the next, made while
    /// those are in flight, has no room: without this the rest waited for the poll. An
    /// endpoint that stays without room, such as a slow one with a backlog, does not make
    /// every other endpoint's finished attempt claim again.)
    fn more_due(&self) -> bool {
        if self.more_due.load(Ordering::Acquire) {
            return true;
        }
        let cut: Vec<Uuid> = self
            .cut_short
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if cut.is_empty() {
            return false;
        }
        let (ids, rooms, _) = self.claim_rooms();
        cut.iter().any(|id| {
            ids.iter()
                .position(|known| known == id)
                .is_none_or(|i| rooms[i] > 0)
        })
    }

    /// Keeps, per endpoint, whether its last claim took all the room it had (see
    /// [`claim_verdicts`] and [`Self::more_due`]); returns whether any endpoint's did.
    fn note_claimed(&self, batch: &[Claimed], ids: &[Uuid], rooms: &[i32]) -> bool {
        let mut cut = self
            .cut_short
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, was_cut) in claim_verdicts(batch, ids, rooms) {
            if was_cut {
                cut.insert(id);
            } else {
                cut.remove(&id);
            }
        }
        !cut.is_empty()
    }

    /// Per endpoint the worker knows, how many more it may claim; and how many it holds
    /// in all (in flight and waiting).
    fn claim_rooms(&self) -> (Vec<Uuid>, Vec<i32>, usize) {
        let items = self.queue.lock();
        let endpoints = self.endpoints();
        let in_flight: usize = endpoints.values().map(|s| s.in_flight).sum();
        let (ids, rooms) = rooms(&items, &endpoints)
            .into_iter()
            .map(|(id, room)| (id, i32::try_from(room).unwrap_or(i32::MAX)))
            .unzip();
        (ids, rooms, items.len() + in_flight)
    }

    /// One claim on the worker's own connection.
    async fn claim(
        &self,
        limit: i64,
        token: Uuid,
        endpoints: &[Uuid],
        rooms: &[i32],
    ) -> anyhow::Result<Vec<Claimed>> {
        let lease = self.lease.as_secs_f64();
        let mut guard = self.claim_conn.lock().await?;
        let result = delivery::claim(guard.conn()?, limit, lease, token, endpoints, rooms).await;
        if result.is_err() {
            guard.discard();
        }
        Ok(result?)
    }

    /// Publishes operational events on `herald:ops` (best effort: a failure is logged).
    pub(super) async fn publish_ops(&self, ops: Vec<super::ops::OpsEvent>) {
        let events: Vec<PendingEvent> = ops
            .into_iter()
            .filter_map(|event| {
                Some(PendingEvent::new(
                    StreamName::parse(OPS_STREAM).ok()?,
                    EventType::parse(event.event_type()).ok()?,
                    RawJson(serde_json::value::to_raw_value(&event).ok()?),
                ))
            })
            .collect();
        if events.is_empty() {
            return;
        }
        // One commit for all of a batch's operational events.
        if let Err(err) = self.ops.submit(events).await {
            tracing::warn!(error = %err, "could not publish operational events");
        }
    }
}
