//! `GET /v1/streams/{stream}/sse`: the stream as Server-Sent Events, on the same hub as
//! long-polls.
//!
//! Each event is `id: <seq>`, `event: <type>`, `data: <event JSON>`. A client resumes from
//! `Last-Event-ID` (EventSource sends it by itself on reconnect) or `?after=N`: it gets
//! exactly the events after that seq, then new ones as they commit. Idle streams get a
//! comment line every `HERALD_SSE_HEARTBEAT` (which also tells Herald when a client has
//! gone). After `HERALD_SSE_MAX_LIFETIME` the stream ends and the client reconnects,
//! possibly to another instance, which spreads clients after a deploy or scale-out.

use actix_web::get;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::stream;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::streams::{fetch_page, parse_cursor, stream_from_path, unavailable};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::inc;
use crate::state::AppState;
use crate::streams::disconnect;
use crate::streams::hub::{EventJson, Subscription, Taken};

/// Events read from the database per chunk while catching up.
const CATCH_UP_LIMIT: i64 = 500;
/// What EventSource should wait before reconnecting, in milliseconds.
const RETRY_MS: u32 = 1000;

#[derive(Debug, serde::Deserialize)]
struct SseQuery {
    after: Option<String>,
}

#[utoipa::path(
    tag = "streams",
    summary = "The stream as Server-Sent Events",
    params(("stream" = String, Path, description = "Stream name"), ("after" = Option<i64>, Query, description = "Resume after this seq"), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq (EventSource sends it)")),
    responses((status = 200, description = "text/event-stream: id=seq, event=type, data=event JSON", body = String, content_type = "text/event-stream"), super::openapi::AuthErrors, (status = 410, description = "The cursor is older than retention", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "Bad cursor", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/streams/{stream:.+}/sse")]
pub(super) async fn stream_sse(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stream = stream_from_path(&path)?;
    principal.require_read(&stream)?;
    let query = web::Query::<SseQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?"));
    let cursor = match (last_event_id, query.after.as_deref()) {
        (Some(raw), _) if !raw.is_empty() => parse_cursor("Last-Event-ID", raw)?,
        (_, Some(raw)) if !raw.is_empty() => parse_cursor("after", raw)?,
        _ => 0,
    };
    if state.stopping.is_cancelled() {
        return Err(unavailable(
            "Herald is shutting down; connect to another instance",
        ));
    }
    let hold = principal.hold(&state.key_holds, state.settings.max_waiters_per_key)?;
    let subscription = state.hub.subscribe(stream.as_str(), cursor).map_err(|_| {
        inc(&state.metrics.longpolls_rejected);
        unavailable("too many held requests on this instance (HERALD_MAX_WAITERS)")
    })?;
    // The first read happens before answering, so that an expired cursor is a real 410.
    let first = fetch_page(&state.pool, stream.as_str(), cursor, CATCH_UP_LIMIT).await?;
    if first.len() < CATCH_UP_LIMIT as usize {
        subscription.caught_up(first.last().map_or(cursor, |e| e.seq));
    }
    let settings = &state.settings;
    let mut heartbeat = tokio::time::interval(settings.sse_heartbeat);
    heartbeat.reset(); // the first tick after one interval, not now
    let sse = Sse {
        state: state.clone(),
        stream: stream.into_inner(),
        cursor,
        catching_up: first.len() as i64 == CATCH_UP_LIMIT,
        more: false,
        pending: Some(first),
        subscription,
        heartbeat,
        end_at: Instant::now() + settings.sse_max_lifetime,
        shutdown: state.stopping.clone(),
        hold,
        closed: Box::pin(
            state
                .disconnects
                .clone()
                .closed(disconnect::socket_of(&req)),
        ),
        started: false,
    };
    sse.state.metrics.sse.opened();
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream::unfold(sse, |mut sse| async move {
            sse.next_chunk()
                .await
                .map(|chunk| (Ok::<_, ApiError>(chunk), sse))
        })))
}

struct Sse {
    state: web::Data<AppState>,
    stream: String,
    cursor: i64,
    catching_up: bool,
    /// The last take from the hub was a full page: take again before waiting.
    more: bool,
    pending: Option<Vec<Arc<EventJson>>>,
    subscription: Subscription,
    heartbeat: Interval,
    end_at: Instant,
    shutdown: CancellationToken,
    /// Ends the stream when the key is deleted.
    hold: crate::streams::holds::Hold,
    closed: Pin<Box<dyn Future<Output = ()>>>,
    started: bool,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.state.metrics.sse.closed();
    }
}

impl Sse {
    /// The next bytes to send, or `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            let mut chunk = format!("retry: {RETRY_MS}\n\n");
            if let Some(events) = self.pending.take() {
                chunk.push_str(&self.format(&events));
            }
            return Some(Bytes::from(chunk));
        }
        loop {
            if self.hold.token().is_cancelled() {
                return None;
            }
            if self.catching_up {
                let events = match self.read().await {
                    Ok(events) => events,
                    // The cursor fell out of retention or the database is gone: end the
                    // stream; the client's reconnect gets the proper answer.
                    Err(_) => return None,
                };
                self.catching_up = events.len() as i64 == CATCH_UP_LIMIT;
                if !self.catching_up {
                    self.subscription
                        .caught_up(events.last().map_or(self.cursor, |e| e.seq));
                }
                if !events.is_empty() {
                    return Some(Bytes::from(self.format(&events)));
                }
                continue;
            }
            if self.more {
                self.more = false;
                if let Some(chunk) = self.take_live() {
                    return Some(chunk);
                }
                continue;
            }
            let revoked = self.hold.token();
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = revoked.cancelled() => return None,
                () = tokio::time::sleep_until(self.end_at) => return None,
                () = &mut self.closed => {
                    inc(&self.state.metrics.waiters_disconnected);
                    return None;
                }
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
                () = self.subscription.changed() => {
                    if let Some(chunk) = self.take_live() {
                        return Some(chunk);
                    }
                }
            }
        }
    }

    /// Takes what the hub holds after the cursor, a page at most: the chunk to send, if
    /// any (on a gap, the next call reads the database instead).
    fn take_live(&mut self) -> Option<Bytes> {
        match self.subscription.take(self.cursor, CATCH_UP_LIMIT as usize) {
            Taken::Events(events) => {
                // A full page may not be all that one wake-up brought (a batch of 800):
                // the next call takes the rest before waiting for another.
                self.more = events.len() as i64 == CATCH_UP_LIMIT;
                Some(Bytes::from(self.format(&events)))
            }
            Taken::Nothing => None,
            Taken::Gap => {
                self.catching_up = true;
                None
            }
        }
    }

    async fn read(&self) -> Result<Vec<Arc<EventJson>>, ApiError> {
        fetch_page(&self.state.pool, &self.stream, self.cursor, CATCH_UP_LIMIT).await
    }

    /// Formats events and moves the cursor past them.
    fn format(&mut self, events: &[Arc<EventJson>]) -> String {
        let mut out = String::new();
        for event in events {
            out.push_str(&format!("id: {}\nevent: {}\n", event.seq, event.event_type));
            push_data(&mut out, &event.json);
            out.push('\n');
            self.cursor = event.seq;
        }
        self.heartbeat.reset();
        out
    }
}

/// Appends `text` as `data:` fields, one per line of it. A `data:` field ends at CR, LF or
/// CRLF, and stored payloads keep the producer's line breaks: written on one line, the
/// rest of the JSON would be read as unknown fields and dropped while the `id:` still moved
/// the client's cursor. The client joins the fields with LF, so a payload's CR and CRLF
/// breaks come back as LF: whitespace between JSON tokens, the same value. (A line break
/// can only stand between tokens: inside a JSON string it is escaped.)
fn push_data(out: &mut String, text: &str) {
    let mut rest = text;
    loop {
        out.push_str("data: ");
        match rest.find(['\r', '\n']) {
            Some(at) => {
                out.push_str(&rest[..at]);
                out.push('\n');
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                out.push_str(rest);
                out.push('\n');
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_data;

    /// What an EventSource makes of `data:` lines: the fields joined with LF.
    fn parse(frame: &str) -> String {
        let mut data = Vec::new();
        for line in frame.split('\n') {
            if let Some(value) = line.strip_prefix("data: ") {
                data.push(value);
            }
        }
        data.join("\n")
    }

    #[test]
    fn every_line_break_starts_a_new_data_field_and_the_json_survives() {
        for (text, expected) in [
            ("{\"a\":1}", "{\"a\":1}"),
            ("{\"s\":\n\"ok\"}", "{\"s\":\n\"ok\"}"),
            ("{\"s\":\r\n\"ok\"}", "{\"s\":\n\"ok\"}"),
            ("{\"s\":\r\"ok\"}", "{\"s\":\n\"ok\"}"),
            ("{\"s\":\"\u{2028}\"}", "{\"s\":\"\u{2028}\"}"),
            ("{\n\n\"s\": 1\r\n}", "{\n\n\"s\": 1\n}"),
        ] {
            let mut out = String::new();
            push_data(&mut out, text);
            assert!(!out.contains('\r'), "{out:?}");
            assert_eq!(parse(&out), expected);
            let parsed: serde_json::Value = serde_json::from_str(&parse(&out)).unwrap();
            assert_eq!(
                parsed,
                serde_json::from_str::<serde_json::Value>(text).unwrap()
            );
        }
    }
}
