//! `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, served from the binary).
//!
//! The document is generated from the code: every route is registered through
//! `utoipa_actix_web`'s `service(...)`, which collects the `#[utoipa::path]` next to each
//! handler, so a route cannot be served without being documented. Request and response
//! schemas are the `ToSchema` of the types the handlers parse and answer, defined beside
//! them; this module holds the document's assembly and the answers many routes share.

use actix_web::get;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An error, as every 4xx and 5xx answer carries it (`application/problem+json`, RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:herald:problem:<slug>`; see docs/errors.md.
    #[schema(example = "urn:herald:problem:validation")]
    pub r#type: String,
    /// A short, fixed summary of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request, for people.
    pub detail: String,
    /// For `validation`: the field at fault, such as `events[3].type`.
    pub field: Option<String>,
    /// For `cursor-expired`: the smallest cursor that can still be served.
    pub earliest_after: Option<i64>,
}

/// What any route that reads a JSON body may answer when the body is wrong.
#[derive(Debug, utoipa::IntoResponses)]
pub enum BodyErrors {
    /// Malformed JSON.
    #[response(
        status = 400,
        description = "Malformed JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    /// Too slow.
    #[response(
        status = 408,
        description = "The body did not arrive within HERALD_BODY_TIMEOUT",
        content_type = "application/problem+json"
    )]
    Timeout(Problem),
    /// Too large.
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    /// Not JSON.
    #[response(
        status = 415,
        description = "Not application/json",
        content_type = "application/problem+json"
    )]
    MediaType(Problem),
    /// A bad field.
    #[response(
        status = 422,
        description = "A field is invalid (see `field`)",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
}

/// What any authenticated route may answer to the wrong caller.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No key or session.
    #[response(
        status = 401,
        description = "No or unknown key or session",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    /// Not allowed.
    #[response(
        status = 403,
        description = "The key may not do this, or the CSRF token is missing",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
}

/// What any route that needs the database may answer when it cannot have it.
#[derive(Debug, utoipa::IntoResponses)]
pub enum Unavailable {
    /// Database unreachable, or shutting down.
    #[response(
        status = 503,
        description = "The database is unreachable or Herald is shutting down; retry (Retry-After)",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// `GET /openapi.json` (served by the Swagger UI service; described here).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI 3.1 document",
    security(()),
    responses((status = 200, description = "The document", body = Object)),
)]
#[expect(dead_code, reason = "documents a route served by utoipa_swagger_ui")]
fn openapi_json() {}

/// `GET /docs/`: Swagger UI for this document, served from the binary (works offline).
#[utoipa::path(
    get,
    path = "/docs/{path}",
    tag = "operations",
    summary = "Interactive API documentation (Swagger UI); open /docs/",
    params(("path" = String, Path, description = "Empty for the page, or one of its files")),
    security(()),
    responses((status = 200, description = "The page or file", body = String, content_type = "text/html")),
)]
#[expect(dead_code, reason = "documents a route served by utoipa_swagger_ui")]
fn docs_page() {}

/// `GET /docs`: to `/docs/`, where the UI lives.
#[utoipa::path(
    tag = "operations",
    summary = "Redirects to /docs/",
    security(()),
    responses((status = 308, description = "To /docs/")),
)]
#[get("/docs")]
async fn docs_redirect() -> actix_web::HttpResponse {
    actix_web::HttpResponse::PermanentRedirect()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}

/// Registers `/docs` (the page itself and `/openapi.json` are served by Swagger UI).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(docs_redirect);
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hrld_ API key")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "herald_session",
                "A console session (POST /v1/sessions); state-changing requests also need \
                 the session's X-CSRF-Token header.",
            ))),
        );
    }
}

/// What the document says beyond its paths.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Durable events, delivered by long-poll, SSE and signed webhooks. \
                       Errors are application/problem+json (see the Problem schema).",
        license(name = "Apache-2.0"),
    ),
    paths(openapi_json, docs_page),
    components(schemas(Problem, super::ws::ClientMessage, super::ws::ServerMessage)),
    security(("bearer" = []), ("session" = [])),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// The whole document: `ApiDoc` merged with the paths the routes registered.
pub fn document() -> utoipa::openapi::OpenApi {
    use utoipa_actix_web::AppExt as _;
    let (_, paths) = actix_web::App::new()
        .into_utoipa_app()
        .configure(super::routes)
        .split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
