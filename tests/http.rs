#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! HTTP/1.1 on the gateway port, against the real binary, on both drivers.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{Gateway, DRIVERS};

#[test]
fn health_ready_404_403_and_keepalive_on_both_drivers() {
    for d in DRIVERS {
        let g = Gateway::start(d);
        for p in ["/health", "/healthz"] {
            let (code, body) = g.http("GET", p, &[]).unwrap();
            assert_eq!(code, 200, "{d} {p}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v, serde_json::json!({"ok": true, "status": "live"}));
        }
        for p in ["/ready", "/readyz"] {
            let (code, body) = g.http("GET", p, &[]).unwrap();
            assert_eq!(code, 200);
            assert!(body.contains("\"ready\":true"), "{body}");
        }
        assert_eq!(g.http("GET", "/nope", &[]).unwrap().0, 404);
        assert_eq!(
            g.http("GET", "/health", &[("X-Forwarded-For", "1.2.3.4")])
                .unwrap()
                .0,
            403
        );
        assert_eq!(
            g.http("GET", "/health", &[("X-Real-IP", "1.2.3.4")])
                .unwrap()
                .0,
            403
        );
        assert_eq!(
            g.http("GET", "/", &[("Forwarded", "for=1.2.3.4")])
                .unwrap()
                .0,
            403
        );

        // Keep-alive: two requests on one socket, pipelined.
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    }
}

#[test]
fn malformed_and_oversized_heads_are_refused() {
    let g = Gateway::start("uring");
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(20 * 1024, b'a');
    let _ = s.write_all(&big);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Still serving.
    assert_eq!(g.http("GET", "/healthz", &[]).unwrap().0, 200);
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_zero() {
    for d in DRIVERS {
        let mut g = Gateway::start(d);
        let mut c = g.connect(&["operator.read"]);
        g.signal("TERM");
        let mut code = None;
        for _ in 0..10 {
            match c.next_json() {
                Err(clawgate::client::ClientError::Closed { code: cc, .. }) => {
                    code = Some(cc);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(code, Some(1001), "{d}");
        let st = g.wait_exit(Duration::from_secs(5)).expect("gateway exited");
        assert!(st.success(), "{d}: {st:?}");
    }
}

#[test]
fn refuses_lan_bind_without_auth_with_exit_78() {
    let home = support::temp_dir("bind");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
        .args([
            "gateway", "run", "--port", "0", "--bind", "lan", "--auth", "none",
        ])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&st.stderr).contains("without auth"));
}

#[test]
fn a_keep_alive_head_dripped_byte_by_byte_is_cut_off() {
    let g = Gateway::start_with(support::Opts {
        extra: vec!["--handshake-timeout-ms".into(), "300".into()],
        ..support::Opts::default()
    });
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A second head on the same keep-alive connection that never completes: one header
    // byte every 50 ms for up to 10 s (each read used to get a fresh 60 s idle timeout).
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut closed = false;
    for _ in 0..200 {
        if s.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a dripping head kept the connection open for 10 s");
}

#[test]
fn a_client_that_never_reads_its_http_responses_is_dropped() {
    // Pipelined requests whose responses are never read: once the socket buffers are full
    // the gateway's write must give up (handshake timeout) instead of pinning the task and
    // the socket forever — seen here as the writer getting an error.
    let g = support::Gateway::start_with(support::Opts {
        extra: vec!["--handshake-timeout-ms".into(), "500".into()],
        ..support::Opts::default()
    });
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(512);
    let mut dropped = false;
    for _ in 0..20_000 {
        if let Err(e) = s.write_all(&req) {
            // Reset / broken pipe: the gateway closed it. A write timeout: it did not.
            dropped = !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            break;
        }
    }
    assert!(dropped, "the gateway kept a non-reading HTTP client");
}

#[test]
fn head_requests_get_no_body() {
    let g = Gateway::start("uring");
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    // Two heads and exactly one body: the keep-alive framing holds.
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(out.matches("\"status\":\"live\"").count(), 1, "{out}");
}
