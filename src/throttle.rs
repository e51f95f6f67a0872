//! Who is calling (the client address, through trusted proxies only), and slowing down
//! addresses that keep failing to authenticate.
//!
//! The client address is the TCP peer unless the peer is one of `HERALD_TRUSTED_PROXIES`.
//! From a trusted proxy, the forwarded chain (`HERALD_FORWARDED_HEADER`: `X-Forwarded-For`
//! by default, or `Forwarded`) is walked from the right, skipping trusted hops: the first
//! untrusted hop is the client. Everything left of it was written by the client and is
//! never believed. A hop that is not an address (`unknown`, an obfuscated name) ends the
//! walk at the nearest trusted hop.
//!
//! A [`FailureLimiter`] is a token bucket per client address (IPv6 addresses per /64,
//! which one host can usually choose from freely): each failure takes a token, tokens come
//! back at a steady rate, and an address without tokens is answered `429` until one is
//! back. Only failures are counted and only failures are refused, so a valid key from a
//! throttled address is served as usual. It tracks at most [`MAX_TRACKED`] addresses;
//! past that, new addresses share one bucket, which bounds its memory (a few MiB) without
//! letting a flood of addresses escape the limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header::HeaderName;
use ipnet::IpNet;

/// Addresses a limiter keeps a bucket for; beyond, new addresses share one.
pub const MAX_TRACKED: usize = 65_536;

/// `HERALD_TRUSTED_PROXIES`: the proxies whose forwarded addresses are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs or single addresses, separated by commas or spaces (empty: none).
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("expected CIDRs or addresses such as 10.0.0.0/8, got {part:?}")
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// `HERALD_FORWARDED_HEADER`: which header trusted proxies write the client into. Only
/// one is read: a proxy passes the other through untouched, so the client could forge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    /// `x-forwarded-for` or `forwarded`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => Err(format!(
                "expected x-forwarded-for or forwarded, got {raw:?}"
            )),
        }
    }

    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => HeaderName::from_static("forwarded"),
        }
    }

    /// One hop as written in this header, if it is an address.
    fn hop(self, element: &str) -> Option<IpAddr> {
        let value = match self {
            Self::XForwardedFor => element.trim(),
            Self::Forwarded => element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            })?,
        };
        let ip = value
            .parse::<IpAddr>()
            .or_else(|_| value.parse::<SocketAddr>().map(|a| a.ip()))
            .or_else(|_| {
                value
                    .strip_prefix('[')
                    .and_then(|v| v.split(']').next())
                    .unwrap_or_default()
                    .parse::<Ipv6Addr>()
                    .map(IpAddr::V6)
            })
            .ok()?;
        Some(ip.to_canonical())
    }
}

/// The client's address: the peer, or what trusted proxies say of the client.
pub fn client_addr(req: &HttpRequest, proxies: &TrustedProxies, header: ForwardedHeader) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip().to_canonical());
    let chain = req
        .headers()
        .get_all(header.name())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    client_from_chain(peer, chain.collect(), proxies, header)
}

fn client_from_chain(
    peer: IpAddr,
    chain: Vec<&str>,
    proxies: &TrustedProxies,
    header: ForwardedHeader,
) -> IpAddr {
    let mut nearest = peer;
    if !proxies.trusts(nearest) {
        return nearest;
    }
    for element in chain.into_iter().rev() {
        let Some(hop) = header.hop(element) else {
            return nearest;
        };
        if !proxies.trusts(hop) {
            return hop;
        }
        nearest = hop;
    }
    nearest
}

/// Whose failures are counted together: an IPv4 address, or an IPv6 /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1_u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Buckets {
    by_addr: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
}

/// Failures allowed per client address: `burst` at once, then one every `every`.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    every: Duration,
    max_tracked: usize,
    buckets: Mutex<Buckets>,
}

impl FailureLimiter {
    /// A limiter allowing `burst` failures, then one more every `every`.
    pub fn new(burst: u32, every: Duration) -> Self {
        Self::with_capacity(burst, every, MAX_TRACKED)
    }

    fn with_capacity(burst: u32, every: Duration, max_tracked: usize) -> Self {
        Self {
            burst: f64::from(burst),
            every,
            max_tracked,
            buckets: Mutex::default(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let earned = now.duration_since(bucket.at).as_secs_f64() / self.every.as_secs_f64();
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
    }

    fn retry_after(&self, bucket: &Bucket) -> u32 {
        let wait = (1.0 - bucket.tokens).max(0.0) * self.every.as_secs_f64();
        // Whole seconds, rounded up, at least 1 (Retry-After has no fractions).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = wait.ceil().min(f64::from(u32::MAX)) as u32;
        secs.max(1)
    }

    /// Runs `f` on `ip`'s bucket, refilled to now; a new one if `create`.
    fn with_bucket<T>(
        &self,
        ip: IpAddr,
        create: bool,
        f: impl FnOnce(&Self, &mut Bucket) -> T,
    ) -> Option<T> {
        let now = Instant::now();
        let key = bucket_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = Bucket {
            tokens: self.burst,
            at: now,
        };
        if !buckets.by_addr.contains_key(&key) {
            if !create {
                return None;
            }
            if buckets.by_addr.len() >= self.max_tracked {
                // Forget addresses whose bucket is full again: they are as good as new.
                let (burst, every) = (self.burst, self.every.as_secs_f64());
                buckets.by_addr.retain(|_, b| {
                    b.tokens + now.duration_since(b.at).as_secs_f64() / every < burst
                });
            }
            if buckets.by_addr.len() >= self.max_tracked {
                let overflow = buckets.overflow.get_or_insert(fresh);
                self.refill(overflow, now);
                return Some(f(self, overflow));
            }
        }
        let bucket = buckets.by_addr.entry(key).or_insert(fresh);
        self.refill(bucket, now);
        Some(f(self, bucket))
    }

    /// Seconds `ip` must wait before its next failure would be allowed, if it must.
    pub fn blocked(&self, ip: IpAddr) -> Option<u32> {
        self.with_bucket(ip, false, |this, bucket| {
            (bucket.tokens < 1.0).then(|| this.retry_after(bucket))
        })
        .flatten()
    }

    /// Counts a failure of `ip`. `Some(retry_after)` if it was over its allowance.
    pub fn failed(&self, ip: IpAddr) -> Option<u32> {
        self.with_bucket(ip, true, |this, bucket| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                None
            } else {
                Some(this.retry_after(bucket))
            }
        })
        .flatten()
    }

    /// Forgets `ip`'s failures (a successful sign-in).
    pub fn forgive(&self, ip: IpAddr) {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_addr
            .remove(&bucket_key(ip));
    }

    /// Addresses with a bucket now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_addr
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(peer: &str, chain: &[&str], trusted: &str, header: ForwardedHeader) -> IpAddr {
        let proxies = TrustedProxies::parse(trusted).unwrap();
        client_from_chain(ip(peer), chain.to_vec(), &proxies, header)
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let xff = ForwardedHeader::XForwardedFor;
        assert_eq!(
            client("10.0.0.2", &["203.0.113.5"], "", xff),
            ip("10.0.0.2")
        );
        assert_eq!(
            client("198.51.100.1", &["203.0.113.5"], "10.0.0.0/8", xff),
            ip("198.51.100.1"),
            "an untrusted peer is the client whatever it says"
        );
        assert_eq!(
            client("10.0.0.2", &["203.0.113.5"], "10.0.0.0/8", xff),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let xff = ForwardedHeader::XForwardedFor;
        // The client wrote "1.2.3.4" itself; the proxy appended what it saw.
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4", " 203.0.113.5"], "10.0.0.0/8", xff),
            ip("203.0.113.5")
        );
        // Two proxies in a row: skip both.
        assert_eq!(
            client(
                "10.0.0.2",
                &["1.2.3.4", "203.0.113.5", "10.0.0.9"],
                "10.0.0.0/8",
                xff
            ),
            ip("203.0.113.5")
        );
        // Everything trusted: the left-most hop.
        assert_eq!(
            client("10.0.0.2", &["10.1.1.1", "10.0.0.9"], "10.0.0.0/8", xff),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(client("10.0.0.2", &[], "10.0.0.0/8", xff), ip("10.0.0.2"));
        // Garbage ends the walk at the nearest trusted hop.
        assert_eq!(
            client("10.0.0.2", &["203.0.113.5", "unknown"], "10.0.0.0/8", xff),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn rfc_7239_forwarded_elements_are_read_with_ports_brackets_and_quotes() {
        let fwd = ForwardedHeader::Forwarded;
        let trusted = "10.0.0.0/8, 127.0.0.1";
        assert_eq!(
            client(
                "127.0.0.1",
                &["for=1.2.3.4", r#" for="[2001:db8::1]:4711";proto=https"#],
                trusted,
                fwd
            ),
            ip("2001:db8::1")
        );
        assert_eq!(
            client(
                "127.0.0.1",
                &["proto=http;For=\"203.0.113.5:80\""],
                trusted,
                fwd
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            client("127.0.0.1", &["for=_hidden"], trusted, fwd),
            ip("127.0.0.1")
        );
        assert_eq!(
            client(
                "127.0.0.1",
                &["for=::ffff:10.0.0.3", "for=203.0.113.9"],
                trusted,
                fwd
            ),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(TrustedProxies::parse("10.0.0.0/8 192.168.1.1,fd00::/8").is_ok());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.internal").is_err());
        assert_eq!(
            ForwardedHeader::parse("Forwarded"),
            Ok(ForwardedHeader::Forwarded)
        );
        assert!(ForwardedHeader::parse("x-real-ip").is_err());
    }

    #[test]
    fn failures_past_the_burst_are_refused_until_a_token_is_back() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(10));
        let a = ip("203.0.113.5");
        for _ in 0..3 {
            assert_eq!(limiter.failed(a), None);
        }
        assert_eq!(limiter.blocked(a), Some(10));
        assert_eq!(limiter.failed(a), Some(10));
        assert_eq!(limiter.blocked(ip("203.0.113.6")), None, "others are not");
        limiter.forgive(a);
        assert_eq!(limiter.blocked(a), None);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60));
        assert_eq!(limiter.failed(ip("2001:db8:0:1::1")), None);
        assert!(limiter.failed(ip("2001:db8:0:1::ffff")).is_some());
        assert_eq!(limiter.failed(ip("2001:db8:0:2::1")), None);
    }

    #[test]
    fn memory_is_bounded_and_a_flood_of_addresses_shares_one_bucket() {
        let limiter = FailureLimiter::with_capacity(2, Duration::from_secs(60), 1000);
        let mut refused = 0;
        for n in 0..20_000_u32 {
            if limiter.failed(IpAddr::from(n.to_be_bytes())).is_some() {
                refused += 1;
            }
            assert!(limiter.tracked() <= 1000);
        }
        assert_eq!(
            refused,
            20_000 - 1000 - 2,
            "addresses past the cap share one bucket of 2"
        );
        // Tracked addresses keep their own allowance.
        assert_eq!(limiter.failed(IpAddr::from(5_u32.to_be_bytes())), None);
    }
}
