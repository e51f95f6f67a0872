//! `/v1/deliveries`: the webhook log, and replays (admin only).

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::body::read_json;
use super::fields::Fields;
use crate::auth::Principal;
use crate::db::models::delivery::{self, Attempt, Delivery, DeliveryFilter};
use crate::domain::{EventType, StreamName};
use crate::error::ApiError;
use crate::startup::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
const STATUSES: [&str; 4] = ["pending", "delivering", "succeeded", "failed"];

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/deliveries", web::get().to(list_deliveries))
        .route("/deliveries/replay", web::post().to(replay_deliveries))
        .route("/deliveries/{id}", web::get().to(get_delivery))
        .route("/deliveries/{id}/replay", web::post().to(replay_delivery));
}

/// A delivery as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeliveryDto {
    id: Uuid,
    event_id: Uuid,
    endpoint_id: Uuid,
    stream: String,
    seq: i64,
    event_type: String,
    status: String,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryDto {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            stream: d.stream,
            seq: d.seq,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// An attempt as the API shows it.
#[derive(Debug, Serialize)]
struct AttemptDto {
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

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    endpoint_id: Option<String>,
    event_type: Option<String>,
    stream: Option<String>,
    status_code: Option<String>,
    since: Option<String>,
    until: Option<String>,
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
    URL_SAFE_NO_PAD.encode(format!("{}|{}", d.created_at.to_rfc3339(), d.id))
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

fn parse_filter(query: &ListQuery) -> Result<DeliveryFilter, ApiError> {
    let present = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let status = present(&query.status);
    if let Some(s) = &status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    Ok(DeliveryFilter {
        status,
        endpoint_id: present(&query.endpoint_id)
            .map(|raw| {
                Uuid::parse_str(&raw)
                    .map_err(|_| ApiError::invalid("endpoint_id", "must be an endpoint id"))
            })
            .transpose()?,
        event_type: present(&query.event_type)
            .map(|raw| {
                EventType::parse(&raw)
                    .map(EventType::into_inner)
                    .map_err(|d| ApiError::invalid("event_type", d))
            })
            .transpose()?,
        stream: present(&query.stream)
            .map(|raw| {
                StreamName::parse(&raw)
                    .map(StreamName::into_inner)
                    .map_err(|d| ApiError::invalid("stream", d))
            })
            .transpose()?,
        status_code: present(&query.status_code)
            .map(|raw| {
                raw.parse::<i32>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| ApiError::invalid("status_code", "must be an HTTP status code"))
            })
            .transpose()?,
        since: present(&query.since)
            .map(|raw| parse_time("since", &raw))
            .transpose()?,
        until: present(&query.until)
            .map(|raw| parse_time("until", &raw))
            .transpose()?,
    })
}

#[derive(Debug, Serialize)]
struct DeliveryPageDto {
    deliveries: Vec<DeliveryDto>,
    next_cursor: Option<String>,
}

async fn list_deliveries(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?
        .into_inner();
    let filter = parse_filter(&query)?;
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
    let page = delivery::list(&mut conn, &filter, cursor, limit + 1).await?;
    let more = page.len() as i64 > limit;
    let page: Vec<Delivery> = page
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    let next_cursor = if more {
        page.last().map(encode_cursor)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(DeliveryPageDto {
        deliveries: page.into_iter().map(DeliveryDto::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Serialize)]
struct DeliveryDetailDto {
    #[serde(flatten)]
    delivery: DeliveryDto,
    attempts: Vec<AttemptDto>,
}

async fn get_delivery(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("delivery", &path)?;
    let mut conn = state.pool.get().await?;
    let found = delivery::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {id}")))?;
    let attempts = delivery::attempts_of(&mut conn, id).await?;
    Ok(HttpResponse::Ok().json(DeliveryDetailDto {
        delivery: found.into(),
        attempts: attempts.into_iter().map(AttemptDto::from).collect(),
    }))
}

async fn replay_delivery(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("delivery", &path)?;
    let mut conn = state.pool.get().await?;
    match delivery::request_replay(&mut conn, id, principal.key_id).await? {
        None => Err(ApiError::NotFound(format!("no delivery with id {id}"))),
        Some(false) => Err(ApiError::Conflict(
            "this delivery is being attempted right now; replay it when the attempt ends".into(),
        )),
        Some(true) => {
            state.notifier.deliveries_due();
            Ok(HttpResponse::Accepted().json(serde_json::json!({"id": id, "status": "pending"})))
        }
    }
}

/// The most deliveries one bulk replay touches.
pub const MAX_BULK_REPLAY: i64 = 100_000;
const FILTER_FIELDS: [&str; 7] = [
    "status",
    "endpoint_id",
    "event_type",
    "stream",
    "status_code",
    "since",
    "until",
];

async fn replay_deliveries(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let (body, _) = read_json::<Value>(&req, body, 16 * 1024, "16 KiB").await?;
    let fields = Fields::new(body, &["filter", "dry_run"])?;
    let dry_run = fields.bool("dry_run")?.unwrap_or(false);
    let Some(Value::Object(raw)) = fields.value("filter") else {
        return Err(ApiError::invalid(
            "filter",
            "is required: an object such as {\"status\": \"failed\"}",
        ));
    };
    let mut query = ListQuery::default();
    for (key, value) in raw {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(ApiError::invalid(
                    format!("filter.{key}"),
                    "must be a string",
                ));
            }
        };
        match key.as_str() {
            "status" => query.status = Some(text),
            "endpoint_id" => query.endpoint_id = Some(text),
            "event_type" => query.event_type = Some(text),
            "stream" => query.stream = Some(text),
            "status_code" => query.status_code = Some(text),
            "since" => query.since = Some(text),
            "until" => query.until = Some(text),
            other => {
                return Err(ApiError::invalid(
                    format!("filter.{other}"),
                    format!("is not a filter (filters: {})", FILTER_FIELDS.join(", ")),
                ));
            }
        }
    }
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "filter",
            "must name at least one condition, such as {\"status\": \"failed\"}",
        ));
    }
    let filter = parse_filter(&query)?;
    let mut conn = state.pool.get().await?;
    if dry_run {
        let matched = delivery::count_replayable(&mut conn, &filter).await?;
        return Ok(HttpResponse::Ok().json(serde_json::json!({"replayed": 0, "matched": matched})));
    }
    let replayed =
        delivery::replay_matching(&mut conn, &filter, principal.key_id, MAX_BULK_REPLAY).await?;
    if replayed > 0 {
        state.notifier.deliveries_due();
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({"replayed": replayed})))
}

/// Parses an RFC 3339 time for `field`.
pub fn parse_rfc3339(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    parse_time(field, raw)
}
