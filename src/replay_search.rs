//! Goes on with bulk replays that search the history in steps (a filter no index answers:
//! see [`crate::db::models::replay::search_step`]). The request that starts one takes the
//! first step; this task takes the rest, one committed step at a time, on any instance
//! (a step locks its replay's row, skipping one another instance holds).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::deliveries::MAX_BULK_REPLAY;
use crate::db::DbPool;
use crate::db::models::replay;
use crate::streams::notify::Notifier;

/// How often it looks for a searching replay when there was none.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Takes steps until no searching replay is left (or `cancel`). Returns how many steps.
///
/// After each step it rests as long as the step took, so a search of the whole history
/// (about 2,300 steps at 20 million deliveries) keeps at most half of one database core
/// and leaves the rest to ingest and delivery.
pub async fn search_all(
    pool: &DbPool,
    notifier: &Notifier,
    cancel: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut steps = 0;
    while !cancel.is_cancelled() {
        let started = tokio::time::Instant::now();
        let step = {
            let mut conn = pool.get().await?;
            replay::search_step(&mut conn, MAX_BULK_REPLAY).await?
        };
        let Some(step) = step else {
            break;
        };
        steps += 1;
        if step.replayed > 0 {
            notifier.deliveries_due();
        }
        if step.searching {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(started.elapsed()) => {}
            }
        }
    }
    Ok(steps)
}

/// Searches every [`INTERVAL`] until `cancel`.
pub async fn run(pool: DbPool, notifier: Arc<Notifier>, cancel: CancellationToken) {
    let stop = cancel.clone();
    crate::periodic::every(INTERVAL, cancel, || async {
        if let Err(err) = search_all(&pool, &notifier, &stop).await {
            tracing::warn!(error = %err, "a bulk replay's search step failed; will retry");
        }
    })
    .await;
}
