//! `GET /metrics`: Prometheus text exposition.

use actix_web::{HttpResponse, web};

use crate::startup::AppState;

/// Registers the route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(get_metrics));
}

async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(
            state
                .metrics
                .render(state.hub.waiters(), state.hub.watched_streams()),
        )
}
