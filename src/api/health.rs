//! `/healthz` (the process is alive) and `/readyz` (it can reach its database).

use actix_web::get;
use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl as _;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// `{"status": "ok"}` (alive) or `{"status": "ready"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_healthz).service(get_readyz);
}

#[utoipa::path(
    tag = "operations",
    summary = "The process is up",
    responses((status = 200, description = "Alive", body = Health)),
    security(()),
)]
#[get("/healthz")]
async fn get_healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(
    tag = "operations",
    summary = "The database can be reached",
    responses((status = 200, description = "Ready", body = Health), super::openapi::Unavailable),
    security(()),
)]
#[get("/readyz")]
async fn get_readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(ApiError::database_unavailable)?;
    Ok(HttpResponse::Ok().json(Health { status: "ready" }))
}
