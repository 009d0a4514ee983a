//! `req` / `res` / `event` frames (PROTOCOL.md §2).
//!
//! Requests are parsed straight from the unmasked WebSocket payload with borrowed strings;
//! responses and events are serialized into byte vectors ready to be framed.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::ErrorShape;

/// A parsed request. `id` and `method` borrow from the read buffer when unescaped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request<'a> {
    /// Always `"req"`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Opaque request id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Method name.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// Parameters (any JSON), left as the raw slice of the frame: the router parses them
    /// only after the method exists and the caller's role and scopes allow it, so a
    /// 25 MiB `params` for a method the client may not call is never turned into a tree.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
    /// W3C trace context (≤128 chars).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Profile binding (accepted, unused).
    #[serde(default, rename = "expectedProfileId")]
    pub expected_profile_id: Option<String>,
}

/// Why a frame could not be turned into a [`Request`]; carries the id when one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// Request id if the frame had one.
    pub id: Option<String>,
    /// The error to answer with.
    pub error: ErrorShape,
}

/// Parse one text frame as a request. Never panics.
pub fn parse_request(payload: &[u8]) -> Result<Request<'_>, FrameError> {
    // A frame is an object. serde's derive would also accept the positional array form
    // (`["req","1","health"]`), which no client sends and the real gateway's schema refuses.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
            "invalid request frame: must be a JSON object".to_string()
        } else {
            "invalid frame: not valid JSON".to_string()
        };
        return Err(FrameError {
            id: None,
            error: ErrorShape::invalid(message),
        });
    }
    match serde_json::from_slice::<Request<'_>>(payload) {
        Ok(req) => {
            if req.kind != "req" {
                return Err(FrameError {
                    id: Some(req.id.into_owned()),
                    error: ErrorShape::invalid(format!("invalid frame type: {}", req.kind)),
                });
            }
            if req.id.is_empty() || req.method.is_empty() {
                return Err(FrameError {
                    id: (!req.id.is_empty()).then(|| req.id.into_owned()),
                    error: ErrorShape::invalid(
                        "invalid request frame: id and method must be non-empty strings",
                    ),
                });
            }
            if req.traceparent.as_ref().is_some_and(|t| t.len() > 128) {
                return Err(FrameError {
                    id: Some(req.id.into_owned()),
                    error: ErrorShape::invalid(
                        "invalid request frame: traceparent longer than 128",
                    ),
                });
            }
            Ok(req)
        }
        Err(e) => {
            // Second, lenient look only to recover the id for a useful answer: every other
            // field is skipped, never built (no allocation beyond the id).
            #[derive(Deserialize)]
            struct IdOnly<'a> {
                #[serde(borrow, default)]
                id: Option<Cow<'a, str>>,
            }
            let id = serde_json::from_slice::<IdOnly<'_>>(payload)
                .ok()
                .and_then(|f| f.id)
                .map(Cow::into_owned);
            let message = if e.is_syntax() || e.is_eof() {
                format!("invalid frame: not valid JSON ({e})")
            } else {
                format!("invalid request frame: {e}")
            };
            Err(FrameError {
                id,
                error: ErrorShape::invalid(message),
            })
        }
    }
}

/// Parse a request's raw `params` into a tree (`null` when absent). The frame's syntax was
/// checked with the envelope, so this fails only on what skipping did not look at: nesting
/// past serde_json's limit, or an unpaired UTF-16 surrogate escape in a string.
pub fn params_value(params: Option<&RawValue>) -> Result<Value, ErrorShape> {
    match params {
        None => Ok(Value::Null),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            ErrorShape::invalid(format!(
                "invalid request frame: params: {}",
                error_message(&e)
            ))
        }),
    }
}

/// A serde_json error's message without its " at line L column C" suffix (the position in
/// a sub-slice of a frame means nothing to the client; the real gateway's validator
/// reports paths, not positions).
pub fn error_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(msg) => msg.to_owned(),
        None => full,
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json string escaping into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"type":"res","id":…,"ok":true,"payload":…}`.
pub fn encode_ok(id: &str, payload: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"type":"res","id":"#);
    push_json_str(&mut out, id);
    out.extend_from_slice(br#","ok":true,"payload":"#);
    let _ = serde_json::to_writer(&mut out, payload);
    out.push(b'}');
    out
}

/// `{"type":"res","id":…,"ok":true,"payload":<payload_json>}` from an already-serialized
/// payload (cached snapshots).
pub fn encode_ok_raw(id: &str, payload_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + id.len() + payload_json.len());
    out.extend_from_slice(br#"{"type":"res","id":"#);
    push_json_str(&mut out, id);
    out.extend_from_slice(br#","ok":true,"payload":"#);
    out.extend_from_slice(payload_json);
    out.push(b'}');
    out
}

/// `{"type":"res","id":…,"ok":false,"error":…}` (plus `payload` when given, as `agent` does).
pub fn encode_err(id: &str, error: &ErrorShape, payload: Option<&Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(br#"{"type":"res","id":"#);
    push_json_str(&mut out, id);
    out.extend_from_slice(br#","ok":false"#);
    if let Some(p) = payload {
        out.extend_from_slice(br#","payload":"#);
        let _ = serde_json::to_writer(&mut out, p);
    }
    out.extend_from_slice(br#","error":"#);
    let _ = serde_json::to_writer(&mut out, error);
    out.push(b'}');
    out
}

/// An event body without its closing brace and `seq`: `{"type":"event","event":…,"payload":…`
/// (+ `,"stateVersion":…`). Serialized once per broadcast; each socket appends its own
/// `,"seq":N}` via [`seq_tail`].
pub fn encode_event_body(
    event: &str,
    payload: &Value,
    state_version: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(br#"{"type":"event","event":"#);
    push_json_str(&mut out, event);
    out.extend_from_slice(br#","payload":"#);
    let _ = serde_json::to_writer(&mut out, payload);
    push_state_version(&mut out, state_version);
    out
}

/// [`encode_event_body`] from an already-serialized payload (a cached snapshot).
pub fn encode_event_body_raw(
    event: &str,
    payload_json: &[u8],
    state_version: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + payload_json.len());
    out.extend_from_slice(br#"{"type":"event","event":"#);
    push_json_str(&mut out, event);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload_json);
    push_state_version(&mut out, state_version);
    out
}

fn push_state_version(out: &mut Vec<u8>, state_version: Option<(u64, u64)>) {
    if let Some((presence, health)) = state_version {
        out.extend_from_slice(
            format!(r#","stateVersion":{{"presence":{presence},"health":{health}}}"#).as_bytes(),
        );
    }
}

/// The per-socket tail `,"seq":N}` of an event frame (written into `buf`, returns its length).
/// Runs once per recipient of every broadcast, so it formats without allocating.
pub fn seq_tail(buf: &mut [u8; 32], seq: u64) -> usize {
    const HEAD: &[u8] = b",\"seq\":";
    buf[..HEAD.len()].copy_from_slice(HEAD);
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    buf[HEAD.len()..HEAD.len() + len].copy_from_slice(&digits[i..]);
    buf[HEAD.len() + len] = b'}';
    HEAD.len() + len + 1
}

/// A complete event frame without `seq` (used for the pre-auth `connect.challenge`).
pub fn encode_event_unsequenced(event: &str, payload: &Value) -> Vec<u8> {
    let mut out = encode_event_body(event, payload, None);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_connect_with_borrowed_strings() {
        let raw = br#"{"type":"req","id":"1:abc","method":"connect","params":{"minProtocol":4}}"#;
        let req = parse_request(raw).unwrap();
        assert!(matches!(req.id, Cow::Borrowed("1:abc")));
        assert_eq!(req.method, "connect");
        assert_eq!(params_value(req.params).unwrap()["minProtocol"], 4);
        let none = parse_request(br#"{"type":"req","id":"2","method":"health"}"#).unwrap();
        assert_eq!(params_value(none.params).unwrap(), Value::Null);
    }

    #[test]
    fn invalid_frames_keep_their_id_even_with_escapes() {
        let err =
            parse_request(br#"{"type":"req","id":"a\"b","method":"x","params":{"#).unwrap_err();
        // Truncated JSON: the lenient pass cannot read it either.
        assert!(err.id.is_none());
        let err =
            parse_request(br#"{"type":"req","id":"a\"b","method":7,"params":[1,2]}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("a\"b"));
        assert_eq!(err.error.code, "INVALID_REQUEST");
    }

    #[test]
    fn only_objects_are_requests() {
        let err = parse_request(br#"["req","1","health"]"#).unwrap_err();
        assert_eq!(err.id, None);
        assert_eq!(err.error.code, "INVALID_REQUEST");
        assert!(
            err.error.message.contains("object"),
            "{}",
            err.error.message
        );
        let err = parse_request(b"  nope").unwrap_err();
        assert!(err.error.message.contains("JSON"), "{}", err.error.message);
        assert!(parse_request(b" \n{\"type\":\"req\",\"id\":\"1\",\"method\":\"health\"}").is_ok());
    }

    #[test]
    fn error_message_drops_the_position() {
        let e = serde_json::from_str::<u8>("\"x\"").unwrap_err();
        let m = error_message(&e);
        assert!(!m.contains(" at line "), "{m}");
        assert!(m.contains("invalid type"), "{m}");
    }

    #[test]
    fn rejects_unknown_top_level_fields_keeping_the_id() {
        let err =
            parse_request(br#"{"type":"req","id":"7","method":"health","bogus":1}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("7"));
        assert_eq!(err.error.code, "INVALID_REQUEST");
    }

    #[test]
    fn rejects_invalid_json_and_non_req_frames() {
        let err = parse_request(b"{nope").unwrap_err();
        assert!(err.id.is_none());
        assert!(err.error.message.contains("JSON"));
        let err = parse_request(br#"{"type":"res","id":"1","method":"x"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("1"));
    }

    #[test]
    fn event_body_plus_tail_is_valid_json() {
        let body = encode_event_body("tick", &serde_json::json!({"ts":1}), Some((2, 3)));
        assert_eq!(
            body,
            encode_event_body_raw("tick", br#"{"ts":1}"#, Some((2, 3)))
        );
        let mut tail = [0u8; 32];
        let n = seq_tail(&mut tail, 42);
        let mut frame = body.clone();
        frame.extend_from_slice(&tail[..n]);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(v["stateVersion"]["health"], 3);
        assert_eq!(v["payload"]["ts"], 1);
    }

    #[test]
    fn seq_tail_formats_every_magnitude() {
        let mut b = [0u8; 32];
        for seq in [0u64, 1, 9, 10, 12345, u64::MAX] {
            let n = seq_tail(&mut b, seq);
            assert_eq!(
                std::str::from_utf8(&b[..n]).unwrap(),
                format!(r#","seq":{seq}}}"#)
            );
        }
    }

    #[test]
    fn responses_round_trip() {
        let ok: Value =
            serde_json::from_slice(&encode_ok("a\"b", &serde_json::json!([1]))).unwrap();
        assert_eq!(ok["id"], "a\"b");
        assert_eq!(ok["ok"], true);
        let err: Value = serde_json::from_slice(&encode_err(
            "x",
            &ErrorShape::missing_scope("operator.read"),
            None,
        ))
        .unwrap();
        assert_eq!(err["error"]["details"]["missingScope"], "operator.read");
        assert!(err.get("payload").is_none());
    }
}
