//! `/v1/endpoints`: webhook subscriptions (admin only).

use actix_web::{delete, get, patch, post};
use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SubsecRound as _, Utc};
use diesel_async::AsyncConnection as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::body::{present, read_json};
use crate::auth::Principal;
use crate::db::RawJson;
use crate::db::models::delivery;
use crate::db::models::endpoint::{self, Endpoint};
use crate::db::models::event::{self, PendingEvent};
use crate::db::models::replay::{RECOVER_KIND, RecoverScope, Replay, start_recover};
use crate::domain::destination::DestinationGuard;
use crate::domain::signature::SigningSecret;
use crate::domain::units::parse_duration;
use crate::domain::{EndpointUrl, EventType, StreamPattern};
use crate::error::ApiError;
use crate::state::AppState;

/// How long the previous secret keeps signing after a rotation, by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest grace period a rotation may ask for.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_FILTERS: usize = 100;
const MAX_HEADERS: usize = 20;
/// Headers Herald sets itself (or that would break the request).
const RESERVED_HEADERS: [&str; 11] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "te",
    "upgrade",
];

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_endpoint)
        .service(list_endpoints)
        .service(get_endpoint)
        .service(update_endpoint)
        .service(delete_endpoint)
        .service(rotate_endpoint_secret)
        .service(recover_endpoint)
        .service(send_test_event);
}

/// An endpoint as the API shows it (never with its secret, except where noted).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointDto {
    id: Uuid,
    url: String,
    description: String,
    event_types: Vec<String>,
    streams: Vec<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    rate_limit: Option<i32>,
    max_in_flight: i32,
    ordered: bool,
    headers: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    failing_since: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    /// The last error an attempt met, kept after a success (compare `last_success_at`).
    last_error: Option<String>,
    /// When that error was recorded.
    last_error_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointDto {
    fn new(e: Endpoint, with_secret: bool) -> Self {
        Self {
            secret: with_secret.then(|| SigningSecret::from_bytes(e.secret.clone()).expose()),
            id: e.id,
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            streams: e.stream_patterns,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            rate_limit: e.rate_limit,
            max_in_flight: e.max_in_flight,
            ordered: e.ordered,
            headers: e.headers,
            created_at: e.created_at,
            updated_at: e.updated_at,
            failing_since: e.failing_since,
            last_success_at: e.last_success_at,
            last_error: e.last_error,
            last_error_at: e.last_error_at,
        }
    }
}

fn parse_headers(pairs: BTreeMap<String, String>) -> Result<Value, ApiError> {
    if pairs.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut map = serde_json::Map::new();
    for (name, value) in pairs {
        let field = format!("headers.{name}");
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::invalid(&field, "is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&parsed.as_str()) {
            return Err(ApiError::invalid(
                &field,
                "is set by Herald and cannot be overridden",
            ));
        }
        HeaderValue::from_str(&value)
            .map_err(|_| ApiError::invalid(&field, "is not a valid header value"))?;
        map.insert(parsed.as_str().to_owned(), Value::String(value));
    }
    Ok(Value::Object(map))
}

/// An endpoint to create, or the fields to change (all optional when changing; `url` is
/// required when creating). Unknown fields are refused: a misspelt field is an error
/// rather than silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    /// Where webhooks are sent (`https://`, or `http://` where allowed).
    url: Option<String>,
    /// A note for people (at most 1000 characters; no control characters but tab and line
    /// breaks).
    description: Option<String>,
    /// Event types it receives (at most 100); empty: all.
    event_types: Option<Vec<String>>,
    /// Streams or prefixes ending in `*` (at most 100); empty: every stream but `herald:*`.
    streams: Option<Vec<String>>,
    /// Whether it receives anything.
    enabled: Option<bool>,
    /// Requests per second at most (per instance, 1-100000), or null for no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    rate_limit: Option<Option<i32>>,
    /// Attempts in flight at once (per instance, 1-1000); not null.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = i32, required = false)]
    max_in_flight: Option<Option<i32>>,
    /// One delivery at a time per stream, in seq order.
    ordered: Option<bool>,
    /// Extra request headers (at most 20).
    headers: Option<BTreeMap<String, String>>,
    /// A `whsec_` signing secret to use instead of a generated one (creation only).
    secret: Option<String>,
}

/// At most `max` items in the list field `name`.
fn at_most<T>(name: &str, items: &Option<Vec<T>>, max: usize) -> Result<(), ApiError> {
    match items {
        Some(items) if items.len() > max => Err(ApiError::invalid(
            name,
            format!("must hold at most {max} items"),
        )),
        _ => Ok(()),
    }
}

/// Applies the present fields of `input` to `endpoint`, validating each.
fn apply(
    input: EndpointInput,
    endpoint: &mut Endpoint,
    guard: &DestinationGuard,
) -> Result<(), ApiError> {
    at_most("event_types", &input.event_types, MAX_FILTERS)?;
    at_most("streams", &input.streams, MAX_FILTERS)?;
    if let Some(url) = input.url {
        endpoint.url = EndpointUrl::parse(&url, guard)
            .map_err(|d| ApiError::invalid("url", d))?
            .to_string();
    }
    if let Some(description) = input.description {
        super::body::check_note("description", &description)?;
        endpoint.description = description;
    }
    if let Some(types) = input.event_types {
        for (i, t) in types.iter().enumerate() {
            EventType::parse(t).map_err(|d| ApiError::invalid(format!("event_types[{i}]"), d))?;
        }
        endpoint.event_types = types;
    }
    if let Some(patterns) = input.streams {
        for (i, p) in patterns.iter().enumerate() {
            StreamPattern::parse(p).map_err(|d| ApiError::invalid(format!("streams[{i}]"), d))?;
        }
        endpoint.stream_patterns = patterns;
    }
    if let Some(enabled) = input.enabled {
        if enabled {
            endpoint.disabled_reason = None;
        }
        endpoint.enabled = enabled;
    }
    if let Some(rate_limit) = input.rate_limit {
        if rate_limit.is_some_and(|n| !(1..=100_000).contains(&n)) {
            return Err(ApiError::invalid(
                "rate_limit",
                "must be a whole number from 1 to 100000, or null",
            ));
        }
        endpoint.rate_limit = rate_limit;
    }
    if let Some(max_in_flight) = input.max_in_flight {
        endpoint.max_in_flight = max_in_flight
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("max_in_flight", "must be a whole number from 1 to 1000")
            })?;
    }
    if let Some(ordered) = input.ordered {
        endpoint.ordered = ordered;
    }
    if let Some(headers) = input.headers {
        endpoint.headers = parse_headers(headers)?;
    }
    Ok(())
}

/// The endpoint id in the path, for an admin (and in the request's log span).
fn admin_endpoint_id(principal: &Principal, raw: &str) -> Result<Uuid, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("endpoint", raw)?;
    crate::telemetry::record_id("endpoint_id", id);
    Ok(id)
}

/// `404` for an endpoint id that names none.
#[derive(Debug, utoipa::IntoResponses)]
pub enum NoSuchEndpoint {
    /// No such endpoint.
    #[response(
        status = 404,
        description = "No such endpoint",
        content_type = "application/problem+json"
    )]
    NotFound(super::openapi::Problem),
}

#[utoipa::path(
    tag = "endpoints",
    summary = "Create a webhook endpoint (its secret is shown once)",
    request_body(content = EndpointInput, content_type = "application/json"),
    responses((status = 201, description = "Created, with its signing secret", body = EndpointDto), super::openapi::BodyErrors, super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[post("/endpoints")]
async fn create_endpoint(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let mut input: EndpointInput = read_json(&req, body, 256 * 1024, "256 KiB").await?;
    if input.url.is_none() {
        return Err(ApiError::invalid("url", "is required"));
    }
    let secret = match input.secret.take() {
        Some(raw) => SigningSecret::parse(&raw).map_err(|d| ApiError::invalid("secret", d))?,
        None => SigningSecret::generate(),
    };
    // PostgreSQL keeps microseconds: answer with what a later read will show.
    let now = Utc::now().trunc_subsecs(6);
    let mut endpoint = Endpoint {
        id: Uuid::now_v7(),
        url: String::new(),
        description: String::new(),
        event_types: Vec::new(),
        stream_patterns: Vec::new(),
        enabled: true,
        disabled_reason: None,
        secret: secret.as_bytes().to_vec(),
        previous_secret: None,
        previous_secret_expires_at: None,
        rate_limit: None,
        max_in_flight: 10,
        ordered: false,
        headers: Value::Object(serde_json::Map::new()),
        created_at: now,
        updated_at: now,
        failing_since: None,
        last_success_at: None,
        last_error: None,
        last_error_at: None,
    };
    apply(input, &mut endpoint, &state.settings.destinations)?;
    let mut conn = state.pool.get().await?;
    endpoint::insert(&mut conn, &endpoint).await?;
    crate::telemetry::record_id("endpoint_id", endpoint.id);
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/endpoints/{}", endpoint.id)))
        .json(EndpointDto::new(endpoint, true)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EndpointListDto {
    endpoints: Vec<EndpointDto>,
}

#[utoipa::path(
    tag = "endpoints",
    summary = "Every endpoint",
    responses((status = 200, description = "The endpoints", body = EndpointListDto), super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[get("/endpoints")]
async fn list_endpoints(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let mut conn = state.pool.get().await?;
    let endpoints = endpoint::list(&mut conn).await?;
    Ok(HttpResponse::Ok().json(EndpointListDto {
        endpoints: endpoints
            .into_iter()
            .map(|e| EndpointDto::new(e, false))
            .collect(),
    }))
}

#[utoipa::path(
    tag = "endpoints",
    summary = "One endpoint",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint", body = EndpointDto), super::openapi::AuthErrors, NoSuchEndpoint, super::openapi::Unavailable),
)]
#[get("/endpoints/{id}")]
async fn get_endpoint(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    let mut conn = state.pool.get().await?;
    let found = endpoint::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no endpoint with id {id}")))?;
    Ok(HttpResponse::Ok().json(EndpointDto::new(found, false)))
}

#[utoipa::path(
    tag = "endpoints",
    summary = "Change an endpoint (also enable/disable)",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    request_body(content = EndpointInput, content_type = "application/json"),
    responses((status = 200, description = "Changed", body = EndpointDto), super::openapi::BodyErrors, super::openapi::AuthErrors, NoSuchEndpoint, super::openapi::Unavailable),
)]
#[patch("/endpoints/{id}")]
async fn update_endpoint(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    let input: EndpointInput = read_json(&req, body, 256 * 1024, "256 KiB").await?;
    if input.secret.is_some() {
        return Err(ApiError::invalid(
            "secret",
            "cannot be changed here; POST /v1/endpoints/{id}/rotate-secret makes a new one",
        ));
    }
    let mut conn = state.pool.get().await?;
    let guard = state.settings.destinations.clone();
    let updated = conn
        .transaction(async |conn| {
            let mut found = endpoint::find_for_update(conn, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no endpoint with id {id}")))?;
            let was_enabled = found.enabled;
            apply(input, &mut found, &guard)?;
            found.updated_at = Utc::now().trunc_subsecs(6);
            endpoint::save(conn, &found).await?;
            if !was_enabled && found.enabled {
                // A fresh start: the disable-after clock restarts.
                found.failing_since = None;
                endpoint::save(conn, &found).await?;
            }
            if was_enabled && !found.enabled {
                // Kept as failed, to be replayed once the endpoint is fixed.
                delivery::fail_unfinished(conn, id, "endpoint disabled").await?;
            }
            Ok::<_, ApiError>(found)
        })
        .await?;
    Ok(HttpResponse::Ok().json(EndpointDto::new(updated, false)))
}

#[utoipa::path(
    tag = "endpoints",
    summary = "Delete an endpoint (its deliveries stay, failed)",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    responses((status = 204, description = "Deleted"), super::openapi::AuthErrors, NoSuchEndpoint, super::openapi::Unavailable),
)]
#[delete("/endpoints/{id}")]
async fn delete_endpoint(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    let mut conn = state.pool.get().await?;
    let deleted = conn
        .transaction(async |conn| {
            if !endpoint::delete(conn, id).await? {
                return Ok(false);
            }
            delivery::fail_unfinished(conn, id, "endpoint deleted").await?;
            Ok::<_, ApiError>(true)
        })
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!("no endpoint with id {id}")));
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RotatedDto {
    secret: String,
    previous_secret_expires_at: DateTime<Utc>,
}

/// How long the previous secret keeps signing (the body is optional).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// A duration from `0s` to `7d`, like `1h`; default `24h`.
    #[schema(example = "1h")]
    grace: Option<String>,
}

#[utoipa::path(
    tag = "endpoints",
    summary = "New signing secret; the old one verifies for 24 h more",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    request_body(content = Option<RotateSecret>, content_type = "application/json"),
    responses((status = 200, description = "The new secret (shown once)", body = RotatedDto), super::openapi::BodyErrors, super::openapi::AuthErrors, NoSuchEndpoint, super::openapi::Unavailable),
)]
#[post("/endpoints/{id}/rotate-secret")]
async fn rotate_endpoint_secret(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    // The body is optional: `{"grace": "1h"}` shortens or lengthens the overlap.
    let grace = if super::body::has_body(&req) {
        let input: RotateSecret = read_json(&req, body, 4096, "4 KiB").await?;
        match input.grace {
            Some(raw) => parse_duration(&raw)
                .ok()
                .filter(|d| *d <= MAX_ROTATION_GRACE)
                .ok_or_else(|| {
                    ApiError::invalid("grace", "must be a duration from 0s to 7d, like 24h")
                })?,
            None => DEFAULT_ROTATION_GRACE,
        }
    } else {
        DEFAULT_ROTATION_GRACE
    };
    let new_secret = SigningSecret::generate();
    let expires = Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
    let mut conn = state.pool.get().await?;
    let key = new_secret.as_bytes().to_vec();
    conn.transaction(async |conn| {
        let mut found = endpoint::find_for_update(conn, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no endpoint with id {id}")))?;
        found.previous_secret = Some(std::mem::replace(&mut found.secret, key));
        found.previous_secret_expires_at = Some(expires);
        found.updated_at = Utc::now().trunc_subsecs(6);
        endpoint::save(conn, &found).await?;
        Ok::<_, ApiError>(())
    })
    .await?;
    Ok(HttpResponse::Ok().json(RotatedDto {
        secret: new_secret.expose(),
        previous_secret_expires_at: expires,
    }))
}

/// The window of a recover.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverWindow {
    /// RFC 3339; events created at or after it.
    #[schema(example = "2026-01-31T12:00:00Z")]
    since: String,
    /// RFC 3339; events created before it (default: now).
    until: Option<String>,
}

#[utoipa::path(
    tag = "endpoints",
    summary = "Send the endpoint every event of a window it has not received",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    request_body(content = RecoverWindow, content_type = "application/json"),
    responses((status = 202, description = "{recovered, replay_id}", body = Recovered), super::openapi::BodyErrors, super::openapi::AuthErrors, NoSuchEndpoint, (status = 409, description = "The endpoint is disabled", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[post("/endpoints/{id}/recover")]
async fn recover_endpoint(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    let input: RecoverWindow = read_json(&req, body, 4096, "4 KiB").await?;
    let since = super::deliveries::parse_rfc3339("since", &input.since)?;
    let until = match input.until {
        Some(raw) => super::deliveries::parse_rfc3339("until", &raw)?,
        None => Utc::now(),
    };
    if since >= until {
        return Err(ApiError::invalid("until", "must be after since"));
    }
    let mut conn = state.pool.get().await?;
    let found = endpoint::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no endpoint with id {id}")))?;
    if !found.enabled {
        return Err(ApiError::Conflict(
            "the endpoint is disabled; enable it before recovering its events".into(),
        ));
    }
    let window = RecoverScope {
        endpoint_id: id,
        since,
        until,
    };
    let criteria = serde_json::to_value(&window).map_err(|e| ApiError::Internal(e.to_string()))?;
    let replay = Replay::new(RECOVER_KIND, criteria, principal.key_id);
    let step = start_recover(&mut conn, &window, replay).await?;
    if step.replayed > 0 {
        state.notifier.deliveries_due();
    }
    Ok(HttpResponse::Accepted().json(Recovered {
        recovered: step.replayed,
        replay_id: step.replay_id,
        searching: step.searching,
    }))
}

/// `202` to a recover.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recovered {
    /// How many deliveries were made due or created by the request itself (the window's
    /// first 10,000 events).
    pub recovered: usize,
    /// Follow it at `GET /v1/replays/{replay_id}` (its `total` counts every step).
    pub replay_id: Uuid,
    /// Later events of the window are left: Herald goes on with them in steps, in the
    /// background, until `GET /v1/replays/{replay_id}` says `searching: false`.
    pub searching: bool,
}

/// A test event's payload when the request names none.
#[derive(Debug, Serialize)]
struct DefaultTestPayload {
    message: &'static str,
    endpoint_id: Uuid,
}

/// The stream test events are stored in.
pub const TEST_STREAM: &str = "herald:test";
/// Their type unless the request names one.
pub const TEST_EVENT_TYPE: &str = "herald.test";

/// `202` to a test event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestEventSent {
    /// The stored event.
    pub event_id: Uuid,
    /// Its one delivery: follow it at `GET /v1/deliveries/{delivery_id}`.
    pub delivery_id: Uuid,
    /// `herald:test`.
    pub stream: &'static str,
}

/// A test event (every field optional; the body may be empty).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// Default `herald.test`.
    event_type: Option<String>,
    /// Any JSON value (`null` too); default: a small object naming the endpoint.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    payload: Option<Box<RawValue>>,
}

/// `POST /v1/endpoints/{id}/test`: stores a test event in `herald:test` with a delivery to
/// this endpoint only, sent and recorded like any other. The body may be empty, or name an
/// `event_type` and a `payload`.
#[utoipa::path(
    tag = "endpoints",
    summary = "Send the endpoint a test event (herald:test stream, to it only)",
    params(("id" = uuid::Uuid, Path, description = "Endpoint id")),
    request_body(content = TestEvent, content_type = "application/json"),
    responses((status = 202, description = "{event_id, delivery_id, stream}", body = TestEventSent), super::openapi::BodyErrors, super::openapi::AuthErrors, NoSuchEndpoint, (status = 409, description = "The endpoint is disabled", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[post("/endpoints/{id}/test")]
async fn send_test_event(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = admin_endpoint_id(&principal, &path)?;
    let (event_type, payload) = if super::body::has_body(&req) {
        let input: TestEvent = read_json(&req, body, 64 * 1024, "64 KiB").await?;
        let event_type = input
            .event_type
            .map(|raw| EventType::parse(&raw).map_err(|d| ApiError::invalid("event_type", d)))
            .transpose()?;
        (event_type, input.payload)
    } else {
        (None, None)
    };
    let event_type = match event_type {
        Some(t) => t,
        None => EventType::parse(TEST_EVENT_TYPE).map_err(ApiError::Internal)?,
    };
    let payload = match payload {
        Some(payload) => {
            super::body::check_nesting("payload", &payload)?;
            payload
        }
        None => serde_json::value::to_raw_value(&DefaultTestPayload {
            message: "A test event from Herald",
            endpoint_id: id,
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let stream = crate::domain::StreamName::parse(TEST_STREAM).map_err(ApiError::Internal)?;
    let pending = PendingEvent::new(stream, event_type, RawJson(payload));
    let mut conn = state.pool.get().await?;
    let (stored, delivery_id) = conn
        .transaction(async |conn| {
            let found = endpoint::find_for_update(conn, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no endpoint with id {id}")))?;
            if !found.enabled {
                return Err(ApiError::Conflict(
                    "the endpoint is disabled; enable it before sending it a test event".into(),
                ));
            }
            Ok(event::insert_for_endpoint(conn, pending, id).await?)
        })
        .await?;
    let event_id = state
        .notifier
        .committed(stored)
        .first()
        .map(|e| e.id)
        .ok_or_else(|| ApiError::Internal("stored test event missing".into()))?;
    crate::telemetry::record_id("event_id", event_id);
    crate::telemetry::record_id("delivery_id", delivery_id);
    Ok(HttpResponse::Accepted().json(TestEventSent {
        event_id,
        delivery_id,
        stream: TEST_STREAM,
    }))
}
