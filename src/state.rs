//! `AppState`: everything a handler may need, built once by `startup` and passed in
//! explicitly (no globals).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::config::Settings;
use crate::db::DbPool;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::streams::disconnect::DisconnectWatcher;
use crate::streams::hub::Hub;
use crate::streams::notify::Notifier;

/// Everything a handler may need, passed in explicitly (no globals).
pub struct AppState {
    /// Database connections.
    pub pool: DbPool,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The group committer for new events.
    pub ingest: Ingest,
    /// Recently authenticated keys.
    pub keys: Arc<KeyCache>,
    /// Held long-polls and SSE streams.
    pub hub: Arc<Hub>,
    /// The after-commit hook that wakes hubs.
    pub notifier: Arc<Notifier>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Reports clients of held requests that went away.
    pub disconnects: Arc<DisconnectWatcher>,
    /// Held requests by API key, ended when their key is deleted.
    pub key_holds: Arc<crate::streams::holds::KeyHolds>,
    /// Failed authentications of any kind, per client address.
    pub auth_failures: crate::throttle::FailureLimiter,
    /// Failed console sign-ins, per client address (stricter: a lockout).
    pub sign_ins: crate::throttle::FailureLimiter,
    /// Cancelled when shutdown begins: held long-polls, SSE streams and the console's
    /// feed end at once, and new requests are refused (`503`, `Connection: close`).
    pub stopping: CancellationToken,
    /// Database reads that WebSocket subscriptions may make at once while they catch up
    /// (half the pool): a burst of subscriptions queues here instead of timing out on the
    /// pool.
    pub catch_up_reads: tokio::sync::Semaphore,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
