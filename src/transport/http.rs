//! HTTP/1.1 request heads on the gateway port: parsing, the tiny route table, responses and
//! the WebSocket upgrade check.
//!
//! Owns: head parsing (httparse, the parser monoio-http itself wraps — monoio-http's codec owns
//! the stream and has no upgrade hand-off), status lines, the `Sec-WebSocket-Accept` key.
//! Must not touch: sockets (the connection loop reads and writes), auth, methods.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest request head accepted (bigger → 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

/// What a parsed head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method (`GET`, …).
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// HTTP/1.0 → false.
    pub http11: bool,
    /// `Connection: close` (or 1.0 without keep-alive).
    pub close: bool,
    /// Body length announced (`Content-Length`), 0 when absent.
    pub content_length: usize,
    /// `Transfer-Encoding: chunked` (refused: no route takes bodies).
    pub chunked: bool,
    /// Carries X-Forwarded-For / Forwarded / X-Real-IP (a claimed client address: only
    /// trusted proxies may send them).
    pub forwarded: bool,
    /// Carries any forwarding header (also X-Forwarded-Host / X-Forwarded-Proto): a proxy
    /// is in the way, so the request is not direct-local whatever the peer.
    pub proxied: bool,
    /// The `X-Forwarded-For` value (repeated headers joined with `,`).
    pub forwarded_for: Option<String>,
    /// Valid WebSocket upgrade: the `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Upgrade: websocket` was asked for but the request is not a valid upgrade.
    pub bad_upgrade: Option<&'static str>,
    /// `Origin` header (browser clients).
    pub origin: Option<String>,
    /// `Host` header.
    pub host: Option<String>,
}

/// Result of looking at the bytes read so far.
#[derive(Debug)]
pub enum Parsed {
    /// Need more bytes.
    Partial,
    /// A complete head of `len` bytes.
    Complete(Head, usize),
    /// Malformed (→ 400).
    Malformed,
    /// Head larger than [`MAX_HEAD_BYTES`] (→ 431).
    TooLarge,
}

/// The check the real gateway's WebSocket server (`ws`) applies: `^[+/0-9A-Za-z]{22}==$`,
/// i.e. the shape of 16 base64-encoded bytes, without insisting on canonical padding bits
/// (a strict base64 decoder would refuse keys that the real gateway accepts).
fn ws_key_ok(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Whether `authority` (`host[:port]`, `[v6][:port]`) names this machine's loopback:
/// `localhost` (or `*.localhost`), 127.0.0.0/8 or `::1` (also IPv4-mapped).
pub fn is_loopback_host(authority: &str) -> bool {
    let authority = authority.trim();
    if let Some(ip) = super::proxy::parse_addr(authority) {
        return super::proxy::canonical(ip).is_loopback();
    }
    // A name, maybe with a port.
    let host = authority.split(':').next().unwrap_or("");
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host
            .get(host.len().saturating_sub(10)..)
            .is_some_and(|t| t.eq_ignore_ascii_case(".localhost"))
}

/// The `host[:port]` of a URL or `Origin` (`scheme://authority/path?query#fragment`).
pub fn authority_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

fn has_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Parse a request head from `buf`.
pub fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Parsed::TooLarge
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        Err(_) => return Parsed::Malformed,
    };
    if len > MAX_HEAD_BYTES {
        return Parsed::TooLarge;
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Malformed;
    };
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut head = Head {
        method: method.to_string(),
        path,
        http11: version == 1,
        close: version == 0,
        content_length: 0,
        chunked: false,
        forwarded: false,
        proxied: false,
        forwarded_for: None,
        ws_key: None,
        bad_upgrade: None,
        origin: None,
        host: None,
    };
    let mut upgrade_ws = false;
    let mut conn_upgrade = false;
    let mut ws_version_ok = false;
    let mut key = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                head.close = true;
            }
            if has_token(h.value, "keep-alive") && version == 0 {
                head.close = false;
            }
            conn_upgrade |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
            {
                Some(n) => head.content_length = n,
                None => return Parsed::Malformed,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-host")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            head.proxied = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("forwarded")
            || name.eq_ignore_ascii_case("x-real-ip")
        {
            head.forwarded = true;
            head.proxied = true;
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                let v = String::from_utf8_lossy(h.value);
                head.forwarded_for = Some(match head.forwarded_for.take() {
                    Some(prev) => format!("{prev},{v}"),
                    None => v.into_owned(),
                });
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws = has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version_ok = h.value == b"13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = std::str::from_utf8(h.value)
                .ok()
                .map(|s| s.trim().to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = std::str::from_utf8(h.value).ok().map(str::to_string);
        } else if name.eq_ignore_ascii_case("host") {
            head.host = std::str::from_utf8(h.value).ok().map(str::to_string);
        }
    }
    if upgrade_ws {
        let key_ok = key.as_deref().is_some_and(ws_key_ok);
        head.bad_upgrade = if head.method != "GET" || !head.http11 {
            Some("websocket upgrade requires GET over HTTP/1.1")
        } else if !conn_upgrade {
            Some("missing Connection: upgrade")
        } else if !ws_version_ok {
            Some("unsupported Sec-WebSocket-Version (need 13)")
        } else if !key_ok {
            Some("missing or invalid Sec-WebSocket-Key")
        } else {
            None
        };
        if head.bad_upgrade.is_none() {
            head.ws_key = key;
        }
    }
    Parsed::Complete(head, len)
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `101 Switching Protocols` response (no extensions: permessage-deflate is declined).
pub fn switching_protocols(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response with a JSON body.
pub fn json_response(status: u16, body: &serde_json::Value, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    response(status, "application/json; charset=utf-8", &body, keep_alive)
}

/// A complete response.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:18789",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:80",
            "app.localhost:3000",
            "[::1]:18789",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]:1",
            "localhost.",
        ] {
            assert!(super::is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "gw.example.ts.net",
            "10.0.0.2:18789",
            "[::2]:1",
            "localhost.evil.com",
            "evil-localhost",
            "0.0.0.0",
        ] {
            assert!(!super::is_loopback_host(h), "{h}");
        }
    }

    use super::*;

    #[test]
    fn websocket_keys_are_checked_like_ws_does() {
        assert!(ws_key_ok("dGhlIHNhbXBsZSBub25jZQ=="));
        // Non-canonical trailing bits: `ws` (and so the real gateway) accepts it.
        assert!(ws_key_ok("a0aaAAA+/aaaA0A/A/aa+B=="));
        assert!(!ws_key_ok("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!ws_key_ok("dGhlIHNhbXBsZSBub25jZQ-="));
        assert!(!ws_key_ok("dGhlIHNhbXBsZSBub25jZQ==x"));
        assert!(!ws_key_ok("dGhlIHNhbXBsZSBub25jZ-=="));
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_and_flags_forwarding() {
        let req = b"GET /?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        let Parsed::Complete(h, n) = parse_head(req) else {
            panic!("incomplete")
        };
        assert_eq!(n, req.len());
        assert_eq!(h.path, "/");
        assert!(h.forwarded);
        assert_eq!(h.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn bad_upgrade_and_malformed_and_too_large() {
        let req = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let Parsed::Complete(h, _) = parse_head(req) else {
            panic!()
        };
        assert!(h.bad_upgrade.is_some());
        assert!(matches!(
            parse_head(b"GARBAGE\x01\r\n\r\n"),
            Parsed::Malformed
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(matches!(parse_head(&big), Parsed::TooLarge));
    }
}
