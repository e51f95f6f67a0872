//! `/v1/deliveries`: the webhook log, and replaying deliveries (admin only). A bulk
//! replay's progress is in `replays`, the change feed in `changes`.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::body::read_json;
use crate::auth::Principal;
use crate::db::models::attempt::{self, Attempt};
use crate::db::models::delivery::{self, Delivery, DeliveryFilter, DeliveryStatus};
use crate::db::models::replay::{self, Replay};
use crate::domain::{EventType, StreamName};
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_deliveries)
        .service(replay_deliveries)
        .service(get_delivery)
        .service(replay_delivery);
}

/// A delivery's fields, as the list and the detail show them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryFields {
    /// Delivery id.
    id: Uuid,
    /// The event (its id is the webhook's `webhook-id`).
    event_id: Uuid,
    /// The endpoint.
    endpoint_id: Uuid,
    /// The event's stream.
    stream: String,
    /// The event's seq.
    seq: i64,
    /// The event's type.
    event_type: String,
    /// pending, delivering, succeeded or failed.
    status: DeliveryStatus,
    /// When the next attempt is due (pending).
    next_attempt_at: Option<DateTime<Utc>>,
    /// Status code of the last answer.
    last_status_code: Option<i32>,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// Created.
    created_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
    /// The bulk replay or recover that last made it due.
    replay_id: Option<Uuid>,
}

impl DeliveryFields {
    /// The fields, and the number of attempts made.
    fn of(d: Delivery) -> (Self, i32) {
        let fields = Self {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            stream: d.stream,
            seq: d.seq,
            event_type: d.event_type,
            status: d.status,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            updated_at: d.updated_at,
            replay_id: d.replay_id,
        };
        (fields, d.attempts)
    }
}

/// A delivery as the list shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDto {
    #[serde(flatten)]
    fields: DeliveryFields,
    /// Attempts made so far.
    attempts: i32,
}

impl From<Delivery> for DeliveryDto {
    fn from(d: Delivery) -> Self {
        let (fields, attempts) = DeliveryFields::of(d);
        Self { fields, attempts }
    }
}

/// A delivery with its attempts (`GET /v1/deliveries/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    fields: DeliveryFields,
    /// Every attempt, oldest first (the list has their number here).
    attempts: Vec<AttemptDto>,
}

impl DeliveryDetail {
    fn new(d: Delivery, attempts: Vec<Attempt>) -> Self {
        Self {
            fields: DeliveryFields::of(d).0,
            attempts: attempts.into_iter().map(AttemptDto::from).collect(),
        }
    }
}

/// An attempt as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptDto {
    id: Uuid,
    started_at: DateTime<Utc>,
    duration_ms: i32,
    trigger: String,
    triggered_by: Option<Uuid>,
    request_headers: Value,
    response_status: Option<i32>,
    response_headers: Option<Value>,
    response_body: Option<String>,
    error_class: Option<String>,
    error_detail: Option<String>,
}

impl From<Attempt> for AttemptDto {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id,
            started_at: a.started_at,
            duration_ms: a.duration_ms,
            trigger: a.trigger,
            triggered_by: a.triggered_by,
            request_headers: a.request_headers,
            response_status: a.response_status,
            response_headers: a.response_headers,
            response_body: a.response_body,
            error_class: a.error_class,
            error_detail: a.error_detail,
        }
    }
}

/// `202` to a single replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayRequested {
    /// The delivery.
    pub id: Uuid,
    /// `pending`: due now.
    pub status: DeliveryStatus,
}

/// `202` to a bulk replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkReplayed {
    /// How many deliveries were made due.
    pub replayed: usize,
    /// Follow it at `GET /v1/replays/{replay_id}`.
    pub replay_id: Uuid,
    /// Herald is still searching older deliveries for matches, in the background (a
    /// filter no index answers: event type, stream or status code without a failed,
    /// pending or replay id condition); `replayed` is what it found so far, and the
    /// replay's `total` grows until its `searching` is false.
    pub searching: bool,
}

/// `200` to a bulk replay's dry run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkReplayPreview {
    /// Always 0.
    pub replayed: i64,
    /// How many deliveries match (not counting those in flight), counted up to
    /// [`PREVIEW_COUNT_LIMIT`].
    pub matched: i64,
    /// More than `matched` may match: the count stopped at [`PREVIEW_COUNT_LIMIT`], or
    /// older deliveries than `searched_to` were not searched.
    pub more: bool,
    /// A filter no index answers is counted among the newest 10,000 deliveries that
    /// match the rest of it: this is the creation time of the oldest of those, when older
    /// deliveries were left unsearched (the replay itself searches them all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched_to: Option<DateTime<Utc>>,
}

/// Which deliveries: the list's query parameters, and a bulk replay's `filter`. Every
/// condition is optional; empty values are ignored.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct FilterInput {
    /// `pending`, `delivering`, `succeeded` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// An endpoint's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_id: Option<String>,
    /// An event type.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    /// A stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    /// The last response's HTTP status (a string of it is taken too).
    #[schema(value_type = Option<i32>)]
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    status_code: Option<String>,
    /// Created at or after (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// Created before (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    /// Made due by this bulk replay or recover.
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_id: Option<String>,
    /// Any other field: refused in a bulk replay's filter, ignored in a query string.
    #[serde(flatten, skip_serializing)]
    #[schema(ignore)]
    other: BTreeMap<String, serde::de::IgnoredAny>,
}

impl FilterInput {
    fn is_empty(&self) -> bool {
        [
            &self.status,
            &self.endpoint_id,
            &self.event_type,
            &self.stream,
            &self.status_code,
            &self.since,
            &self.until,
            &self.replay_id,
        ]
        .iter()
        .all(|v| v.as_deref().is_none_or(str::is_empty))
    }
}

/// A number is taken as its decimal text (`"status_code": 500`).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Number(i64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::String(s) => s,
        Text::Number(n) => n.to_string(),
    }))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    filter: FilterInput,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_time(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("must be an RFC 3339 time like 2026-01-31T12:00:00Z (got {raw:?})"),
            )
        })
}

fn encode_cursor(d: &Delivery) -> String {
    encode_cursor_at(d.created_at, d.id)
}

fn encode_cursor_at(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::invalid("cursor", "is not a cursor this API returned");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((
        DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&Utc),
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

/// A query value, parsed if present and not empty.
fn optional<T>(
    raw: &Option<String>,
    parse: impl FnOnce(&str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    raw.as_deref()
        .filter(|s| !s.is_empty())
        .map(parse)
        .transpose()
}

fn parse_filter(query: &FilterInput) -> Result<DeliveryFilter, ApiError> {
    let id = |field: &'static str, what: &'static str| {
        move |raw: &str| {
            Uuid::parse_str(raw).map_err(|_| ApiError::invalid(field, format!("must be {what}")))
        }
    };
    Ok(DeliveryFilter {
        status: optional(&query.status, |raw| {
            DeliveryStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "must be one of pending, delivering, succeeded, failed",
                )
            })
        })?,
        endpoint_id: optional(&query.endpoint_id, id("endpoint_id", "an endpoint id"))?,
        event_type: optional(&query.event_type, |raw| {
            EventType::parse(raw)
                .map(EventType::into_inner)
                .map_err(|d| ApiError::invalid("event_type", d))
        })?,
        stream: optional(&query.stream, |raw| {
            StreamName::parse(raw)
                .map(StreamName::into_inner)
                .map_err(|d| ApiError::invalid("stream", d))
        })?,
        status_code: optional(&query.status_code, |raw| {
            raw.parse::<i32>()
                .ok()
                // What receivers send: 100-999 (a code over 599 is recorded as it came).
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| ApiError::invalid("status_code", "must be an HTTP status code"))
        })?,
        since: optional(&query.since, |raw| parse_time("since", raw))?,
        until: optional(&query.until, |raw| parse_time("until", raw))?,
        replay_id: optional(&query.replay_id, id("replay_id", "a replay id"))?,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryPageDto {
    deliveries: Vec<DeliveryDto>,
    /// Set when there may be more: pass it as `cursor` for the next page.
    next_cursor: Option<String>,
    /// Set when a filter with no index of its own (event type, stream, status code)
    /// stopped after looking through its candidates for this page: the search reached
    /// back to this time, and `next_cursor` goes on from there. The page may then hold
    /// fewer deliveries than `limit`, even none.
    searched_to: Option<DateTime<Utc>>,
}

#[utoipa::path(
    tag = "deliveries",
    summary = "The webhook log, newest first",
    params(("status" = Option<String>, Query, description = "pending, delivering, succeeded or failed"), ("endpoint_id" = Option<uuid::Uuid>, Query, description = "Endpoint"), ("event_type" = Option<String>, Query, description = "Event type"), ("stream" = Option<String>, Query, description = "Stream"), ("status_code" = Option<i32>, Query, description = "Last response status"), ("since" = Option<String>, Query, description = "Created at or after (RFC 3339)"), ("until" = Option<String>, Query, description = "Created before (RFC 3339)"), ("replay_id" = Option<uuid::Uuid>, Query, description = "Made due by this bulk replay or recover"), ("limit" = Option<i64>, Query, description = "1-500, default 50"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "A page", body = DeliveryPageDto), super::openapi::AuthErrors, (status = 422, description = "A bad filter", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/deliveries")]
async fn list_deliveries(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?
        .into_inner();
    let filter = parse_filter(&query.filter)?;
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {MAX_LIMIT}")))?,
    };
    let cursor = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(decode_cursor)
        .transpose()?;
    let mut conn = state.pool.get().await?;
    let found = delivery::list(&mut conn, &filter, cursor, limit + 1).await?;
    let more = found.deliveries.len() as i64 > limit;
    let page: Vec<Delivery> = found
        .deliveries
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    let (next_cursor, searched_to) = match found.stopped_at {
        _ if more => (page.last().map(encode_cursor), None),
        Some((at, id)) => (Some(encode_cursor_at(at, id)), Some(at)),
        None => (None, None),
    };
    Ok(HttpResponse::Ok().json(DeliveryPageDto {
        deliveries: page.into_iter().map(DeliveryDto::from).collect(),
        next_cursor,
        searched_to,
    }))
}

#[utoipa::path(
    tag = "deliveries",
    summary = "A delivery with every attempt",
    params(("id" = uuid::Uuid, Path, description = "Delivery id")),
    responses((status = 200, description = "The delivery; attempts is the list of attempts", body = DeliveryDetail), super::openapi::AuthErrors, (status = 404, description = "No such delivery", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/deliveries/{id}")]
async fn get_delivery(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("delivery", &path)?;
    crate::telemetry::record_id("delivery_id", id);
    let mut conn = state.pool.get().await?;
    let found = delivery::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {id}")))?;
    let attempts = attempt::attempts_of(&mut conn, id).await?;
    Ok(HttpResponse::Ok().json(DeliveryDetail::new(found, attempts)))
}

#[utoipa::path(
    tag = "deliveries",
    summary = "Attempt a delivery again now",
    params(("id" = uuid::Uuid, Path, description = "Delivery id")),
    responses((status = 202, description = "Due now", body = ReplayRequested), super::openapi::AuthErrors, (status = 404, description = "No such delivery", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 409, description = "Being attempted right now", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[post("/deliveries/{id}/replay")]
async fn replay_delivery(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("delivery", &path)?;
    crate::telemetry::record_id("delivery_id", id);
    let mut conn = state.pool.get().await?;
    match replay::request_replay(&mut conn, id, principal.key_id).await? {
        None => Err(ApiError::NotFound(format!("no delivery with id {id}"))),
        Some(false) => Err(ApiError::Conflict(
            "this delivery is being attempted right now; replay it when the attempt ends".into(),
        )),
        Some(true) => {
            state.notifier.deliveries_due();
            Ok(HttpResponse::Accepted().json(ReplayRequested {
                id,
                status: DeliveryStatus::Pending,
            }))
        }
    }
}

/// The most deliveries one bulk replay touches.
pub const MAX_BULK_REPLAY: i64 = 100_000;

/// Where a bulk replay's dry run stops counting: the console shows "more than 10,000"
/// beyond it, and the count costs the same whatever the size of the matching set.
pub const PREVIEW_COUNT_LIMIT: i64 = 10_000;

/// A bulk replay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplay {
    /// At least one condition, as in the list's query.
    filter: FilterInput,
    /// Count the matching deliveries and change nothing.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(
    tag = "deliveries",
    summary = "Replay every delivery matching a filter (or count them)",
    request_body(content = BulkReplay, content_type = "application/json"),
    responses((status = 202, description = "Replayed: {replayed, replay_id}", body = BulkReplayed), (status = 200, description = "dry_run: how many match", body = BulkReplayPreview), super::openapi::BodyErrors, super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[post("/deliveries/replay")]
async fn replay_deliveries(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let BulkReplay { filter, dry_run } = read_json(&req, body, 16 * 1024, "16 KiB").await?;
    if let Some(other) = filter.other.keys().next() {
        return Err(ApiError::invalid(
            format!("filter.{other}"),
            "is not a filter (filters: status, endpoint_id, event_type, stream, status_code, \
             since, until, replay_id)",
        ));
    }
    if filter.is_empty() {
        return Err(ApiError::invalid(
            "filter",
            "must name at least one condition, such as {\"status\": \"failed\"}",
        ));
    }
    let recorded = serde_json::to_value(&filter).map_err(|e| ApiError::Internal(e.to_string()))?;
    let filter = parse_filter(&filter)?;
    let mut conn = state.pool.get().await?;
    if dry_run {
        let (counted, searched_to) =
            replay::count_replayable(&mut conn, &filter, PREVIEW_COUNT_LIMIT).await?;
        return Ok(HttpResponse::Ok().json(BulkReplayPreview {
            replayed: 0,
            matched: counted.min(PREVIEW_COUNT_LIMIT),
            more: counted > PREVIEW_COUNT_LIMIT || searched_to.is_some(),
            searched_to,
        }));
    }
    let replay = Replay::new("filter", recorded, principal.key_id);
    let replay_id = replay.id;
    let (replayed, searching) = if filter.needs_search() {
        // The first step here, so the answer counts what the newest deliveries held; the
        // rest in the background (`crate::replay_search`).
        let step = replay::start_search(&mut conn, &filter, replay, MAX_BULK_REPLAY).await?;
        (step.replayed, step.searching)
    } else {
        let replayed = replay::replay_matching(&mut conn, &filter, replay, MAX_BULK_REPLAY).await?;
        (replayed, false)
    };
    if replayed > 0 {
        state.notifier.deliveries_due();
    }
    Ok(HttpResponse::Accepted().json(BulkReplayed {
        replayed,
        replay_id,
        searching,
    }))
}

/// Parses an RFC 3339 time for `field`.
pub fn parse_rfc3339(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    parse_time(field, raw)
}
