//! Endpoint stream filters: an exact stream name, or a prefix ending in `*`.

use super::stream_name::{MAX_STREAM_NAME_LEN, is_stream_char};

/// `payment:pay_123` (exactly that stream) or `payment:*` (every stream starting `payment:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern(String);

impl StreamPattern {
    /// Parses a pattern; `*` is allowed only at the end.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let body = raw.strip_suffix('*').unwrap_or(raw);
        if raw.is_empty() || raw.len() > MAX_STREAM_NAME_LEN + 1 {
            return Err(format!(
                "must be 1-{MAX_STREAM_NAME_LEN} characters, optionally ending in *"
            ));
        }
        if let Some(bad) = body.chars().find(|c| !is_stream_char(*c)) {
            return Err(format!(
                "may only contain A-Z, a-z, 0-9 and . _ : / -, with * only at the end (found {bad:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Whether `stream` matches.
    pub fn matches(&self, stream: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => stream.starts_with(prefix),
            None => stream == self.0,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_patterns() {
        let prefix = StreamPattern::parse("payment:*").unwrap();
        assert!(prefix.matches("payment:pay_1"));
        assert!(prefix.matches("payment:"));
        assert!(!prefix.matches("payments"));
        let exact = StreamPattern::parse("payment:pay_1").unwrap();
        assert!(exact.matches("payment:pay_1"));
        assert!(!exact.matches("payment:pay_12"));
        assert!(StreamPattern::parse("*").unwrap().matches("anything"));
    }

    #[test]
    fn stars_only_at_the_end() {
        assert!(StreamPattern::parse("pay*ment").is_err());
        assert!(StreamPattern::parse("**").is_err());
        assert!(StreamPattern::parse("").is_err());
    }
}
