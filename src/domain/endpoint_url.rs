//! Webhook endpoint URLs.

use std::fmt;

use url::Url;

use super::destination::{DestinationGuard, literal_ip};

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// An `http`/`https` URL with a host, no credentials, no fragment, and (when its host is an
/// IP literal) a destination the guard allows. DNS names are checked when sending, after
/// every resolution, since what a name resolves to can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(Url);

impl EndpointUrl {
    /// Parses and checks a URL.
    pub fn parse(raw: &str, guard: &DestinationGuard) -> Result<Self, String> {
        if raw.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        let url = Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials; use static headers instead".into());
        }
        if url.fragment().is_some() {
            return Err("must not contain a #fragment".into());
        }
        let host = url.host_str().ok_or("must have a host")?;
        if let Some(ip) = literal_ip(host) {
            guard.check(ip).map_err(|reason| {
                format!(
                    "points to {} ({ip}); allow it with HERALD_ALLOWED_DESTINATIONS if that is intended",
                    reason.describe()
                )
            })?;
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn as_url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<EndpointUrl, String> {
        EndpointUrl::parse(raw, &DestinationGuard::default())
    }

    #[test]
    fn accepts_public_http_and_https_urls() {
        assert!(parse("https://example.com/webhooks?x=1").is_ok());
        assert!(parse("http://hooks.example.com:8080/in").is_ok());
        assert!(parse("https://93.184.216.34/").is_ok());
    }

    #[test]
    fn refuses_other_schemes_credentials_and_private_literals() {
        assert!(parse("ftp://example.com/").unwrap_err().contains("http"));
        assert!(
            parse("https://user:pw@example.com/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse("not a url").is_err());
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://[::1]:8080/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let err = parse(url).unwrap_err();
            assert!(err.contains("HERALD_ALLOWED_DESTINATIONS"), "{url}: {err}");
        }
    }

    #[test]
    fn allowed_ranges_may_be_registered() {
        let guard = DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
        assert!(EndpointUrl::parse("http://127.0.0.1:9000/hook", &guard).is_ok());
    }
}
