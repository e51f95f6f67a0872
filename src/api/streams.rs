//! `GET /v1/streams/{stream}/events` (poll and long-poll) and `GET /v1/streams/{stream}`.
//!
//! A poll with nothing after its cursor is held (`wait`, `Prefer: wait=N`, or
//! `HERALD_LONGPOLL_DEFAULT_WAIT`; clamped to `HERALD_LONGPOLL_MAX_WAIT`; plus up to 1/16 of
//! jitter) until the stream's hub slot reports new events, the wait runs out, the client
//! goes away, or Herald shuts down. `wait=0` is a plain poll. See `docs/long-polling.md`.
//!
//! Stream names may contain `/`, so the name is matched greedily up to the final
//! `/events`; a name that itself ends in `/events` must be sent with `%2F` for its slashes.

use actix_web::get;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel_async::AsyncPgConnection;
use futures_util::StreamExt as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::config::Settings;
use crate::db::DbPool;
use crate::db::models::{event, stream};
use crate::domain::StreamName;
use crate::error::ApiError;
use crate::metrics::inc;
use crate::state::AppState;
use crate::streams::disconnect;
use crate::streams::hub::{EventJson, Subscription, Taken};

/// Default and largest `limit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest `limit`.
pub const MAX_LIMIT: i64 = 1000;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_stream_events)
        .service(super::sse::stream_sse)
        .service(get_stream);
}

/// Parses the `{stream}` path segment (percent-encoded slashes allowed).
pub fn stream_from_path(raw: &str) -> Result<StreamName, ApiError> {
    let decoded = raw.replace("%2F", "/").replace("%2f", "/");
    StreamName::parse(&decoded).map_err(|d| ApiError::invalid("stream", d))
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    after: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

/// The validated query of a poll.
#[derive(Debug, Clone)]
struct Poll {
    after: i64,
    limit: i64,
    /// How long to hold the request (already clamped, before jitter); zero for a plain poll.
    wait: Duration,
    /// `Preference-Applied` value when the wait came from `Prefer: wait=N`.
    preference_applied: Option<String>,
}

/// Parses a cursor (`after`, `Last-Event-ID`): a seq number >= 0.
pub fn parse_cursor(field: &str, raw: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::invalid(field, format!("must be a seq number >= 0 (got {raw:?})")))
}

/// The `wait=N` of a `Prefer` header (RFC 7240), if any.
fn preferred_wait(req: &HttpRequest) -> Option<&str> {
    wait_preference(
        req.headers()
            .get_all("prefer")
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The first `wait=N` preference among `Prefer` header values (comma-separated lists).
pub fn wait_preference<'a>(values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    values
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .map(|v| v.trim().trim_matches('"'))
        .next()
}

/// Parses a wait: seconds (`25`, `0.5`, as `Prefer: wait=N` has them) or a number with a
/// unit (`25s`, `500ms`, `1m`, `1h`, as the settings spell durations). Waits too long for a
/// `Duration` become `Duration::MAX` (the caller clamps every wait to the maximum).
pub fn parse_wait(field: &str, raw: &str) -> Result<Duration, ApiError> {
    let trimmed = raw.trim();
    let (number, scale) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .iter()
        .find_map(|(unit, scale)| trimmed.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or((trimmed, 1.0));
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        // Any wait longer than a Duration holds is clamped to the maximum like any other.
        .map(|n| Duration::try_from_secs_f64(n * scale).unwrap_or(Duration::MAX))
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!(
                    "must be a wait in seconds (25, 0.5) or with a unit (25s, 500ms, 1m), \
                     not negative (got {raw:?})"
                ),
            )
        })
}

impl Poll {
    fn parse(req: &HttpRequest, settings: &Settings) -> Result<Self, ApiError> {
        let query = web::Query::<PollQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?
            .into_inner();
        let after = match query.after.as_deref() {
            None | Some("") => 0,
            Some(raw) => parse_cursor("after", raw)?,
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
        let (wait, from_prefer) = match (query.wait.as_deref(), preferred_wait(req)) {
            (Some(raw), _) if !raw.is_empty() => (parse_wait("wait", raw)?, false),
            (_, Some(raw)) => (parse_wait("Prefer", raw)?, true),
            _ => (settings.longpoll_default_wait, false),
        };
        let wait = wait.min(settings.longpoll_max_wait);
        let preference_applied = from_prefer.then(|| format!("wait={}", fmt_secs(wait)));
        Ok(Self {
            after,
            limit,
            wait,
            preference_applied,
        })
    }
}

fn fmt_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

/// The wait plus up to 1/16 of it, so that clients that started together come back apart.
pub fn jittered(wait: Duration) -> Duration {
    let extra = wait.as_secs_f64() / 16.0;
    wait + Duration::from_secs_f64(rand::rng().random_range(0.0..=extra))
}

/// Reads up to `limit` events after `after`, or `410` if the cursor points into purged
/// history. Seqs are gapless, so a first event beyond after+1 means the ones between were
/// purged.
pub async fn read_page(
    conn: &mut AsyncPgConnection,
    stream: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Arc<EventJson>>, ApiError> {
    let events = event::list_after(conn, stream, after, limit).await?;
    match events.first() {
        Some(first) if first.seq > after + 1 => {
            return Err(ApiError::Gone {
                earliest_after: first.seq - 1,
            });
        }
        None => {
            // Nothing after the cursor: caught up, or everything after it was purged. (An
            // event committed since the read above shows up as earliest <= after + 1.)
            let bounds = stream::bounds(conn, stream).await?;
            let earliest_after = bounds.earliest_seq.map_or(bounds.last_seq, |s| s - 1);
            if earliest_after > after {
                return Err(ApiError::Gone { earliest_after });
            }
        }
        Some(_) => {}
    }
    // Seqs are gapless when written, but a stream's events can span two day partitions
    // out of seq order (an id is made when the request is read, the seq at commit), so
    // retention may drop one and keep the next. A page stops before such a hole: the next
    // read starts at it and answers `410` with where to resume, instead of skipping it.
    let mut events = events;
    if let Some(hole) = events
        .windows(2)
        .position(|pair| pair[1].seq != pair[0].seq + 1)
    {
        events.truncate(hole + 1);
    }
    Ok(events
        .into_iter()
        .map(|e| Arc::new(EventJson::new(e)))
        .collect())
}

/// [`read_page`] on a pooled connection, boxed: a held request's future keeps the size of
/// its largest await point for as long as it is held, and the database futures are large.
/// Boxing them keeps each of 10,000 held long-polls small.
pub async fn fetch_page(
    pool: &DbPool,
    stream: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Arc<EventJson>>, ApiError> {
    Box::pin(async {
        let mut conn = pool.get().await?;
        read_page(&mut conn, stream, after, limit).await
    })
    .await
}

fn page_body(events: &[Arc<EventJson>], after: i64) -> String {
    let next_after = events.last().map_or(after, |e| e.seq);
    let mut body =
        String::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 40);
    body.push_str("{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event.json);
    }
    body.push_str("],\"next_after\":");
    body.push_str(&next_after.to_string());
    body.push('}');
    body
}

fn page_head(poll: &Poll) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(applied) = &poll.preference_applied {
        response.insert_header(("Preference-Applied", applied.as_str()));
    }
    response
}

/// `{"events": [...], "next_after": N}` from pre-serialized events.
fn page(events: &[Arc<EventJson>], after: i64, poll: &Poll) -> HttpResponse {
    page_head(poll).body(page_body(events, after))
}

/// Answers a held request past `HERALD_MAX_WAITERS` or during shutdown.
pub fn unavailable(detail: &str) -> ApiError {
    ApiError::Unavailable {
        detail: detail.into(),
        retry_after: 1 + rand::rng().random_range(0..3),
    }
}

/// A page of a stream (poll, long-poll).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamPage {
    /// The events after the cursor, in seq order (none if the wait ran out).
    pub events: Vec<crate::streams::event_json::EventDto>,
    /// The cursor for the next poll: the last seq here, or the cursor given.
    pub next_after: i64,
}

#[utoipa::path(
    tag = "streams",
    summary = "Poll or long-poll a stream",
    params(("stream" = String, Path, description = "Stream name"), ("after" = Option<i64>, Query, description = "Cursor: the last seq seen (default 0)"), ("limit" = Option<i64>, Query, description = "At most this many events (1-1000, default 100)"), ("wait" = Option<String>, Query, description = "Hold up to this long for events: seconds or a number with a unit (ms, s, m, h), e.g. 25s, 500ms or 25 (or Prefer: wait=25)", example = "25s"), ("Prefer" = Option<String>, Header, description = "wait=<seconds>")),
    responses((status = 200, description = "Events after the cursor (maybe none) and the next cursor", body = StreamPage), super::openapi::AuthErrors, (status = 410, description = "The cursor is older than retention (see earliest_after)", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "Bad cursor, limit or wait", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/streams/{stream:.+}/events")]
async fn list_stream_events(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stream = stream_from_path(&path)?;
    principal.require_read(&stream)?;
    let poll = Poll::parse(&req, &state.settings)?;
    let (after, limit) = (poll.after, poll.limit);
    if poll.wait.is_zero() {
        let events = fetch_page(&state.pool, stream.as_str(), after, limit).await?;
        return Ok(page(&events, after, &poll));
    }
    if state.stopping.is_cancelled() {
        return Err(unavailable(
            "Herald is shutting down; poll another instance",
        ));
    }
    let hold = principal.hold(&state.key_holds, state.settings.max_waiters_per_key)?;
    // Subscribe before reading, so that a commit between the read and the wait still
    // wakes this request.
    let subscription = state.hub.subscribe(stream.as_str(), after).map_err(|_| {
        inc(&state.metrics.longpolls_rejected);
        unavailable("too many held requests on this instance (HERALD_MAX_WAITERS)")
    })?;
    // A stream others already wait on is known to the hub: a reader at (or near) its end
    // is answered or held without a read of its own.
    let known = subscription.peek(after, usize::try_from(limit).unwrap_or(100));
    let read_own = known.is_none();
    let events = match known {
        Some(events) => events,
        None => fetch_page(&state.pool, stream.as_str(), after, limit).await?,
    };
    if read_own && events.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
        subscription.caught_up(events.last().map_or(after, |e| e.seq));
    }
    if !events.is_empty() {
        return Ok(page(&events, after, &poll));
    }

    // Nothing yet: answer with the status line and headers now and send the body when
    // there is something to say. The request itself (and actix-web's per-request state,
    // several KiB) is released while the body waits: a held long-poll then costs little
    // more than its connection.
    let held = Held {
        hold,
        closed: Box::pin(
            state
                .disconnects
                .clone()
                .closed(disconnect::socket_of(&req)),
        ),
        state: state.clone(),
        subscription,
        stream: stream.into_inner(),
        after,
        limit,
        wait: jittered(poll.wait),
    };
    Ok(
        page_head(&poll)
            .streaming(futures_util::stream::once(held.answer()).map(Ok::<_, ApiError>)),
    )
}

/// A long-poll waiting for its stream.
struct Held {
    state: web::Data<AppState>,
    /// Ends the wait when the key is deleted.
    hold: crate::streams::holds::Hold,
    subscription: Subscription,
    stream: String,
    after: i64,
    limit: i64,
    wait: Duration,
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

impl Held {
    /// Waits for events, the end of the wait, shutdown or the client leaving; returns
    /// the body. Anything but events is an empty page with the same cursor, so the client
    /// simply asks again.
    async fn answer(mut self) -> Bytes {
        let timeout = tokio::time::sleep(self.wait);
        let shutdown = self.state.stopping.clone();
        let revoked = self.hold.token();
        tokio::pin!(timeout);
        let limit_usize = usize::try_from(self.limit).unwrap_or(100);
        let metrics = &self.state.metrics;
        let events = loop {
            tokio::select! {
                () = &mut timeout => {
                    inc(&metrics.longpolls_timed_out);
                    break Vec::new();
                }
                () = shutdown.cancelled() => break Vec::new(),
                // The key was deleted: an empty page; the next request gets 401.
                () = revoked.cancelled() => break Vec::new(),
                () = &mut self.closed => {
                    inc(&metrics.waiters_disconnected);
                    break Vec::new();
                }
                () = self.subscription.changed() => {
                    let events = match self.subscription.take(self.after, limit_usize) {
                        Taken::Events(events) => events,
                        Taken::Nothing => continue,
                        Taken::Gap => match fetch_page(&self.state.pool, &self.stream, self.after, self.limit).await {
                            Ok(events) => events,
                            Err(err) => {
                                tracing::warn!(stream = %self.stream, error = %err, "long-poll read failed");
                                break Vec::new();
                            }
                        },
                    };
                    if let Some(newest) = events.last() {
                        inc(&metrics.longpolls_answered);
                        metrics.publish_to_answer.record(
                            (chrono::Utc::now() - newest.created_at)
                                .num_microseconds()
                                .unwrap_or(i64::MAX) as f64
                                / 1e6,
                        );
                        break events;
                    }
                }
            }
        };
        Bytes::from(page_body(&events, self.after))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StreamDto {
    stream: String,
    last_seq: i64,
    earliest_seq: Option<i64>,
}

#[utoipa::path(
    tag = "streams",
    summary = "A stream's bounds",
    params(("stream" = String, Path, description = "Stream name")),
    responses((status = 200, description = "Bounds and last seq", body = StreamDto), super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[get("/streams/{stream:.+}")]
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::jittered;

    #[test]
    fn jitter_adds_up_to_a_sixteenth_and_spreads_clients() {
        for wait in [Duration::from_secs(1), Duration::from_millis(1600)] {
            let waits: Vec<Duration> = (0..1000).map(|_| jittered(wait)).collect();
            for w in &waits {
                assert!(*w >= wait && *w <= wait + wait / 16, "{w:?} for {wait:?}");
            }
            let spread = *waits.iter().max().unwrap() - *waits.iter().min().unwrap();
            assert!(spread > wait / 32, "{spread:?} for {wait:?}");
        }
    }
}
