//! A small blocking protocol client: `clawgate gateway call|health`, the e2e tests, and
//! scripts. One socket, one thread; plain `ws://` only.
//!
//! Owns: the client side of the handshake (optionally signing a device identity) and
//! request/response matching. Must not touch: gateway internals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::auth::device::{self, SignedFields};
use crate::auth::token::uuid_v4;
use crate::transport::ws::codec::{encode_frame_masked, Decoder, Message, OpCode, Role};

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad URL.
    #[error("invalid url {0:?} (expected ws://host:port[/path])")]
    Url(String),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP upgrade refused.
    #[error("upgrade refused: {0}")]
    Upgrade(String),
    /// WebSocket protocol error.
    #[error("websocket: {0}")]
    Ws(String),
    /// The server closed the socket.
    #[error("closed by gateway ({code}): {reason}")]
    Closed {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The request failed; the error object as sent.
    #[error("{}: {}", .0["code"].as_str().unwrap_or("ERROR"), .0["message"].as_str().unwrap_or(""))]
    Rpc(Value),
    /// Timed out.
    #[error("timed out")]
    Timeout,
}

/// A device identity to sign `connect` with.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    /// Ed25519 seed.
    pub seed: [u8; 32],
}

impl DeviceIdentity {
    /// A random identity.
    pub fn random() -> Self {
        let mut seed = [0u8; 32];
        let _ = getrandom::getrandom(&mut seed);
        Self { seed }
    }

    /// The device id the gateway derives (hex SHA-256 of the raw public key).
    pub fn device_id(&self) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&self.seed);
        crate::auth::device::device_id_for(key.verifying_key().as_bytes())
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Shared token.
    pub token: Option<String>,
    /// Shared password.
    pub password: Option<String>,
    /// Device token from an earlier hello-ok.
    pub device_token: Option<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// `client.id`.
    pub client_id: String,
    /// `client.mode`.
    pub client_mode: String,
    /// Role.
    pub role: String,
    /// Sign with this identity.
    pub device: Option<DeviceIdentity>,
    /// Protocol window.
    pub min_protocol: u32,
    /// Protocol window.
    pub max_protocol: u32,
    /// I/O timeout.
    pub timeout: Duration,
    /// SO_RCVBUF for the socket (tests use a tiny one to play a slow consumer).
    pub recv_buffer: Option<usize>,
    /// Extra headers on the upgrade request (e.g. a proxy's `X-Forwarded-For`).
    pub headers: Vec<(String, String)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: None,
            password: None,
            device_token: None,
            scopes: vec!["operator.read".into()],
            client_id: "cli".into(),
            client_mode: "cli".into(),
            role: "operator".into(),
            device: None,
            min_protocol: 4,
            max_protocol: 4,
            timeout: Duration::from_secs(10),
            recv_buffer: None,
            headers: Vec::new(),
        }
    }
}

/// An open protocol socket.
pub struct Client {
    stream: TcpStream,
    dec: Decoder,
    buf: Vec<u8>,
    next_id: u64,
    /// Events received while waiting for responses.
    pub events: Vec<Value>,
}

fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(ClientError::Url(url.into()));
    }
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

impl Client {
    /// Open the socket and complete the HTTP upgrade (no protocol handshake yet).
    pub fn open(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::open_with(url, timeout, None, &[])
    }

    /// [`Client::open`] with an optional SO_RCVBUF set before connecting.
    pub fn open_with(
        url: &str,
        timeout: Duration,
        recv_buffer: Option<usize>,
        headers: &[(String, String)],
    ) -> Result<Self, ClientError> {
        let (hostport, path) = parse_url(url)?;
        let stream = match recv_buffer {
            None => TcpStream::connect(&hostport)?,
            Some(size) => {
                use std::net::ToSocketAddrs as _;
                let addr = hostport
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| ClientError::Url(url.into()))?;
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                sock.set_recv_buffer_size(size)?;
                sock.connect(&addr.into())?;
                sock.into()
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut key = [0u8; 16];
        let _ = getrandom::getrandom(&mut key);
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut c = Self {
            stream,
            dec: Decoder::new(Role::Client, 64 << 20),
            buf: Vec::with_capacity(4096),
            next_id: 1,
            events: Vec::new(),
        };
        c.stream.write_all(req.as_bytes())?;
        // Read the response head.
        let head_end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            c.fill()?;
        };
        let head = String::from_utf8_lossy(&c.buf[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(ClientError::Upgrade(
                head.lines().next().unwrap_or("").to_string(),
            ));
        }
        c.buf.drain(..head_end);
        Ok(c)
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        let mut tmp = [0u8; 16384];
        let n = match self.stream.read(&mut tmp) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout)
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(ClientError::Closed {
                code: 1006,
                reason: "connection closed without close frame".into(),
            });
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Send a text frame.
    pub fn send_text(&mut self, text: &[u8]) -> Result<(), ClientError> {
        self.send_frame(OpCode::Text, text)
    }

    /// Send any frame (masked).
    pub fn send_frame(&mut self, op: OpCode, payload: &[u8]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let mut mask = [0u8; 4];
        let _ = getrandom::getrandom(&mut mask);
        encode_frame_masked(&mut out, op, payload, mask);
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Send raw bytes (tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Next text message as JSON (answers pings; a close frame becomes `Closed`).
    pub fn next_json(&mut self) -> Result<Value, ClientError> {
        loop {
            self.dec.reclaim(&mut self.buf);
            let step =
                match self.dec.next(&mut self.buf) {
                    Ok(Some(Message::Text(t))) => Some(Ok(serde_json::from_slice::<Value>(t)
                        .map_err(|e| ClientError::Ws(e.to_string())))),
                    Ok(Some(Message::Close(code, reason))) => Some(Err(ClientError::Closed {
                        code: code.unwrap_or(1005),
                        reason: String::from_utf8_lossy(reason).to_string(),
                    })),
                    Ok(Some(Message::Ping(p))) => {
                        let p = p.to_vec();
                        self.send_frame(OpCode::Pong, &p)?;
                        None
                    }
                    Ok(Some(_)) => None,
                    Ok(None) => {
                        self.fill()?;
                        None
                    }
                    Err(e) => Some(Err(ClientError::Ws(e.to_string()))),
                };
            if let Some(r) = step {
                return r?;
            }
        }
    }

    /// Connect and complete the protocol handshake; returns the client and the hello-ok payload.
    pub fn connect(url: &str, o: &ConnectOptions) -> Result<(Self, Value), ClientError> {
        let mut c = Self::open_with(url, o.timeout, o.recv_buffer, &o.headers)?;
        let challenge = c.next_json()?;
        let nonce = challenge["payload"]["nonce"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let ts = challenge["payload"]["ts"].as_i64().unwrap_or(0);
        let mut auth = serde_json::Map::new();
        if let Some(t) = &o.token {
            auth.insert("token".into(), json!(t));
        }
        if let Some(p) = &o.password {
            auth.insert("password".into(), json!(p));
        }
        if let Some(t) = &o.device_token {
            auth.insert("deviceToken".into(), json!(t));
        }
        let mut params = json!({
            "minProtocol": o.min_protocol, "maxProtocol": o.max_protocol,
            "client": {"id": o.client_id, "version": env!("CARGO_PKG_VERSION"), "platform": std::env::consts::OS, "deviceFamily": "Linux", "mode": o.client_mode, "instanceId": uuid_v4()},
            "caps": [], "auth": auth, "role": o.role, "scopes": o.scopes,
        });
        if let Some(d) = &o.device {
            let pk = device::public_key_b64url(&d.seed);
            let raw = device::public_key_raw(&d.seed);
            let id = device::device_id_for(&raw);
            let token = o
                .token
                .as_deref()
                .or(o.device_token.as_deref())
                .unwrap_or("");
            let fields = SignedFields {
                client_id: &o.client_id,
                client_mode: &o.client_mode,
                role: &o.role,
                scopes: &o.scopes,
                token,
                platform: std::env::consts::OS,
                device_family: "Linux",
            };
            let sig = device::sign_v3(&d.seed, &id, &fields, ts, &nonce);
            params["device"] = json!({"id": id, "publicKey": pk, "signature": sig, "signedAt": ts, "nonce": nonce});
        }
        let res = c.call_raw("connect", Some(params))?;
        if res["ok"] == true {
            let hello = res["payload"].clone();
            Ok((c, hello))
        } else {
            Err(ClientError::Rpc(res["error"].clone()))
        }
    }

    /// Send a request and wait for its response frame (events received meanwhile are kept).
    pub fn call_raw(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = format!("{}:{}", self.next_id, uuid_v4());
        self.next_id += 1;
        let mut req = json!({"type": "req", "id": id, "method": method});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_text(req.to_string().as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout);
            }
            let v = self.next_json()?;
            if v["type"] == "res" && v["id"] == id.as_str() {
                return Ok(v);
            }
            self.events.push(v);
        }
    }

    /// Call a method; `Ok(payload)` or `Err(Rpc(error))`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let res = self.call_raw(method, Some(params))?;
        if res["ok"] == true {
            Ok(res["payload"].clone())
        } else {
            Err(ClientError::Rpc(res["error"].clone()))
        }
    }

    /// Send a close frame (1000) and wait briefly for the server's.
    pub fn close(mut self) {
        let _ = self.send_frame(OpCode::Close, &1000u16.to_be_bytes());
        let _ = self.next_json();
    }
}
