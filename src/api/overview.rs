//! `GET /v1/overview`: what the console's first page shows (admin only).

use actix_web::get;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::auth::Principal;
use crate::db::models::overview;
use crate::error::ApiError;
use crate::startup::AppState;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_overview);
}

#[utoipa::path(
    tag = "deliveries",
    summary = "Deliveries by status, the backlog and endpoint health",
    responses((status = 200, description = "The overview", body = super::openapi::Overview), super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[get("/overview")]
async fn get_overview(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let mut conn = state.pool.get().await?;
    let counts = overview::status_counts(&mut conn).await?;
    let backlog = overview::backlog(&mut conn).await?;
    let endpoints = overview::endpoint_health(&mut conn).await?;
    let by = |pick: fn(&overview::StatusCount) -> i64| {
        let mut map: Map<String, Value> = ["pending", "delivering", "succeeded", "failed"]
            .iter()
            .map(|s| ((*s).to_owned(), json!(0)))
            .collect();
        for c in &counts {
            map.insert(c.status.clone(), json!(pick(c)));
        }
        Value::Object(map)
    };
    let now = Utc::now();
    Ok(HttpResponse::Ok().json(json!({
        "deliveries": {"last_hour": by(|c| c.last_hour), "last_day": by(|c| c.last_day)},
        "backlog": {
            "due": backlog.due,
            "pending": backlog.pending,
            "delivering": backlog.delivering,
            "oldest_due_age_seconds": backlog.oldest_due_at.map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0),
        },
        "endpoints": endpoints.into_iter().map(|e| {
            let finished = e.succeeded_24h + e.failed_24h;
            json!({
                "id": e.id,
                "url": e.url,
                "enabled": e.enabled,
                "disabled_reason": e.disabled_reason,
                "failing_since": e.failing_since,
                "last_success_at": e.last_success_at,
                "succeeded_24h": e.succeeded_24h,
                "failed_24h": e.failed_24h,
                "success_rate_24h": (finished > 0).then(|| e.succeeded_24h as f64 / finished as f64),
                "backlog": e.backlog,
                "last_error": e.last_error,
            })
        }).collect::<Vec<_>>(),
    })))
}
