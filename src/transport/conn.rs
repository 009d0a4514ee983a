//! One accepted TCP connection, from the first byte to close: HTTP/1.1 requests (keep-alive),
//! then possibly a WebSocket session driven by the zero-copy codec.
//!
//! Owns: the socket, the read buffer, the decoder, the writer task. Hands complete text
//! messages to [`crate::methods::Session`] and never interprets them itself. Must not touch:
//! auth decisions or other connections.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut as _;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use serde_json::json;

use super::http::{self, Parsed};
use super::outbox::Outbox;
use super::ws::codec::{Decoder, Message, OpCode, Role};
use crate::methods::{Session, Verdict};
use crate::runtime::core::Core;

/// Read buffer size of an idle connection; the pending read of an idle socket pins it.
pub const IDLE_READ_BUF: usize = 256;
/// Read buffer size before `hello-ok`: a whole upgrade request or `connect` frame (the real
/// CLI's is ~600 B, a signed one ~1 KB) arrives in one read instead of three or four. Only
/// handshaking sockets pay it; the buffer shrinks to [`IDLE_READ_BUF`] once authenticated.
const HANDSHAKE_READ_BUF: usize = 2048;
/// Largest write buffer kept between batches.
const SPARE_WRITE_BUF: usize = 1024;
/// Largest single read.
const MAX_READ_CHUNK: usize = 256 * 1024;
/// Frame limit before `hello-ok`.
pub const MAX_PREAUTH_PAYLOAD: usize = 64 * 1024;
/// Frame limit after `hello-ok` (`policy.maxPayload`).
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;
/// Idle time allowed between keep-alive HTTP requests.
const HTTP_IDLE: Duration = Duration::from_secs(60);
/// How long to wait for the peer's close frame after sending ours.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serve one accepted connection.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream, peer: SocketAddr) {
    // `::ffff:127.0.0.1` on a dual-stack listener is loopback, keyed like 127.0.0.1.
    let peer = SocketAddr::new(super::proxy::canonical(peer.ip()), peer.port());
    let mut buf: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ_BUF);
    let handshake_timeout = Duration::from_millis(core.shared.opts.handshake_timeout_ms);
    let first_deadline = Instant::now() + handshake_timeout;
    // A response the peer does not read cannot pin this task (and its socket) for long.
    let write_limit = handshake_timeout;
    let mut first = true;
    loop {
        // Read one request head. Between keep-alive requests the socket may idle for
        // HTTP_IDLE, but once a head has started it must complete within the handshake
        // timeout: a peer dripping header bytes cannot hold the connection forever.
        let mut head_deadline: Option<Instant> = None;
        // Bytes already known not to end a head: a head dripped byte by byte is parsed once
        // its blank line arrives, not once per read.
        let mut scanned = 0usize;
        let (head, head_len) = loop {
            let from = scanned.saturating_sub(3);
            let may_end = buf.len() >= http::MAX_HEAD_BYTES
                || buf.get(from..).is_some_and(|b| {
                    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
                });
            scanned = buf.len();
            let parsed = if may_end {
                http::parse_head(&buf)
            } else {
                Parsed::Partial
            };
            match parsed {
                Parsed::Complete(h, n) => break (h, n),
                Parsed::Partial => {}
                Parsed::Malformed => {
                    let _ = write_http(
                        &mut stream,
                        http::json_response(400, &json!({"error":"bad request"}), false),
                        write_limit,
                    )
                    .await;
                    return;
                }
                Parsed::TooLarge => {
                    let _ = write_http(
                        &mut stream,
                        http::json_response(
                            431,
                            &json!({"error":"request header fields too large"}),
                            false,
                        ),
                        write_limit,
                    )
                    .await;
                    return;
                }
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buf.capacity().max(1024));
            }
            if head_deadline.is_none() && !buf.is_empty() {
                head_deadline = Some(
                    Instant::now() + Duration::from_millis(core.shared.opts.handshake_timeout_ms),
                );
            }
            let wait = match (first, head_deadline) {
                (true, _) => first_deadline.saturating_duration_since(Instant::now()),
                (false, Some(d)) => d.saturating_duration_since(Instant::now()),
                (false, None) => HTTP_IDLE,
            };
            let len = buf.len();
            let cap = buf.capacity();
            let read = monoio::time::timeout(wait, stream.read(buf.slice_mut(len..cap))).await;
            let Ok((res, slice)) = read else { return };
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        // An upgrade gets the handshake timeout from its own head (a keep-alive connection
        // may have served other requests first), the first request's from the accept.
        let ws_deadline = if first {
            first_deadline
        } else {
            Instant::now() + handshake_timeout
        };
        first = false;
        let trusted = &core.shared.trusted_proxies;
        if head.forwarded && !trusted.contains(peer.ip()) {
            // The real gateway refuses forwarded requests from untrusted proxies.
            let _ = write_http(
                &mut stream,
                http::json_response(
                    403,
                    &json!({"error":"forwarded headers from an untrusted proxy"}),
                    false,
                ),
                write_limit,
            )
            .await;
            return;
        }
        if let Some(reason) = head.bad_upgrade {
            let _ = write_http(
                &mut stream,
                http::json_response(400, &json!({"error": reason}), false),
                write_limit,
            )
            .await;
            return;
        }
        if let Some(key) = head.ws_key.clone() {
            buf.drain(..head_len);
            let echo = core.shared.opts.ws_echo && head.path == "/__echo";
            // Behind a trusted proxy the client is the forwarded address: it gets its own
            // pre-auth budget and is what presence shows.
            let client = head
                .forwarded_for
                .as_deref()
                .and_then(|xff| trusted.client_ip(xff))
                .map_or(peer, |ip| SocketAddr::new(ip, peer.port()));
            if !echo && !core.preauth_acquire(client.ip()) {
                let _ = write_http(
                    &mut stream,
                    http::json_response(
                        503,
                        &json!({"error":"too many unauthenticated connections"}),
                        false,
                    ),
                    write_limit,
                )
                .await;
                return;
            }
            // Not written here: the 101 head is queued in front of `connect.challenge` so both
            // leave in one write (one loopback send fewer per handshake).
            let upgrade = http::switching_protocols(&key);
            // `direct_local` (§4.1): loopback peer, loopback Host (a same-host proxy that
            // keeps the public Host, stunnel, `ssh -R` … is remote), no forwarding headers (a
            // trusted proxy such as `tailscale serve` makes it remote), and no browser origin
            // other than loopback.
            let loopback_origin = head
                .origin
                .as_deref()
                .is_none_or(|o| http::is_loopback_host(http::authority_of(o)));
            let loopback_host = head.host.as_deref().is_some_and(http::is_loopback_host);
            let local =
                peer.ip().is_loopback() && !head.proxied && loopback_origin && loopback_host;
            // The head's strings must not live as long as the WebSocket does.
            drop(head);
            // A task of its own: the HTTP phase's state is freed instead of riding along for
            // the WebSocket's lifetime (idle-connection memory).
            let wsf = ws_session(core, stream, client, buf, upgrade, echo, local, ws_deadline);
            monoio::spawn(wsf);
            return;
        }
        // Plain HTTP request.
        if head.chunked || head.content_length > 64 * 1024 {
            let _ = write_http(
                &mut stream,
                http::json_response(413, &json!({"error":"request body not accepted"}), false),
                write_limit,
            )
            .await;
            return;
        }
        let keep_alive = !head.close;
        let mut resp = route(&core, &head.method, &head.path, keep_alive);
        if head.method == "HEAD" {
            // Same head, no body (Content-Length stays: it is what GET would send).
            if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                resp.truncate(end + 4);
            }
        }
        // Discard the body (no route takes one), reading more if it is not all here yet.
        let total = head_len + head.content_length;
        // The whole body within one handshake timeout, however slowly it drips.
        let body_deadline = Instant::now() + handshake_timeout;
        while buf.len() < total {
            buf.reserve(total - buf.len());
            let len = buf.len();
            let cap = buf.capacity();
            let wait = body_deadline.saturating_duration_since(Instant::now());
            let Ok((res, slice)) =
                monoio::time::timeout(wait, stream.read(buf.slice_mut(len..cap))).await
            else {
                return;
            };
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
        buf.drain(..total);
        if !write_http(&mut stream, resp, write_limit).await || !keep_alive {
            return;
        }
        if buf.is_empty() && buf.capacity() > 4 * IDLE_READ_BUF {
            buf = Vec::with_capacity(IDLE_READ_BUF);
        }
    }
}

/// Write a plain-HTTP response within `limit`; false when it did not all go out.
async fn write_http(stream: &mut TcpStream, bytes: Vec<u8>, limit: Duration) -> bool {
    matches!(
        monoio::time::timeout(limit, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

fn route(core: &Core, method: &str, path: &str, keep_alive: bool) -> Vec<u8> {
    match path {
        "/health" | "/healthz" => {
            if method != "GET" && method != "HEAD" {
                return http::json_response(
                    405,
                    &json!({"error":"method not allowed"}),
                    keep_alive,
                );
            }
            http::json_response(200, &json!({"ok": true, "status": "live"}), keep_alive)
        }
        "/ready" | "/readyz" => {
            if method != "GET" && method != "HEAD" {
                return http::json_response(
                    405,
                    &json!({"error":"method not allowed"}),
                    keep_alive,
                );
            }
            let ready = core.shared.ready();
            let accepting = core
                .shared
                .accepting
                .load(std::sync::atomic::Ordering::Acquire);
            let failing: Vec<String> = if ready {
                vec![]
            } else {
                vec![format!(
                    "workers accepting {}/{}",
                    accepting, core.shared.opts.workers
                )]
            };
            let body =
                json!({"ready": ready, "failing": failing, "uptimeMs": core.shared.uptime_ms()});
            http::json_response(if ready { 200 } else { 503 }, &body, keep_alive)
        }
        _ => http::json_response(404, &json!({"error":"not found"}), keep_alive),
    }
}

async fn writer_task(mut wr: OwnedWriteHalf<TcpStream>, ob: Rc<Outbox>) {
    let mut spare = Vec::new();
    while let Some((batch, last)) = ob.next_batch(spare).await {
        // A peer that stops reading must not pin this task and socket forever.
        let (res, mut b) = monoio::select! {
            r = wr.write_all(batch) => r,
            _ = ob.killed() => return,
        };
        if res.is_err() {
            ob.kill();
            return;
        }
        ob.write_done();
        if last {
            // Returning drops `wr`, and dropping an owned write half shuts the socket down
            // (SHUT_WR, the FIN) synchronously; an explicit `shutdown` here was a second,
            // redundant syscall per connection.
            return;
        }
        b.clear();
        // An idle socket must not pin a big buffer: keep only a small spare (hello-ok alone
        // is ~4 KB, which would otherwise stay allocated for the connection's lifetime).
        if b.capacity() > SPARE_WRITE_BUF {
            b = Vec::new();
        }
        spare = b;
    }
}

#[allow(clippy::too_many_arguments)]
async fn ws_session(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    mut buf: Vec<u8>,
    upgrade: Vec<u8>,
    echo: bool,
    local: bool,
    deadline: Instant,
) {
    let budget = if echo {
        core.shared.opts.budget
    } else {
        core.shared.opts.budget.pre_auth()
    };
    let outbox = Rc::new(Outbox::new(budget));
    outbox.push_raw(&upgrade);
    drop(upgrade);
    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(writer_task(wr, outbox.clone()));
    let (conn_id, last_seen, _ping) = core.add_conn(outbox.clone());
    let mut dec = Decoder::new(
        Role::Server,
        if echo {
            MAX_PAYLOAD
        } else {
            MAX_PREAUTH_PAYLOAD
        },
    );
    let mut session = Session::new(core.clone(), conn_id, peer, local, outbox.clone());
    let mut preauth = !echo;
    if !echo {
        session.send_challenge();
    }
    let mut close_sent_at: Option<Instant> = None;
    'conn: loop {
        // A close queued by someone else (the ticker's keepalive, a slow-consumer close)
        // counts as ours: nothing more is processed and the peer gets CLOSE_GRACE to answer.
        if close_sent_at.is_none() && outbox.is_closed() {
            close_sent_at = Some(Instant::now());
        }
        loop {
            let msg = match dec.next(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    outbox.close(e.close_code(), &e.to_string());
                    break 'conn;
                }
            };
            // After a fatal error the close is queued: frames the peer pipelined behind the
            // failing one (more `connect` attempts, requests) are not processed.
            if close_sent_at.is_some() && !matches!(msg, Message::Close(..)) {
                continue;
            }
            match msg {
                Message::Text(t) if echo => {
                    outbox.push_frame(OpCode::Text, t);
                }
                Message::Binary(b) if echo => {
                    outbox.push_frame(OpCode::Binary, b);
                }
                // Boxed: the handler futures (connect, chat routing) are large and would
                // otherwise be part of every idle connection's task allocation.
                Message::Text(t) => match Box::pin(session.on_text(t)).await {
                    Verdict::Continue => {}
                    Verdict::Authenticated => {
                        preauth = false;
                        core.preauth_release(peer.ip());
                        dec.set_max_message(MAX_PAYLOAD);
                    }
                    Verdict::Close(code, reason) => {
                        outbox.close(code, &reason);
                        close_sent_at = Some(Instant::now());
                    }
                },
                Message::Binary(_) => {
                    outbox.close(1003, "binary frames are not supported");
                    close_sent_at = Some(Instant::now());
                }
                Message::Ping(p) => {
                    outbox.push_frame(OpCode::Pong, p);
                }
                Message::Pong(_) => {}
                Message::Close(code, _) => {
                    // Echo the peer's code (1000 when it sent none), then close the TCP side.
                    let reply = match code {
                        Some(c) if c != 1005 => c,
                        _ => 1000,
                    };
                    outbox.close(reply, "");
                    break 'conn;
                }
            }
            if outbox.is_dead() {
                break 'conn;
            }
        }
        dec.reclaim(&mut buf);
        if outbox.is_dead() {
            break;
        }
        // Size the next read: small when idle, up to what the current frame still needs.
        let idle_buf = if preauth {
            HANDSHAKE_READ_BUF
        } else {
            IDLE_READ_BUF
        };
        let want = dec.wanted().clamp(idle_buf, MAX_READ_CHUNK);
        if buf.is_empty() && buf.capacity() > idle_buf && dec.wanted() == 0 {
            buf = Vec::with_capacity(idle_buf);
        }
        if buf.capacity() - buf.len() < want.min(idle_buf)
            || (dec.wanted() > 0 && buf.capacity() - buf.len() < want)
        {
            buf.reserve(want);
        }
        let timeout = if let Some(at) = close_sent_at {
            Some(CLOSE_GRACE.saturating_sub(at.elapsed()))
        } else if preauth {
            Some(deadline.saturating_duration_since(Instant::now()))
        } else {
            None
        };
        let Some(handle) = outbox.cancel_handle() else {
            break;
        };
        let len = buf.len();
        let cap = buf.capacity();
        let read = rd.cancelable_read(buf.slice_mut(len..cap), handle);
        let (res, slice) = match timeout {
            Some(t) => match monoio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => {
                    if close_sent_at.is_none() && preauth {
                        outbox.close(1008, "handshake timeout");
                    }
                    break;
                }
            },
            None => read.await,
        };
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => {
                break;
            }
            Ok(_) => last_seen.set(core.shared.uptime_ms()),
        }
    }
    if preauth {
        core.preauth_release(peer.ip());
    }
    session.on_closed();
    core.remove_conn(conn_id);
    if !outbox.is_closed() {
        outbox.kill();
    }
    // Let the writer flush the close frame (bounded: a stuck peer gets cut off).
    if monoio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        outbox.kill();
    }
}
