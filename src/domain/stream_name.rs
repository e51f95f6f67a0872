//! Stream names: 1-200 characters of `[A-Za-z0-9._:/-]`.

use std::fmt;

/// The longest stream name Herald accepts.
pub const MAX_STREAM_NAME_LEN: usize = 200;

/// A validated stream name, such as `payment:pay_123` or `tenant/42/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

/// Whether `c` may appear in a stream name (and so in a subscriber's stream prefix).
pub(crate) fn is_stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
}

impl StreamName {
    /// Parses a stream name, explaining what is wrong when it is not one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_STREAM_NAME_LEN {
            return Err(format!(
                "must be at most {MAX_STREAM_NAME_LEN} characters (got {})",
                raw.len()
            ));
        }
        if let Some(bad) = raw.chars().find(|c| !is_stream_char(*c)) {
            return Err(format!(
                "may only contain A-Z, a-z, 0-9 and . _ : / - (found {bad:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the name, returning the inner string.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Streams under this prefix are Herald's own (`herald:ops`, `herald:test`): Herald writes
/// them, producers may not.
pub const RESERVED_PREFIX: &str = "herald:";

impl StreamName {
    /// Whether this is one of Herald's own streams, which producers may not publish to.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_streams_are_reserved_and_no_others() {
        for (name, reserved) in [
            ("herald:ops", true),
            ("herald:test", true),
            ("herald:", true),
            ("heraldry:x", false),
            ("payment:herald:ops", false),
        ] {
            let Ok(stream) = StreamName::parse(name) else {
                assert!(!reserved, "{name} should parse");
                continue;
            };
            assert_eq!(stream.is_reserved(), reserved, "{name}");
        }
    }

    #[test]
    fn accepts_every_allowed_character() {
        for name in [
            "payment:pay_123",
            "a",
            "tenant/42/orders.v1-x",
            "herald:ops",
        ] {
            assert_eq!(StreamName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn accepts_exactly_the_maximum_length() {
        assert!(StreamName::parse(&"s".repeat(200)).is_ok());
        assert!(StreamName::parse(&"s".repeat(201)).is_err());
    }

    #[test]
    fn rejects_empty_spaces_and_unicode() {
        for name in ["", "a b", "caf\u{e9}", "a*", "a?b", "a%2Fb", "a\u{0}"] {
            assert!(StreamName::parse(name).is_err(), "{name:?} was accepted");
        }
    }
}
