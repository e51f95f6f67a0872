//! The one error type of the HTTP API, rendered as RFC 9457 `application/problem+json`.
//!
//! Which error to use when:
//! - a handler that rejects input returns one of the client variants (`Malformed`, `Invalid`,
//!   `PayloadTooLarge`, ...) with a `detail` a developer can act on;
//! - database and pool errors convert with `?`: "not found" is 404, a unique violation 409,
//!   a connection that cannot be had or is lost 503 with `Retry-After`;
//! - anything else is `Internal`: logged with its cause and answered as a bare 500 that leaks
//!   nothing.
//!
//! Problem `type`s are stable URNs (`urn:herald:problem:<slug>`) listed in `docs/errors.md`;
//! scripts may match on them.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter could not be read at all (bad JSON, wrong content type).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The body is not JSON (by its `Content-Type`).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// A value was read but is not acceptable; `field` names it.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// JSON pointer-ish name of the offending field or parameter, e.g. `stream`.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The body, or one payload in it, is larger than allowed.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// No key, or a key Herald does not know.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A known key that may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such resource (or one the caller may not know about).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state (idempotency key reuse, duplicates).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request body did not arrive in time (`HERALD_BODY_TIMEOUT`).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// Too many failed attempts (sign-in); try again later.
    #[error("too many requests: {detail}")]
    TooManyRequests {
        /// What to do.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// The cursor points before the oldest retained event.
    #[error("cursor expired; earliest cursor is {earliest_after}")]
    Gone {
        /// The smallest `after` that can still be served.
        earliest_after: i64,
    },
    /// Herald cannot serve this now (database unreachable, shutting down); try again.
    #[error("service unavailable: {detail}")]
    Unavailable {
        /// What is unavailable.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// A bug or an unexpected fault; logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// What went wrong, for people (`None` for internal errors, which are logged instead).
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::Malformed(d)
            | Self::UnsupportedMediaType(d)
            | Self::PayloadTooLarge(d)
            | Self::RequestTimeout(d)
            | Self::Forbidden(d)
            | Self::NotFound(d)
            | Self::Conflict(d) => Some(d.clone()),
            Self::Invalid { field, detail } => Some(format!("{field}: {detail}")),
            Self::Unauthorized(d) => Some((*d).to_owned()),
            Self::Gone { earliest_after } => Some(format!(
                "events before this cursor have been purged; resume with after={earliest_after}"
            )),
            Self::Unavailable { detail, .. } | Self::TooManyRequests { detail, .. } => {
                Some(detail.clone())
            }
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                None
            }
        }
    }

    /// Shorthand for [`ApiError::Invalid`].
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for a database that cannot be reached.
    pub fn database_unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Self::Unavailable {
            detail: "the database is unavailable; the request was not applied".into(),
            retry_after: 2,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed-request",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Invalid { .. } => "validation",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::RequestTimeout(_) => "request-timeout",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::Gone { .. } => "cursor-expired",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "Malformed request",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::Invalid { .. } => "Invalid value",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) => "Not found",
            Self::Conflict(_) => "Conflict",
            Self::RequestTimeout(_) => "Request timeout",
            Self::TooManyRequests { .. } => "Too many requests",
            Self::Gone { .. } => "Cursor expired",
            Self::Unavailable { .. } => "Service unavailable",
            Self::Internal(_) => "Internal server error",
        }
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earliest_after: Option<i64>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Gone { .. } => StatusCode::GONE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = self.detail();
        let body = Problem {
            kind: format!("urn:herald:problem:{}", self.slug()),
            title: self.title(),
            status: status.as_u16(),
            detail,
            field: match self {
                Self::Invalid { field, .. } => Some(field),
                _ => None,
            },
            earliest_after: match self {
                Self::Gone { earliest_after } => Some(*earliest_after),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"herald\""));
            }
            Self::Unavailable { retry_after, .. } | Self::TooManyRequests { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        response.body(serde_json::to_string(&body).unwrap_or_default())
    }
}

impl From<DieselError> for ApiError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::NotFound => Self::NotFound("no such resource".into()),
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => Self::database_unavailable(info.message()),
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if is_unavailable_message(info.message()) =>
            {
                Self::database_unavailable(info.message())
            }
            DieselError::BrokenTransactionManager => Self::database_unavailable(&err),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Errors that mean "the server went away" rather than "the query is wrong": an admin
/// shutdown, a terminated backend, a cluster in recovery.
fn is_unavailable_message(message: &str) -> bool {
    const MARKERS: [&str; 6] = [
        "terminating connection",
        "connection closed",
        "the database system is",
        "server closed the connection",
        "Connection reset",
        "canceling statement due to statement timeout",
    ];
    MARKERS.iter().any(|m| message.contains(m))
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
        match err {
            crate::db::DbError::Pool(err) => err.into(),
            crate::db::DbError::Query(err) => err.into(),
        }
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(err: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError;
        match err {
            IngestError::ShuttingDown => Self::Unavailable {
                detail: "Herald is shutting down; the request was not applied".into(),
                retry_after: 1,
            },
            IngestError::Unavailable(cause) => Self::database_unavailable(cause),
            IngestError::Query(err) => err.into(),
        }
    }
}

impl From<crate::db::PoolError> for ApiError {
    fn from(err: crate::db::PoolError) -> Self {
        Self::database_unavailable(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn render(err: ApiError) -> (StatusCode, serde_json::Value, HttpResponse) {
        let response = err.error_response();
        let status = response.status();
        let (head, body) = response.into_parts();
        let bytes = to_bytes(body).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap(),
            head.set_body(()).map_into_boxed_body(),
        )
    }

    #[actix_web::test]
    async fn invalid_names_the_field_as_problem_json() {
        let (status, body, response) =
            render(ApiError::invalid("stream", "must not be empty")).await;
        assert_eq!(status, 422);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        assert_eq!(body["type"], "urn:herald:problem:validation");
        assert_eq!(body["field"], "stream");
        assert_eq!(body["status"], 422);
        assert_eq!(body["detail"], "stream: must not be empty");
    }

    #[actix_web::test]
    async fn internal_errors_leak_nothing() {
        let (status, body, _) = render(ApiError::Internal("password=hunter2".into())).await;
        assert_eq!(status, 500);
        assert!(!body.to_string().contains("hunter2"));
        assert!(body.get("detail").is_none());
    }

    #[actix_web::test]
    async fn unavailable_carries_retry_after() {
        let (status, _, response) = render(ApiError::database_unavailable("down")).await;
        assert_eq!(status, 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "2");
    }
}
