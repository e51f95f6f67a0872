//! `GET /v1/overview`: what the console's first page shows (admin only).

use actix_web::get;
use actix_web::{HttpResponse, web};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::models::delivery::DeliveryStatus;
use crate::db::models::overview;
use crate::error::ApiError;
use crate::state::AppState;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_overview);
}

#[utoipa::path(
    tag = "deliveries",
    summary = "Deliveries by status, the backlog and endpoint health",
    responses((status = 200, description = "The overview", body = Overview), super::openapi::AuthErrors, super::openapi::Unavailable),
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
    drop(conn);
    let mut last_hour = StatusCounts::default();
    let mut last_day = StatusCounts::default();
    let mut finished: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for c in &counts {
        last_hour.add(c.status, c.last_hour);
        last_day.add(c.status, c.last_day);
        let (succeeded, failed) = finished.entry(c.endpoint_id).or_default();
        match c.status {
            DeliveryStatus::Succeeded => *succeeded += c.last_day,
            DeliveryStatus::Failed => *failed += c.last_day,
            DeliveryStatus::Pending | DeliveryStatus::Delivering => {}
        }
    }
    let unfinished: HashMap<Uuid, i64> = backlog
        .iter()
        .map(|b| (b.endpoint_id, b.pending + b.delivering))
        .collect();
    let total = overview::total_backlog(&backlog);
    let now = Utc::now();
    Ok(HttpResponse::Ok().json(Overview {
        deliveries: OverviewDeliveries {
            last_hour,
            last_day,
        },
        backlog: OverviewBacklog {
            due: total.due,
            pending: total.pending,
            delivering: total.delivering,
            oldest_due_age_seconds: total
                .oldest_due_at
                .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0),
        },
        endpoints: endpoints
            .into_iter()
            .map(|e| {
                let (succeeded, failed) = finished.get(&e.id).copied().unwrap_or_default();
                let backlog = unfinished.get(&e.id).copied().unwrap_or_default();
                EndpointHealth::new(e, succeeded, failed, backlog)
            })
            .collect(),
    }))
}

impl EndpointHealth {
    fn new(e: overview::EndpointHealth, succeeded_24h: i64, failed_24h: i64, backlog: i64) -> Self {
        let finished = succeeded_24h + failed_24h;
        Self {
            id: e.id,
            url: e.url,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            last_success_at: e.last_success_at,
            succeeded_24h,
            failed_24h,
            success_rate_24h: (finished > 0).then(|| succeeded_24h as f64 / finished as f64),
            backlog,
            last_error: e.last_error,
            last_error_at: e.last_error_at,
        }
    }
}

impl StatusCounts {
    fn add(&mut self, status: DeliveryStatus, n: i64) {
        match status {
            DeliveryStatus::Pending => self.pending += n,
            DeliveryStatus::Delivering => self.delivering += n,
            DeliveryStatus::Succeeded => self.succeeded += n,
            DeliveryStatus::Failed => self.failed += n,
        }
    }
}

/// `GET /v1/overview`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Deliveries by status.
    pub deliveries: OverviewDeliveries,
    /// The queue.
    pub backlog: OverviewBacklog,
    /// Every endpoint's health.
    pub endpoints: Vec<EndpointHealth>,
}

/// Deliveries created in the last hour and day, by their status now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverviewDeliveries {
    /// Last hour.
    pub last_hour: StatusCounts,
    /// Last 24 hours.
    pub last_day: StatusCounts,
}

/// Deliveries by status.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    /// Pending.
    pub pending: i64,
    /// Being attempted.
    pub delivering: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
}

/// The webhook queue now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverviewBacklog {
    /// Pending deliveries whose time has come.
    pub due: i64,
    /// Pending, including those waiting for a retry.
    pub pending: i64,
    /// Being attempted.
    pub delivering: i64,
    /// How long the oldest due delivery has waited.
    pub oldest_due_age_seconds: Option<f64>,
}

/// One endpoint's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointHealth {
    /// Endpoint id.
    pub id: Uuid,
    /// Its URL.
    pub url: String,
    /// Whether it receives anything.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Failing since (no success since then).
    pub failing_since: Option<DateTime<Utc>>,
    /// Its last success.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Deliveries created in the last 24 h that succeeded.
    pub succeeded_24h: i64,
    /// ... that failed for good.
    pub failed_24h: i64,
    /// succeeded / (succeeded + failed), if any finished.
    pub success_rate_24h: Option<f64>,
    /// Deliveries pending or in flight.
    pub backlog: i64,
    /// The last error an attempt met (kept after a success: compare `last_success_at`).
    pub last_error: Option<String>,
    /// When that error was recorded.
    pub last_error_at: Option<DateTime<Utc>>,
}
