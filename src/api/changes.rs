//! `/v1/deliveries/changes`: the console's live feed (Server-Sent Events, admin only).

use actix_web::get;
use actix_web::{HttpResponse, web};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Registers the routes (each documented by its `#[utoipa::path]`). Before
/// `deliveries::routes`, whose `/deliveries/{id}` would take `changes` for an id.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(delivery_changes);
}

/// Changes are announced at most this often, so a busy queue costs feed clients (and the
/// reads they make on each change) a bounded rate.
const CHANGES_THROTTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// `GET /v1/deliveries/changes`: Server-Sent Events saying that deliveries changed, so a
/// client (the console) re-reads the list or detail it shows instead of polling.
///
/// It sends `event: ready` at once, then `event: changed` (data: a counter) whenever
/// deliveries were created, replayed or had attempts recorded on any instance, at most every
/// 250 ms; comments as heartbeats; and ends after `HERALD_SSE_MAX_LIFETIME` or at shutdown
/// (EventSource reconnects by itself). It carries no delivery data: the reader asks the
/// list API for exactly the filter it shows.
#[utoipa::path(
    tag = "deliveries",
    summary = "SSE: says when deliveries changed (event: ready, then event: changed)",
    responses((status = 200, description = "text/event-stream", body = String, content_type = "text/event-stream"), super::openapi::AuthErrors),
)]
#[get("/deliveries/changes")]
async fn delivery_changes(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    // Held like a long-poll or an SSE stream: it ends within seconds of its key's deletion.
    let hold = principal.hold(&state.key_holds, state.settings.max_waiters_per_key)?;
    let mut heartbeat = tokio::time::interval(state.settings.sse_heartbeat);
    heartbeat.reset();
    let feed = ChangeFeed {
        changes: state.notifier.watch_deliveries(),
        heartbeat,
        end_at: tokio::time::Instant::now() + state.settings.sse_max_lifetime,
        shutdown: state.stopping.clone(),
        revoked: hold.token(),
        _hold: hold,
        session: principal.session.map(|hash| SessionCheck {
            hash,
            pool: state.pool.clone(),
            every: tokio::time::interval(SESSION_CHECK),
        }),
        started: false,
        _open: OpenFeed::new(&state.metrics),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::stream::unfold(feed, |mut feed| async move {
            feed.next_chunk()
                .await
                .map(|chunk| (Ok::<_, ApiError>(chunk), feed))
        })))
}

struct ChangeFeed {
    changes: tokio::sync::watch::Receiver<u64>,
    heartbeat: tokio::time::Interval,
    end_at: tokio::time::Instant,
    shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the key is deleted.
    revoked: tokio_util::sync::CancellationToken,
    _hold: crate::streams::holds::Hold,
    /// For a console session's feed: ends when the session does.
    session: Option<SessionCheck>,
    started: bool,
    _open: OpenFeed,
}

/// How often a session's feed checks that its session is still live (signed out on any
/// instance, or expired).
const SESSION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

struct SessionCheck {
    hash: Vec<u8>,
    pool: crate::db::DbPool,
    every: tokio::time::Interval,
}

/// Ready when the feed's session has ended (never, for a feed opened with a key). A check
/// that cannot reach the database keeps the feed: the next one decides.
async fn session_ended(check: &mut Option<SessionCheck>) {
    let Some(check) = check else {
        return std::future::pending().await;
    };
    loop {
        check.every.tick().await;
        let Ok(mut conn) = check.pool.get().await else {
            continue;
        };
        if let Ok(None) = crate::db::models::session::find_live(&mut conn, &check.hash).await {
            return;
        }
    }
}

/// Counts an open feed in `herald_console_feeds` for as long as it lives.
struct OpenFeed(std::sync::Arc<crate::metrics::Metrics>);

impl OpenFeed {
    fn new(metrics: &std::sync::Arc<crate::metrics::Metrics>) -> Self {
        metrics.console_feeds.increment(1.0);
        Self(std::sync::Arc::clone(metrics))
    }
}

impl Drop for OpenFeed {
    fn drop(&mut self) {
        self.0.console_feeds.decrement(1.0);
    }
}

impl ChangeFeed {
    async fn next_chunk(&mut self) -> Option<actix_web::web::Bytes> {
        use actix_web::web::Bytes;
        if !self.started {
            self.started = true;
            self.changes.mark_unchanged();
            return Some(Bytes::from_static(
                b"retry: 1000\n\nevent: ready\ndata: {}\n\n",
            ));
        }
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            () = self.revoked.cancelled() => None,
            () = session_ended(&mut self.session) => None,
            () = tokio::time::sleep_until(self.end_at) => None,
            _ = self.heartbeat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
            changed = self.changes.changed() => {
                changed.ok()?;
                // Gather what happens next into this one announcement.
                tokio::time::sleep(CHANGES_THROTTLE).await;
                let version = *self.changes.borrow_and_update();
                self.heartbeat.reset();
                Some(Bytes::from(format!("event: changed\ndata: {version}\n\n")))
            }
        }
    }
}
