//! Bearer-key authentication: the `Principal` extractor and the roles' rules.
//!
//! Keys are looked up by their SHA-256 digest. Hits are cached in memory for a few seconds
//! so that a busy publisher does not pay a database round trip per request; a key deleted
//! through this instance is evicted at once, and one deleted through another instance stops
//! working here within [`CACHE_TTL`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use sha2::Digest as _;
use uuid::Uuid;

use crate::db::models::api_key;
use crate::domain::{ApiKeySecret, Role, StreamName};
use crate::error::ApiError;
use crate::state::AppState;

/// Failed authentications one client address may make at once ...
pub const AUTH_FAILURE_BURST: u32 = 20;
/// ... and then one more per this long.
pub const AUTH_FAILURE_EVERY: Duration = Duration::from_secs(3);

/// The limiter for failed authentications of any kind: [`AUTH_FAILURE_BURST`] per client
/// address, then one per [`AUTH_FAILURE_EVERY`].
pub fn failure_limiter() -> crate::throttle::FailureLimiter {
    crate::throttle::FailureLimiter::new(AUTH_FAILURE_BURST, AUTH_FAILURE_EVERY)
}

impl AppState {
    /// The client's address, believing forwarded headers only from trusted proxies.
    pub fn client_addr(&self, req: &HttpRequest) -> IpAddr {
        crate::throttle::client_addr(
            req,
            &self.settings.trusted_proxies,
            self.settings.forwarded_header,
        )
    }

    /// Counts a failed authentication from `ip`: `refusal` as it is within the address's
    /// allowance, `429` with `Retry-After` past it.
    pub fn auth_failed(&self, ip: IpAddr, refusal: ApiError) -> ApiError {
        match self.auth_failures.failed(ip) {
            None => {
                crate::metrics::inc(&self.metrics.auth_refused);
                refusal
            }
            Some(retry_after) => {
                crate::metrics::inc(&self.metrics.auth_throttled);
                ApiError::TooManyRequests {
                    detail: format!(
                        "too many failed authentications from this address; \
                         try again in {retry_after} s"
                    ),
                    retry_after,
                }
            }
        }
    }
}

/// How long a looked-up key is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX_ENTRIES: usize = 10_000;

/// Who is calling: the key's id, role and (for subscribers) stream prefixes.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The API key's id.
    pub key_id: Uuid,
    /// Its role.
    pub role: Role,
    /// For subscribers: which stream names it may read.
    pub stream_prefixes: Vec<String>,
    /// Its own cap on held requests per instance, if it has one.
    pub max_held: Option<usize>,
    /// When it came from the console's session cookie: the session's token hash (what is
    /// held open for it, its changes feed, ends when the session does).
    pub session: Option<Vec<u8>>,
}

impl Principal {
    /// The principal of a stored key.
    pub fn of(key: &crate::db::models::api_key::ApiKey) -> Self {
        Self {
            key_id: key.id,
            role: key.role(),
            max_held: key.max_held.and_then(|n| usize::try_from(n).ok()),
            stream_prefixes: key.stream_prefixes.clone(),
            session: None,
        }
    }

    /// Registers a held request (long-poll or SSE) of this key, within its cap on this
    /// instance: `429` with `Retry-After` past it.
    pub fn hold(
        &self,
        holds: &std::sync::Arc<crate::streams::holds::KeyHolds>,
        default_cap: usize,
    ) -> Result<crate::streams::holds::Hold, ApiError> {
        let cap = self.max_held.unwrap_or(default_cap);
        holds
            .hold(self.key_id, cap)
            .ok_or_else(|| ApiError::TooManyRequests {
                detail: format!(
                    "this key already holds {cap} long-polls and SSE streams on this instance \
                 (its max_held, or HERALD_MAX_WAITERS_PER_KEY); close one or retry later"
                ),
                retry_after: 5,
            })
    }

    /// Only admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(format!(
                "this needs an admin key; this key is a {} key",
                self.role
            ))),
        }
    }

    /// Admins and publishers.
    pub fn require_publisher(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Publisher => Ok(()),
            Role::Subscriber => Err(ApiError::Forbidden(
                "subscriber keys cannot create events; use a publisher key".into(),
            )),
        }
    }

    /// Whether this key may read `stream`.
    pub fn can_read(&self, stream: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Publisher => false,
            Role::Subscriber => self
                .stream_prefixes
                .iter()
                .any(|p| stream.starts_with(p.as_str())),
        }
    }

    /// Keys that may read some stream (admins and subscribers), for routes that follow
    /// streams chosen later (a WebSocket).
    pub fn require_reader(&self) -> Result<(), ApiError> {
        if self.role == Role::Publisher {
            return Err(ApiError::Forbidden(
                "publisher keys cannot read streams; use a subscriber or admin key".into(),
            ));
        }
        Ok(())
    }

    /// Admins, and subscribers whose prefixes cover `stream`.
    pub fn require_read(&self, stream: &StreamName) -> Result<(), ApiError> {
        if self.can_read(stream.as_str()) {
            return Ok(());
        }
        Err(ApiError::Forbidden(match self.role {
            Role::Publisher => "publisher keys cannot read streams; use a subscriber key".into(),
            _ => format!("this key may not read stream {stream:?}"),
        }))
    }
}

/// Recently seen keys, by hash.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
    /// How many evictions there have been: a key read from the database before an
    /// eviction is not cached after it (it may be the key just deleted).
    evictions: AtomicU64,
}

impl KeyCache {
    /// Read before reading a key from the database; hand it to [`Self::put`].
    fn generation(&self) -> u64 {
        self.evictions.load(Ordering::Acquire)
    }

    fn get(&self, hash: &[u8]) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    /// Caches `principal`, read from the database after [`Self::generation`] returned
    /// `seen`, unless a key was evicted since.
    fn put(&self, hash: Vec<u8>, principal: Principal, seen: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if self.evictions.load(Ordering::Acquire) != seen {
            return;
        }
        if entries.len() >= CACHE_MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// Forgets a deleted key at once.
    pub fn evict(&self, key_id: Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.evictions.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, (p, _)| p.key_id != key_id);
    }
}

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "herald_session";
/// The header that carries a session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session cookie and what the request says about CSRF.
struct CookieAuth {
    token: String,
    state_changing: bool,
    csrf: Option<String>,
}

async fn authenticate_session(state: &AppState, cookie: CookieAuth) -> Result<Principal, ApiError> {
    let hash = sha2::Sha256::digest(cookie.token.as_bytes()).to_vec();
    let mut conn = state.pool.get().await?;
    let (session, key) = crate::db::models::session::find_live(&mut conn, &hash)
        .await?
        .ok_or(ApiError::Unauthorized(
            "the console session has expired or was signed out; sign in again",
        ))?;
    if cookie.state_changing {
        let sent = cookie.csrf.unwrap_or_default();
        // Constant-time comparison.
        let same = sent.len() == session.csrf_token.len()
            && sent
                .bytes()
                .zip(session.csrf_token.bytes())
                .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(ApiError::Forbidden(
                "a request with the session cookie that changes something needs the session's X-CSRF-Token header".into(),
            ));
        }
    }
    Ok(Principal {
        session: Some(hash),
        ..Principal::of(&key)
    })
}

async fn authenticate(state: &AppState, raw: Option<String>) -> Result<Principal, ApiError> {
    let raw = raw.ok_or(ApiError::Unauthorized(
        "send an API key as `Authorization: Bearer <key>`",
    ))?;
    let secret =
        ApiKeySecret::parse(&raw).map_err(|_| ApiError::Unauthorized("unknown API key"))?;
    let hash = secret.hash();
    if let Some(principal) = state.keys.get(&hash) {
        return Ok(principal);
    }
    let seen = state.keys.generation();
    let mut conn = state.pool.get().await?;
    let key = api_key::find_by_hash(&mut conn, &hash)
        .await?
        .ok_or(ApiError::Unauthorized("unknown API key"))?;
    let principal = Principal::of(&key);
    state.keys.put(hash, principal.clone(), seen);
    Ok(principal)
}

fn bearer(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not valid text"))?;
    let (scheme, key) = value
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("use `Authorization: Bearer <key>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized("use `Authorization: Bearer <key>`"));
    }
    Ok(Some(key.trim().to_owned()))
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let raw = bearer(req);
        // A bearer key wins; without one, the console's session cookie.
        let cookie = req.cookie(SESSION_COOKIE).map(|c| CookieAuth {
            token: c.value().to_owned(),
            state_changing: !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS"),
            csrf: req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
        // Failures are counted only when something was presented: a request without
        // credentials guessed nothing.
        let presented = !matches!(raw, Ok(None)) || cookie.is_some();
        let req = req.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("AppState missing".into()))?;
            let outcome = match (raw, cookie) {
                (Err(refusal), _) => Err(refusal),
                (Ok(None), Some(cookie)) => authenticate_session(&state, cookie).await,
                (Ok(raw), _) => authenticate(&state, raw).await,
            };
            match outcome {
                Err(refusal @ (ApiError::Unauthorized(_) | ApiError::Forbidden(_)))
                    if presented =>
                {
                    Err(state.auth_failed(state.client_addr(&req), refusal))
                }
                outcome => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyCache, Principal, Role};

    fn principal() -> Principal {
        Principal {
            key_id: uuid::Uuid::now_v7(),
            role: Role::Admin,
            stream_prefixes: Vec::new(),
            max_held: None,
            session: None,
        }
    }

    #[test]
    fn a_key_read_before_an_eviction_is_not_cached_after_it() {
        let cache = KeyCache::default();
        let deleted = principal();
        // Read from the database, then deleted and evicted before it is cached.
        let seen = cache.generation();
        cache.evict(deleted.key_id);
        cache.put(b"deleted".to_vec(), deleted, seen);
        assert!(cache.get(b"deleted").is_none());
        // Read after the eviction: cached as usual.
        let live = principal();
        let seen = cache.generation();
        cache.put(b"live".to_vec(), live.clone(), seen);
        assert_eq!(cache.get(b"live").map(|p| p.key_id), Some(live.key_id));
    }
}
