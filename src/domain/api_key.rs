//! API keys: roles, stream prefixes and the secret itself.
//!
//! A key is `hrld_` followed by 43 characters of URL-safe base64 (32 random bytes). Only its
//! SHA-256 digest is stored: the key has 256 bits of entropy, so a slow password hash would
//! buy nothing and would cost a hash computation per request.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::stream_name::{MAX_STREAM_NAME_LEN, is_stream_char};

const KEY_PREFIX: &str = "hrld_";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Create events.
    Publisher,
    /// Read streams whose name starts with one of the key's prefixes.
    Subscriber,
}

impl Role {
    /// Parses `admin`, `publisher` or `subscriber`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "admin" => Ok(Self::Admin),
            "publisher" => Ok(Self::Publisher),
            "subscriber" => Ok(Self::Subscriber),
            other => Err(format!(
                "must be one of admin, publisher, subscriber (got {other:?})"
            )),
        }
    }

    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Publisher => "publisher",
            Self::Subscriber => "subscriber",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The start of the stream names a subscriber key may read, such as `payment:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPrefix(String);

impl StreamPrefix {
    /// Parses a prefix: 1-200 characters of the stream-name alphabet.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_STREAM_NAME_LEN {
            return Err(format!("must be 1-{MAX_STREAM_NAME_LEN} characters"));
        }
        if let Some(bad) = raw.chars().find(|c| !is_stream_char(*c)) {
            return Err(format!(
                "may only contain A-Z, a-z, 0-9 and . _ : / - (found {bad:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The prefix as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the prefix, returning the inner string.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The clear text of an API key. It exists only while a key is being created or checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}…)", self.display_prefix())
    }
}

impl ApiKeySecret {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a key presented by a client or an operator (`HERALD_ADMIN_KEY`).
    ///
    /// Any non-empty printable ASCII string is accepted so that operators can choose their
    /// bootstrap key; generated keys always have the `hrld_` form.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() < 16 {
            return Err("must be at least 16 characters".into());
        }
        if raw.len() > 256 || !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err("must be at most 256 printable ASCII characters without spaces".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key in clear, to be shown exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest stored in place of the key.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }

    /// The first characters, stored in clear so that operators can tell keys apart.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(KEY_PREFIX.len() + 6).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_well_formed() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("hrld_"));
        assert_eq!(a.expose().len(), 5 + 43);
        assert!(ApiKeySecret::parse(a.expose()).is_ok());
    }

    #[test]
    fn the_hash_is_sha256_and_not_the_key() {
        let key = ApiKeySecret::parse("hrld_0123456789abcdef").unwrap();
        assert_eq!(key.hash().len(), 32);
        assert_ne!(key.hash(), key.expose().as_bytes());
        assert_eq!(
            key.hash(),
            ApiKeySecret::parse("hrld_0123456789abcdef").unwrap().hash()
        );
    }

    #[test]
    fn debug_output_does_not_leak_the_key() {
        let key = ApiKeySecret::generate();
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn short_or_spaced_keys_are_refused() {
        assert!(ApiKeySecret::parse("short").is_err());
        assert!(ApiKeySecret::parse("a key with spaces in it").is_err());
    }

    #[test]
    fn roles_round_trip() {
        for role in [Role::Admin, Role::Publisher, Role::Subscriber] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn prefixes_use_the_stream_alphabet() {
        assert!(StreamPrefix::parse("payment:").is_ok());
        assert!(StreamPrefix::parse("").is_err());
        assert!(StreamPrefix::parse("pay*").is_err());
    }
}
