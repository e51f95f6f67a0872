//! Sending one webhook: the Standard Webhooks request, the destination guard, and what
//! came back.
//!
//! The client follows no redirects (a 3xx is a failed attempt), ignores proxy variables,
//! bounds every attempt by `HERALD_DELIVERY_TIMEOUT`, and resolves names through
//! [`GuardedResolver`], which drops every resolved address the guard refuses, so a name
//! that resolves (or re-resolves, DNS rebinding) to a private address is never connected
//! to. IP-literal hosts never reach a resolver, so they are checked before sending.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::outcome::{Answer, parse_retry_after};
use crate::db::models::delivery::Claimed;
use crate::domain::destination::DestinationGuard;
use crate::domain::signature::{SigningSecret, signature_header};

/// How much of a response body is kept.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024;
/// What is kept of one response header's value, in bytes.
const MAX_HEADER_VALUE: usize = 1024;
/// What is kept of a response's headers in all, in bytes (names and values).
const MAX_RESPONSE_HEADERS: usize = 16 * 1024;

/// What an attempt sent and got.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration: Duration,
    /// The headers sent.
    pub request_headers: Value,
    /// The answer, for the retry rules.
    pub answer: Answer,
    /// The headers received.
    pub response_headers: Option<Value>,
    /// The first 16 KiB of the body received.
    pub response_body: Option<String>,
}

/// A resolved name had only refused addresses.
#[derive(Debug)]
pub struct BlockedDestination(String);

impl fmt::Display for BlockedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves only to refused addresses", self.0)
    }
}

impl StdError for BlockedDestination {}

/// A name did not resolve.
#[derive(Debug)]
pub struct DnsFailed(String);

impl fmt::Display for DnsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DNS lookup failed: {}", self.0)
    }
}

impl StdError for DnsFailed {}

/// The system resolver, with the destination guard applied to every address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: DestinationGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| {
                    Box::new(DnsFailed(format!("{host}: {e}"))) as Box<dyn StdError + Send + Sync>
                })?;
            let allowed: Vec<SocketAddr> =
                resolved.filter(|a| guard.check(a.ip()).is_ok()).collect();
            if allowed.is_empty() {
                return Err(Box::new(BlockedDestination(host)) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The webhook body: the event in Standard Webhooks' usual envelope.
#[derive(Serialize)]
struct Body<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    stream: &'a str,
    seq: i64,
    timestamp: String,
    data: &'a RawValue,
}

/// Sends webhooks.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: DestinationGuard,
}

impl Sender {
    /// A sender with the guard and the per-attempt timeout.
    pub fn new(guard: DestinationGuard, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(format!("Herald/{}", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .build()?;
        Ok(Self { client, guard })
    }

    /// Makes one attempt.
    pub async fn send(&self, delivery: &Claimed) -> Sent {
        let started_at = Utc::now();
        let started = Instant::now();
        let timestamp = started_at.timestamp();
        let finish = |request_headers: Value,
                      answer: Answer,
                      response_headers,
                      response_body: Option<String>| Sent {
            started_at,
            duration: started.elapsed(),
            request_headers,
            answer: match answer {
                Answer::Error { class, detail } => Answer::Error {
                    class,
                    detail: storable_text(detail),
                },
                status @ Answer::Status { .. } => status,
            },
            response_headers,
            response_body: response_body.map(storable_text),
        };

        let data: &RawValue = serde_json::from_str(&delivery.payload).unwrap_or_else(|_| {
            // Stored payloads are valid JSON; never send a broken body.
            serde_json::from_str("null").expect("null is JSON")
        });
        let body = serde_json::to_vec(&Body {
            id: delivery.event_id,
            event_type: &delivery.event_type,
            stream: &delivery.stream,
            seq: delivery.seq,
            timestamp: delivery
                .event_created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data,
        })
        .unwrap_or_default();
        let mut secrets = vec![SigningSecret::from_bytes(delivery.secret.clone())];
        if let Some(previous) = &delivery.previous_secret {
            secrets.push(SigningSecret::from_bytes(previous.clone()));
        }
        let webhook_id = delivery.event_id.to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Value::Object(extra) = &delivery.headers {
            for (name, value) in extra {
                if let Some(value) = value.as_str() {
                    headers.push((name.clone(), value.to_owned()));
                }
            }
        }
        headers.push(("content-type".into(), "application/json".into()));
        headers.push((
            "user-agent".into(),
            format!("Herald/{}", env!("CARGO_PKG_VERSION")),
        ));
        headers.push(("webhook-id".into(), webhook_id.clone()));
        headers.push(("webhook-timestamp".into(), timestamp.to_string()));
        headers.push((
            "webhook-signature".into(),
            signature_header(&secrets, &webhook_id, timestamp, &body),
        ));
        let request_headers = Value::Object(
            headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        );

        let url = match reqwest::Url::parse(&delivery.url) {
            Ok(url) => url,
            Err(e) => {
                let answer = Answer::Error {
                    class: "invalid_response",
                    detail: format!("bad URL: {e}"),
                };
                return finish(request_headers, answer, None, None);
            }
        };
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(reason) = self.guard.check(ip)
        {
            let answer = Answer::Error {
                class: "blocked_destination",
                detail: format!("{ip} is {}", reason.describe()),
            };
            return finish(request_headers, answer, None, None);
        }

        let mut request = self.client.post(url).body(body);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let (class, detail) = classify(&err);
                return finish(request_headers, Answer::Error { class, detail }, None, None);
            }
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let mut response_headers = Map::new();
        let mut kept = 0;
        for (name, value) in response.headers() {
            // A receiver may send about 400 KiB of headers: what is kept of them is bounded
            // like the body (each value, and all of them together).
            let value = if value.len() > MAX_HEADER_VALUE {
                format!(
                    "{}... ({} bytes)",
                    String::from_utf8_lossy(&value.as_bytes()[..MAX_HEADER_VALUE]),
                    value.len()
                )
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            kept += name.as_str().len() + value.len();
            if kept > MAX_RESPONSE_HEADERS {
                response_headers.insert(
                    "herald-truncated".to_owned(),
                    Value::String(format!(
                        "{} headers received; the first ones up to {} KiB are kept",
                        response.headers().len(),
                        MAX_RESPONSE_HEADERS / 1024
                    )),
                );
                break;
            }
            match response_headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    response_headers.insert(name.as_str().to_owned(), Value::String(value));
                }
            }
        }
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_RESPONSE_BODY);
        finish(
            request_headers,
            Answer::Status { code, retry_after },
            Some(Value::Object(response_headers)),
            Some(String::from_utf8_lossy(&body).into_owned()),
        )
    }
}

/// `text` as PostgreSQL can store it. A `text` value cannot hold NUL, which a receiver's
/// body (any binary error page) or an error's message may contain: each becomes U+FFFD, as
/// bytes that are not UTF-8 already do. Left in, it made the database refuse the whole
/// batch of attempts it was recorded with.
fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// The error class of a failed request, and its details.
fn classify(err: &reqwest::Error) -> (&'static str, String) {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if e.downcast_ref::<BlockedDestination>().is_some() {
            return ("blocked_destination", e.to_string());
        }
        if e.downcast_ref::<DnsFailed>().is_some() {
            return ("dns", e.to_string());
        }
        chain.push(e.to_string());
        source = e.source();
    }
    let detail = chain.join(": ");
    // The causes only: reqwest's own message names the URL, and an endpoint at
    // `https://tls.example.com/` or `/handshake` is no TLS failure.
    let causes = chain.get(1..).unwrap_or_default().join(": ");
    let lower = causes.to_ascii_lowercase();
    let class = if err.is_timeout() {
        "timeout"
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        "tls"
    } else if err.is_connect() {
        "connect"
    } else {
        "invalid_response"
    };
    (class, detail)
}
