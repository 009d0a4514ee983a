//! Cheap typed parsing of the gateway frames the load generator looks at. Unknown fields
//! are skipped without building a `Value`; a frame that does not fit is reported as `None`
//! (counted by the caller), never a panic.

use std::borrow::Cow;

use serde::Deserialize;

/// The publisher's presence `instanceId`.
pub const PUBLISHER_INSTANCE: &str = "load-publisher";

/// Interesting top-level fields of any frame.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// `req` / `res` / `event`.
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    /// Event name.
    #[serde(default, borrow)]
    pub event: Option<Cow<'a, str>>,
    /// Response id.
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    /// Response status.
    #[serde(default)]
    pub ok: Option<bool>,
    /// Per-connection event counter.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Payload (only the fields used here).
    #[serde(default, borrow)]
    pub payload: Option<Payload<'a>>,
    /// Error shape of a failed response.
    #[serde(default, borrow)]
    pub error: Option<ErrorShape<'a>>,
}

/// Payload fields used by the handshake and the fan-out scenarios.
#[derive(Debug, Default, Deserialize)]
pub struct Payload<'a> {
    /// `connect.challenge` nonce.
    #[serde(default, borrow)]
    pub nonce: Option<Cow<'a, str>>,
    /// `connect.challenge` / `tick` timestamp (ms).
    #[serde(default)]
    pub ts: Option<i64>,
    /// `presence` event list.
    #[serde(default, borrow)]
    pub presence: Option<Vec<PresenceEntry<'a>>>,
    /// `chat` event run id (the chat scenario's `load-<i>-<send_ts_us>`).
    #[serde(default, rename = "runId", borrow)]
    pub run_id: Option<Cow<'a, str>>,
    /// `chat` event state (`delta`, `final`, `error`, `aborted`).
    #[serde(default, borrow)]
    pub state: Option<Cow<'a, str>>,
}

/// One presence row (only the two fields the fan-out reads).
#[derive(Debug, Deserialize)]
pub struct PresenceEntry<'a> {
    /// Instance id.
    #[serde(default, rename = "instanceId", borrow)]
    pub instance_id: Option<Cow<'a, str>>,
    /// Free text.
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
}

/// The error object of a failed response.
#[derive(Debug, Deserialize)]
pub struct ErrorShape<'a> {
    /// Top-level code.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// Details (only `code`).
    #[serde(default, borrow)]
    pub details: Option<ErrorDetails<'a>>,
}

/// `error.details`.
#[derive(Debug, Deserialize)]
pub struct ErrorDetails<'a> {
    /// Detail code.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

/// Same as [`Frame`] minus the payload, for frames whose payload is not an object.
#[derive(Debug, Deserialize)]
struct FrameLite<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    error: Option<ErrorShape<'a>>,
}

/// Parse a text frame; `None` if it is not a JSON object with a string `type`.
pub fn parse(text: &[u8]) -> Option<Frame<'_>> {
    if let Ok(f) = serde_json::from_slice::<Frame<'_>>(text) {
        return Some(f);
    }
    let l = serde_json::from_slice::<FrameLite<'_>>(text).ok()?;
    Some(Frame {
        ty: l.ty,
        event: l.event,
        id: l.id,
        ok: l.ok,
        seq: l.seq,
        payload: None,
        error: l.error,
    })
}

impl Frame<'_> {
    /// For a `chat` event of a load run: `(index, send_ts_us, terminal)` from its runId
    /// `load-<i>-<send_ts_us>`; terminal = `final`, `error` or `aborted`.
    pub fn chat_mark(&self) -> Option<(u64, u64, bool)> {
        if self.event.as_deref() != Some("chat") {
            return None;
        }
        let p = self.payload.as_ref()?;
        let mut it = p.run_id.as_deref()?.strip_prefix("load-")?.split('-');
        let i = it.next()?.parse().ok()?;
        let ts = it.next()?.parse().ok()?;
        let terminal = matches!(p.state.as_deref(), Some("final" | "error" | "aborted"));
        Some((i, ts, terminal))
    }

    /// `detail-code` or `code` of a failed response, for error counting.
    pub fn error_kind(&self) -> String {
        let Some(e) = &self.error else {
            return "rpc_error".into();
        };
        let code = e.code.as_deref().unwrap_or("ERROR");
        match e.details.as_ref().and_then(|d| d.code.as_deref()) {
            Some(d) => format!("rpc_{code}/{d}"),
            None => format!("rpc_{code}"),
        }
    }

    /// For a `presence` event: the publisher row's `(index, send_ts_us)` parsed from its
    /// text `"load <i> <send_ts_us>"`.
    pub fn publisher_mark(&self) -> Option<(u64, u64)> {
        if self.event.as_deref() != Some("presence") {
            return None;
        }
        let rows = self.payload.as_ref()?.presence.as_ref()?;
        let row = rows
            .iter()
            .find(|r| r.instance_id.as_deref() == Some(PUBLISHER_INSTANCE))?;
        parse_mark(row.text.as_deref()?)
    }
}

/// Parse `"load <i> <send_ts_us>"`.
pub fn parse_mark(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_ascii_whitespace();
    if it.next()? != "load" {
        return None;
    }
    let i = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((i, ts))
}

// ---------------------------------------------------------------------------------------
// Byte-scan fast paths for the two hot frame shapes. They accept only the exact layout the
// gateway writes (`protocol::frames::encode_ok*` / `encode_event_body` + `seq_tail`) and
// return `None` for anything else, so the caller falls back to the serde path; they never
// panic on odd input. Whenever the serde path parses a frame and a fast path returns
// `Some`, both agree (tests below check this on real shapes, truncations and mutations).

/// `{"type":"res","id":"<decimal>","ok":true|false…`: the numeric id and the ok flag.
pub fn fast_res(t: &[u8]) -> Option<(u64, bool)> {
    let rest = t.strip_prefix(br#"{"type":"res","id":""#)?;
    let (id, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(br#"","ok":"#)?;
    // The flag must be followed by the next member or the end of the object.
    if let Some(r) = rest.strip_prefix(b"true") {
        matches!(r.first(), Some(b',' | b'}')).then_some((id, true))
    } else if let Some(r) = rest.strip_prefix(b"false") {
        matches!(r.first(), Some(b',' | b'}')).then_some((id, false))
    } else {
        None
    }
}

/// `{"type":"res","id":"1:connect","ok":true…`: the handshake succeeded (the hello-ok
/// snapshot is not parsed). `false` = anything else (use the serde path).
pub fn fast_connect_ok(t: &[u8]) -> bool {
    t.strip_prefix(br#"{"type":"res","id":"1:connect","ok":true"#)
        .is_some_and(|r| matches!(r.first(), Some(b',' | b'}')))
}

/// The publisher row's `(index, send_ts_us)`, if any.
pub type Mark = Option<(u64, u64)>;

/// What the fan-out subscriber needs from a `presence` event (tests: the subscriber uses
/// [`split_presence`] + a memoized [`presence_body_mark`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPresence {
    /// The frame's `seq`.
    pub seq: u64,
    /// The publisher row's `(index, send_ts_us)`, as [`Frame::publisher_mark`].
    pub mark: Option<(u64, u64)>,
}

/// `{"type":"event","event":"presence","payload":{…"presence":[…]…}[,"stateVersion":{…}],"seq":N}`.
///
/// The payload is walked with a small allocation-free JSON scanner (strings with escapes,
/// nesting) to find the first row whose `instanceId` is the publisher's; keys or the
/// inspected values containing escapes make it give up (`None` → serde fallback).
#[cfg(test)]
pub fn fast_presence(t: &[u8]) -> Option<FastPresence> {
    let (body, seq) = split_presence(t)?;
    let mark = presence_body_mark(body)?;
    Some(FastPresence { seq, mark })
}

/// Split a presence event into its body (everything before the per-socket `,"seq":N}`
/// tail, which the gateway serializes once per broadcast) and `seq`. Cheap: a prefix and
/// a tail check. The body's meaning is decided by [`presence_body_mark`], so callers may
/// memoize it: every subscriber of a broadcast gets the same body bytes.
pub fn split_presence(t: &[u8]) -> Option<(&[u8], u64)> {
    const HEAD: &[u8] = br#"{"type":"event","event":"presence","payload":"#;
    if !t.starts_with(HEAD) {
        return None;
    }
    let inner = t.strip_suffix(b"}")?;
    let digits_at = inner.iter().rposition(|b| !b.is_ascii_digit())? + 1;
    let (seq, rest) = leading_u64(inner.get(digits_at..)?)?;
    if !rest.is_empty() {
        return None;
    }
    let body = inner.get(..digits_at)?.strip_suffix(br#","seq":"#)?;
    Some((body, seq))
}

/// The publisher mark of a presence body from [`split_presence`]: `Some(mark)` when the
/// body has the expected shape, `None` = use the serde path.
pub fn presence_body_mark(body: &[u8]) -> Option<Mark> {
    const HEAD: &[u8] = br#"{"type":"event","event":"presence","payload":"#;
    let payload = body.strip_prefix(HEAD)?;
    // payload object [ + `,"stateVersion":<value>` ].
    let mut sc = Scan { b: payload, i: 0 };
    let mark = sc.presence_payload()?;
    if sc.i != payload.len() {
        let sv = payload.get(sc.i..)?.strip_prefix(br#","stateVersion":"#)?;
        let mut sc2 = Scan { b: sv, i: 0 };
        sc2.skip_value()?;
        if sc2.i != sv.len() {
            return None;
        }
    }
    Some(mark)
}

/// A leading decimal u64 (1–20 digits, no overflow) and the rest.
fn leading_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || (n > 1 && b.first() == Some(&b'0')) {
        return None;
    }
    let mut v: u64 = 0;
    for c in b.get(..n)? {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((v, b.get(n..)?))
}

/// Minimal JSON scanner over a byte slice (no allocation; `None` = not what we expect).
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }
    /// A string at the cursor: its raw content and whether it contains escapes.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut esc = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    esc = true;
                    self.i += 2;
                }
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
        let s = self.b.get(start..self.i)?;
        self.i += 1;
        Some((s, esc))
    }
    /// Skip an object (`keyed`, closed by `}`) or an array (closed by `]`); at its opener.
    fn skip_container(&mut self, close: u8, keyed: bool) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if keyed {
                self.string()?;
                self.eat(b':')?;
            }
            self.skip_value()?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skip any value (strings, numbers, literals, nested objects/arrays).
    fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.skip_container(b'}', true),
            b'[' => self.skip_container(b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                // Validate the (short) number token with the real parser.
                let tok = std::str::from_utf8(self.b.get(start..self.i)?).ok()?;
                tok.parse::<f64>().ok().map(|_| ())
            }
            _ => None,
        }
    }
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.i + lit.len();
        (self.b.get(self.i..end)? == lit).then(|| self.i = end)
    }
    /// The payload object: find `presence` (an array of row objects) and the publisher
    /// row's mark. Duplicate `presence` keys are left to serde.
    fn presence_payload(&mut self) -> Option<Option<(u64, u64)>> {
        self.eat(b'{')?;
        let mut found: Option<Option<(u64, u64)>> = None;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return None; // no presence list: not the shape we expect
        }
        loop {
            let (k, esc) = self.string()?;
            if esc {
                return None;
            }
            self.eat(b':')?;
            if k == b"nonce" || k == b"ts" {
                return None; // typed in `Payload`: leave type checks to serde
            }
            if k == b"presence" {
                if found.is_some() {
                    return None;
                }
                found = Some(self.rows()?);
            } else {
                self.skip_value()?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return found;
                }
                _ => return None,
            }
        }
    }
    /// The presence array: the first row with the publisher's instance id decides.
    fn rows(&mut self) -> Option<Option<(u64, u64)>> {
        self.eat(b'[')?;
        let mut mark: Option<Option<(u64, u64)>> = None;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(None);
        }
        loop {
            let row = self.row()?;
            if mark.is_none() {
                if let Some(m) = row {
                    mark = Some(m);
                }
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(mark.flatten());
                }
                _ => return None,
            }
        }
    }
    /// One row: `Some(mark)` if it is the publisher's row (mark = parsed text, if any).
    fn row(&mut self) -> Option<Option<Option<(u64, u64)>>> {
        self.eat(b'{')?;
        let mut publisher = false;
        let mut id_seen = false;
        let mut text: Option<&[u8]> = None;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(None);
        }
        loop {
            let (k, esc) = self.string()?;
            if esc {
                return None;
            }
            self.eat(b':')?;
            match k {
                b"instanceId" | b"text" => {
                    self.ws();
                    if id_seen && k == b"instanceId" || text.is_some() && k == b"text" {
                        return None; // duplicate key: leave it to serde
                    }
                    if self.peek()? == b'n' {
                        self.literal(b"null")?;
                        if k == b"instanceId" {
                            id_seen = true;
                        } else {
                            text = Some(b"");
                        }
                    } else {
                        let (v, esc) = self.string()?;
                        if k == b"instanceId" {
                            id_seen = true;
                            if v == PUBLISHER_INSTANCE.as_bytes() {
                                publisher = true;
                            } else if esc {
                                return None;
                            }
                        } else {
                            if esc {
                                return None;
                            }
                            text = Some(v);
                        }
                    }
                }
                _ => self.skip_value()?,
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        if !publisher {
            return Some(None);
        }
        let mark = text
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(parse_mark);
        Some(Some(mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `presence` broadcast captured from the gateway (system-event by the publisher).
    const REAL_PRESENCE: &[u8] = r#"{"type":"event","event":"presence","payload":{"presence":[{"deviceFamily":"Linux","host":"vm","instanceId":"ef363c6b-3807-4898-952c-75031b68171e","ip":"127.0.0.1","mode":"gateway","platform":"linux","reason":"self","text":"Gateway: vm (127.0.0.1) · app 2026.9.6 · mode gateway · reason self","ts":1796160189851,"version":"2026.9.6"},{"instanceId":"load-publisher","text":"load 7 1700000000000000","ts":1796160189851}]},"stateVersion":{"presence":2,"health":1},"seq":1}"#.as_bytes();
    /// A real `health` response captured from the gateway.
    const REAL_HEALTH: &[u8] = r#"{"type":"res","id":"42","ok":true,"payload":{"agents":[{"agentId":"main","heartbeat":{"ackMaxChars":300,"enabled":false,"every":"disabled","everyMs":null,"prompt":"Heartbeat check. If nothing needs attention, reply NO_REPLY.","target":"none"},"isDefault":true,"sessions":{"count":0,"path":"/tmp/tmp.tgnaUPVQOR/agents/main/sessions/sessions.json","recent":[]}}],"channelLabels":{},"channelOrder":[],"channels":{},"defaultAgentId":"main","durationMs":0,"heartbeatSeconds":0,"ok":true,"plugins":{"errors":[],"loaded":[],"unavailable":[]},"sessions":{"count":0,"path":"/tmp/tmp.tgnaUPVQOR/agents/main/sessions/sessions.json","recent":[]},"ts":1796160189851}}"#.as_bytes();

    /// A real `hello-ok` captured from the gateway.
    const REAL_HELLO: &[u8] = r#"{"type":"res","id":"1:connect","ok":true,"payload":{"auth":{"method":"token","role":"operator","scopes":["operator.read"]},"features":{"events":["tick","presence","shutdown","chat","agent","sessions.changed"],"methods":["health","status","system-presence","system-event","last-heartbeat","models.list","agents.list","config.get","sessions.list","sessions.preview","sessions.patch","sessions.reset","sessions.delete","chat.history","chat.send","chat.abort","agent","agent.wait","node.list","device.pair.list"]},"policy":{"maxBufferedBytes":52428800,"maxPayload":26214400,"tickIntervalMs":30000},"protocol":4,"server":{"buildId":"clawgate-0.1.0","connId":"0-1","version":"2026.9.6"},"snapshot":{"authMode":"token","configPath":"/tmp/tmp.tgnaUPVQOR/openclaw.json","health":{"agents":[{"agentId":"main","heartbeat":{"ackMaxChars":300,"enabled":false,"every":"disabled","everyMs":null,"prompt":"Heartbeat check. If nothing needs attention, reply NO_REPLY.","target":"none"},"isDefault":true,"sessions":{"count":0,"path":"/tmp/tmp.tgnaUPVQOR/agents/main/sessions/sessions.json","recent":[]}}],"channelLabels":{},"channelOrder":[],"channels":{},"defaultAgentId":"main","durationMs":0,"heartbeatSeconds":0,"ok":true,"plugins":{"errors":[],"loaded":[],"unavailable":[]},"sessions":{"count":0,"path":"/tmp/tmp.tgnaUPVQOR/agents/main/sessions/sessions.json","recent":[]},"ts":1796160189850},"presence":[{"deviceFamily":"Linux","host":"vm","instanceId":"ef363c6b-3807-4898-952c-75031b68171e","ip":"127.0.0.1","mode":"gateway","platform":"linux","reason":"self","text":"Gateway: vm (127.0.0.1) · app 2026.9.6 · mode gateway · reason self","ts":1796160188591,"version":"2026.9.6"}],"sessionDefaults":{"defaultAgentId":"main","mainKey":"main","mainSessionKey":"agent:main:main","modelConfigured":true,"ownership":"sole","scope":"per-sender","selectionRequired":false},"stateDir":"/tmp/tmp.tgnaUPVQOR","stateVersion":{"health":1,"presence":1},"uptimeMs":1260},"type":"hello-ok"}}"#.as_bytes();

    /// The serde path's view of a presence frame, in the fast path's terms.
    fn slow_presence(t: &[u8]) -> Option<(Option<u64>, Mark)> {
        let f = parse(t)?;
        Some((f.seq, f.publisher_mark()))
    }

    /// When both parse, they agree.
    fn check_agrees(t: &[u8]) {
        if let Some(fp) = fast_presence(t) {
            if let Some((seq, mark)) = slow_presence(t) {
                assert_eq!(seq, Some(fp.seq), "{}", String::from_utf8_lossy(t));
                assert_eq!(mark, fp.mark, "{}", String::from_utf8_lossy(t));
            }
        }
        if let Some((id, ok)) = fast_res(t) {
            if let Some(f) = parse(t) {
                assert_eq!(f.ty, "res");
                assert_eq!(
                    f.id.as_deref().and_then(|s| s.parse::<u64>().ok()),
                    Some(id)
                );
                assert_eq!(f.ok, Some(ok));
            }
        }
    }

    fn variants() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            REAL_PRESENCE.to_vec(),
            REAL_HEALTH.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[{"host":"h","ts":1,"roles":["x"],"instanceId":"gw","text":"Gateway"},{"instanceId":"load-publisher","text":"load 7 1700000000000000","ts":2}]},"stateVersion":{"presence":3,"health":1},"seq":5}"#.to_vec(),
            // text before instanceId, no stateVersion
            br#"{"type":"event","event":"presence","payload":{"presence":[{"text":"load 3 99","instanceId":"load-publisher"}]},"seq":12}"#.to_vec(),
            // no publisher row
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"gw","text":"load 1 2"}]},"stateVersion":{"presence":1,"health":1},"seq":2}"#.to_vec(),
            // empty list / empty rows / nulls
            br#"{"type":"event","event":"presence","payload":{"presence":[]},"seq":3}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[{},{"instanceId":null,"text":null}]},"seq":3}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"load-publisher","text":null}]},"seq":3}"#.to_vec(),
            // publisher row with a bad mark, then a good one (the first row decides)
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"load-publisher","text":"hello"},{"instanceId":"load-publisher","text":"load 1 2"}]},"seq":4}"#.to_vec(),
            // strings with quotes, braces and escapes elsewhere
            br#"{"type":"event","event":"presence","payload":{"presence":[{"host":"a\"}]{[\\","x":[1,-2.5e3,true,false,null,{"y":"}"}],"instanceId":"load-publisher","text":"load 9 10"}]},"seq":77}"#.to_vec(),
            // 10..=17: must fall back to serde
            // escapes in the inspected values (serde decodes them)
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"load\u002dpublisher","text":"load 1 2"}]},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"load-publisher","text":"load\u0020 1 2"}]},"seq":1}"#.to_vec(),
            // duplicate keys, typed payload field, wrong types, overflow
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":"load-publisher","instanceId":"x","text":"load 1 2"}]},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"ts":"x","presence":[{"instanceId":"load-publisher","text":"load 1 2"}]},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[{"instanceId":5,"text":"load 1 2"}]},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":{"a":1}},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[1]},"seq":1}"#.to_vec(),
            br#"{"type":"event","event":"presence","payload":{"presence":[]},"seq":18446744073709551616}"#.to_vec(),
            // others
            br#"{"type":"event","event":"presence","payload":{"presence":[]},"seq":01}"#.to_vec(),
            br#"{"type":"event","event":"tick","payload":{"ts":1},"seq":9}"#.to_vec(),
            br#"{"type":"res","id":"7","ok":false,"error":{"code":"X"}}"#.to_vec(),
            br#"{"type":"res","id":"7","ok":true}"#.to_vec(),
            br#"{"type":"res","id":"07","ok":true}"#.to_vec(),
            br#"{"type":"res","id":"1:connect","ok":true,"payload":{}}"#.to_vec(),
            br#"{"type":"res","id":"18446744073709551615","ok":true,"payload":null}"#.to_vec(),
        ];
        v.push(REAL_PRESENCE.iter().rev().copied().collect());
        v
    }

    #[test]
    fn fast_paths_on_real_frames() {
        assert_eq!(
            fast_presence(REAL_PRESENCE),
            Some(FastPresence {
                seq: 1,
                mark: Some((7, 1_700_000_000_000_000))
            })
        );
        assert_eq!(fast_res(REAL_HEALTH), Some((42, true)));
        assert_eq!(
            fast_res(br#"{"type":"res","id":"7","ok":false,"error":{}}"#),
            Some((7, false))
        );
        assert_eq!(
            fast_res(br#"{"type":"res","id":"1:connect","ok":true}"#),
            None
        );
        assert_eq!(fast_res(REAL_PRESENCE), None);
        assert!(fast_connect_ok(REAL_HELLO));
        assert!(!fast_connect_ok(
            br#"{"type":"res","id":"1:connect","ok":false,"error":{}}"#
        ));
        assert!(!fast_connect_ok(
            br#"{"type":"res","id":"1:connect","ok":truex}"#
        ));
        assert!(!fast_connect_ok(b""));
        let f = parse(REAL_HELLO).expect("hello-ok parses");
        assert_eq!(
            (f.ty.as_ref(), f.id.as_deref(), f.ok),
            ("res", Some("1:connect"), Some(true))
        );
        assert_eq!(fast_presence(REAL_HEALTH), None);
    }

    #[test]
    fn fast_paths_agree_with_serde() {
        let vs = variants();
        for (n, t) in vs.iter().enumerate() {
            check_agrees(t);
            if n < 10 && n != 1 {
                assert!(
                    fast_presence(t).is_some(),
                    "variant {n} should take the fast path"
                );
                assert!(parse(t).is_some(), "variant {n} is valid");
            }
        }
        for (n, t) in vs.iter().enumerate().take(18).skip(10) {
            assert_eq!(fast_presence(t), None, "variant {n} must fall back");
        }
    }

    #[test]
    fn truncations_and_mutations_never_panic_or_disagree() {
        let mut rng = crate::stats::Rng::new(7);
        let alphabet = b"\"\\{}[],:0123456789 -tfnlu\x01\x7f";
        for t in variants() {
            for cut in 0..=t.len() {
                for part in [&t[..cut], &t[cut..]] {
                    if std::str::from_utf8(part).is_ok() {
                        check_agrees(part);
                    } else {
                        let _ = (fast_presence(part), fast_res(part));
                    }
                }
            }
            for _ in 0..3000 {
                let mut m = t.clone();
                for _ in 0..1 + rng.next_u64() % 3 {
                    let i = (rng.next_u64() % m.len() as u64) as usize;
                    m[i] = if rng.next_u64() % 2 == 0 {
                        alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]
                    } else {
                        rng.next_u64() as u8
                    };
                }
                // Text frames reach the parsers UTF-8 checked by the codec; invalid UTF-8
                // only has to be panic-free.
                if std::str::from_utf8(&m).is_ok() {
                    check_agrees(&m);
                } else {
                    let _ = (fast_presence(&m), fast_res(&m));
                }
            }
        }
    }

    #[test]
    fn presence_mark() {
        let t = br#"{"type":"event","event":"presence","payload":{"presence":[{"host":"h","ts":1,"roles":["x"],"instanceId":"gw","text":"Gateway"},{"instanceId":"load-publisher","text":"load 7 1700000000000000","ts":2}]},"seq":5,"stateVersion":{"presence":3,"health":1}}"#;
        let f = parse(t).expect("parses");
        assert_eq!(f.seq, Some(5));
        assert_eq!(f.publisher_mark(), Some((7, 1_700_000_000_000_000)));
    }

    #[test]
    fn chat_mark_reads_the_load_run_id() {
        let t = br#"{"type":"event","event":"chat","payload":{"runId":"load-12-1700000000000001","sessionKey":"agent:main:load-chat-0","seq":3,"state":"delta","message":{"role":"assistant"}},"seq":9}"#;
        let f = parse(t).expect("parses");
        assert_eq!(f.chat_mark(), Some((12, 1_700_000_000_000_001, false)));
        let t = br#"{"type":"event","event":"chat","payload":{"runId":"load-12-5","state":"final"},"seq":10}"#;
        assert_eq!(parse(t).expect("final").chat_mark(), Some((12, 5, true)));
        let other = br#"{"type":"event","event":"chat","payload":{"runId":"someone-else","state":"final"},"seq":11}"#;
        assert_eq!(parse(other).expect("other").chat_mark(), None);
        let agent = br#"{"type":"event","event":"agent","payload":{"runId":"load-1-2"},"seq":12}"#;
        assert_eq!(parse(agent).expect("agent").chat_mark(), None);
    }

    #[test]
    fn odd_payloads_do_not_fail() {
        let f = parse(br#"{"type":"res","id":"3","ok":true,"payload":[1,2]}"#).expect("lite");
        assert_eq!(f.id.as_deref(), Some("3"));
        let f = parse(br#"{"type":"res","id":"4","ok":false,"error":{"code":"FORBIDDEN","details":{"code":"MISSING_SCOPE"}}}"#)
            .expect("err");
        assert_eq!(f.error_kind(), "rpc_FORBIDDEN/MISSING_SCOPE");
        assert!(parse(b"not json").is_none());
        assert!(parse(b"[1]").is_none());
    }
}
