//! `/admin/`: the console's static files, embedded in the binary at compile time.
//!
//! Every file is served with its content type, an `ETag` (its SHA-256) and
//! `Cache-Control: no-cache`, so browsers revalidate cheaply (`304`) and never run a stale
//! console after an upgrade. Paths without a file extension fall back to `index.html`, so
//! the console's own routes can be bookmarked. A strict Content-Security-Policy allows
//! only Herald's own scripts and styles: nothing is loaded from elsewhere.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::Embed;

use crate::error::ApiError;

#[derive(Embed)]
#[folder = "admin-ui/"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(redirect_to_console))
        .route("/admin/{path:.*}", web::get().to(get_asset));
}

async fn redirect_to_console() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

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
