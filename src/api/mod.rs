//! The HTTP API: one file per resource, each with its DTOs, handlers and `routes`.

pub mod admin_ui;
mod body;
pub mod changes;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod overview;
pub mod replays;
pub mod sessions;
mod sse;
pub mod streams;
pub mod ws;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

/// Registers every route, each through `utoipa_actix_web`'s `service(...)` so that it is
/// in the OpenAPI document (see `openapi`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.configure(health::routes)
        .configure(metrics::routes)
        .configure(admin_ui::routes)
        .configure(openapi::routes)
        .service(
            utoipa_actix_web::scope("/v1")
                .configure(events::routes)
                .configure(endpoints::routes)
                .configure(changes::routes)
                .configure(deliveries::routes)
                .configure(replays::routes)
                .configure(sessions::routes)
                .configure(overview::routes)
                .configure(streams::routes)
                .configure(keys::routes)
                .configure(ws::routes),
        )
        .default_service(web::to(not_found));
}

/// Parses a resource id from the path. A malformed id names nothing that exists, so it is
/// `404`, like an unknown one.
pub(crate) fn parse_id(kind: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no {kind} with id {raw:?}")))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
