//! Logging setup.

use std::io::IsTerminal as _;

use actix_web::HttpMessage as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global log subscriber. `RUST_LOG` overrides the default filter, which
/// shows Herald's own info lines and warnings from its libraries; one access line per
/// request (target `herald::access`) is on with `RUST_LOG=info,herald::access=info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,herald::access=warn,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The span every HTTP request runs in (through `tracing_actix_web::TracingLogger`): its
/// request id, method, route template and status, and the ids of what it touched
/// (`event_id`, `delivery_id`, `endpoint_id`, recorded by the handlers), so every log line
/// a request causes carries them. Headers, query strings and bodies are not recorded: keys
/// and secrets travel there.
#[derive(Debug)]
pub struct RequestSpan;

/// The request id, as the response's `X-Request-Id` carries it.
#[derive(Debug, Clone)]
pub struct RequestIdValue(pub String);

/// The request id header, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request id from a proxy is kept if it looks like one (1 to 128 characters of
/// `A-Z a-z 0-9 . _ -`), so one id follows a request from the edge to Herald's logs.
fn incoming_request_id(request: &actix_web::dev::ServiceRequest) -> Option<String> {
    let raw = request.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| raw.to_owned())
}

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        let id = incoming_request_id(request).unwrap_or_else(|| {
            request
                .extensions()
                .get::<tracing_actix_web::RequestId>()
                .map_or_else(|| uuid::Uuid::now_v7().to_string(), ToString::to_string)
        });
        request.extensions_mut().insert(RequestIdValue(id.clone()));
        let route = request
            .match_pattern()
            .unwrap_or_else(|| request.path().to_owned());
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            route = %route,
            status = tracing::field::Empty,
            event_id = tracing::field::Empty,
            delivery_id = tracing::field::Empty,
            endpoint_id = tracing::field::Empty,
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = match outcome {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.as_response_error().status_code().as_u16(),
        };
        span.record("status", status);
        // The access line, inside the span so that it carries the request's ids.
        span.in_scope(|| tracing::info!(target: "herald::access", status, "request answered"));
    }
}

/// Records an id on the current request's span (`event_id`, `delivery_id`, `endpoint_id`).
pub fn record_id(field: &'static str, id: uuid::Uuid) {
    tracing::Span::current().record(field, tracing::field::display(id));
}
