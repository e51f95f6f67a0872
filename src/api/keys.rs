//! `POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{id}` (admin only).

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web::{delete, get, post};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::body::read_json;
use crate::auth::Principal;
use crate::db::models::api_key::{self, ApiKey};
use crate::domain::{ApiKeySecret, Role, StreamPrefix};
use crate::error::ApiError;
use crate::state::AppState;

/// Registers the routes (each documented by its `#[utoipa::path]`).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_key)
        .service(list_keys)
        .service(delete_key);
}

/// A key as listed (never with the key itself).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyDto {
    id: Uuid,
    role: String,
    stream_prefixes: Vec<String>,
    key_prefix: String,
    description: String,
    created_at: DateTime<Utc>,
    /// Held long-polls and SSE streams it may have open per instance; `null`: the
    /// instance's `HERALD_MAX_WAITERS_PER_KEY`.
    max_held: Option<i32>,
}

impl From<ApiKey> for KeyDto {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            role: k.role,
            stream_prefixes: k.stream_prefixes,
            key_prefix: k.key_prefix,
            description: k.description,
            created_at: k.created_at,
            max_held: k.max_held,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CreatedKeyDto {
    #[serde(flatten)]
    key: KeyDto,
    /// The key in clear: shown here and never again.
    #[serde(rename = "key")]
    secret: String,
}

/// An API key to create. Other fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewKey {
    /// `admin`, `publisher` or `subscriber`.
    role: String,
    /// For subscribers only: the stream prefixes it may read (a publisher or admin key
    /// with prefixes is refused).
    #[serde(default)]
    stream_prefixes: Vec<String>,
    /// A note for people (at most 1000 characters; no control characters but tab and line
    /// breaks).
    #[serde(default)]
    description: String,
    /// Held long-polls and SSE streams it may have open per instance (1-1000000); omitted:
    /// the instance's `HERALD_MAX_WAITERS_PER_KEY`.
    #[serde(default)]
    max_held: Option<i64>,
}

/// Checks that a role and its prefixes go together: subscribers need at least one prefix,
/// and only subscribers have prefixes.
pub fn parse_grant(role: &str, prefixes: &[String]) -> Result<(Role, Vec<String>), ApiError> {
    let role = Role::parse(role).map_err(|d| ApiError::invalid("role", d))?;
    let prefixes = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            StreamPrefix::parse(p)
                .map(StreamPrefix::into_inner)
                .map_err(|d| ApiError::invalid(format!("stream_prefixes[{i}]"), d))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match (role, prefixes.is_empty()) {
        (Role::Subscriber, true) => Err(ApiError::invalid(
            "stream_prefixes",
            "a subscriber key needs at least one stream prefix, e.g. \"payment:\"",
        )),
        (Role::Admin | Role::Publisher, false) => Err(ApiError::invalid(
            "stream_prefixes",
            "only subscriber keys have stream prefixes",
        )),
        _ => Ok((role, prefixes)),
    }
}

#[utoipa::path(
    tag = "keys",
    summary = "Create an API key (shown once)",
    request_body(content = NewKey, content_type = "application/json"),
    responses((status = 201, description = "The key, with its secret this once", body = CreatedKeyDto), super::openapi::BodyErrors, super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[post("/keys")]
async fn create_key(
    req: HttpRequest,
    body: web::Payload,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let input: NewKey = read_json(&req, body, 64 * 1024, "64 KiB").await?;
    let (role, prefixes) = parse_grant(&input.role, &input.stream_prefixes)?;
    super::body::check_note("description", &input.description)?;
    let max_held = input
        .max_held
        .map(|n| {
            i32::try_from(n)
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| ApiError::invalid("max_held", "must be 1 to 1000000"))
        })
        .transpose()?;
    let secret = ApiKeySecret::generate();
    let mut record = ApiKey::new(&secret, role, prefixes, input.description);
    record.max_held = max_held;
    let mut conn = state.pool.get().await?;
    api_key::insert(&mut conn, &record).await?;
    Ok(HttpResponse::Created().json(CreatedKeyDto {
        key: record.into(),
        secret: secret.expose().to_owned(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct KeyListDto {
    keys: Vec<KeyDto>,
}

#[utoipa::path(
    tag = "keys",
    summary = "Every API key (never their secrets)",
    responses((status = 200, description = "The keys", body = KeyListDto), super::openapi::AuthErrors, super::openapi::Unavailable),
)]
#[get("/keys")]
async fn list_keys(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let mut conn = state.pool.get().await?;
    let keys = api_key::list(&mut conn).await?;
    Ok(HttpResponse::Ok().json(KeyListDto {
        keys: keys.into_iter().map(KeyDto::from).collect(),
    }))
}

#[utoipa::path(
    tag = "keys",
    summary = "Delete an API key",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses((status = 204, description = "Deleted"), super::openapi::AuthErrors, (status = 404, description = "No such key", body = super::openapi::Problem, content_type = "application/problem+json"), (status = 409, description = "The last admin key cannot be deleted", body = super::openapi::Problem, content_type = "application/problem+json"), super::openapi::Unavailable),
)]
#[delete("/keys/{id}")]
async fn delete_key(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let id = super::parse_id("key", &path)?;
    let mut conn = state.pool.get().await?;
    let deleted = conn
        .transaction(async |conn| {
            api_key::lock_bootstrap(conn).await?;
            let Some(key) = api_key::find(conn, id).await? else {
                return Ok(false);
            };
            if key.role() == Role::Admin && api_key::count_admins(conn).await? <= 1 {
                return Err(ApiError::Conflict(
                    "this is the last admin key; create another admin key before deleting it"
                        .into(),
                ));
            }
            Ok::<_, ApiError>(api_key::delete(conn, id).await?)
        })
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!("no key with id {id}")));
    }
    state.keys.evict(id);
    // Its held long-polls and SSE streams here end now; other instances' within seconds.
    state.key_holds.revoke(id);
    Ok(HttpResponse::NoContent().finish())
}
