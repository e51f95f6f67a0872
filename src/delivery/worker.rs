//! The claim loop.
//!
//! Deliveries are claimed in batches with `FOR UPDATE SKIP LOCKED` (so instances never take
//! the same row) and a lease of the request timeout plus a margin: the row lock is released
//! when the claim commits, before any HTTP request, and a crashed worker's claims become
//! claimable again when their lease runs out. Each claim carries a token; an outcome is
//! recorded only while the token still matches, so a delivery is never attempted twice at
//! the same time by design, and a late writer cannot overwrite a newer claim.
//!
//! Fairness: `HERALD_DELIVERY_CONCURRENCY` attempts run at once per instance, and each
//! endpoint gets at most its `max_in_flight` of them (counted per instance), so a slow or
//! dead endpoint ties up only its own share and never delays healthy ones.
//!
//! New deliveries wake the worker at once (in-process after a local commit, `NOTIFY` from
//! other instances); a poll every second is the fallback, and picks up retries as they fall
//! due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::outcome::{Answer, Next, next};
use super::sender::{Sender, Sent};
use diesel_async::AsyncConnection as _;

use crate::db::models::delivery::{self, Attempt, Claimed, Outcome};
use crate::db::models::endpoint;
use crate::db::models::event::PendingEvent;
use crate::db::{DbPool, RawJson};
use crate::domain::retry::RetrySchedule;
use crate::domain::{EventType, StreamName};
use crate::ingest::Ingest;
use crate::metrics::{Metrics, inc};

const GONE_REASON: &str = "the receiver answered 410 Gone";

/// `5d`, `3h`, `90s`: a duration as settings spell it.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// How long a claim outlives the request timeout: half of it, and at least 5 s.
fn lease_for(timeout: Duration) -> Duration {
    timeout + (timeout / 2).max(Duration::from_secs(5))
}
/// The slow fallback poll.
const POLL: Duration = Duration::from_secs(1);
/// Most deliveries claimed per query.
const CLAIM_BATCH: usize = 64;
/// Most attempts written per transaction.
const RECORD_BATCH: usize = 500;

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

/// A per-endpoint token bucket for `rate_limit`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
    max_in_flight: i32,
    refilled: std::time::Instant,
}

impl Bucket {
    fn refill(&mut self) {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.refilled = now;
    }
}

/// The worker's configuration and shared parts.
pub struct Worker {
    pool: DbPool,
    sender: Sender,
    schedule: RetrySchedule,
    lease: Duration,
    concurrency: usize,
    disable_after: Duration,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    ops: Ingest,
    notifier: Arc<crate::streams::notify::Notifier>,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
    database_url: String,
    connect_timeout: Duration,
    claim_conn: tokio::sync::Mutex<Option<diesel_async::AsyncPgConnection>>,
    in_flight: Mutex<HashMap<Uuid, usize>>,
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

impl Worker {
    /// A worker; `wake` is notified when deliveries become due; operational events
    /// (`endpoint.disabled`, ...) are published through `ops`.
    pub fn new(
        pool: DbPool,
        sender: Sender,
        settings: WorkerSettings,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        ops: Ingest,
        notifier: Arc<crate::streams::notify::Notifier>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            sender,
            schedule: settings.schedule,
            lease: lease_for(settings.timeout),
            concurrency: settings.concurrency,
            disable_after: settings.disable_after,
            wake,
            metrics,
            ops,
            notifier,
            buckets: Mutex::new(HashMap::new()),
            database_url: settings.database_url,
            connect_timeout: settings.connect_timeout,
            claim_conn: tokio::sync::Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
            soonest_retry: Mutex::new(None),
        })
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs until `cancel`, then waits (up to the lease) for attempts in flight.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let (records, rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(self.clone().run_recorder(rx));
        loop {
            self.claim_and_spawn(&permits, &records).await;
            let pause = self.pause();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(self.lease, permits.acquire_many(all)).await;
        // Every attempt has handed over its record: let the recorder write the rest.
        drop(records);
        let _ = recorder.await;
    }

    /// How long to sleep when nothing wakes the worker: the poll interval, or less when a
    /// retry this worker scheduled falls due sooner.
    fn pause(&self) -> Duration {
        let mut soonest = self
            .soonest_retry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *soonest {
            Some(at) => match (at - Utc::now()).to_std() {
                Ok(left) if left < POLL => left,
                Ok(_) => POLL,
                Err(_) => {
                    *soonest = None;
                    Duration::ZERO
                }
            },
            None => POLL,
        }
    }

    /// Claims as much as free capacity allows and starts the attempts.
    async fn claim_and_spawn(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        records: &mpsc::UnboundedSender<Record>,
    ) {
        loop {
            let free = permits.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                return;
            }
            let (busy, counts) = self.busy_endpoints();
            let token = Uuid::now_v7();
            let claimed = self.claim(free as i64, token, &busy, &counts).await;
            let batch = match claimed {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "could not claim deliveries");
                    return;
                }
            };
            let full = batch.len() == free;
            for claimed in batch {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                *self.in_flight().entry(claimed.endpoint_id).or_default() += 1;
                self.take_token(&claimed);
                let worker = self.clone();
                let records = records.clone();
                // Whatever an attempt logs carries what it is about.
                let span = tracing::info_span!(
                    "webhook_attempt",
                    delivery_id = %claimed.id,
                    endpoint_id = %claimed.endpoint_id,
                    event_id = %claimed.event_id,
                    attempt = claimed.attempts,
                );
                tokio::spawn(
                    async move {
                        worker.attempt(claimed, token, &records).await;
                        drop(permit);
                        worker.wake.notify_one();
                    }
                    .instrument(span),
                );
            }
            if !full {
                return;
            }
        }
    }

    /// One claim on the worker's own connection (opened on first use, and again after
    /// an error).
    async fn claim(
        &self,
        limit: i64,
        token: Uuid,
        busy: &[Uuid],
        counts: &[i32],
    ) -> Result<Vec<Claimed>, String> {
        let mut slot = self.claim_conn.lock().await;
        if slot.is_none() {
            let mut conn = crate::db::establish_named(
                &self.database_url,
                self.connect_timeout,
                "herald-worker",
            )
            .await
            .map_err(|e| e.to_string())?;
            delivery::prepare_claim_connection(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_mut() else {
            return Err("no claim connection".into());
        };
        let result =
            delivery::claim(conn, limit, self.lease.as_secs_f64(), token, busy, counts).await;
        if result.is_err() {
            *slot = None;
        }
        result.map_err(|e| e.to_string())
    }

    /// Endpoints to hold back and how "full" to count them: what is in flight here, or,
    /// for rate-limited endpoints, enough to leave room only for the tokens they have.
    fn busy_endpoints(&self) -> (Vec<Uuid>, Vec<i32>) {
        let in_flight = self.in_flight().clone();
        let mut counts: HashMap<Uuid, i32> = in_flight
            .iter()
            .map(|(id, n)| (*id, i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, bucket) in buckets.iter_mut() {
            bucket.refill();
            let allowed = bucket.tokens.floor() as i32;
            let used = counts.get(id).copied().unwrap_or(0);
            counts.insert(*id, used.max(bucket.max_in_flight - allowed));
        }
        counts.into_iter().unzip()
    }

    fn take_token(&self, claimed: &Claimed) {
        let Some(rate) = claimed.rate_limit else {
            self.buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&claimed.endpoint_id);
            return;
        };
        let rate = f64::from(rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(claimed.endpoint_id).or_insert(Bucket {
            tokens: rate.max(1.0),
            rate,
            max_in_flight: claimed.max_in_flight,
            refilled: std::time::Instant::now(),
        });
        bucket.rate = rate;
        bucket.max_in_flight = claimed.max_in_flight;
        bucket.refill();
        bucket.tokens -= 1.0;
    }

    /// Publishes operational events on `herald:ops` (best effort: a failure is logged).
    async fn publish_ops(&self, ops: Vec<(&'static str, serde_json::Value)>) {
        let events: Vec<PendingEvent> = ops
            .into_iter()
            .filter_map(|(event_type, payload)| {
                Some(PendingEvent::new(
                    StreamName::parse(OPS_STREAM).ok()?,
                    EventType::parse(event_type).ok()?,
                    RawJson(serde_json::value::to_raw_value(&payload).ok()?),
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

    async fn attempt(
        &self,
        claimed: Claimed,
        token: Uuid,
        records: &mpsc::UnboundedSender<Record>,
    ) {
        let sent = self.sender.send(&claimed).await;
        let endpoint_id = claimed.endpoint_id;
        let record = self.build_record(claimed, token, sent);
        tracing::debug!(
            status = record.outcome.status,
            code = record.attempt.response_status,
            error = record.attempt.error_class.as_deref(),
            duration_ms = record.attempt.duration_ms,
            "webhook attempt finished"
        );
        if records.send(record).is_err() {
            // The recorder is gone (shutdown): the claim expires and the delivery is retried.
            tracing::warn!("attempt finished after the recorder stopped");
        }
        let mut in_flight = self.in_flight();
        if let Some(n) = in_flight.get_mut(&endpoint_id) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&endpoint_id);
            }
        }
    }

    fn build_record(&self, claimed: Claimed, token: Uuid, sent: Sent) -> Record {
        let attempts = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        let draw = rand::rng().random_range(-1.0..=1.0);
        let now = Utc::now();
        let next_state = next(&sent.answer, attempts, &self.schedule, now, draw);
        self.metrics
            .attempt_duration
            .record(sent.duration.as_secs_f64());
        if matches!(next_state, Next::Succeeded) && !claimed.replay_requested {
            self.metrics.publish_to_delivery.record(
                (now - claimed.event_created_at)
                    .num_microseconds()
                    .unwrap_or(i64::MAX) as f64
                    / 1e6,
            );
        }
        let (status_code, error) = match &sent.answer {
            Answer::Status { code, .. } => (
                Some(i32::from(*code)),
                (!(200..300).contains(code)).then(|| format!("HTTP {code}")),
            ),
            Answer::Error { class, detail } => (None, Some(format!("{class}: {detail}"))),
        };
        let outcome = match &next_state {
            Next::Succeeded => Outcome {
                status: "succeeded",
                next_attempt_at: None,
                status_code,
                error: None,
            },
            Next::Retry(at) => Outcome {
                status: "pending",
                next_attempt_at: Some(*at),
                status_code,
                error,
            },
            Next::Exhausted => Outcome {
                status: "failed",
                next_attempt_at: None,
                status_code,
                error: error.map(|e| format!("{e} (no attempts left)")),
            },
            Next::Gone => Outcome {
                status: "failed",
                next_attempt_at: None,
                status_code,
                error: Some("HTTP 410: the receiver asked to stop; endpoint disabled".into()),
            },
        };
        let (error_class, error_detail) = match &sent.answer {
            Answer::Error { class, detail } => (Some((*class).to_owned()), Some(detail.clone())),
            Answer::Status { .. } => (None, None),
        };
        let attempt = Attempt {
            id: Uuid::now_v7(),
            delivery_id: claimed.id,
            started_at: sent.started_at,
            duration_ms: i32::try_from(sent.duration.as_millis()).unwrap_or(i32::MAX),
            trigger: if claimed.replay_requested {
                "replay"
            } else {
                "schedule"
            }
            .to_owned(),
            triggered_by: claimed.replay_requested_by,
            request_headers: sent.request_headers,
            response_status: status_code,
            response_headers: sent.response_headers,
            response_body: sent.response_body,
            error_class,
            error_detail,
        };
        Record {
            claimed,
            token,
            outcome,
            attempt,
            next: next_state,
        }
    }

    /// Writes recorded attempts in batches: one transaction for whatever finished while the
    /// previous batch was being written. Runs until every sender is gone.
    async fn run_recorder(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Record>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            let mut result = self.write_batch(&batch).await;
            if result.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                result = self.write_batch(&batch).await;
            }
            match result {
                Ok(effects) => {
                    self.notifier.deliveries_changed();
                    self.after_batch(&batch, effects).await;
                }
                // The claims stay until their leases end; then the deliveries are retried.
                Err(err) => {
                    tracing::warn!(error = %err, attempts = batch.len(), "could not record attempts")
                }
            }
            self.wake.notify_one();
        }
    }

    /// One transaction: outcomes, attempts, and endpoint health.
    async fn write_batch(&self, batch: &[Record]) -> anyhow::Result<BatchEffects> {
        let items: Vec<(Uuid, Uuid, &Outcome)> = batch
            .iter()
            .map(|r| (r.claimed.id, r.token, &r.outcome))
            .collect();
        let attempts: Vec<Attempt> = batch.iter().map(|r| r.attempt.clone()).collect();
        // Per endpoint: did anything succeed, go 410, or fail?
        let mut health: HashMap<Uuid, (bool, bool, bool)> = HashMap::new();
        for r in batch {
            let entry = health.entry(r.claimed.endpoint_id).or_default();
            match r.next {
                Next::Succeeded => entry.0 = true,
                Next::Gone => entry.1 = true,
                Next::Retry(_) | Next::Exhausted => entry.2 = true,
            }
        }
        let disable_after = self.disable_after;
        let mut conn = self.pool.get().await?;
        let effects = conn
            .transaction(async |conn| {
                let recorded = delivery::record_many(conn, &items, &attempts).await?;
                let mut effects = BatchEffects {
                    recorded: recorded.into_iter().collect(),
                    ..BatchEffects::default()
                };
                for (endpoint_id, (succeeded, gone, failed)) in &health {
                    let disabled = if *gone {
                        endpoint::disable(conn, *endpoint_id, GONE_REASON).await?;
                        Some(GONE_REASON.to_owned())
                    } else if *succeeded {
                        if let Some(since) = endpoint::note_success(conn, *endpoint_id).await? {
                            effects.recovered.push((*endpoint_id, since));
                        }
                        None
                    } else if *failed {
                        let reason =
                            format!("no successful delivery for {}", humanize(disable_after));
                        endpoint::note_failure(conn, *endpoint_id, disable_after, &reason)
                            .await?
                            .then_some(reason)
                    } else {
                        None
                    };
                    if let Some(reason) = disabled {
                        delivery::fail_unfinished(conn, *endpoint_id, "endpoint disabled").await?;
                        effects.disabled.push((*endpoint_id, reason));
                    }
                }
                Ok::<_, diesel::result::Error>(effects)
            })
            .await?;
        Ok(effects)
    }

    /// Metrics, retry timing and operational events, once a batch is committed.
    async fn after_batch(&self, batch: &[Record], effects: BatchEffects) {
        let url_of = |endpoint_id: Uuid| {
            batch
                .iter()
                .find(|r| r.claimed.endpoint_id == endpoint_id)
                .map(|r| r.claimed.url.clone())
        };
        let mut ops = Vec::new();
        for r in batch {
            if !effects.recorded.contains(&r.claimed.id) {
                continue;
            }
            match r.next {
                Next::Succeeded => inc(&self.metrics.deliveries_succeeded),
                Next::Retry(at) => {
                    inc(&self.metrics.deliveries_retried);
                    let mut soonest = self
                        .soonest_retry
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if soonest.is_none_or(|s| at < s) {
                        *soonest = Some(at);
                    }
                }
                Next::Exhausted | Next::Gone => inc(&self.metrics.deliveries_failed),
            }
            if r.next == Next::Exhausted && r.claimed.stream != OPS_STREAM {
                // Not for deliveries of ops events themselves: a failing endpoint
                // subscribed to herald:ops would otherwise feed itself forever.
                ops.push((
                    "delivery.failed",
                    serde_json::json!({
                        "delivery_id": r.claimed.id,
                        "endpoint_id": r.claimed.endpoint_id,
                        "event_id": r.claimed.event_id,
                        "event_type": r.claimed.event_type,
                        "stream": r.claimed.stream,
                        "attempts": r.claimed.attempts,
                        "last_error": r.outcome.error,
                    }),
                ));
            }
        }
        for (endpoint_id, reason) in effects.disabled {
            tracing::warn!(endpoint = %endpoint_id, %reason, "endpoint disabled");
            ops.push((
                "endpoint.disabled",
                serde_json::json!({"endpoint_id": endpoint_id, "url": url_of(endpoint_id), "reason": reason}),
            ));
        }
        for (endpoint_id, since) in effects.recovered {
            ops.push((
                "endpoint.recovered",
                serde_json::json!({"endpoint_id": endpoint_id, "url": url_of(endpoint_id), "failing_since": since}),
            ));
        }
        self.publish_ops(ops).await;
    }
}

/// One finished attempt, waiting to be written.
#[derive(Debug)]
struct Record {
    claimed: Claimed,
    token: Uuid,
    outcome: Outcome,
    attempt: Attempt,
    next: Next,
}

/// What a written batch changed beyond its deliveries.
#[derive(Debug, Default)]
struct BatchEffects {
    recorded: std::collections::HashSet<Uuid>,
    disabled: Vec<(Uuid, String)>,
    recovered: Vec<(Uuid, chrono::DateTime<Utc>)>,
}
