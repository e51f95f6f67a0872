//! `GET /v1/ws`: many streams over one WebSocket, on the same hub as long-polls and SSE;
//! `POST /v1/ws/tickets`: a single-use ticket for browsers, which cannot send a header
//! with a WebSocket.
//!
//! The protocol (docs/websockets.md) is JSON text messages. The client sends `subscribe
//! {stream, after}` and `unsubscribe {stream}`; the server answers `subscribed {stream,
//! next_after}`, `unsubscribed {stream}` or a per-stream `error {stream, status, detail}`
//! without closing the socket, and sends `event {stream, seq, event}` in seq order per
//! stream, once each.
//!
//! One task per socket follows all its streams: each subscription is a hub subscription
//! registered with the socket's [`Wakeups`] (no task or future per stream, so a
//! subscription costs a few hundred bytes). It catches up from the database from its
//! cursor (one page at a time, as SSE does, the reads running inside the socket's task),
//! then takes what the hub's one read per stream put in the slot. Everything the
//! socket sends goes through one bounded queue: a client that does not read is closed
//! (4008) once the queue is full, and its subscriptions are dropped at once; the others
//! never wait for it. A socket holds no pooled connection while idle.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, ResponseError as _, get, post, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Message, ProtocolError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use futures_util::future::LocalBoxFuture;
use futures_util::sink::Sink as _;
use futures_util::stream::FuturesUnordered;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::streams::{fetch_page, unavailable};
use crate::auth::Principal;
use crate::db::models::ws_ticket;
use crate::domain::StreamName;
use crate::error::ApiError;
use crate::metrics::inc;
use crate::state::AppState;
use crate::streams::holds::Hold;
use crate::streams::hub::{EventJson, Subscription, Taken, Wakeups};

/// How long a ticket works.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Events read from the database per page while a subscription catches up.
const CATCH_UP_LIMIT: i64 = 500;
/// How long a closing socket waits for its client to take the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Close code for a client whose unsent queue passed `HERALD_WS_MAX_QUEUE`.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code for a socket whose API key was deleted.
pub const CLOSE_KEY_REVOKED: u16 = 4001;
/// Close code for a client that answered no ping for two intervals.
pub const CLOSE_UNRESPONSIVE: u16 = 4002;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_ticket).service(open_socket);
}

/// A ticket that opens one WebSocket as the key that asked for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WsTicket {
    /// Pass it as `GET /v1/ws?ticket=...`; it works once.
    pub ticket: String,
    /// It stops working then (60 s after it was made).
    pub expires_at: DateTime<Utc>,
}

fn ticket_hash(ticket: &str) -> Vec<u8> {
    Sha256::digest(ticket.as_bytes()).to_vec()
}

#[utoipa::path(
    tag = "streams",
    summary = "A single-use ticket (60 s) to open a WebSocket from a browser",
    responses((status = 201, description = "The ticket", body = WsTicket), super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[post("/ws/tickets")]
async fn create_ticket(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_reader()?;
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let ticket = format!("wst_{}", URL_SAFE_NO_PAD.encode(bytes));
    let expires_at = Utc::now() + TICKET_TTL;
    let mut conn = state.pool.get().await?;
    ws_ticket::purge_expired(&mut conn).await?;
    ws_ticket::insert(
        &mut conn,
        &ticket_hash(&ticket),
        principal.key_id,
        expires_at,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(WsTicket { ticket, expires_at }))
}

#[derive(Debug, Deserialize)]
struct SocketQuery {
    ticket: Option<String>,
}

/// Who opens the socket: a ticket, or the `Authorization` header. A console session
/// cookie is not enough (a page on another site could open a socket with it); the console
/// asks for a ticket with its session instead. A key in the URL is refused: URLs end up in
/// logs and histories.
async fn socket_principal(req: &HttpRequest, state: &AppState) -> Result<Principal, ApiError> {
    let query = web::Query::<SocketQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::Malformed(format!("bad query string: {e}")))?;
    if req.query_string().contains("hrld_") {
        return Err(ApiError::Unauthorized(
            "never put an API key in a URL; send it as `Authorization: Bearer <key>`, or get a \
             ticket (POST /v1/ws/tickets) and pass ?ticket=",
        ));
    }
    if let Some(ticket) = query.ticket.as_deref() {
        let mut conn = state.pool.get().await?;
        let key = ws_ticket::take(&mut conn, &ticket_hash(ticket))
            .await?
            .ok_or(ApiError::Unauthorized(
                "that ticket is unknown, expired or already used; get a new one",
            ))?;
        return Ok(Principal::of(&key));
    }
    if req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .is_none()
    {
        return Err(ApiError::Unauthorized(
            "send `Authorization: Bearer <key>`, or pass ?ticket= (POST /v1/ws/tickets)",
        ));
    }
    use actix_web::FromRequest as _;
    Principal::extract(req).await
}

#[utoipa::path(
    tag = "streams",
    summary = "Many streams over one WebSocket (protocol: ClientMessage / ServerMessage)",
    description = "Upgrades to a WebSocket. Authenticate with `Authorization: Bearer <key>` or, \
                   from a browser, `?ticket=` from POST /v1/ws/tickets. Send `ClientMessage`s \
                   as JSON text; receive `ServerMessage`s. See docs/websockets.md.",
    params(("ticket" = Option<String>, Query, description = "A ticket from POST /v1/ws/tickets")),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 400, description = "Not a WebSocket handshake", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::AuthErrors, (status = 429, description = "The key holds as many long-polls, SSE streams and sockets as it may", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/ws")]
async fn open_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = socket_principal(&req, &state).await?;
    principal.require_reader()?;
    if state.stopping.is_cancelled() {
        return Err(unavailable(
            "Herald is shutting down; connect to another instance",
        ));
    }
    let hold = principal.hold(&state.key_holds, state.settings.max_waiters_per_key)?;
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::Malformed(format!("not a WebSocket handshake: {e}")))?;
    state.metrics.ws_sockets.opened();
    let socket = Socket::new(state.into_inner(), principal, hold, session);
    actix_web::rt::spawn(socket.run(messages));
    Ok(response)
}

/// What a client sends, as JSON text.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Follow `stream` from just after `after` (the last seq seen; 0 for the beginning).
    Subscribe {
        /// The stream.
        stream: String,
        /// The last seq this client has seen.
        #[serde(default)]
        after: i64,
        /// Echoed in the reply.
        #[serde(default)]
        #[schema(value_type = Option<Value>)]
        id: Option<Value>,
    },
    /// Stop following `stream`.
    Unsubscribe {
        /// The stream.
        stream: String,
        /// Echoed in the reply.
        #[serde(default)]
        #[schema(value_type = Option<Value>)]
        id: Option<Value>,
    },
}

/// What the server sends, as JSON text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The stream is followed; events after `next_after` follow.
    Subscribed {
        /// The stream.
        stream: String,
        /// The cursor the subscription starts from.
        next_after: i64,
        /// The request's `id`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Value>)]
        id: Option<Value>,
    },
    /// The stream is no longer followed: no event of it comes after this.
    Unsubscribed {
        /// The stream.
        stream: String,
        /// The request's `id`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Value>)]
        id: Option<Value>,
    },
    /// A request failed (or a subscription ended); the socket stays open.
    Error {
        /// The stream it concerns, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// As HTTP would say it: 400 unreadable message, 403 not readable with this key,
        /// 409 already subscribed, 410 cursor older than retention, 422 bad stream name or
        /// cursor, 429 too many subscriptions, 503 the instance is full or its database
        /// unreachable.
        status: u16,
        /// What went wrong, for people.
        detail: String,
        /// For 410: the cursor to resume from.
        #[serde(skip_serializing_if = "Option::is_none")]
        earliest_after: Option<i64>,
        /// The request's `id`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Value>)]
        id: Option<Value>,
    },
    /// An event of a followed stream, in seq order per stream.
    Event {
        /// The stream.
        stream: String,
        /// Its seq.
        seq: i64,
        /// The event, as long-polls and SSE show it.
        #[schema(value_type = crate::streams::event_json::EventDto)]
        event: Box<serde_json::value::RawValue>,
    },
}

impl ServerMessage {
    fn error(stream: Option<String>, err: &ApiError, id: Option<Value>) -> Self {
        Self::Error {
            stream,
            status: err.status_code().as_u16(),
            detail: err.detail().unwrap_or_else(|| "internal error".into()),
            earliest_after: match err {
                ApiError::Gone { earliest_after } => Some(*earliest_after),
                _ => None,
            },
            id,
        }
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An `event` message, written without re-serializing the event (it was serialized once,
/// for every reader, when the hub took it): `stream_json` is the stream name as JSON.
fn event_text(stream_json: &str, event: &EventJson) -> String {
    let mut out = String::with_capacity(event.json.len() + stream_json.len() + 48);
    out.push_str("{\"type\":\"event\",\"stream\":");
    out.push_str(stream_json);
    out.push_str(",\"seq\":");
    out.push_str(&event.seq.to_string());
    out.push_str(",\"event\":");
    out.push_str(&event.json);
    out.push('}');
    out
}

/// The messages of one socket not yet taken by its connection, bounded: a message that
/// does not fit marks the socket too slow, and it is closed.
struct Outbox {
    queue: VecDeque<String>,
    max: usize,
    overflowed: bool,
}

impl Outbox {
    fn new(max: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            max,
            overflowed: false,
        }
    }

    /// Queues `text`; returns false (and marks the socket too slow) when it does not fit.
    fn send(&mut self, text: String) -> bool {
        if self.overflowed || self.queue.len() >= self.max {
            self.overflowed = true;
            return false;
        }
        self.queue.push_back(text);
        true
    }

    /// Hands queued messages to the connection while it takes them; ready when the queue
    /// is empty, an error when the connection is gone.
    fn poll_hand_over(
        &mut self,
        session: &mut actix_ws::Session,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), actix_ws::Closed>> {
        while !self.queue.is_empty() {
            ready!(Pin::new(&mut *session).poll_ready(cx))?;
            if let Some(text) = self.queue.pop_front() {
                Pin::new(&mut *session).start_send(Message::Text(text.into()))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What a subscription holds for as long as it lives: its place in the key's held
/// requests and in the metrics.
struct Counted {
    _hold: Hold,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Counted {
    fn new(hold: Hold, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        metrics.ws_subscriptions.opened();
        Self {
            _hold: hold,
            metrics,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.ws_subscriptions.closed();
    }
}

/// Where a subscription is.
enum Phase {
    /// Its first page is being read; `subscribed` (echoing the `id`) follows it.
    Opening(Option<Value>),
    /// A page is being read from the database (it is behind the hub's history).
    Reading,
    /// Caught up: it takes what the hub reads.
    Live,
}

/// One followed stream: no task and no future of its own, a few hundred bytes.
struct Sub {
    _counted: Counted,
    subscription: Subscription,
    /// The last seq sent.
    cursor: i64,
    phase: Phase,
}

impl Sub {
    /// Queues `events` and moves the cursor past them; false when the socket is too slow.
    fn send(&mut self, events: &[std::sync::Arc<EventJson>], outbox: &mut Outbox) -> bool {
        if events.is_empty() {
            return true;
        }
        let stream_json = serde_json::to_string(self.subscription.stream()).unwrap_or_default();
        for event in events {
            if event.seq <= self.cursor {
                continue;
            }
            if !outbox.send(event_text(&stream_json, event)) {
                return false;
            }
            self.cursor = event.seq;
        }
        true
    }
}

/// A page read for the subscription with this key.
type PageRead = LocalBoxFuture<'static, (u64, Result<Vec<std::sync::Arc<EventJson>>, ApiError>)>;

struct Socket {
    state: std::sync::Arc<AppState>,
    principal: Principal,
    hold: Hold,
    session: actix_ws::Session,
    outbox: Outbox,
    wakeups: std::sync::Arc<Wakeups>,
    /// The followed streams' keys, by name.
    names: HashMap<Box<str>, u64>,
    subs: HashMap<u64, Sub>,
    /// Database reads under way. A read whose subscription is gone is ignored when it ends.
    reads: FuturesUnordered<PageRead>,
}

impl Socket {
    fn new(
        state: std::sync::Arc<AppState>,
        principal: Principal,
        hold: Hold,
        session: actix_ws::Session,
    ) -> Self {
        let outbox = Outbox::new(state.settings.ws_max_queue);
        Self {
            state,
            principal,
            hold,
            session,
            outbox,
            wakeups: Wakeups::new(),
            names: HashMap::new(),
            subs: HashMap::new(),
            reads: FuturesUnordered::new(),
        }
    }

    /// Runs the socket: the only place that waits on its client is the hand-over of
    /// queued messages to the connection, which nothing else waits for.
    async fn run(mut self, messages: actix_ws::MessageStream) {
        let mut messages = messages
            .max_frame_size(MAX_CLIENT_MESSAGE)
            .aggregate_continuations()
            .max_continuation_size(MAX_CLIENT_MESSAGE);
        let settings = self.state.settings.clone();
        let mut ping = tokio::time::interval(settings.ws_ping);
        ping.reset();
        let mut heard = Instant::now();
        let end_at = Instant::now() + settings.ws_max_lifetime;
        // The futures that end the socket live as long as the loop: made anew on each
        // turn, the lifetime's timer would be registered and removed once per message.
        // The shutdown and revocation tokens are shared by every socket (of the key), and
        // polling a token's future takes its lock: each socket waits on child tokens of
        // its own, so that a fan-out to thousands of sockets does not queue on two locks.
        let stopping = self.state.stopping.child_token();
        let stopping = stopping.cancelled();
        let revoked = self.hold.token().child_token();
        let revoked = revoked.cancelled();
        let lifetime = tokio::time::sleep_until(end_at);
        tokio::pin!(stopping, revoked, lifetime);
        let wakeups = self.wakeups.clone();
        let close = loop {
            if self.outbox.overflowed {
                break Some(reason(
                    CLOSE_TOO_SLOW,
                    "too slow: more unsent messages than HERALD_WS_MAX_QUEUE; reconnect and resume",
                ));
            }
            if !self.outbox.queue.is_empty() {
                self.hand_over_now().await;
            }
            tokio::select! {
                biased;
                () = wakeups.notified() => {
                    for key in wakeups.take() {
                        if self.subs.get(&key).is_some_and(|sub| matches!(sub.phase, Phase::Live)) {
                            self.pump(key);
                        }
                    }
                }
                Some((key, page)) = self.reads.next(), if !self.reads.is_empty() => self.page_read(key, page),
                handed = poll_fn(|cx| self.outbox.poll_hand_over(&mut self.session, cx)), if !self.outbox.queue.is_empty() => {
                    if handed.is_err() {
                        break None;
                    }
                }
                message = messages.next() => {
                    heard = Instant::now();
                    match message {
                        Some(Ok(AggregatedMessage::Text(text))) => self.handle(&text),
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            let err = ApiError::Malformed("send JSON text messages".into());
                            self.outbox.send(ServerMessage::error(None, &err, None).text());
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), self.session.pong(&bytes)).await;
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Close(_))) | None => break None,
                        Some(Err(err)) => break Some(protocol_close(&err)),
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > settings.ws_ping * 2 {
                        break Some(reason(CLOSE_UNRESPONSIVE, "no answer to two pings"));
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.session.ping(b"")).await;
                }
                () = &mut stopping => break Some(CloseReason {
                    code: CloseCode::Away,
                    description: Some("shutting down; reconnect".into()),
                }),
                () = &mut lifetime => break Some(CloseReason {
                    code: CloseCode::Away,
                    description: Some("maximum lifetime reached; reconnect".into()),
                }),
                () = &mut revoked => break Some(reason(CLOSE_KEY_REVOKED, "the API key was deleted")),
            }
        };
        // Subscriptions end first: their waiter slots and holds are free at once, whatever
        // the client does with what is still unsent. A client too slow to read loses the
        // queue; others get it before the close frame, as long as they take it.
        self.subs.clear();
        self.names.clear();
        self.reads = FuturesUnordered::new();
        if let Some(close) = close {
            if close.code == CloseCode::Other(CLOSE_TOO_SLOW) {
                self.outbox.queue.clear();
            }
            let mut session = self.session.clone();
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                let _ = poll_fn(|cx| self.outbox.poll_hand_over(&mut session, cx)).await;
                session.close(Some(close)).await
            })
            .await;
        }
        self.state.metrics.ws_sockets.closed();
    }

    /// Hands what the connection takes now to it, without waiting: the rest (and a
    /// closed connection) is for the loop's hand-over branch. Saves the loop a turn per
    /// message.
    async fn hand_over_now(&mut self) {
        poll_fn(|cx| {
            let _ = self.outbox.poll_hand_over(&mut self.session, cx);
            Poll::Ready(())
        })
        .await;
    }

    /// Answers one client message.
    fn handle(&mut self, text: &str) {
        let message = match super::body::parse_json::<ClientMessage>(text.as_bytes()) {
            Ok(message) => message,
            Err(err) => {
                self.outbox
                    .send(ServerMessage::error(None, &err, None).text());
                return;
            }
        };
        match message {
            ClientMessage::Subscribe { stream, after, id } => {
                if let Err(err) = self.subscribe(&stream, after, id.clone()) {
                    self.outbox
                        .send(ServerMessage::error(Some(stream), &err, id).text());
                }
            }
            ClientMessage::Unsubscribe { stream, id } => {
                // Gone from the maps, it is never woken or sent again: nothing of the
                // stream follows this reply.
                if let Some(key) = self.names.remove(stream.as_str()) {
                    self.subs.remove(&key);
                }
                self.outbox
                    .send(ServerMessage::Unsubscribed { stream, id }.text());
            }
        }
    }

    fn subscribe(&mut self, raw: &str, after: i64, id: Option<Value>) -> Result<(), ApiError> {
        let stream = StreamName::parse(raw).map_err(|d| ApiError::invalid("stream", d))?;
        if after < 0 {
            return Err(ApiError::invalid("after", "must be a seq number >= 0"));
        }
        self.principal.require_read(&stream)?;
        if self.names.contains_key(stream.as_str()) {
            return Err(ApiError::Conflict(format!(
                "already subscribed to {raw:?}; unsubscribe first"
            )));
        }
        let cap = self.state.settings.ws_max_subscriptions;
        if self.subs.len() >= cap {
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "this socket follows {cap} streams (HERALD_WS_MAX_SUBSCRIPTIONS); unsubscribe one"
                ),
                retry_after: 1,
            });
        }
        let hold = self.principal.hold(
            &self.state.key_holds,
            self.state.settings.max_waiters_per_key,
        )?;
        let subscription = self
            .state
            .hub
            .subscribe_to(stream.as_str(), after, &self.wakeups)
            .map_err(|_| {
                inc(&self.state.metrics.longpolls_rejected);
                unavailable("too many held requests on this instance (HERALD_MAX_WAITERS)")
            })?;
        let key = subscription.key();
        // The first page before `subscribed`, so that an expired cursor is an error reply:
        // from the hub when it already holds the stream past the cursor, else read.
        let first = subscription.peek(after, CATCH_UP_LIMIT as usize);
        self.names.insert(stream.as_str().into(), key);
        self.subs.insert(
            key,
            Sub {
                _counted: Counted::new(hold, self.state.metrics.clone()),
                subscription,
                cursor: after,
                phase: Phase::Opening(id),
            },
        );
        match first {
            Some(page) => self.page_read(key, Ok(page)),
            None => self.read(key),
        }
        Ok(())
    }

    /// Starts reading a page after the subscription's cursor from the database.
    /// Subscriptions made together (a socket that resubscribes to a thousand streams)
    /// read a few at a time instead of all waiting on the pool at once, where most would
    /// time out.
    fn read(&mut self, key: u64) {
        let Some(sub) = self.subs.get(&key) else {
            return;
        };
        let state = self.state.clone();
        let stream = sub.subscription.stream().to_owned();
        let after = sub.cursor;
        self.reads.push(Box::pin(async move {
            let page = async {
                let _permit = state
                    .catch_up_reads
                    .acquire()
                    .await
                    .map_err(|_| unavailable("Herald is shutting down"))?;
                fetch_page(&state.pool, &stream, after, CATCH_UP_LIMIT).await
            };
            (key, page.await)
        }));
    }

    /// Sends a page read for the subscription `key` (if it is still followed) and goes on:
    /// another page while full, else what the hub holds beyond it.
    fn page_read(&mut self, key: u64, page: Result<Vec<std::sync::Arc<EventJson>>, ApiError>) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        let phase = std::mem::replace(&mut sub.phase, Phase::Live);
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                let id = match phase {
                    Phase::Opening(id) => id,
                    _ => None,
                };
                let stream = sub.subscription.stream().to_owned();
                self.outbox
                    .send(ServerMessage::error(Some(stream.clone()), &err, id).text());
                self.names.remove(stream.as_str());
                self.subs.remove(&key);
                return;
            }
        };
        if let Phase::Opening(id) = phase {
            let subscribed = ServerMessage::Subscribed {
                stream: sub.subscription.stream().to_owned(),
                next_after: sub.cursor,
                id,
            };
            if !self.outbox.send(subscribed.text()) {
                return;
            }
        }
        if page.len() < CATCH_UP_LIMIT as usize {
            sub.subscription
                .caught_up(page.last().map_or(sub.cursor, |e| e.seq));
        }
        if !sub.send(&page, &mut self.outbox) {
            return;
        }
        if page.len() as i64 == CATCH_UP_LIMIT {
            sub.phase = Phase::Reading;
            self.read(key);
            return;
        }
        // What the hub read while this page was read woke nobody (the subscription was
        // reading): take it now.
        self.pump(key);
    }

    /// Sends what the hub holds after a live subscription's cursor.
    fn pump(&mut self, key: u64) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        loop {
            match sub.subscription.take(sub.cursor, CATCH_UP_LIMIT as usize) {
                Taken::Events(events) => {
                    if !sub.send(&events, &mut self.outbox) {
                        return;
                    }
                    if events.len() < CATCH_UP_LIMIT as usize {
                        return;
                    }
                }
                Taken::Nothing => return,
                Taken::Gap => {
                    sub.phase = Phase::Reading;
                    self.read(key);
                    return;
                }
            }
        }
    }
}

/// The largest message a client may send, in one frame or in fragments (a `subscribe` is a
/// few hundred bytes).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// How a socket whose client broke the protocol is closed: 1009 (too big) for a message over
/// [`MAX_CLIENT_MESSAGE`], 1002 (protocol error) for anything else, with what was wrong.
fn protocol_close(err: &ProtocolError) -> CloseReason {
    let too_big = match err {
        ProtocolError::Overflow => true,
        ProtocolError::Io(e) => e.to_string().contains("maximum continuation size"),
        _ => false,
    };
    CloseReason {
        code: if too_big {
            CloseCode::Size
        } else {
            CloseCode::Protocol
        },
        description: Some(if too_big {
            format!("messages are limited to {} KiB", MAX_CLIENT_MESSAGE / 1024)
        } else {
            // A close frame's reason holds at most 123 bytes.
            let mut detail = err.to_string();
            while detail.len() > 120 {
                detail.pop();
            }
            detail
        }),
    }
}

fn reason(code: u16, description: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::Other(code),
        description: Some(description.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_messages_are_what_the_schema_says() {
        let event = EventJson {
            seq: 7,
            event_type: "order.paid".into(),
            json: r#"{"id":"x","stream":"a\"b","type":"order.paid","seq":7,"payload":{"n":1},"created_at":"2026-01-01T00:00:00Z"}"#.into(),
            created_at: Utc::now(),
        };
        let stream = "a\"b";
        let text = event_text(&serde_json::to_string(stream).unwrap(), &event);
        let typed = ServerMessage::Event {
            stream: stream.into(),
            seq: 7,
            event: serde_json::value::RawValue::from_string(event.json.clone()).unwrap(),
        };
        let ours: Value = serde_json::from_str(&text).unwrap();
        let serde: Value = serde_json::from_str(&typed.text()).unwrap();
        assert_eq!(ours, serde);
    }

    #[test]
    fn client_messages_parse_with_field_paths() {
        let parsed: ClientMessage = super::super::body::parse_json(
            br#"{"type":"subscribe","stream":"s","after":3,"id":1}"#,
        )
        .unwrap();
        assert!(matches!(parsed, ClientMessage::Subscribe { after: 3, .. }));
        let err =
            super::super::body::parse_json::<ClientMessage>(br#"{"type":"subscribe","stream":5}"#)
                .unwrap_err();
        assert!(
            matches!(err, ApiError::Invalid { .. } | ApiError::Malformed(_)),
            "{err:?}"
        );
    }
}
