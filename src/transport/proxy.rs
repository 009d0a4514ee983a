//! Trusted reverse proxies (`gateway.trustedProxies`): whether a peer may send forwarding
//! headers, and which client address a trusted chain reports. Parsed once at start-up, then
//! pure lookups; must not touch sockets or per-core state.

use std::net::IpAddr;

/// `gateway.trustedProxies`, parsed once at start-up: each entry an address or a CIDR
/// `addr/len`, IPv4 kept as IPv4 (IPv4-mapped IPv6 is folded to IPv4 on both sides).
/// Unparseable entries match nothing.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Net>);

#[derive(Debug, Clone, Copy)]
struct Net {
    /// The network address, IPv4 in the top 32 bits.
    bits: u128,
    prefix: u32,
    v4: bool,
}

impl TrustedProxies {
    /// Parse the configured entries.
    pub fn parse(entries: &[String]) -> Self {
        Self(
            entries
                .iter()
                .filter_map(|e| Net::parse(e.trim()))
                .collect(),
        )
    }

    /// The entries that are neither an address nor a CIDR (ignored by [`Self::parse`]).
    pub fn invalid(entries: &[String]) -> Vec<&str> {
        entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| Net::parse(e).is_none())
            .collect()
    }

    /// True when `peer` is one of the trusted proxies.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let (bits, v4) = bits_of(peer);
        self.0
            .iter()
            .any(|n| n.v4 == v4 && prefix_eq(n.bits, bits, n.prefix))
    }

    /// The client address behind a trusted proxy: walking `X-Forwarded-For` from the right
    /// (nearest hop first), the first address that is not itself a trusted proxy. `None`
    /// (the caller keeps the peer's) when the header has no such address — and as soon as a
    /// hop cannot be read (`unknown`, an obfuscated id): everything left of it was written
    /// by whoever talked to that hop, so skipping it would let a client pick its own address.
    /// Hops may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or brackets.
    pub fn client_ip(&self, x_forwarded_for: &str) -> Option<IpAddr> {
        for hop in x_forwarded_for.rsplit(',') {
            let ip = canonical(parse_addr(hop.trim())?);
            if !self.contains(ip) {
                return Some(ip);
            }
        }
        None
    }
}

impl Net {
    fn parse(entry: &str) -> Option<Net> {
        let (addr, len) = match entry.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
            None => (entry, None),
        };
        let (bits, v4) = bits_of(addr.parse::<IpAddr>().ok()?);
        let max = if v4 { 32 } else { 128 };
        let prefix = len.unwrap_or(max);
        (prefix <= max).then_some(Net { bits, prefix, v4 })
    }
}

/// An address, optionally with a port or in brackets (an `X-Forwarded-For` hop, a `Host`).
pub fn parse_addr(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
}

/// The address as 128 bits (IPv4 in the top 32) and whether it is IPv4.
fn bits_of(ip: IpAddr) -> (u128, bool) {
    match canonical(ip) {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
        IpAddr::V6(v6) => (u128::from(v6), false),
    }
}

fn prefix_eq(a: u128, b: u128, len: u32) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - len);
    a & mask == b & mask
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_entries_are_named() {
        let entries: Vec<String> = ["10.0.0.0/8", " 127.0.0.1 ", "nginx", "10.0.0.1/99"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            TrustedProxies::invalid(&entries),
            vec!["nginx", "10.0.0.1/99"]
        );
    }

    fn list(v: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn is_trusted(ip: IpAddr, t: &TrustedProxies) -> bool {
        t.contains(ip)
    }

    fn client_ip(xff: &str, t: &TrustedProxies) -> Option<IpAddr> {
        t.client_ip(xff)
    }

    #[test]
    fn addresses_and_cidrs() {
        let t = list(&[
            "127.0.0.1",
            "10.0.0.0/8",
            "fd7a:115c:a1e0::/48",
            "junk",
            "1.2.3.4/99",
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_trusted(ip("127.0.0.1"), &t));
        assert!(is_trusted(ip("::ffff:127.0.0.1"), &t));
        assert!(!is_trusted(ip("127.0.0.2"), &t));
        assert!(is_trusted(ip("10.200.3.4"), &t));
        assert!(!is_trusted(ip("11.0.0.1"), &t));
        assert!(is_trusted(ip("fd7a:115c:a1e0:ab12::1"), &t));
        assert!(!is_trusted(ip("fd7a:115c:a1e1::1"), &t));
        assert!(!is_trusted(ip("1.2.3.4"), &t));
        assert!(is_trusted(ip("8.8.8.8"), &list(&["0.0.0.0/0"])));
        assert!(!is_trusted(ip("8.8.8.8"), &list(&[])));
    }

    #[test]
    fn client_is_the_nearest_untrusted_hop() {
        let t = list(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            client_ip("203.0.113.9, 10.1.1.1", &t),
            Some("203.0.113.9".parse().unwrap())
        );
        // A spoofed leftmost entry does not win over the real nearest hop.
        assert_eq!(
            client_ip("1.1.1.1, 198.51.100.7, 10.0.0.2", &t),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_ip("garbage, 10.0.0.3", &t), None);
        assert_eq!(client_ip("", &t), None);
        // An unreadable hop stops the walk: what is left of it was written by the client.
        assert_eq!(client_ip("127.0.0.1, unknown, 10.0.0.3", &t), None);
        assert_eq!(
            client_ip("6.6.6.6, 1.2.3.4:5678", &t),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            client_ip("127.0.0.1, [2001:db8::1]:443", &t),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            client_ip("[2001:db8::2]", &t),
            Some("2001:db8::2".parse().unwrap())
        );
        assert_eq!(
            client_ip("::ffff:203.0.113.5", &t),
            Some("203.0.113.5".parse().unwrap())
        );
    }
}
