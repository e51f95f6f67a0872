//! The destination guard: which addresses webhooks may be sent to.
//!
//! A webhook URL is chosen by whoever registers the endpoint, and Herald makes requests to
//! it from inside the operator's network. Without a guard, `http://169.254.169.254/` reads
//! cloud credentials and `http://10.0.0.5:6379/` reaches internal services (SSRF). So every
//! address a request would go to is checked, after DNS resolution, against the ranges below,
//! unless `HERALD_ALLOWED_DESTINATIONS` lists it. Literal hosts are parsed the way
//! `inet_aton` does (`2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`), since that is how
//! resolvers and HTTP clients may read them, and IPv4 addresses embedded in IPv6
//! (`::ffff:127.0.0.1`, NAT64 `64:ff9b::/96`, 6to4) are checked as the IPv4 they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, RFC 4193 (fc00::/7).
    Private,
    /// 169.254.0.0/16 (cloud metadata lives here), fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10.
    SharedAddressSpace,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32.
    Documentation,
    /// Benchmarking, reserved, broadcast and other special-purpose ranges.
    Reserved,
}

impl Blocked {
    /// A phrase for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address (where cloud metadata services live)",
            Self::SharedAddressSpace => "a carrier-grade NAT address",
            Self::Multicast => "a multicast address",
            Self::Unspecified => "an unspecified address",
            Self::Documentation => "a documentation address",
            Self::Reserved => "a reserved address",
        }
    }
}

/// The guard, with the operator's exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationGuard {
    allowed: Vec<IpNet>,
}

impl DestinationGuard {
    /// A guard that allows these ranges despite the rules.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Parses `HERALD_ALLOWED_DESTINATIONS`: comma-separated CIDRs or single addresses.
    pub fn parse_allowed(raw: &str) -> Result<Self, String> {
        let allowed = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("expected CIDRs like 127.0.0.0/8 or 10.1.2.3, got {p:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether `ip` may be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match classify(ip) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// IPv4 carried inside IPv6 (mapped, NAT64, 6to4, compatible) as that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded =
        |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded(s[6], s[7]); // NAT64
    }
    if s[0] == 0x2002 {
        return embedded(s[1], s[2]); // 6to4
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return embedded(s[6], s[7]); // IPv4-compatible (deprecated)
    }
    ip
}

fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => Blocked::Unspecified,
        (127, _, _) => Blocked::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Blocked::Private,
        (169, 254, _) => Blocked::LinkLocal,
        (100, 64..=127, _) => Blocked::SharedAddressSpace,
        (224..=239, _, _) => Blocked::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Blocked::Documentation,
        (192, 0, 0) | (198, 18..=19, _) | (240..=255, _, _) => Blocked::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        Blocked::Unspecified
    } else if ip.is_loopback() {
        Blocked::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 {
        Blocked::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        Blocked::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Blocked::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Blocked::Documentation
    } else if s[0] & 0xffc0 == 0xfec0 || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) {
        Blocked::Reserved // site-local, discard-only
    } else {
        return None;
    })
}

/// Reads a URL host that is an IP literal in any form an HTTP client or resolver might
/// accept: `[::1]`, dotted quads, and `inet_aton` forms (`2130706433`, `0x7f000001`,
/// `127.1`, `0177.0.0.1`). `None` for a DNS name.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let host = host.trim_end_matches('.');
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    inet_aton(host).map(IpAddr::V4)
}

fn inet_aton(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = host
        .split('.')
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            if let Some(hex) = lower.strip_prefix("0x") {
                u32::from_str_radix(hex, 16).ok()
            } else if lower.len() > 1 && lower.starts_with('0') {
                u32::from_str_radix(&lower[1..], 8).ok()
            } else {
                lower.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    let value = match parts.as_slice() {
        [a] => *a,
        [a, b] if *a < 256 && *b < 1 << 24 => (a << 24) | b,
        [a, b, c] if *a < 256 && *b < 256 && *c < 1 << 16 => (a << 24) | (b << 16) | c,
        [a, b, c, d] if [a, b, c, d].iter().all(|x| **x < 256) => {
            (a << 24) | (b << 16) | (c << 8) | d
        }
        _ => return None,
    };
    Some(Ipv4Addr::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(host: &str) -> Option<Blocked> {
        DestinationGuard::default()
            .check(literal_ip(host).unwrap())
            .err()
    }

    #[test]
    fn refuses_the_classic_ssrf_targets() {
        assert_eq!(blocked("169.254.169.254"), Some(Blocked::LinkLocal));
        assert_eq!(blocked("10.0.0.1"), Some(Blocked::Private));
        assert_eq!(blocked("172.16.5.4"), Some(Blocked::Private));
        assert_eq!(blocked("192.168.1.1"), Some(Blocked::Private));
        assert_eq!(blocked("[::1]"), Some(Blocked::Loopback));
        assert_eq!(blocked("127.0.0.1"), Some(Blocked::Loopback));
        assert_eq!(blocked("0.0.0.0"), Some(Blocked::Unspecified));
        assert_eq!(
            blocked("100.100.100.200"),
            Some(Blocked::SharedAddressSpace)
        );
        assert_eq!(blocked("[fd00:ec2::254]"), Some(Blocked::Private));
        assert_eq!(blocked("[fe80::1]"), Some(Blocked::LinkLocal));
        assert_eq!(blocked("224.0.0.1"), Some(Blocked::Multicast));
        assert_eq!(blocked("192.0.2.10"), Some(Blocked::Documentation));
        assert_eq!(blocked("255.255.255.255"), Some(Blocked::Reserved));
    }

    #[test]
    fn odd_spellings_of_loopback_are_still_loopback() {
        for host in [
            "0x7f000001",
            "2130706433",
            "127.1",
            "0177.0.0.1",
            "0x7f.1",
            "127.0.0.1.",
        ] {
            assert_eq!(
                literal_ip(host),
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                "{host}"
            );
            assert_eq!(blocked(host), Some(Blocked::Loopback), "{host}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_checked_as_ipv4() {
        assert_eq!(blocked("[::ffff:127.0.0.1]"), Some(Blocked::Loopback));
        assert_eq!(
            blocked("[::ffff:169.254.169.254]"),
            Some(Blocked::LinkLocal)
        );
        assert_eq!(blocked("[64:ff9b::a00:1]"), Some(Blocked::Private));
        assert_eq!(blocked("[2002:a00:1::]"), Some(Blocked::Private));
        assert_eq!(blocked("[::ffff:8.8.8.8]"), None);
    }

    #[test]
    fn public_addresses_pass() {
        for host in [
            "8.8.8.8",
            "1.1.1.1",
            "[2606:4700:4700::1111]",
            "93.184.216.34",
        ] {
            assert_eq!(blocked(host), None, "{host}");
        }
    }

    #[test]
    fn names_are_not_literals() {
        assert_eq!(literal_ip("example.com"), None);
        assert_eq!(literal_ip("localhost"), None);
        assert_eq!(literal_ip("1.2.3.4.5"), None);
        assert_eq!(literal_ip("256.1.1.1"), None);
    }

    #[test]
    fn operators_can_allow_ranges() {
        let guard = DestinationGuard::parse_allowed("127.0.0.0/8, 10.1.2.3").unwrap();
        assert_eq!(guard.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(guard.check("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(guard.check("10.1.2.3".parse().unwrap()), Ok(()));
        assert_eq!(
            guard.check("10.1.2.4".parse().unwrap()),
            Err(Blocked::Private)
        );
        assert!(DestinationGuard::parse_allowed("not-a-cidr").is_err());
        assert_eq!(
            DestinationGuard::parse_allowed("").unwrap(),
            DestinationGuard::default()
        );
    }
}
