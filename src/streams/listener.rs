//! The `LISTEN` connection and the fallback check.
//!
//! One connection per instance, opened outside the pool (a pooled connection could be
//! handed to a request with a `LISTEN` still on it), listens on [`CHANNEL`]. Each
//! notification from another instance hints the hub for the streams it names. When the
//! connection fails, the notification stream ends: the listener reconnects with backoff,
//! `LISTEN`s again and makes every watched stream re-check, since anything sent in between
//! was lost.
//!
//! The fallback check bounds the delay when a notification is lost anyway (or a pooler in
//! transaction mode swallows `LISTEN`): about once a second, one query reads the counters of
//! all watched streams and hints those that moved. Its cost does not grow with waiters.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl as _;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::notify::{CHANGED_ONLY, Notifier, decode};
use super::{CHANNEL, DELIVERIES_CHANNEL};
use crate::db::models::stream;
use crate::db::{self, DbPool};
use crate::metrics::{Metrics, inc};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens until `cancel`.
pub async fn run_listener(
    database_url: String,
    connect_timeout: Duration,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    cancel: CancellationToken,
) {
    let instance = notifier.instance();
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            let mut conn =
                db::establish_named(&database_url, connect_timeout, "herald-listener").await?;
            diesel::sql_query(format!("LISTEN {CHANNEL}"))
                .execute(&mut conn)
                .await?;
            diesel::sql_query(format!("LISTEN {DELIVERIES_CHANNEL}"))
                .execute(&mut conn)
                .await?;
            Ok::<_, anyhow::Error>(conn)
        };
        let mut conn = tokio::select! {
            () = cancel.cancelled() => return,
            session = session => match session {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "LISTEN connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(50);
        inc(&metrics.listener_connects);
        // Say so: instances that believed themselves alone start notifying again.
        notifier.announce();
        // Whatever was sent while we were not listening is lost: re-check everything.
        hub.hint_all();
        notifier.wake_worker();
        notifier.remote_deliveries_changed();
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                next = notifications.next() => match next {
                    Some(Ok(notification)) if notification.channel == DELIVERIES_CHANNEL => {
                        let mut lines = notification.payload.lines();
                        let from = lines.next().and_then(|l| uuid::Uuid::parse_str(l).ok());
                        let second = lines.next();
                        if let Some(from) = from {
                            notifier.heard_from(from, second);
                        }
                        if from == Some(instance) {
                            continue;
                        }
                        notifier.remote_deliveries_changed();
                        if second != Some(CHANGED_ONLY) {
                            notifier.wake_worker();
                        }
                    }
                    Some(Ok(notification)) => {
                        let Some((from, changes)) = decode(&notification.payload) else {
                            continue;
                        };
                        notifier.heard_from(from, notification.payload.lines().nth(1));
                        if from == instance {
                            continue;
                        }
                        inc(&metrics.notifications_received);
                        for (stream, seq) in changes {
                            hub.hint(&stream, Some(seq));
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "LISTEN connection lost; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("LISTEN connection closed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Every `interval`, hints the watched streams whose counters moved. Runs until `cancel`.
pub async fn run_fallback_check(
    pool: DbPool,
    hub: Arc<Hub>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) = check_once(&pool, &hub).await {
            tracing::debug!(error = %err, "fallback check failed");
        }
    }
}

/// One fallback check: a single query for all watched streams.
pub async fn check_once(pool: &DbPool, hub: &Arc<Hub>) -> anyhow::Result<()> {
    let watched = hub.watched();
    if watched.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = watched.into_iter().map(|(name, _)| name).collect();
    let mut conn = pool.get().await?;
    for (name, last_seq) in stream::last_seqs(&mut conn, &names).await? {
        hub.hint(&name, Some(last_seq));
    }
    Ok(())
}
