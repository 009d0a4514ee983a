//! One client WebSocket on monoio: bind-before-connect from a chosen source address, the
//! HTTP upgrade, the protocol `connect` handshake (token or signed device), decoding with
//! the library codec (pings answered with pongs), masked writes and a polite close.
//!
//! Memory per idle connection is kept small: reads go straight into the spare capacity of
//! an accumulation buffer (≥ 2 KiB free per read) that is released again once it drains
//! empty after having grown past 16 KiB.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clawgate::auth::device::{self, SignedFields};
use clawgate::transport::ws::codec::{encode_frame_masked, Decoder, Message, OpCode, Role};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller,
};
use monoio::net::TcpStream;

use crate::frames;
use crate::stats::Rng;

/// Minimum growth of the accumulation buffer before a read.
pub const READ_BUF: usize = 4096;
/// Accumulation buffers larger than this are released when they drain empty.
const KEEP_BUF: usize = 16 * 1024;
/// Decoder limit (the gateway's post-auth cap is 25 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// Why a connection failed; `kind()` is the key used in the error tables.
#[derive(Debug)]
pub enum LoadError {
    /// Creating or binding the socket (e.g. ephemeral ports exhausted, EMFILE).
    Socket(std::io::Error),
    /// I/O error in a phase (`connect`, `upgrade`, `handshake`, `read`, `write`).
    Io(&'static str, std::io::Error),
    /// The upgrade got a non-101 status (503 = pre-auth budget exhausted).
    Http(u16),
    /// The upgrade response was not HTTP.
    BadHttp,
    /// A phase timed out.
    Timeout(&'static str),
    /// The peer sent a close frame.
    Closed(u16),
    /// The peer closed the TCP stream without a close frame.
    Eof,
    /// The codec rejected a frame (close code it maps to, reason).
    Ws(u16, String),
    /// A text frame that is not a protocol frame.
    BadFrame,
    /// `connect` answered `ok:false` (error code / detail code).
    Rpc(String),
}

impl LoadError {
    /// Short stable error kind for reports.
    pub fn kind(&self) -> String {
        fn io_kind(e: &std::io::Error) -> String {
            match e.raw_os_error() {
                Some(libc::ECONNRESET) => "ECONNRESET".into(),
                Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
                Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
                Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
                Some(libc::EMFILE) => "EMFILE".into(),
                Some(libc::ENFILE) => "ENFILE".into(),
                Some(libc::EPIPE) => "EPIPE".into(),
                Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
                Some(n) => format!("errno{n}"),
                None => format!("{:?}", e.kind()),
            }
        }
        match self {
            LoadError::Socket(e) => format!("socket_{}", io_kind(e)),
            LoadError::Io(phase, e) => format!("{phase}_{}", io_kind(e)),
            LoadError::Http(code) => format!("http_{code}"),
            LoadError::BadHttp => "http_malformed".into(),
            LoadError::Timeout(phase) => format!("timeout_{phase}"),
            LoadError::Closed(code) => format!("closed_{code}"),
            LoadError::Eof => "eof".into(),
            LoadError::Ws(code, why) => format!("ws_{code}:{why}"),
            LoadError::BadFrame => "bad_frame".into(),
            LoadError::Rpc(k) => k.clone(),
        }
    }

    /// True when the gateway ended the connection (close frame, EOF or reset).
    pub fn is_peer_close(&self) -> bool {
        match self {
            LoadError::Closed(_) | LoadError::Eof => true,
            LoadError::Io(_, e) => {
                matches!(e.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE))
            }
            _ => false,
        }
    }
}

/// Result alias.
pub type Res<T> = Result<T, LoadError>;

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub hostport: String,
    /// Request path.
    pub path: String,
}

impl Target {
    /// Parse `ws://host:port[/path]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        use std::net::ToSocketAddrs;
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("invalid url {url:?} (expected ws://host:port[/path])"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hostport.is_empty() {
            return Err(format!("invalid url {url:?}"));
        }
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {hostport}"))?;
        Ok(Self {
            addr,
            hostport,
            path: path.to_string(),
        })
    }
}

/// How to open and authenticate one connection.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Shared token (`auth.token`).
    pub token: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Sign a device identity (key, id and public key derived once).
    pub device: Option<DeviceIdentity>,
    /// SO_RCVBUF for this socket (set before connect; `None` = kernel autotuning).
    pub recv_buffer: Option<usize>,
}

/// The client fields of the `connect` frame (those of the bundled blocking client).
const CLIENT_ID: &str = "cli";
const CLIENT_MODE: &str = "cli";
const ROLE: &str = "operator";
const DEVICE_FAMILY: &str = "Linux";

/// An Ed25519 device identity with everything derived from the seed computed once: the
/// signing key (with its public key), the wire public key and the device id. Signing a
/// handshake then costs one Ed25519 signature.
#[derive(Clone)]
pub struct DeviceIdentity {
    key: ed25519_dalek::SigningKey,
    /// `sha256(raw public key)` in hex.
    pub id: String,
    /// Raw public key, unpadded base64url.
    pub public_key: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .finish()
    }
}

impl DeviceIdentity {
    /// Derive from a seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let raw = key.verifying_key().to_bytes();
        Self {
            key,
            id: device::device_id_for(&raw),
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        }
    }

    /// The v3 signature (same bytes as `auth::device::sign_v3` with the seed).
    pub fn sign(&self, token: &str, scopes: &[String], ts: i64, nonce: &str) -> String {
        use ed25519_dalek::Signer as _;
        let fields = SignedFields {
            client_id: CLIENT_ID,
            client_mode: CLIENT_MODE,
            role: ROLE,
            scopes,
            token,
            platform: std::env::consts::OS,
            device_family: DEVICE_FAMILY,
        };
        let payload = device::payload_v3(&self.id, &fields, ts, nonce);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.key.sign(payload.as_bytes()).to_bytes())
    }
}

/// A random-looking v4 UUID from the connection's PRNG (no syscall; an instance id, not a
/// secret).
fn uuid_from(rng: &mut Rng) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    b[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn push_json_str(out: &mut String, v: &str) {
    match serde_json::to_string(v) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// The `connect` request text, written directly (same members and order as building it
/// with `json!`, which sorts keys): `device` = (identity, signature, signedAt, nonce).
pub fn connect_frame(
    token: &str,
    scopes: &[String],
    instance_id: &str,
    device: Option<(&DeviceIdentity, &str, i64, &str)>,
) -> String {
    let mut s = String::with_capacity(512);
    s.push_str(r#"{"id":"1:connect","method":"connect","params":{"auth":{"token":"#);
    push_json_str(&mut s, token);
    s.push_str(r#"},"caps":[],"client":{"deviceFamily":"#);
    push_json_str(&mut s, DEVICE_FAMILY);
    s.push_str(r#","id":"#);
    push_json_str(&mut s, CLIENT_ID);
    s.push_str(r#","instanceId":"#);
    push_json_str(&mut s, instance_id);
    s.push_str(r#","mode":"#);
    push_json_str(&mut s, CLIENT_MODE);
    s.push_str(r#","platform":"#);
    push_json_str(&mut s, std::env::consts::OS);
    s.push_str(r#","version":"#);
    push_json_str(&mut s, env!("CARGO_PKG_VERSION"));
    s.push('}');
    if let Some((d, sig, ts, nonce)) = device {
        s.push_str(r#","device":{"id":"#);
        push_json_str(&mut s, &d.id);
        s.push_str(r#","nonce":"#);
        push_json_str(&mut s, nonce);
        s.push_str(r#","publicKey":"#);
        push_json_str(&mut s, &d.public_key);
        s.push_str(r#","signature":"#);
        push_json_str(&mut s, sig);
        s.push_str(&format!(r#","signedAt":{ts}}}"#));
    }
    s.push_str(r#","maxProtocol":4,"minProtocol":4,"role":"#);
    push_json_str(&mut s, ROLE);
    s.push_str(r#","scopes":["#);
    for (i, sc) in scopes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_json_str(&mut s, sc);
    }
    s.push_str(r#"]},"type":"req"}"#);
    s
}

/// What the handshake learned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hello {
    /// Highest event `seq` seen while waiting for `hello-ok` (0 if none).
    pub seq: u64,
}

/// The read side: codec + accumulation buffer. Reads go straight into the buffer's spare
/// capacity (at least [`READ_BUF`] bytes are made available before each read).
pub struct Reader {
    dec: Decoder,
    buf: Vec<u8>,
}

/// Outcome of decoding what is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Everything buffered was handled; read more.
    More,
    /// A close frame arrived (code; 1005 if none).
    Closed(u16),
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

/// `ECANCELED`, what monoio reports for a cancelled operation.
fn is_cancelled(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

impl Reader {
    /// New reader (client role).
    pub fn new() -> Self {
        Self {
            dec: Decoder::new(Role::Client, MAX_MESSAGE),
            buf: Vec::new(),
        }
    }

    /// Take the accumulation buffer as a view of its spare capacity (≥ READ_BUF / 2 bytes,
    /// grown by READ_BUF when less is left), so the kernel appends to it directly.
    fn take_spare(&mut self) -> SliceMut<Vec<u8>> {
        let mut b = std::mem::take(&mut self.buf);
        if b.capacity() - b.len() < READ_BUF / 2 {
            b.reserve(READ_BUF);
        }
        let (len, cap) = (b.len(), b.capacity());
        b.slice_mut(len..cap)
    }

    fn absorb(&mut self, res: std::io::Result<usize>, s: SliceMut<Vec<u8>>) -> Res<()> {
        // The driver already advanced the length by the bytes read.
        self.buf = s.into_inner();
        match res {
            Ok(0) => Err(LoadError::Eof),
            Ok(_) => Ok(()),
            Err(e) => Err(LoadError::Io("read", e)),
        }
    }

    /// Read once from `io` and append to the buffer (waits as long as it takes).
    pub async fn fill<R: AsyncReadRent>(&mut self, io: &mut R) -> Res<()> {
        let spare = self.take_spare();
        let (res, s) = io.read(spare).await;
        self.absorb(res, s)
    }

    /// Read once with no timer, cancellable through `cancel` (a handle of a [`Canceller`]
    /// shared by many connections): `Ok(false)` = cancelled before anything arrived.
    /// A cancelled io_uring read is awaited to completion by the driver, so no bytes are
    /// lost (a read that completed before the cancel reports its data normally).
    pub async fn fill_cancelable<R: CancelableAsyncReadRent>(
        &mut self,
        io: &mut R,
        cancel: &CancelHandle,
    ) -> Res<bool> {
        let spare = self.take_spare();
        let (res, s) = io.cancelable_read(spare, cancel.clone()).await;
        match res {
            Err(e) if is_cancelled(&e) => {
                self.buf = s.into_inner();
                Ok(false)
            }
            res => self.absorb(res, s).map(|()| true),
        }
    }

    /// Read once, waiting at most `wait`: `Ok(false)` = nothing arrived.
    ///
    /// The read is cancelled through the driver and then awaited to completion, never
    /// dropped: with io_uring a dropped in-flight read can still complete in the kernel and
    /// its bytes would be lost (the stream would then resume mid-frame).
    pub async fn fill_for<R: CancelableAsyncReadRent>(
        &mut self,
        io: &mut R,
        wait: Duration,
    ) -> Res<bool> {
        let spare = self.take_spare();
        let canceller = Canceller::new();
        let read = io.cancelable_read(spare, canceller.handle());
        let mut read = std::pin::pin!(read);
        let (res, s) = match monoio::time::timeout(wait, read.as_mut()).await {
            Ok(r) => r,
            Err(_) => {
                let _ = canceller.cancel();
                let (res, s) = read.await;
                match res {
                    Ok(n) => (Ok(n), s),
                    Err(_) => {
                        // Cancelled (or failed; the next read reports a real error again).
                        self.buf = s.into_inner();
                        return Ok(false);
                    }
                }
            }
        };
        self.absorb(res, s).map(|()| true)
    }

    /// Decode every complete message now buffered: texts go to `on_text`, pings are
    /// answered by appending masked pongs to `pongs`, pongs/binary are ignored.
    pub fn drain(
        &mut self,
        rng: &mut Rng,
        pongs: &mut Vec<u8>,
        on_text: &mut dyn FnMut(&[u8]),
    ) -> Res<Drained> {
        let r = loop {
            self.dec.reclaim(&mut self.buf);
            match self.dec.next(&mut self.buf) {
                Ok(Some(Message::Text(t))) => on_text(t),
                Ok(Some(Message::Ping(p))) => {
                    encode_frame_masked(pongs, OpCode::Pong, p, rng.mask())
                }
                Ok(Some(Message::Close(code, _))) => {
                    break Ok(Drained::Closed(code.unwrap_or(1005)))
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(Drained::More),
                Err(e) => {
                    report_decode_error(&e, &self.buf);
                    break Err(LoadError::Ws(e.close_code(), e.to_string()));
                }
            }
        };
        self.dec.reclaim(&mut self.buf);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
        r
    }

    /// Take the raw buffered bytes up to and including the first `\r\n\r\n` (HTTP head).
    fn take_head(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some(self.buf.drain(..end).collect())
    }
}

static DECODE_ERRORS_SHOWN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Print the first few decode errors of this process with the bytes around them.
fn report_decode_error(e: &clawgate::transport::ws::codec::WsError, buf: &[u8]) {
    if DECODE_ERRORS_SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 3 {
        return;
    }
    let head: Vec<String> = buf.iter().take(48).map(|b| format!("{b:02x}")).collect();
    let text =
        String::from_utf8_lossy(&buf[..buf.len().min(160)]).replace(|c: char| c.is_control(), ".");
    eprintln!(
        "decode error: {e} (buffered {} bytes) head: {} | {text}",
        buf.len(),
        head.join(" ")
    );
}

/// One open connection.
pub struct Conn {
    /// The socket.
    pub io: TcpStream,
    /// Read side.
    pub rd: Reader,
    /// Pending outgoing bytes.
    pub out: Vec<u8>,
    /// Mask source.
    pub rng: Rng,
}

/// Start a non-blocking connect from `src` (port chosen by the kernel) to `dst`.
fn start_connect(
    src: Option<IpAddr>,
    dst: SocketAddr,
    recv_buffer: Option<usize>,
) -> Res<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
        .map_err(LoadError::Socket)?;
    s.set_nonblocking(true).map_err(LoadError::Socket)?;
    s.set_nodelay(true).map_err(LoadError::Socket)?;
    if let Some(n) = recv_buffer {
        s.set_recv_buffer_size(n).map_err(LoadError::Socket)?;
    }
    if let Some(ip) = src {
        s.bind(&SocketAddr::new(ip, 0).into())
            .map_err(LoadError::Socket)?;
    }
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(LoadError::Io("connect", e)),
    }
    Ok(s.into())
}

impl Conn {
    /// TCP connect (bound to `src`) and the HTTP upgrade.
    pub async fn open(
        t: &Target,
        src: Option<IpAddr>,
        recv_buffer: Option<usize>,
        rng: &mut Rng,
    ) -> Res<Conn> {
        let std = start_connect(src, t.addr, recv_buffer)?;
        let io = TcpStream::from_std(std).map_err(LoadError::Socket)?;
        io.writable(true)
            .await
            .map_err(|e| LoadError::Io("connect", e))?;
        let mut c = Conn {
            io,
            rd: Reader::new(),
            out: Vec::with_capacity(256),
            rng: Rng::seeded(rng.next_u64()),
        };
        let key = base64::engine::general_purpose::STANDARD
            .encode(rng.next_u64().to_le_bytes().repeat(2));
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
            t.path, t.hostport
        );
        c.out.extend_from_slice(req.as_bytes());
        c.flush().await.map_err(|e| match e {
            LoadError::Io(_, e) => LoadError::Io("connect", e),
            e => e,
        })?;
        let head = loop {
            if let Some(h) = c.rd.take_head() {
                break h;
            }
            if c.rd.buf.len() > 16 * 1024 {
                return Err(LoadError::BadHttp);
            }
            c.rd.fill(&mut c.io).await.map_err(|e| match e {
                LoadError::Io(_, e) => LoadError::Io("upgrade", e),
                e => e,
            })?;
        };
        let status = head
            .get(9..12)
            .filter(|_| head.starts_with(b"HTTP/1."))
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(LoadError::BadHttp)?;
        if status != 101 {
            return Err(LoadError::Http(status));
        }
        Ok(c)
    }

    /// Write everything queued in `out`.
    pub async fn flush(&mut self) -> Res<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (res, mut b) = self.io.write_all(std::mem::take(&mut self.out)).await;
        b.clear();
        self.out = b;
        res.map(|_| ()).map_err(|e| LoadError::Io("write", e))
    }

    /// Queue a masked text frame.
    pub fn queue_text(&mut self, payload: &[u8]) {
        let mask = self.rng.mask();
        encode_frame_masked(&mut self.out, OpCode::Text, payload, mask);
    }

    /// Decode what is buffered (pongs are queued, not yet written).
    pub fn drain(&mut self, on_text: &mut dyn FnMut(&[u8])) -> Res<Drained> {
        self.rd.drain(&mut self.rng, &mut self.out, on_text)
    }

    /// Read once (waiting at most `wait`), decode everything, write pongs.
    /// `Ok(false)` = nothing arrived in time; `Err(Closed)` on a close frame.
    pub async fn pump_for(&mut self, wait: Duration, on_text: &mut dyn FnMut(&[u8])) -> Res<bool> {
        if !self.rd.fill_for(&mut self.io, wait).await? {
            return Ok(false);
        }
        self.drain_and_answer(on_text).await
    }

    /// Read once (no timer; `cancel` ends the wait), decode everything, write pongs.
    /// `Ok(false)` = cancelled; `Err(Closed)` on a close frame.
    pub async fn pump_cancelable(
        &mut self,
        cancel: &CancelHandle,
        on_text: &mut dyn FnMut(&[u8]),
    ) -> Res<bool> {
        if !self.rd.fill_cancelable(&mut self.io, cancel).await? {
            return Ok(false);
        }
        self.drain_and_answer(on_text).await
    }

    /// After a read: decode everything buffered, write the pongs; `Err(Closed)` on a close.
    async fn drain_and_answer(&mut self, on_text: &mut dyn FnMut(&[u8])) -> Res<bool> {
        let d = self.drain(on_text)?;
        self.flush().await?;
        match d {
            Drained::More => Ok(true),
            Drained::Closed(code) => Err(LoadError::Closed(code)),
        }
    }

    /// The protocol handshake: wait for `connect.challenge`, send `connect` (optionally
    /// with a signed device), wait for `hello-ok`.
    pub async fn handshake(&mut self, auth: &ConnSpec) -> Res<Hello> {
        // 1. Challenge (may already be buffered behind the 101 head).
        let mut challenge: Option<(String, i64)> = None;
        let mut bad = false;
        loop {
            let d = self.drain(&mut |t| match frames::parse(t) {
                Some(f) if f.event.as_deref() == Some("connect.challenge") => {
                    let p = f.payload.as_ref();
                    let nonce = p.and_then(|p| p.nonce.as_deref()).unwrap_or("").to_string();
                    let ts = p.and_then(|p| p.ts).unwrap_or(0);
                    challenge = Some((nonce, ts));
                }
                Some(_) => {}
                None => bad = true,
            })?;
            if let Drained::Closed(code) = d {
                return Err(LoadError::Closed(code));
            }
            if bad {
                return Err(LoadError::BadFrame);
            }
            if challenge.is_some() {
                break;
            }
            self.flush().await?;
            self.rd.fill(&mut self.io).await?;
        }
        let (nonce, ts) = challenge.unwrap_or_default();

        // 2. connect (exactly the blocking client's frame).
        let instance = uuid_from(&mut self.rng);
        let signed = auth.device.as_ref().map(|d| {
            let sig = d.sign(&auth.token, &auth.scopes, ts, &nonce);
            (d, sig)
        });
        let req = connect_frame(
            &auth.token,
            &auth.scopes,
            &instance,
            signed
                .as_ref()
                .map(|(d, sig)| (*d, sig.as_str(), ts, nonce.as_str())),
        );
        self.queue_text(req.as_bytes());
        self.flush().await?;

        // 3. hello-ok: a byte check of the response head (the ~2–10 KiB snapshot is not
        // parsed); failures and other frames take the serde path.
        let mut result: Option<Result<(), String>> = None;
        let mut hello = Hello::default();
        loop {
            let d = self.drain(&mut |t| {
                if frames::fast_connect_ok(t) {
                    result = Some(Ok(()));
                    return;
                }
                match frames::parse(t) {
                    Some(f) if f.ty == "res" && f.id.as_deref() == Some("1:connect") => {
                        if f.ok == Some(true) {
                            result = Some(Ok(()));
                        } else {
                            result = Some(Err(f.error_kind()));
                        }
                    }
                    Some(f) => {
                        if let Some(s) = f.seq {
                            hello.seq = hello.seq.max(s);
                        }
                    }
                    None => bad = true,
                }
            })?;
            match (result.take(), d) {
                (Some(Ok(())), _) => {
                    self.flush().await?;
                    return Ok(hello);
                }
                (Some(Err(k)), _) => return Err(LoadError::Rpc(k)),
                (None, Drained::Closed(code)) => return Err(LoadError::Closed(code)),
                (None, Drained::More) => {}
            }
            if bad {
                return Err(LoadError::BadFrame);
            }
            self.flush().await?;
            self.rd.fill(&mut self.io).await?;
        }
    }

    /// Send close(1000) and wait up to `wait` for the gateway's close frame or EOF.
    /// `Ok(true)` = the gateway answered the close.
    pub async fn close(mut self, wait: Duration) -> Res<bool> {
        let mask = self.rng.mask();
        encode_frame_masked(&mut self.out, OpCode::Close, &1000u16.to_be_bytes(), mask);
        self.flush().await?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.pump_for(left, &mut |_| {}).await {
                Ok(_) => {}
                Err(LoadError::Closed(_)) | Err(LoadError::Eof) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Write half helper for split sockets (the publisher): queue + flush through any writer.
pub async fn write_all_to<W: AsyncWriteRent>(w: &mut W, out: &mut Vec<u8>) -> Res<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, mut b) = w.write_all(std::mem::take(out)).await;
    b.clear();
    *out = b;
    res.map(|_| ()).map_err(|e| LoadError::Io("write", e))
}

/// Connect, upgrade and handshake with an overall timeout; returns the connection, the
/// handshake info and the time from socket creation to `hello-ok`.
pub async fn connect(
    t: &Target,
    src: Option<IpAddr>,
    auth: &ConnSpec,
    timeout: Duration,
    rng: &mut Rng,
) -> Res<(Conn, Hello, Duration)> {
    let start = Instant::now();
    let fut = async {
        let mut c = Conn::open(t, src, auth.recv_buffer, rng).await?;
        let h = c.handshake(auth).await?;
        Ok::<_, LoadError>((c, h))
    };
    match monoio::time::timeout(timeout, fut).await {
        Ok(Ok((c, h))) => Ok((c, h, start.elapsed())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LoadError::Timeout("handshake")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn precomputed_identity_matches_the_library() {
        let seed = [7u8; 32];
        let d = DeviceIdentity::from_seed(&seed);
        assert_eq!(d.public_key, device::public_key_b64url(&seed));
        assert_eq!(d.id, device::device_id_for(&device::public_key_raw(&seed)));
        let scopes = vec!["operator.read".to_string()];
        let fields = SignedFields {
            client_id: CLIENT_ID,
            client_mode: CLIENT_MODE,
            role: ROLE,
            scopes: &scopes,
            token: "tok\"en",
            platform: std::env::consts::OS,
            device_family: DEVICE_FAMILY,
        };
        assert_eq!(
            d.sign("tok\"en", &scopes, 1_700_000_000_000, "n-1"),
            device::sign_v3(&seed, &d.id, &fields, 1_700_000_000_000, "n-1")
        );
    }

    #[test]
    fn connect_frame_matches_the_json_built_one() {
        let d = DeviceIdentity::from_seed(&[9u8; 32]);
        let scopes = vec!["operator.read".to_string(), "operator.admin".to_string()];
        for dev in [false, true] {
            let token = "t\"\\ok\u{1}en";
            let sig = d.sign(token, &scopes, 42, "no\"nce");
            let text = connect_frame(
                token,
                &scopes,
                "inst",
                dev.then_some((&d, sig.as_str(), 42, "no\"nce")),
            );
            let mut params = json!({
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "cli", "version": env!("CARGO_PKG_VERSION"), "platform": std::env::consts::OS,
                           "deviceFamily": "Linux", "mode": "cli", "instanceId": "inst"},
                "caps": [], "auth": {"token": token}, "role": "operator", "scopes": scopes,
            });
            if dev {
                params["device"] = json!({"id": d.id, "publicKey": d.public_key, "signature": sig, "signedAt": 42, "nonce": "no\"nce"});
            }
            let want =
                json!({"type": "req", "id": "1:connect", "method": "connect", "params": params});
            let got: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(got, want);
        }
    }

    #[test]
    fn uuid_shape() {
        let mut rng = Rng::seeded(1);
        let u = uuid_from(&mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(u.matches('-').count(), 4);
    }
}
