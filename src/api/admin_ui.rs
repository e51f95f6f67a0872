//! `/admin/`: the console's static files, embedded in the binary at compile time.
//!
//! Every file is served with its content type, an `ETag` (its SHA-256) and
//! `Cache-Control: no-cache`, so browsers revalidate cheaply (`304`) and never run a stale
//! console after an upgrade. Paths without a file extension fall back to `index.html`, so
//! the console's own routes can be bookmarked. A strict Content-Security-Policy allows
//! only Herald's own scripts and styles: nothing is loaded from elsewhere.

use actix_web::get;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::Embed;

use crate::error::ApiError;

#[derive(Embed)]
#[folder = "admin-ui/"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(redirect_to_console).service(get_asset);
}

#[utoipa::path(
    tag = "console",
    summary = "Redirects to /admin/",
    responses((status = 308, description = "To /admin/")),
    security(()),
)]
#[get("/admin")]
async fn redirect_to_console() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

#[utoipa::path(
    tag = "console",
    summary = "The console's files (paths without an extension serve the console page)",
    params(("path" = String, Path, description = "A console file, or a console page")),
    responses((status = 200, description = "The file", body = String, content_type = "text/html"), (status = 304, description = "Not modified (ETag)"), (status = 404, description = "No such file", body = super::openapi::Problem, content_type = "application/problem+json")),
    security(()),
)]
#[get("/admin/{path:.*}")]
async fn get_asset(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner();
    let last = path.rsplit('/').next().unwrap_or_default();
    let name = if path.is_empty() || !last.contains('.') {
        "index.html"
    } else {
        path.as_str()
    };
    let file =
        Assets::get(name).ok_or_else(|| ApiError::NotFound(format!("no console file {path:?}")))?;
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    response
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if not_modified {
        return Ok(response.finish());
    }
    Ok(response.body(file.data.into_owned()))
}
