//! `GET /v1/streams/{stream}/events` (poll) and `GET /v1/streams/{stream}`.
//!
//! Stream names may contain `/`, so the name is matched greedily up to the final
//! `/events`; a name that itself ends in `/events` must be sent with `%2F` for its slashes.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::events::EventDto;
use crate::auth::Principal;
use crate::db::models::{event, stream};
use crate::domain::StreamName;
use crate::error::ApiError;
use crate::startup::AppState;

/// Default and largest `limit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest `limit`.
pub const MAX_LIMIT: i64 = 1000;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/streams/{stream:.+}/events",
        web::get().to(list_stream_events),
    )
    .route("/streams/{stream:.+}", web::get().to(get_stream));
}

/// Parses the `{stream}` path segment (percent-encoded slashes allowed).
fn stream_from_path(raw: &str) -> Result<StreamName, ApiError> {
    let decoded = raw.replace("%2F", "/").replace("%2f", "/");
    StreamName::parse(&decoded).map_err(|d| ApiError::invalid("stream", d))
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// The validated query of a poll.
#[derive(Debug, Clone, Copy)]
struct Poll {
    after: i64,
    limit: i64,
}

impl Poll {
    fn parse(req: &HttpRequest) -> Result<Self, ApiError> {
        let query = web::Query::<PollQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?
            .into_inner();
        let after = match query.after.as_deref() {
            None | Some("") => 0,
            Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::invalid("after", format!("must be a seq number >= 0 (got {raw:?})"))
            })?,
        };
        let limit = match query.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid("limit", format!("must be 1 to {MAX_LIMIT} (got {raw:?})"))
                })?,
        };
        Ok(Self { after, limit })
    }
}

#[derive(Debug, Serialize)]
struct PageDto {
    events: Vec<EventDto>,
    next_after: i64,
}

async fn list_stream_events(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stream = stream_from_path(&path)?;
    principal.require_read(&stream)?;
    let poll = Poll::parse(&req)?;
    let mut conn = state.pool.get().await?;
    let events = event::list_after(&mut conn, stream.as_str(), poll.after, poll.limit).await?;
    // Seqs are gapless, so a first event beyond after+1 means the ones between were purged.
    match events.first() {
        Some(first) if first.seq > poll.after + 1 => {
            return Err(ApiError::Gone {
                earliest_after: first.seq - 1,
            });
        }
        None => {
            // Nothing after the cursor: caught up, or everything after it was purged. (An
            // event committed since the read above shows up as earliest <= after + 1.)
            let bounds = stream::bounds(&mut conn, stream.as_str()).await?;
            let earliest_after = bounds.earliest_seq.map_or(bounds.last_seq, |s| s - 1);
            if earliest_after > poll.after {
                return Err(ApiError::Gone { earliest_after });
            }
        }
        Some(_) => {}
    }
    let next_after = events.last().map_or(poll.after, |e| e.seq);
    Ok(HttpResponse::Ok().json(PageDto {
        events: events.into_iter().map(EventDto::from).collect(),
        next_after,
    }))
}

#[derive(Debug, Serialize)]
struct StreamDto {
    stream: String,
    last_seq: i64,
    earliest_seq: Option<i64>,
}

async fn get_stream(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stream = stream_from_path(&path)?;
    principal.require_read(&stream)?;
    let mut conn = state.pool.get().await?;
    let bounds = stream::bounds(&mut conn, stream.as_str()).await?;
    Ok(HttpResponse::Ok().json(StreamDto {
        stream: stream.into_inner(),
        last_seq: bounds.last_seq,
        earliest_seq: bounds.earliest_seq,
    }))
}
