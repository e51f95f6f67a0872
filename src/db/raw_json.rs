//! `RawJson`: a JSON value kept as the producer's exact bytes, for `json` columns.

use std::io::Write as _;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Json;
use serde_json::value::RawValue;

/// Valid JSON text, stored and returned byte for byte.
#[derive(Debug, Clone, AsExpression, FromSqlRow, serde::Serialize)]
#[diesel(sql_type = Json)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

/// The deepest nesting of arrays and objects a payload may have. PostgreSQL's JSON parser
/// recurses once per level and gives up ("stack depth limit exceeded") long before a body
/// of 256 KiB of `[` ends. 64 is far beyond any real payload and leaves room for the
/// envelopes Herald wraps a payload in (a webhook's body, a page of events, a WebSocket
/// message) within the 128 levels that common JSON parsers accept (serde_json's limit).
pub const MAX_DEPTH: usize = 64;

/// How deeply arrays and objects nest in `json`, valid JSON text (0 for a scalar).
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0_usize, 0_usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl ToSql<Json, Pg> for RawJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        // The binary form of PostgreSQL's `json` type is its text.
        out.write_all(self.0.get().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Json, Pg> for RawJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let text = std::str::from_utf8(value.as_bytes())?;
        Ok(Self(RawValue::from_string(text.to_owned())?))
    }
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn nesting_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#""[[[{""#), 0);
        assert_eq!(nesting_depth("[]"), 1);
        assert_eq!(nesting_depth(r#"{"a": [1, {"b": []}], "c": {}}"#), 4);
        assert_eq!(nesting_depth(r#"["\\", ["\"]", [[]]]]"#), 4);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting_depth(&deep), 100_000);
    }
}
