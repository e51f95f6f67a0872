//! Background tasks that run a step at startup and then every so often until shutdown
//! (retention, the rollup fold).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `step` now and then every `period` (a late step delays the next rather than
/// bunching them up) until `cancel`.
pub async fn every<F, Fut>(period: Duration, cancel: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        step().await;
    }
}
