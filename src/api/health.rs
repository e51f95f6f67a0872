//! `/healthz` (the process is alive) and `/readyz` (it can reach its database).

use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl as _;
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(get_healthz))
        .route("/readyz", web::get().to(get_readyz));
}

async fn get_healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn get_readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(ApiError::database_unavailable)?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
