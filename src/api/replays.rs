//! `/v1/replays/{id}`: a bulk replay's or recover's progress (admin only).

use actix_web::get;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::models::delivery::DeliveryStatus;
use crate::db::models::replay;
use crate::error::ApiError;
use crate::state::AppState;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_replay);
}

/// A bulk replay or recover and its progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReplayDto {
    id: Uuid,
    kind: String,
    criteria: Value,
    requested_by: Uuid,
    created_at: DateTime<Utc>,
    total: i64,
    /// Its deliveries by status now (a delivery replayed again later counts there).
    pending: i64,
    delivering: i64,
    succeeded: i64,
    failed: i64,
    /// Herald is still searching older deliveries for matches (a filter no index
    /// answers): `total` grows until this is false.
    searching: bool,
    /// While searching: the creation time of the oldest delivery searched so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    searched_to: Option<DateTime<Utc>>,
    /// Whether the search is over and none of its deliveries is waiting or in flight.
    done: bool,
}

#[utoipa::path(
    tag = "deliveries",
    summary = "A bulk replay or recover, with progress",
    params(("id" = uuid::Uuid, Path, description = "Replay id")),
    responses((status = 200, description = "Progress by status", body = ReplayDto), super::openapi::AuthErrors, (status = 404, description = "No such replay", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/replays/{id}")]
async fn get_replay(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("replay", &path)?;
    let mut conn = state.pool.get().await?;
    let (replay, counts) = replay::find_replay(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no replay with id {id}")))?;
    let count = |status: DeliveryStatus| {
        counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    let (pending, delivering) = (
        count(DeliveryStatus::Pending),
        count(DeliveryStatus::Delivering),
    );
    Ok(HttpResponse::Ok().json(ReplayDto {
        id: replay.id,
        kind: replay.kind,
        criteria: replay.criteria,
        requested_by: replay.requested_by,
        created_at: replay.created_at,
        total: replay.total,
        pending,
        delivering,
        succeeded: count(DeliveryStatus::Succeeded),
        failed: count(DeliveryStatus::Failed),
        searching: replay.searching,
        searched_to: replay.searched_to_at.filter(|_| replay.searching),
        done: !replay.searching && pending == 0 && delivering == 0,
    }))
}
