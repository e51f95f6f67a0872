//! `POST /v1/events`, `POST /v1/events/batch`, `GET /v1/events/{id}`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web::{get, post};
use diesel_async::AsyncConnection as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::body::read_json;
use crate::auth::Principal;
use crate::db::RawJson;
use crate::db::models::event::{self, Event, PendingEvent};
use crate::db::models::idempotency::{self, Claim};
use crate::domain::RESERVED_PREFIX;
use crate::domain::{EventType, StreamName};
use crate::error::ApiError;
use crate::state::AppState;
use crate::streams::event_json::EventDto;

/// Most events one batch may hold.
pub const MAX_BATCH: usize = 1000;
/// Room in a single-event body for everything but the payload.
const ENVELOPE_ALLOWANCE: usize = 16 * 1024;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_event)
        .service(create_events_batch)
        .service(get_event);
}

/// An event to publish. Fields other than these are ignored, so that producers may send
/// envelopes that carry more.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewEvent {
    /// The stream: 1 to 200 characters of `A-Z a-z 0-9 . _ : / -`.
    #[schema(example = "payment:pay_123")]
    stream: String,
    /// The event type, same characters.
    #[serde(rename = "type")]
    #[schema(example = "payment.succeeded")]
    event_type: String,
    /// Any JSON value (`null` too), stored and delivered byte for byte (at most
    /// `HERALD_MAX_PAYLOAD`, arrays and objects nested at most 64 deep).
    #[schema(value_type = Value)]
    payload: Box<RawValue>,
}

/// Events to publish at once: all are stored, or none.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewEventBatch {
    /// 1 to 1000 events.
    events: Vec<NewEvent>,
}

impl NewEvent {
    /// Validates the event; `path` prefixes field names (`events[3].`).
    fn parse(self, path: &str, max_payload: usize) -> Result<PendingEvent, ApiError> {
        let field = |name: &str| format!("{path}{name}");
        let stream =
            StreamName::parse(&self.stream).map_err(|d| ApiError::invalid(field("stream"), d))?;
        if stream.is_reserved() {
            return Err(ApiError::invalid(
                field("stream"),
                format!(
                    "streams under the reserved prefix \"{RESERVED_PREFIX}\" are Herald's own \
                     (herald:ops carries its operational events); publish to another stream"
                ),
            ));
        }
        let event_type =
            EventType::parse(&self.event_type).map_err(|d| ApiError::invalid(field("type"), d))?;
        let payload = self.payload;
        if payload.get().len() > max_payload {
            return Err(ApiError::PayloadTooLarge(format!(
                "{} is {} bytes; the limit is {max_payload} bytes (HERALD_MAX_PAYLOAD)",
                field("payload"),
                payload.get().len()
            )));
        }
        super::body::check_nesting(&field("payload"), &payload)?;
        Ok(PendingEvent::new(stream, event_type, RawJson(payload)))
    }
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1-255 printable ASCII characters without spaces",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// What makes two requests "the same": the route and each event's stream, type and payload
/// bytes (so whitespace and key order outside the payload do not matter).
fn request_hash(route: &str, events: &[PendingEvent]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    for e in events {
        for part in [e.stream.as_str(), e.event_type.as_str(), e.payload.get()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.finalize().to_vec()
}

/// Stores `pending`, through the group committer or, with an idempotency key, in a
/// transaction of its own that also claims the key. Returns the events and whether they
/// are a replay of an earlier request.
async fn store(
    state: &AppState,
    principal: &Principal,
    route: &str,
    key: Option<String>,
    pending: Vec<PendingEvent>,
) -> Result<(Vec<Event>, bool), ApiError> {
    let Some(key) = key else {
        return Ok((state.ingest.submit(pending).await?, false));
    };
    let hash = request_hash(route, &pending);
    let ids: Vec<Uuid> = pending.iter().map(|e| e.id).collect();
    let mut conn = state.pool.get().await?;
    let claim_hash = hash.clone();
    let insert_claim = state.notifier.insert_claim();
    let outcome = conn
        .transaction(async |conn| {
            match idempotency::claim(conn, principal.key_id, &key, &claim_hash, &ids).await? {
                Claim::Fresh => event::insert_all(conn, pending, insert_claim.as_ref())
                    .await
                    .map(Ok),
                Claim::Existing(record) => Ok(Err(record)),
            }
        })
        .await?;
    match outcome {
        Ok(stored) => Ok((state.notifier.committed(stored), false)),
        Err(record) if record.request_hash != hash => Err(ApiError::Conflict(format!(
            "Idempotency-Key {key:?} was already used at {} for a different request; \
             use a new key for a new request",
            record.created_at.to_rfc3339()
        ))),
        Err(record) => Ok((event::find_many(&mut conn, &record.event_ids).await?, true)),
    }
}

fn respond(replayed: bool) -> actix_web::HttpResponseBuilder {
    if replayed {
        let mut response = HttpResponse::Ok();
        response.insert_header(("Idempotent-Replayed", "true"));
        response
    } else {
        HttpResponse::Created()
    }
}

#[utoipa::path(
    tag = "events",
    summary = "Publish an event",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats within 24 h return the first result")),
    request_body(content = NewEvent, content_type = "application/json"),
    responses((status = 201, description = "Stored", body = EventDto), (status = 200, description = "An idempotent repeat (Idempotent-Replayed: true)", body = EventDto), super::openapi::BodyErrors, super::openapi::AuthErrors, (status = 409, description = "Idempotency-Key reused with another body", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[post("/events")]
async fn create_event(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_publisher()?;
    let key = idempotency_key(&req)?;
    let limit = state.settings.max_payload + ENVELOPE_ALLOWANCE;
    let input: NewEvent = read_json(&req, body, limit, "HERALD_MAX_PAYLOAD").await?;
    let pending = input.parse("", state.settings.max_payload)?;
    let (events, replayed) = store(&state, &principal, "/v1/events", key, vec![pending]).await?;
    let event = events
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("stored event missing".into()))?;
    crate::telemetry::record_id("event_id", event.id);
    Ok(respond(replayed)
        .insert_header((header::LOCATION, format!("/v1/events/{}", event.id)))
        .json(EventDto::from(event)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BatchDto {
    events: Vec<EventDto>,
}

#[utoipa::path(
    tag = "events",
    summary = "Publish up to 1000 events at once (all or nothing)",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats within 24 h return the first result")),
    request_body(content = NewEventBatch, content_type = "application/json"),
    responses((status = 201, description = "Stored, in order", body = BatchDto), (status = 200, description = "An idempotent repeat", body = BatchDto), super::openapi::BodyErrors, super::openapi::AuthErrors, (status = 409, description = "Idempotency-Key reused with another body", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[post("/events/batch")]
async fn create_events_batch(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_publisher()?;
    let key = idempotency_key(&req)?;
    let limit = state.settings.max_batch_bytes;
    let input: NewEventBatch = read_json(&req, body, limit, "HERALD_MAX_BATCH_BYTES").await?;
    let inputs = input.events;
    if inputs.is_empty() || inputs.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "events",
            format!("must hold 1 to {MAX_BATCH} events (got {})", inputs.len()),
        ));
    }
    let pending = inputs
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.parse(&format!("events[{i}]."), state.settings.max_payload))
        .collect::<Result<Vec<_>, _>>()?;
    let (events, replayed) = store(&state, &principal, "/v1/events/batch", key, pending).await?;
    Ok(respond(replayed).json(BatchDto {
        events: events.into_iter().map(EventDto::from).collect(),
    }))
}

#[utoipa::path(
    tag = "events",
    summary = "One event",
    params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses((status = 200, description = "The event", body = EventDto), super::openapi::AuthErrors, (status = 404, description = "No such event (or not readable with this key)", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/events/{id}")]
async fn get_event(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = super::parse_id("event", &path)?;
    crate::telemetry::record_id("event_id", id);
    let not_found = || ApiError::NotFound(format!("no event with id {id}"));
    if principal.role == crate::domain::Role::Publisher {
        return Err(ApiError::Forbidden(
            "publisher keys cannot read events; use a subscriber or admin key".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let event = event::find(&mut conn, id).await?.ok_or_else(not_found)?;
    // Events outside a subscriber's prefixes are reported as missing, not forbidden, so
    // that ids cannot be probed for existence.
    if !principal.can_read(&event.stream) {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(EventDto::from(event)))
}
