//! Group commit: many requests' events stored by one transaction.
//!
//! A PostgreSQL commit waits for its WAL flush, so one transaction per request caps ingest
//! near the disk's flush rate (about 2,000 commits/s on the reference machine). Handlers
//! therefore hand their validated events to a few committer tasks. A committer takes
//! whatever requests have queued up while the previous commit was in flight (up to
//! [`MAX_GROUP_EVENTS`] events), stores them in one transaction, and only then answers each
//! request: an event is acknowledged after, and only after, the commit that holds it.
//!
//! If a group fails as a whole, each of its requests is retried on its own, so one request
//! can never make another fail, and each request stays all-or-nothing.
//!
//! Each committer stores its groups on a connection of its own (outside the pool, so a
//! publish pays no pool checkout ping), set up with [`INGEST_SESSION`].
//!
//! The committers stop when every [`Ingest`] handle is gone (the server has stopped), after
//! answering everything still queued.

use std::sync::Arc;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::Dedicated;
use crate::db::models::event::{self, Event, PendingEvent, Stored};
use crate::streams::notify::Notifier;

/// The session of a committer's connection: the ingest statement runs with its generic
/// plan. Left to choose, PostgreSQL planned it again on every call (a custom plan for
/// each set of arrays is estimated cheaper than the generic plan, which assumes 100
/// elements per array), and planning the statement cost more CPU than running it
/// (`pg_stat_statements` with `track_planning`: 0.38 ms of planning per call at 200
/// events/s; see docs/benchmarks.md). The plan does not depend on the values: every
/// array is scanned whole and every join is on a key.
pub const INGEST_SESSION: &str = "SET plan_cache_mode = force_generic_plan";

/// A group is closed once it holds this many events.
pub const MAX_GROUP_EVENTS: usize = 1000;
/// Requests waiting for a committer before `submit` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 4096;

type Reply = oneshot::Sender<Result<Vec<Event>, IngestError>>;

/// Why events were not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The committers have stopped (the server is shutting down).
    #[error("Herald is shutting down")]
    ShuttingDown,
    /// No connection to the database.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] DieselError),
}

struct Job {
    events: Vec<PendingEvent>,
    reply: Reply,
}

/// The handle handlers submit events through.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} events)", self.events.len())
    }
}

impl Ingest {
    /// Starts `committers` committer tasks on the current runtime, each with a connection
    /// of its own to `database_url` (opened on first use, opened again after an error);
    /// `notifier` hears of every commit.
    pub fn start(
        database_url: &str,
        connect_timeout: std::time::Duration,
        committers: usize,
        notifier: Arc<Notifier>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..committers.max(1))
            .map(|_| {
                let conn = Dedicated::new(
                    database_url,
                    connect_timeout,
                    "herald-ingest",
                    INGEST_SESSION,
                );
                tokio::spawn(run_committer(conn, rx.clone(), notifier.clone()))
            })
            .collect();
        (Self { tx }, handles)
    }

    /// Stores `events` atomically, returning them as stored once they are committed.
    pub async fn submit(&self, events: Vec<PendingEvent>) -> Result<Vec<Event>, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { events, reply })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        answer.await.map_err(|_| IngestError::ShuttingDown)?
    }
}

async fn run_committer(
    conn: Dedicated,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    notifier: Arc<Notifier>,
) {
    while let Some(group) = next_group(&rx).await {
        commit_group(&conn, group, &notifier).await;
    }
}

/// Waits for one job, then takes every job already queued, up to the group limit.
async fn next_group(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut total = first.events.len();
    let mut group = vec![first];
    while total < MAX_GROUP_EVENTS {
        match rx.try_recv() {
            Ok(job) => {
                total += job.events.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
    Some(group)
}

async fn commit_group(conn: &Dedicated, group: Vec<Job>, notifier: &Notifier) {
    let all: Vec<PendingEvent> = group
        .iter()
        .flat_map(|j| j.events.iter().cloned())
        .collect();
    match store(conn, all, notifier).await {
        Ok(stored) => {
            let mut stored = notifier.committed(stored).into_iter();
            for job in group {
                let mine: Vec<Event> = stored.by_ref().take(job.events.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(err) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                let _ = job.reply.send(Err(err));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, jobs = group.len(), "group commit failed; retrying its requests one by one");
            for job in group {
                let result = store(conn, job.events, notifier)
                    .await
                    .map(|stored| notifier.committed(stored));
                let _ = job.reply.send(result);
            }
        }
    }
}

/// One statement (so one transaction of its own, with no `BEGIN`/`COMMIT` round trips),
/// retried once on a deadlock or serialization failure, or after making the day partition
/// it found missing. When this instance sends
/// webhooks, the deliveries it can attempt at once are claimed in the same statement and
/// handed to its worker after the commit (by [`Notifier::committed`]).
///
/// After an error that may have left the connection unusable, the connection is dropped
/// and the next group opens a fresh one.
async fn store(
    conn: &Dedicated,
    events: Vec<PendingEvent>,
    notifier: &Notifier,
) -> Result<Stored, IngestError> {
    let unavailable = |e: anyhow::Error| IngestError::Unavailable(format!("{e:#}"));
    let mut guard = conn.lock().await.map_err(unavailable)?;
    let mut attempt = 0;
    loop {
        let claim = notifier.insert_claim();
        let live = guard.conn().map_err(unavailable)?;
        let result = event::insert_all(live, events.clone(), claim.as_ref()).await;
        match result {
            Err(err) if attempt == 0 && is_retryable(&err) => attempt += 1,
            Err(err) if attempt == 0 && crate::partitions::is_missing_partition(&err) => {
                tracing::warn!(error = %err, "an event's day had no partition; making it");
                crate::partitions::ensure_on(live)
                    .await
                    .map_err(IngestError::Query)?;
                attempt += 1;
            }
            Err(err) => {
                if !is_statement_error(&err) {
                    guard.discard();
                }
                return Err(IngestError::Query(err));
            }
            Ok(stored) => return Ok(stored),
        }
    }
}

/// Errors PostgreSQL raised for the statement itself (a constraint, a conflict): the
/// connection is fine. Anything else (closed, unable to send, a protocol error) may have
/// left it unusable.
fn is_statement_error(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(kind, _)
            if !matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
            )
    )
}

/// Deadlocks and serialization failures are safe to retry.
pub fn is_retryable(err: &DieselError) -> bool {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        DieselError::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}
