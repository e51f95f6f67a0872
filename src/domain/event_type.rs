//! Event types: 1-100 characters such as `payment.succeeded`.

use std::fmt;

/// The longest event type Herald accepts.
pub const MAX_EVENT_TYPE_LEN: usize = 100;

/// A validated event type: 1-100 characters of `[A-Za-z0-9._:/-]`.
///
/// Types look like `payment.succeeded`; we accept the same alphabet as stream names so
/// that types can be matched by the same filters and written into HTTP headers and SSE
/// `event:` lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    /// Parses an event type, explaining what is wrong when it is not one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_EVENT_TYPE_LEN {
            return Err(format!(
                "must be at most {MAX_EVENT_TYPE_LEN} characters (got {})",
                raw.len()
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !super::stream_name::is_stream_char(*c))
        {
            return Err(format!(
                "may only contain A-Z, a-z, 0-9 and . _ : / - (found {bad:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The type as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the type, returning the inner string.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_names_up_to_100_characters() {
        assert!(EventType::parse("payment.succeeded").is_ok());
        assert!(EventType::parse(&"t".repeat(100)).is_ok());
    }

    #[test]
    fn rejects_empty_too_long_and_newlines() {
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse(&"t".repeat(101)).is_err());
        // A newline would break an SSE `event:` line.
        assert!(EventType::parse("a\nb").is_err());
    }
}
