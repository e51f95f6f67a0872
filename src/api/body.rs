//! Reading JSON request bodies with a size limit enforced while reading.

use actix_web::http::header;
use actix_web::web::BytesMut;
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

/// The longest note for people (an endpoint's or an API key's `description`), in characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// Checks a note for people: at most [`MAX_NOTE_CHARS`] characters, and no control
/// characters but tab and line breaks (PostgreSQL's `text` cannot hold NUL at all, and the
/// console shows the rest).
pub fn check_note(field: &str, note: &str) -> Result<(), ApiError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_NOTE_CHARS} characters"),
        ));
    }
    if note
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters other than tab and line breaks",
        ));
    }
    Ok(())
}

/// Checks that a JSON payload nests arrays and objects at most
/// [`MAX_DEPTH`](crate::db::raw_json::MAX_DEPTH) deep.
pub fn check_nesting(field: &str, payload: &serde_json::value::RawValue) -> Result<(), ApiError> {
    use crate::db::raw_json::{MAX_DEPTH, nesting_depth};
    if nesting_depth(payload.get()) > MAX_DEPTH {
        return Err(ApiError::invalid(
            field,
            format!("must not nest arrays and objects more than {MAX_DEPTH} deep"),
        ));
    }
    Ok(())
}

/// The body timeout when no settings are at hand.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the body as JSON into `T`, refusing bodies over `limit` bytes before they are
/// buffered whole: a `Content-Length` over the limit is refused before reading, and a
/// chunked body is cut off as soon as it passes it. See [`parse_json`] for the errors.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    limit_name: &str,
) -> Result<T, ApiError> {
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
        .app_data::<web::Data<crate::state::AppState>>()
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
    parse_json(&body)
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option<T>` field: a field
/// that is present is `Some`, even when it is `null` (for `Option<Option<_>>` fields, where
/// `null` clears a value, and for payloads, where `null` is a value).
pub fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Parses a request body into `T`: JSON that does not parse, or is not an object, is `400`;
/// a field of the wrong type, a missing or an unknown field is `422` naming the field by its
/// path (`events[3].type`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Malformed("the body must be a JSON object".into()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(field_error)?;
    deserializer
        .end()
        .map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Turns serde's error into the problem a client can act on.
fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if !inner.is_data() {
        return ApiError::Malformed(format!("the body is not valid JSON: {inner}"));
    }
    // serde_json appends the position; the field path says more.
    let message = inner.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let parent = |name: &str| match path.as_str() {
        "." | "" => name.to_owned(),
        parent => format!("{parent}.{name}"),
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return ApiError::invalid(parent(name), "is required");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let known = rest.split_once("expected ").map_or("", |(_, k)| k);
        let known = known.strip_prefix("one of ").unwrap_or(known);
        return ApiError::invalid(
            path,
            format!("is not a known field (known: {})", known.replace('`', "")),
        );
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let name = rest.trim_end_matches('`');
        return ApiError::invalid(parent(name), "is given twice");
    }
    if path == "." {
        return ApiError::Malformed(format!("the body does not fit this request: {message}"));
    }
    ApiError::invalid(path, message)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::parse_json;
    use crate::error::ApiError;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
        #[expect(dead_code, reason = "read only to be checked")]
        count: Option<i32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn field(body: &str) -> (String, String) {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::Invalid { field, detail }) => (field, detail),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_by_its_path() {
        assert_eq!(
            field(r#"{"items": [{"name": "a"}, {"name": 3}]}"#),
            (
                "items[1].name".into(),
                "invalid type: integer `3`, expected a string".into()
            )
        );
        assert_eq!(
            field(r#"{"items": [{"name": "a"}, {}]}"#),
            ("items[1].name".into(), "is required".into())
        );
        assert_eq!(field("{}"), ("items".into(), "is required".into()));
        assert_eq!(
            field(r#"{"items": [], "colour": 1}"#),
            (
                "colour".into(),
                "is not a known field (known: items)".into()
            )
        );
        assert_eq!(
            field(r#"{"items": [{"name": "a", "count": 1.5}]}"#).0,
            "items[0].count"
        );
    }

    #[test]
    fn what_is_not_a_json_object_is_malformed() {
        for body in [
            "[1]",
            "5",
            "\"x\"",
            "{\"items\": [",
            "{\"items\": []} {}",
            "",
        ] {
            assert!(
                matches!(
                    parse_json::<Outer>(body.as_bytes()),
                    Err(ApiError::Malformed(_))
                ),
                "{body}"
            );
        }
        let parsed = parse_json::<Outer>(br#" {"items": [{"name": "a"}]} "#).unwrap();
        assert_eq!(parsed.items[0].name, "a");
    }
}
