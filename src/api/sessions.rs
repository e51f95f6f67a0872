//! `/v1/sessions`: the console's sign-in. An admin key is exchanged for an `HttpOnly`,
//! `SameSite=Strict` session cookie (and `Secure` over HTTPS), stored server-side as a
//! hash, expiring after [`SESSION_TTL`], and ended by sign-out. Requests made with the
//! cookie that change anything must carry the session's CSRF token in `X-CSRF-Token`.
//!
//! Failed sign-ins are slowed down: each failure waits a little before answering, and
//! after [`MAX_FAILURES`] failures from one client address (see [`crate::throttle`])
//! further attempts get `429` with `Retry-After`, one more allowed per
//! `FAILURE_WINDOW / MAX_FAILURES`. They also count as failed authentications.

use actix_web::{delete, get, post};
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound as _, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::body::read_json;
use crate::auth::{Principal, SESSION_COOKIE};
use crate::db::models::api_key;
use crate::db::models::session::{self, Session};
use crate::domain::{ApiKeySecret, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::throttle::FailureLimiter;

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins from one address before it must wait.
pub const MAX_FAILURES: usize = 5;
/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Every failed sign-in is answered this much later.
const FAILURE_DELAY: Duration = Duration::from_millis(300);

/// The console's sign-in lockout: [`MAX_FAILURES`] failed sign-ins from one client address,
/// then one more per `FAILURE_WINDOW / MAX_FAILURES`; a locked-out address is refused
/// even with the right key (it is the secret being guessed).
pub fn sign_in_limiter() -> FailureLimiter {
    let every = FAILURE_WINDOW / u32::try_from(MAX_FAILURES).unwrap_or(1);
    FailureLimiter::new(u32::try_from(MAX_FAILURES).unwrap_or(1), every)
}

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_session)
        .service(get_session)
        .service(delete_session);
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn session_cookie(req: &HttpRequest, value: String, max_age: Duration) -> Cookie<'static> {
    let mut cookie = Cookie::build(SESSION_COOKIE, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(0),
        ))
        .finish();
    if req.connection_info().scheme() == "https" {
        cookie.set_secure(true);
    }
    cookie
}

/// A console session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Session)]
pub struct SessionInfo {
    /// The admin key it was made with.
    pub key_id: Uuid,
    /// That key's public prefix (`GET` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Send it as `X-CSRF-Token` on every state-changing request.
    pub csrf_token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// A console sign-in.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An admin API key.
    key: String,
}

#[utoipa::path(
    tag = "console",
    summary = "Sign in to the console with an admin key",
    request_body(content = SignIn, content_type = "application/json"),
    responses((status = 201, description = "Session cookie set; the body has the CSRF token", body = SessionInfo), super::openapi::BodyErrors, (status = 401, description = "Wrong key", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 403, description = "Not an admin key", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 429, description = "Too many failed sign-ins from this address (Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
    security(()),
)]
#[post("/sessions")]
async fn create_session(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ip = state.client_addr(&req);
    if let Some(retry_after) = state.sign_ins.blocked(ip) {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "too many failed sign-ins from this address; try again in {retry_after} s"
            ),
            retry_after,
        });
    }
    let input: SignIn = read_json(&req, body, 4096, "4 KiB").await?;
    let mut conn = state.pool.get().await?;
    let key = match ApiKeySecret::parse(input.key.trim()) {
        Ok(secret) => api_key::find_by_hash(&mut conn, &secret.hash()).await?,
        Err(_) => None,
    };
    let key = match key {
        Some(key) if key.role() == Role::Admin => key,
        other => {
            let refusal = match other {
                None => ApiError::Unauthorized("that is not a valid API key"),
                Some(key) => ApiError::Forbidden(format!(
                    "the console needs an admin key; this is a {} key",
                    key.role()
                )),
            };
            state.sign_ins.failed(ip);
            let refusal = state.auth_failed(ip, refusal);
            tokio::time::sleep(FAILURE_DELAY).await;
            return Err(refusal);
        }
    };
    state.sign_ins.forgive(ip);
    let token = random_token();
    let now = Utc::now().trunc_subsecs(6);
    let record = Session {
        token_hash: Sha256::digest(token.as_bytes()).to_vec(),
        api_key_id: key.id,
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default(),
    };
    session::insert(&mut conn, &record).await?;
    // Housekeeping: sign-ins are rare, so this is where old sessions go.
    session::purge_expired(&mut conn).await?;
    Ok(HttpResponse::Created()
        .cookie(session_cookie(&req, token, SESSION_TTL))
        .json(SessionInfo {
            key_id: key.id,
            key_prefix: None,
            csrf_token: record.csrf_token,
            expires_at: record.expires_at,
        }))
}

#[utoipa::path(
    tag = "console",
    summary = "The current session and its CSRF token",
    responses((status = 200, description = "The session", body = SessionInfo), (status = 401, description = "Not signed in", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[get("/sessions/current")]
async fn get_session(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .cookie(SESSION_COOKIE)
        .ok_or(ApiError::Unauthorized("not signed in"))?;
    let mut conn = state.pool.get().await?;
    let Some((record, key)) =
        session::find_live(&mut conn, &Sha256::digest(token.value().as_bytes())).await?
    else {
        return Err(state.auth_failed(
            state.client_addr(&req),
            ApiError::Unauthorized(
                "the console session has expired or was signed out; sign in again",
            ),
        ));
    };
    Ok(HttpResponse::Ok().json(SessionInfo {
        key_id: key.id,
        key_prefix: Some(key.key_prefix),
        csrf_token: record.csrf_token,
        expires_at: record.expires_at,
    }))
}

#[utoipa::path(
    tag = "console",
    summary = "Sign out",
    responses((status = 204, description = "Signed out; cookie cleared"), super::openapi::AuthErrors, (status = 422, description = "Not a console session (a key signs nothing out)", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[delete("/sessions/current")]
async fn delete_session(
    req: HttpRequest,
    _principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The extractor has checked the cookie and, this being a DELETE, the CSRF token.
    let token = req.cookie(SESSION_COOKIE).ok_or_else(|| {
        ApiError::invalid("cookie", "sign-out ends a console session; there is none")
    })?;
    let mut conn = state.pool.get().await?;
    session::delete(&mut conn, &Sha256::digest(token.value().as_bytes())).await?;
    Ok(HttpResponse::NoContent()
        .cookie(session_cookie(&req, String::new(), Duration::ZERO))
        .finish())
}
