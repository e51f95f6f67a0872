//! `GET /metrics`: Prometheus text exposition (see `crate::metrics`).

use actix_web::get;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::Utc;

use crate::db::models::overview;
use crate::metrics::Gauges;
use crate::state::AppState;

/// A scrape never waits longer than this for the queue figures; past it, they keep their
/// last value and the rest is answered at once.
const QUEUE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_metrics);
}

#[utoipa::path(
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
    security(()),
)]
#[get("/metrics")]
async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    let queue = tokio::time::timeout(QUEUE_QUERY_TIMEOUT, async {
        let mut conn = state.pool.get().await.ok()?;
        let by_endpoint = overview::backlog(&mut conn).await.ok()?;
        Some(overview::total_backlog(&by_endpoint))
    })
    .await
    .ok()
    .flatten();
    let status = state.pool.status();
    let gauges = Gauges {
        waiters: state.hub.waiters(),
        watched_streams: state.hub.watched_streams(),
        due: queue.as_ref().map(|q| q.due),
        oldest_due_age_seconds: queue.as_ref().and_then(|q| {
            q.oldest_due_at
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
        }),
        pool: (
            status.size,
            status.available,
            status.waiting,
            status.max_size,
        ),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(gauges))
}
