//! Writing attempts down: finished attempts (and claims given back unattempted) go to one
//! recorder task, which writes whatever arrived within a short window in one statement.
//!
//! Batching at every rate, not only under load: at 200 deliveries/s a window of
//! [`WINDOW`] turns ~200 small transactions a second into ~40 statements, while the
//! receiver already has its webhook. A batch holding an attempt for an `ordered` endpoint is
//! written at once, since the next delivery of its stream waits for this one's outcome.
//!
//! A delivery's outcome is recorded only while its claim token still matches (a claim
//! that expired and was taken over is never overwritten); its attempt is recorded always
//! (it happened). Endpoint health is written only when it changes, or at most every
//! 10 s per endpoint for successes.
//!
//! The recorder writes on a connection of its own whose commits do not wait for their WAL
//! flush (`delivery::RECORD_SESSION`): a PostgreSQL crash can at worst make the last
//! moment's deliveries be attempted again once their claims expire.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use rand::Rng as _;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::ops::OpsEvent;
use super::outcome::{Answer, Next, next};
use super::sender::Sent;
use super::worker::{OPS_STREAM, Worker};
use crate::db::models::attempt::Attempt;
use crate::db::models::delivery::{self, Claimed, DeliveryStatus, Outcome};
use crate::db::models::endpoint;
use crate::metrics::inc;

/// How long the recorder gathers finished attempts before writing them.
pub const WINDOW: Duration = Duration::from_millis(25);
/// Most attempts written per statement.
const BATCH: usize = 500;
/// How long a noted success stands for an endpoint before it is written again.
const HEALTH_NOTE_EVERY: Duration = Duration::from_secs(10);
/// `endpoint.recovered` at most this often per endpoint (and instance): a receiver failing
/// every other request would otherwise announce a recovery with each batch.
const RECOVERY_ANNOUNCED_EVERY: Duration = Duration::from_secs(60);
const GONE_REASON: &str = "the receiver answered 410 Gone";

/// What the recorder is sent.
#[derive(Debug)]
pub enum Message {
    /// A finished attempt.
    Record(Box<Record>),
    /// Claims given back without an attempt: (delivery id, claim token).
    Release(Vec<(Uuid, Uuid)>),
    /// Write what came before, then stop.
    Stop,
}

/// One finished attempt, waiting to be written.
#[derive(Debug)]
pub struct Record {
    claimed: Claimed,
    token: Uuid,
    outcome: Outcome,
    attempt: Attempt,
    next: Next,
}

impl Record {
    /// This record without the receiver's headers and body, and with its error texts in
    /// ASCII: what any database accepts.
    fn without_response(&self) -> Self {
        let ascii = |text: &String| text.escape_default().to_string();
        let mut attempt = self.attempt.clone();
        attempt.response_headers = None;
        attempt.response_body = None;
        attempt.error_detail = attempt.error_detail.as_ref().map(ascii);
        let mut outcome = self.outcome.clone();
        outcome.error = outcome.error.as_ref().map(ascii);
        Self {
            claimed: self.claimed.clone(),
            token: self.token,
            outcome,
            attempt,
            next: self.next.clone(),
        }
    }
}

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

impl Worker {
    /// Turns an attempt's result into the record to write, and its metrics.
    pub(super) fn build_record(&self, claimed: Claimed, token: Uuid, sent: Sent) -> Record {
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
                status: DeliveryStatus::Succeeded,
                next_attempt_at: None,
                status_code,
                error: None,
            },
            Next::Retry(at) => Outcome {
                status: DeliveryStatus::Pending,
                next_attempt_at: Some(*at),
                status_code,
                error,
            },
            Next::Exhausted => Outcome {
                status: DeliveryStatus::Failed,
                next_attempt_at: None,
                status_code,
                error: error.map(|e| format!("{e} (no attempts left)")),
            },
            Next::Gone => Outcome {
                status: DeliveryStatus::Failed,
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
        tracing::debug!(
            status = outcome.status.as_str(),
            code = attempt.response_status,
            error = attempt.error_class.as_deref(),
            duration_ms = attempt.duration_ms,
            "webhook attempt finished"
        );
        Record {
            claimed,
            token,
            outcome,
            attempt,
            next: next_state,
        }
    }

    /// Writes records in batches until it is sent [`Message::Stop`] (or every sender is
    /// gone).
    pub(super) async fn run_recorder(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.recv().await else { break };
            let mut records = Vec::new();
            let mut releases = Vec::new();
            stopping = take(first, &mut records, &mut releases);
            let deadline = tokio::time::Instant::now() + WINDOW;
            let mut urgent = records.iter().any(|r| r.claimed.ordered);
            while !stopping && records.len() < BATCH {
                let message = if urgent {
                    match rx.try_recv() {
                        Ok(message) => message,
                        Err(_) => break,
                    }
                } else {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(message)) => message,
                        Ok(None) | Err(_) => break,
                    }
                };
                stopping = take(message, &mut records, &mut releases);
                urgent |= records.last().is_some_and(|r| r.claimed.ordered);
            }
            self.write(&records, &releases).await;
        }
    }

    async fn write(&self, records: &[Record], releases: &[(Uuid, Uuid)]) {
        if records.is_empty() && releases.is_empty() {
            return;
        }
        match self.write_retrying(records, releases).await {
            Ok(effects) => self.recorded(records, effects).await,
            // One attempt the database refuses must not take the rest of its batch with it:
            // each is tried on its own.
            Err(err) if records.len() > 1 => {
                tracing::warn!(error = %err, attempts = records.len(), "could not record a batch of attempts; recording them one by one");
                if !releases.is_empty()
                    && let Err(err) = self.write_retrying(&[], releases).await
                {
                    tracing::warn!(error = %err, claims = releases.len(), "could not give back claims");
                }
                for record in records {
                    self.write_alone(record).await;
                }
            }
            // The claims stay until their leases end; then the deliveries are retried.
            Err(err) => {
                tracing::warn!(error = %err, attempts = records.len(), "could not record attempts")
            }
        }
        // Claim again when this may have made something claimable: given-back claims, an
        // ordered stream's next delivery, a retry (whose time the loop now knows).
        if !releases.is_empty()
            || records
                .iter()
                .any(|r| r.claimed.ordered || matches!(r.next, Next::Retry(_)))
        {
            self.wake.notify_one();
        }
    }

    /// Records one attempt; if the database refuses it, records it without what came from
    /// the receiver, so that its outcome lands whatever the receiver sent (an outcome never
    /// written would leave the delivery to be claimed and sent again forever).
    async fn write_alone(&self, record: &Record) {
        let one = std::slice::from_ref(record);
        let err = match self.write_retrying(one, &[]).await {
            Ok(effects) => return self.recorded(one, effects).await,
            Err(err) => err,
        };
        tracing::warn!(error = %err, delivery_id = %record.claimed.id, "could not record an attempt; recording it without the response");
        let reduced = [record.without_response()];
        match self.write_retrying(&reduced, &[]).await {
            Ok(effects) => self.recorded(&reduced, effects).await,
            Err(err) => {
                tracing::error!(error = %err, delivery_id = %record.claimed.id, "could not record an attempt")
            }
        }
    }

    /// [`Self::write_batch`], tried again once after 100 ms.
    async fn write_retrying(
        &self,
        records: &[Record],
        releases: &[(Uuid, Uuid)],
    ) -> anyhow::Result<BatchEffects> {
        let result = self.write_batch(records, releases).await;
        if result.is_ok() {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.write_batch(records, releases).await
    }

    async fn recorded(&self, records: &[Record], effects: BatchEffects) {
        if !records.is_empty() {
            self.notifier.deliveries_changed();
        }
        self.after_batch(records, effects).await;
    }

    /// One statement for the outcomes and attempts (and one for released claims); when an
    /// endpoint's health changes, all of it in one transaction with that.
    async fn write_batch(
        &self,
        batch: &[Record],
        releases: &[(Uuid, Uuid)],
    ) -> anyhow::Result<BatchEffects> {
        let items: Vec<delivery::OutcomeOf<'_>> = batch
            .iter()
            .map(|r| delivery::OutcomeOf {
                id: r.claimed.id,
                event_id: r.claimed.event_id,
                token: r.token,
                outcome: &r.outcome,
            })
            .collect();
        let attempts: Vec<&Attempt> = batch.iter().map(|r| &r.attempt).collect();
        let health = self.health_changes(batch);
        let errors = last_errors(batch);
        let disable_after = self.disable_after;
        let mut guard = self.record_conn.lock().await?;
        let conn = guard.conn()?;
        let endpoints = EndpointChanges {
            health: &health,
            errors: &errors,
            disable_after,
        };
        let mut result = write_on(conn, &items, &attempts, releases, &endpoints).await;
        if let Err(err) = &result
            && crate::partitions::is_missing_partition(err)
        {
            // Today's attempts partition is missing (the hourly check fell behind).
            tracing::warn!(error = %err, "an attempt's day had no partition; making it");
            crate::partitions::ensure_on(conn).await?;
            result = write_on(conn, &items, &attempts, releases, &endpoints).await;
        }
        if result.is_err() {
            guard.discard();
        }
        Ok(result?)
    }

    /// What each endpoint's health needs written for this batch: a 410 disables it; a
    /// success is written unless one was written in the last [`HEALTH_NOTE_EVERY`]; a
    /// failure always (it may start the disable clock, or end it).
    fn health_changes(&self, batch: &[Record]) -> Vec<(Uuid, Health)> {
        let mut seen: HashMap<Uuid, Health> = HashMap::new();
        for r in batch {
            let change = match r.next {
                Next::Gone => Health::Gone,
                Next::Retry(_) | Next::Exhausted => Health::Failed,
                Next::Succeeded => Health::Succeeded,
            };
            let entry = seen.entry(r.claimed.endpoint_id).or_insert(change);
            *entry = (*entry).max(change);
        }
        let noted = self
            .health_noted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        seen.into_iter()
            .filter(|(id, change)| {
                *change != Health::Succeeded || noted.get(id).is_none_or(|until| *until <= now)
            })
            .collect()
    }

    /// Metrics, retry timing and operational events, once a batch is committed.
    async fn after_batch(&self, batch: &[Record], effects: BatchEffects) {
        {
            let mut noted = self
                .health_noted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for id in &effects.noted {
                noted.insert(*id, Instant::now() + HEALTH_NOTE_EVERY);
            }
            for r in batch {
                if !matches!(r.next, Next::Succeeded) {
                    noted.remove(&r.claimed.endpoint_id);
                }
            }
        }
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
                    self.note_retry(at);
                }
                Next::Exhausted | Next::Gone => inc(&self.metrics.deliveries_failed),
            }
            if r.next == Next::Exhausted && r.claimed.stream != OPS_STREAM {
                // Not for deliveries of ops events themselves: a failing endpoint
                // subscribed to herald:ops would otherwise feed itself forever.
                ops.push(OpsEvent::DeliveryFailed {
                    delivery_id: r.claimed.id,
                    endpoint_id: r.claimed.endpoint_id,
                    event_id: r.claimed.event_id,
                    event_type: r.claimed.event_type.clone(),
                    stream: r.claimed.stream.clone(),
                    attempts: r.claimed.attempts,
                    last_error: r.outcome.error.clone(),
                });
            }
        }
        for (endpoint_id, reason) in effects.disabled {
            tracing::warn!(endpoint = %endpoint_id, %reason, "endpoint disabled");
            ops.push(OpsEvent::EndpointDisabled {
                endpoint_id,
                url: url_of(endpoint_id),
                reason,
            });
        }
        let now = Instant::now();
        let announce: Vec<_> = {
            let mut announced = self
                .recovery_announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            announced.retain(|_, at| now.duration_since(*at) < RECOVERY_ANNOUNCED_EVERY);
            effects
                .recovered
                .into_iter()
                .filter(|(endpoint_id, _)| announced.insert(*endpoint_id, now).is_none())
                .collect()
        };
        for (endpoint_id, since) in announce {
            ops.push(OpsEvent::EndpointRecovered {
                endpoint_id,
                url: url_of(endpoint_id),
                failing_since: since,
            });
        }
        self.publish_ops(ops).await;
    }
}

/// Each endpoint's last error in `batch` (the batch is in the order attempts ended).
fn last_errors(batch: &[Record]) -> Vec<(Uuid, &str)> {
    let mut last: HashMap<Uuid, &str> = HashMap::new();
    for r in batch {
        if let Some(error) = &r.outcome.error {
            last.insert(r.claimed.endpoint_id, error);
        }
    }
    last.into_iter().collect()
}

/// What a batch changes on its endpoints' rows.
struct EndpointChanges<'a> {
    /// Health changes (see [`Recorder::health_changes`]).
    health: &'a [(Uuid, Health)],
    /// Each endpoint's last error in the batch.
    errors: &'a [(Uuid, &'a str)],
    /// `HERALD_DISABLE_AFTER`.
    disable_after: Duration,
}

/// Writes a batch on `conn`: one statement for the outcomes and attempts (and one for
/// released claims), in one transaction with the endpoints' changes when there are any.
async fn write_on(
    conn: &mut diesel_async::AsyncPgConnection,
    items: &[delivery::OutcomeOf<'_>],
    attempts: &[&Attempt],
    releases: &[(Uuid, Uuid)],
    endpoints: &EndpointChanges<'_>,
) -> diesel::QueryResult<BatchEffects> {
    let EndpointChanges {
        health,
        errors,
        disable_after,
    } = *endpoints;
    if health.is_empty() && errors.is_empty() {
        let recorded = delivery::record_many(conn, items, attempts).await?;
        delivery::release(conn, releases).await?;
        return Ok(BatchEffects {
            recorded: recorded.into_iter().collect(),
            ..BatchEffects::default()
        });
    }
    conn.transaction(async |conn| {
        let recorded = delivery::record_many(conn, items, attempts).await?;
        delivery::release(conn, releases).await?;
        let mut effects = BatchEffects {
            recorded: recorded.into_iter().collect(),
            ..BatchEffects::default()
        };
        endpoint::note_errors(conn, errors).await?;
        for (endpoint_id, change) in health {
            let disabled = match change {
                // Only the batch that disables it says so (and fails what is left): others
                // with a 410 of the same endpoint find it disabled already.
                Health::Gone => endpoint::disable(conn, *endpoint_id, GONE_REASON)
                    .await?
                    .then(|| GONE_REASON.to_owned()),
                Health::Succeeded => {
                    if let Some(since) = endpoint::note_success(conn, *endpoint_id).await? {
                        effects.recovered.push((*endpoint_id, since));
                    }
                    effects.noted.push(*endpoint_id);
                    None
                }
                Health::Failed => {
                    let reason = format!("no successful delivery for {}", humanize(disable_after));
                    endpoint::note_failure(conn, *endpoint_id, disable_after, &reason)
                        .await?
                        .then_some(reason)
                }
            };
            if let Some(reason) = disabled {
                delivery::fail_unfinished(conn, *endpoint_id, "endpoint disabled").await?;
                effects.disabled.push((*endpoint_id, reason));
            }
        }
        Ok(effects)
    })
    .await
}

/// Adds a message to the batch being gathered; whether it was the last.
fn take(message: Message, records: &mut Vec<Record>, releases: &mut Vec<(Uuid, Uuid)>) -> bool {
    match message {
        Message::Record(record) => records.push(*record),
        Message::Release(mut claims) => releases.append(&mut claims),
        Message::Stop => return true,
    }
    false
}

/// What a batch says about an endpoint, in order of precedence: a 410 disables it, and a
/// success in the batch shows it works even if other attempts failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Failed,
    Succeeded,
    Gone,
}

/// What a written batch changed beyond its deliveries.
#[derive(Debug, Default)]
struct BatchEffects {
    recorded: HashSet<Uuid>,
    disabled: Vec<(Uuid, String)>,
    recovered: Vec<(Uuid, DateTime<Utc>)>,
    /// Endpoints whose success was written.
    noted: Vec<Uuid>,
}
