//! Trusted reverse proxies (`gateway.trustedProxies`): whether a peer may send forwarding
//! headers, and which client address a trusted chain reports. Pure functions over strings
//! and addresses; must not touch sockets or per-core state.

use std::net::IpAddr;

/// True when `peer` matches an entry of `trusted` (an address, or a CIDR `addr/len`).
/// Unparseable entries match nothing.
pub fn is_trusted(peer: IpAddr, trusted: &[String]) -> bool {
    let peer = canonical(peer);
    trusted.iter().any(|t| matches(peer, t.trim()))
}

fn matches(peer: IpAddr, entry: &str) -> bool {
    let (addr, len) = match entry.split_once('/') {
        Some((a, l)) => match l.parse::<u32>() {
            Ok(l) => (a, Some(l)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (canonical(net), peer) {
        (IpAddr::V4(n), IpAddr::V4(p)) => {
            let len = len.unwrap_or(32);
            len <= 32
                && prefix_eq(
                    u128::from(u32::from(n)) << 96,
                    u128::from(u32::from(p)) << 96,
                    len,
                )
        }
        (IpAddr::V6(n), IpAddr::V6(p)) => {
            let len = len.unwrap_or(128);
            len <= 128 && prefix_eq(u128::from(n), u128::from(p), len)
        }
        _ => false,
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
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address behind a trusted proxy: walking `X-Forwarded-For` from the right
/// (nearest hop first), the first address that is not itself a trusted proxy. `None` when
/// the header has no usable address (the caller keeps the peer's).
pub fn client_ip(x_forwarded_for: &str, trusted: &[String]) -> Option<IpAddr> {
    x_forwarded_for
        .rsplit(',')
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .find(|ip| !is_trusted(*ip, trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
        assert!(!is_trusted(ip("8.8.8.8"), &[]));
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
    }
}
