//! Reading JSON request bodies with a size limit enforced while reading.

use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, web};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Whether the request has a body at all, for routes whose body is optional: a non-zero
/// `Content-Length`, or a chunked one.
pub fn has_body(req: &HttpRequest) -> bool {
    match req.headers().get(header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => req.headers().contains_key(header::TRANSFER_ENCODING),
    }
}

/// The body timeout when no settings are at hand.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the body as JSON into `T`, refusing bodies over `limit` bytes before they are
/// buffered whole: a `Content-Length` over the limit is refused before reading, and a
/// chunked body is cut off as soon as it passes it. Returns the raw bytes too.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    limit_name: &str,
) -> Result<(T, Bytes), ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send the body as application/json, not {essence:?}"
            )));
        }
    }
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than {limit} bytes ({limit_name})"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    // A body that trickles in (slowloris) holds a connection and a buffer: it gets
    // HERALD_BODY_TIMEOUT from first to last byte.
    let timeout = req
        .app_data::<web::Data<crate::startup::AppState>>()
        .map_or(DEFAULT_BODY_TIMEOUT, |state| state.settings.body_timeout);
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::Malformed(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s (HERALD_BODY_TIMEOUT)",
            timeout.as_secs_f64()
        ))
    })??;
    if body.is_empty() {
        return Err(ApiError::Malformed(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    let body = body.freeze();
    let value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))?;
    Ok((value, body))
}
