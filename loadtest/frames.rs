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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_mark() {
        let t = br#"{"type":"event","event":"presence","payload":{"presence":[{"host":"h","ts":1,"roles":["x"],"instanceId":"gw","text":"Gateway"},{"instanceId":"load-publisher","text":"load 7 1700000000000000","ts":2}]},"seq":5,"stateVersion":{"presence":3,"health":1}}"#;
        let f = parse(t).expect("parses");
        assert_eq!(f.seq, Some(5));
        assert_eq!(f.publisher_mark(), Some((7, 1_700_000_000_000_000)));
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
