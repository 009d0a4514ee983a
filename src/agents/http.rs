//! A minimal HTTP/1.1 client for model APIs, on `monoio::net::TcpStream` (plain) or
//! monoio-rustls over it (HTTPS, rustls 0.23 + ring, Mozilla roots from webpki-roots).
//!
//! One request per connection (`Connection: close`): a chat run makes one call, so pooling
//! would buy nothing. Response bodies are read incrementally (Content-Length, chunked, or
//! until close) so SSE streams can be consumed as they arrive. Every wait — DNS, connect,
//! TLS handshake, writing, the response head, each body read — is bounded by a timeout, and
//! every failure is a [`HttpError`] whose message names the URL.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Size of each socket read.
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong, coarsely (drives the chat `errorKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// The base URL is not a usable `http(s)://` URL.
    InvalidUrl,
    /// DNS failure or TCP connect failure (refused, unreachable).
    Connect,
    /// A wait exceeded its timeout.
    Timeout,
    /// TLS setup or handshake failure.
    Tls,
    /// Read/write failure after connecting, or an unexpected close.
    Io,
    /// The peer did not speak HTTP/1.1 as expected.
    Protocol,
}

/// A client-side failure (never an HTTP status: those come back as a [`Response`]).
#[derive(Debug, Clone)]
pub struct HttpError {
    /// Coarse kind.
    pub kind: HttpErrorKind,
    /// Human-readable message naming the URL.
    pub message: String,
}

impl HttpError {
    fn new(kind: HttpErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A parsed `http://` or `https://` URL (no user-info; fragment dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https`?
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// Path without a trailing `/` (may be empty).
    pub path: String,
    /// Query string without `?` (may be empty).
    pub query: String,
}

impl Url {
    /// Parse a base URL such as `https://api.openai.com/v1` or `http://[::1]:11434/v1/`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (false, r)
        } else {
            return Err(format!("\"{s}\" is not an http:// or https:// URL"));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (rest, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q.to_string()),
            None => (rest, String::new()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("\"{s}\": credentials in the URL are not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("\"{s}\": unterminated [IPv6] host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, s)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("\"{s}\": junk after [IPv6] host")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("\"{s}\" has no host"));
        }
        Ok(Self {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
            query,
        })
    }

    /// This URL with `suffix` (starting with `/`) appended to the path.
    pub fn join(&self, suffix: &str) -> Self {
        let mut u = self.clone();
        u.path.push_str(suffix);
        u
    }

    /// The request target: path (at least `/`) plus `?query`.
    pub fn target(&self) -> String {
        let mut t = if self.path.is_empty() {
            "/".to_string()
        } else {
            self.path.clone()
        };
        if !self.query.is_empty() {
            t.push('?');
            t.push_str(&self.query);
        }
        t
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// For messages and logs: the query is elided (some setups carry keys in it, `?key=…`).
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        let query = if self.query.is_empty() { "" } else { "?…" };
        write!(f, "{scheme}://{}{path}{query}", self.host_header())
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_port(p: &str, url: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("\"{url}\": bad port \"{p}\""))
}

/// One request.
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// Full URL.
    pub url: &'a Url,
    /// Extra headers (`Host`, `Content-Length`, `Connection` are added).
    pub headers: &'a [(String, String)],
    /// Body bytes (may be empty).
    pub body: Vec<u8>,
    /// TLS client configuration for `https://`; `None` = the built-in one (ring, Mozilla
    /// roots). Tests and private-CA deployments pass their own.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Conn {
    async fn read(&mut self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let (r, _) = match self {
            Conn::Plain(s) => s.write_all(buf).await,
            Conn::Tls(s) => s.write_all(buf).await,
        };
        r.map(|_| ())
    }
}

/// How the body is delimited.
enum BodyMode {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Empty,
}

/// A response whose head has been read; the body is pulled with [`Response::chunk`].
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    url: String,
    conn: Conn,
    /// Raw bytes read past what has been decoded.
    pending: Vec<u8>,
    mode: BodyMode,
    eof: bool,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// First header value named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The URL this response came from (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Next piece of decoded body, `None` at the end. Waits at most `idle` for data.
    pub async fn chunk(&mut self, idle: Duration) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            // Decode what is already buffered first.
            match &mut self.mode {
                BodyMode::Empty | BodyMode::Length(0) => return Ok(None),
                BodyMode::Length(left) => {
                    if !self.pending.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(self.pending.len());
                        *left -= n as u64;
                        let rest = self.pending.split_off(n);
                        return Ok(Some(std::mem::replace(&mut self.pending, rest)));
                    }
                }
                BodyMode::Chunked(dec) => {
                    let out = dec.feed(&std::mem::take(&mut self.pending)).map_err(|e| {
                        HttpError::new(
                            HttpErrorKind::Protocol,
                            format!("bad chunked body from {}: {e}", self.url),
                        )
                    })?;
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
                    if dec.is_done() {
                        return Ok(None);
                    }
                }
                BodyMode::UntilClose => {
                    if !self.pending.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.pending)));
                    }
                    if self.eof {
                        return Ok(None);
                    }
                }
            }
            if self.eof {
                return Err(HttpError::new(
                    HttpErrorKind::Io,
                    format!(
                        "{} closed the connection in the middle of the body",
                        self.url
                    ),
                ));
            }
            self.fill(idle).await?;
        }
    }

    /// The whole (remaining) body, at most `max` bytes (the rest is discarded), each read
    /// waiting at most `idle`.
    pub async fn read_all(&mut self, idle: Duration, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        while let Some(c) = self.chunk(idle).await? {
            let room = max.saturating_sub(body.len());
            body.extend_from_slice(&c[..c.len().min(room)]);
            if room == 0 {
                break;
            }
        }
        Ok(body)
    }

    async fn fill(&mut self, idle: Duration) -> Result<(), HttpError> {
        let buf = Vec::with_capacity(READ_CHUNK);
        let (res, buf) = match monoio::time::timeout(idle, self.conn.read(buf)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    format!("{} sent nothing for {}", self.url, fmt_dur(idle)),
                ))
            }
        };
        match res {
            Ok(0) => self.eof = true,
            Ok(_) => self.pending.extend_from_slice(&buf),
            // A TLS peer that closes without close_notify: an EOF like any other here.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.eof = true,
            Err(e) => {
                return Err(HttpError::new(
                    HttpErrorKind::Io,
                    format!("reading from {} failed: {e}", self.url),
                ))
            }
        }
        Ok(())
    }
}

/// A point in time `d` from now; saturates instead of overflowing for huge `d`.
#[derive(Clone, Copy)]
struct Deadline(Option<Instant>, Duration);

impl Deadline {
    fn after(d: Duration) -> Self {
        Self(Instant::now().checked_add(d), d)
    }

    /// Time left (the full duration when the deadline is unrepresentable).
    fn left(self) -> Duration {
        self.0
            .map_or(self.1, |t| t.saturating_duration_since(Instant::now()))
    }
}

/// Human form of a duration for messages (`30s`, `250ms`).
pub fn fmt_dur(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Send `req` and read the response head. Connect (incl. DNS and TLS) and writing are each
/// bounded by `timeout`, and so is the wait for the response head after the request is sent.
pub async fn send(req: Request<'_>, timeout: Duration) -> Result<Response, HttpError> {
    let url_s = req.url.to_string();
    let mut conn = connect(req.url, req.tls.clone(), timeout, &url_s).await?;

    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        req.method,
        req.url.target(),
        req.url.host_header()
    );
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    if !has("user-agent") {
        head.push_str(concat!(
            "User-Agent: clawgate/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
    }
    if !has("accept") {
        head.push_str("Accept: */*\r\n");
    }
    for (k, v) in req.headers {
        // Header injection guard: configured values must not smuggle extra lines.
        if k.bytes().any(|b| b == b'\r' || b == b'\n' || b == b':')
            || v.bytes().any(|b| b == b'\r' || b == b'\n')
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() || req.method.eq_ignore_ascii_case("POST") {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&req.body);
    match monoio::time::timeout(timeout, conn.write_all(bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(HttpError::new(
                HttpErrorKind::Io,
                format!("sending the request to {url_s} failed: {e}"),
            ))
        }
        Err(_) => {
            return Err(HttpError::new(
                HttpErrorKind::Timeout,
                format!(
                    "sending the request to {url_s} took longer than {}",
                    fmt_dur(timeout)
                ),
            ))
        }
    }

    let deadline = Deadline::after(timeout);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Parse what we have.
        if !buf.is_empty() {
            let mut hdrs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hdrs);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) && status != 101 {
                        // Interim response (100 Continue, 103 Early Hints): skip it.
                        buf.drain(..n);
                        continue;
                    }
                    let reason = resp.reason.unwrap_or_default().to_string();
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect();
                    let mode = body_mode(req.method, status, &headers, &url_s)?;
                    return Ok(Response {
                        status,
                        reason,
                        headers,
                        url: url_s,
                        conn,
                        pending: buf.split_off(n),
                        mode,
                        eof: false,
                    });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(HttpError::new(
                        HttpErrorKind::Protocol,
                        format!("{url_s} sent an invalid HTTP response head: {e}"),
                    ))
                }
            }
            if buf.len() > MAX_HEAD {
                return Err(HttpError::new(
                    HttpErrorKind::Protocol,
                    format!("{url_s} sent a response head larger than {MAX_HEAD} bytes"),
                ));
            }
        }
        let left = deadline.left();
        let rd = Vec::with_capacity(READ_CHUNK);
        let (res, rd) = match monoio::time::timeout(left, conn.read(rd)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    format!("no response from {url_s} within {}", fmt_dur(timeout)),
                ))
            }
        };
        match res {
            Ok(0) => {
                return Err(HttpError::new(
                    HttpErrorKind::Io,
                    format!("{url_s} closed the connection without a response"),
                ))
            }
            Ok(_) => buf.extend_from_slice(&rd),
            Err(e) => {
                return Err(HttpError::new(
                    HttpErrorKind::Io,
                    format!("reading the response from {url_s} failed: {e}"),
                ))
            }
        }
    }
}

fn body_mode(
    method: &str,
    status: u16,
    headers: &[(String, String)],
    url: &str,
) -> Result<BodyMode, HttpError> {
    if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        return Ok(BodyMode::Empty);
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if let Some(te) = get("transfer-encoding") {
        if te
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        {
            return Ok(BodyMode::Chunked(ChunkedDecoder::default()));
        }
        return Ok(BodyMode::UntilClose);
    }
    if let Some(cl) = get("content-length") {
        return cl.trim().parse::<u64>().map(BodyMode::Length).map_err(|_| {
            HttpError::new(
                HttpErrorKind::Protocol,
                format!("{url} sent a bad Content-Length \"{cl}\""),
            )
        });
    }
    Ok(BodyMode::UntilClose)
}

async fn connect(
    url: &Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    url_s: &str,
) -> Result<Conn, HttpError> {
    let deadline = Deadline::after(timeout);
    let timed_out = || {
        HttpError::new(
            HttpErrorKind::Timeout,
            format!(
                "cannot connect to {url_s}: no connection within {}",
                fmt_dur(timeout)
            ),
        )
    };
    let addrs = match monoio::time::timeout(timeout, resolve(&url.host, url.port)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return Err(HttpError::new(
                HttpErrorKind::Connect,
                format!(
                    "cannot connect to {url_s}: cannot resolve {}: {e}",
                    url.host
                ),
            ))
        }
        Err(_) => return Err(timed_out()),
    };
    let mut last_err = None;
    let mut tcp = None;
    let count = addrs.len();
    for (i, addr) in addrs.into_iter().enumerate() {
        // Each address gets an equal share of what is left (the last one all of it), so an
        // address that silently drops packets cannot starve the others.
        let share = deadline.left() / u32::try_from(count - i).unwrap_or(1).max(1);
        match monoio::time::timeout(share, TcpStream::connect_addr(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = Some(e),
            Err(_) if i + 1 == count => return Err(timed_out()),
            Err(_) => {
                last_err = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr} did not answer"),
                ));
            }
        }
    }
    let tcp = match tcp {
        Some(t) => t,
        None => {
            let why = last_err.map_or_else(|| "no address".to_string(), |e| e.to_string());
            return Err(HttpError::new(
                HttpErrorKind::Connect,
                format!("cannot connect to {url_s}: {why}"),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(Conn::Plain(tcp));
    }
    let tls_err = |why: String| {
        HttpError::new(
            HttpErrorKind::Tls,
            format!("TLS handshake with {url_s} failed: {why}"),
        )
    };
    let config = match tls {
        Some(c) => c,
        None => tls_config().map_err(tls_err)?,
    };
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| tls_err(format!("bad server name \"{}\": {e}", url.host)))?;
    let connector = monoio_rustls::TlsConnector::from(config);
    let left = deadline.left();
    match monoio::time::timeout(left, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Conn::Tls(Box::new(s))),
        Ok(Err(monoio_rustls::TlsError::Io(e))) => Err(tls_err(e.to_string())),
        Ok(Err(monoio_rustls::TlsError::Rustls(e))) => Err(tls_err(e.to_string())),
        Err(_) => Err(timed_out()),
    }
}

/// The process-wide TLS client configuration (ring provider, Mozilla roots).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
}

/// Resolve `host:port`. IP literals resolve in place; names are looked up on a short-lived
/// helper thread so a slow resolver never blocks this core's event loop.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    struct Slot {
        waker: atomic_waker::AtomicWaker,
        result: OnceLock<Result<Vec<SocketAddr>, String>>,
    }
    let slot = Arc::new(Slot {
        waker: atomic_waker::AtomicWaker::new(),
        result: OnceLock::new(),
    });
    // Budget: a dead resolver must not pile up blocked threads (an aborted or timed-out
    // lookup's thread lives until getaddrinfo gives up).
    static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const MAX_LOOKUPS: usize = 16;
    use std::sync::atomic::Ordering;
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(format!(
            "{MAX_LOOKUPS} DNS lookups already in flight (resolver not answering?)"
        ));
    }
    let theirs = slot.clone();
    let name = host.to_string();
    let spawned = std::thread::Builder::new()
        .name("clawgate-dns".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            let _ = theirs.result.set(r);
            theirs.waker.wake();
        });
    if let Err(e) = spawned {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(format!("cannot start a resolver thread: {e}"));
    }
    let addrs = std::future::poll_fn(|cx| {
        slot.waker.register(cx.waker());
        match slot.result.get() {
            Some(r) => Poll::Ready(r.clone()),
            None => Poll::Pending,
        }
    })
    .await?;
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

/// Incremental `Transfer-Encoding: chunked` decoder (pure).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Partial size/trailer line.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl ChunkedDecoder {
    /// Feed raw bytes; returns the decoded payload bytes they contained.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(i) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 4096 {
                            return Err("chunk header line too long".into());
                        }
                        break;
                    };
                    self.line.extend_from_slice(&input[..i]);
                    input = &input[i + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.state = match self.state {
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => return Err("missing CRLF after chunk data".into()),
                        ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailer => ChunkState::Trailer,
                        _ => {
                            let text = String::from_utf8_lossy(&line);
                            let hex = text.split(';').next().unwrap_or_default().trim();
                            let size = Some(hex)
                                .filter(|h| {
                                    !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())
                                })
                                .and_then(|h| u64::from_str_radix(h, 16).ok())
                                .ok_or_else(|| format!("bad chunk size \"{hex}\""))?;
                            if size == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(size)
                            }
                        }
                    };
                }
            }
        }
        Ok(out)
    }

    /// The terminating zero chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let u = Url::parse("https://api.openai.com/v1/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("api.openai.com", 443, "/v1")
        );
        assert_eq!(u.join("/chat/completions").target(), "/v1/chat/completions");
        assert_eq!(u.host_header(), "api.openai.com");
        assert_eq!(u.to_string(), "https://api.openai.com/v1");

        let u = Url::parse("http://127.0.0.1:11434/v1").unwrap();
        assert_eq!(
            (u.port, u.host_header().as_str()),
            (11434, "127.0.0.1:11434")
        );

        let u = Url::parse("HTTP://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target().as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(u.host_header(), "[::1]:8080");

        let u = Url::parse("https://x.openai.azure.com/openai?api-version=2024-06-01").unwrap();
        assert_eq!(
            u.join("/chat/completions").target(),
            "/openai/chat/completions?api-version=2024-06-01"
        );
        // Messages never show the query (it may carry a key).
        let k = Url::parse("https://gw.example/v1?key=sk-secret").unwrap();
        assert_eq!(k.to_string(), "https://gw.example/v1?…");
        assert!(
            k.target().contains("key=sk-secret"),
            "the request still sends it"
        );

        for bad in [
            "ftp://x",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://u:p@h",
            "x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_decoding_any_split() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for a in 0..raw.len() {
            for b in a..raw.len() {
                let mut d = ChunkedDecoder::default();
                let mut out = d.feed(&raw[..a]).unwrap();
                out.extend(d.feed(&raw[a..b]).unwrap());
                out.extend(d.feed(&raw[b..]).unwrap());
                assert_eq!(out, b"hello, world", "split {a}/{b}");
                assert!(d.is_done());
            }
        }
    }

    #[test]
    fn chunked_accepts_bare_lf_and_rejects_junk() {
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.feed(b"3\nabc\n0\n\n").unwrap(), b"abc");
        assert!(d.is_done());
        assert!(ChunkedDecoder::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedDecoder::default().feed(b"+5\r\nabcde\r\n").is_err());
        assert!(ChunkedDecoder::default().feed(b"\r\n").is_err());
        assert!(ChunkedDecoder::default().feed(b"3\r\nabcX\r\n").is_err());
    }
}
