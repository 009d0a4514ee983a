#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property tests for the request-frame codec (`protocol::frames`), `connect` params and
//! the HTTP request-head parser (`transport::http::parse_head`).
//!
//! * A request with any id/method strings (escapes, non-ASCII) and any JSON params parses
//!   back to the same id, method and params; whitespace around the envelope changes nothing.
//! * Unknown top-level fields and non-object frames are refused with INVALID_REQUEST.
//! * Arbitrary bytes, and mutations of valid frames, never panic the frame parser, the
//!   params parser, `ConnectParams::parse` or `parse_head`.
//! * A valid upgrade request head parses completely at every split point (a prefix is
//!   `Partial`, never `Malformed`), and its `Sec-WebSocket-Key` comes back intact.

use clawgate::protocol::connect::ConnectParams;
use clawgate::protocol::frames::{params_value, parse_request};
use clawgate::transport::http::{parse_head, Parsed};
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON values of bounded depth and size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(
        id in "\\PC{1,40}",
        method in "[a-z.\\-]{1,20}|\\PC{1,20}",
        params in prop::option::of(json_value()),
        pad in "[ \t\r\n]{0,3}",
    ) {
        let mut frame = json!({"type": "req", "id": id, "method": method});
        if let Some(p) = &params {
            frame["params"] = p.clone();
        }
        let text = format!("{pad}{frame}{pad}");
        let req = parse_request(text.as_bytes()).unwrap();
        prop_assert_eq!(req.id.as_ref(), id.as_str());
        prop_assert_eq!(req.method.as_ref(), method.as_str());
        let got = params_value(req.params).unwrap();
        prop_assert_eq!(got, params.unwrap_or(Value::Null));
    }

    #[test]
    fn unknown_fields_and_non_objects_are_invalid_requests(
        field in "[a-zA-Z]{1,12}",
        v in json_value(),
    ) {
        prop_assume!(!matches!(
            field.as_str(),
            "type" | "id" | "method" | "params" | "traceparent" | "expectedProfileId"
        ));
        let mut frame = json!({"type": "req", "id": "x", "method": "health"});
        frame[field.as_str()] = v.clone();
        let err = parse_request(frame.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(err.error.code, "INVALID_REQUEST");
        prop_assert_eq!(err.id.as_deref(), Some("x"));
        if !v.is_object() {
            let err = parse_request(v.to_string().as_bytes()).unwrap_err();
            prop_assert_eq!(err.error.code, "INVALID_REQUEST");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = parse_request(&bytes) {
            let _ = params_value(req.params);
            let _ = ConnectParams::parse(req.params);
        }
        let _ = parse_head(&bytes);
    }

    #[test]
    fn mutated_connect_frames_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = CONNECT.as_bytes().to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(req) = parse_request(&bytes) {
            let _ = params_value(req.params);
            let _ = ConnectParams::parse(req.params);
        }
    }

    #[test]
    fn upgrade_heads_parse_at_every_split(
        key in "[A-Za-z0-9+/]{22}==",
        path in "/[a-z0-9/_\\-]{0,24}",
        extra in prop::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,40}"), 0..5),
    ) {
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:18789\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in &extra {
            head.push_str(&format!("{k}: {}\r\n", v.trim()));
        }
        head.push_str("\r\n");
        let bytes = head.as_bytes();
        for split in 0..bytes.len() {
            prop_assert!(
                matches!(parse_head(&bytes[..split]), Parsed::Partial),
                "prefix of {} bytes must be Partial", split
            );
        }
        match parse_head(bytes) {
            Parsed::Complete(h, n) => {
                prop_assert_eq!(n, bytes.len());
                prop_assert_eq!(h.ws_key.as_deref(), Some(key.as_str()));
                prop_assert_eq!(h.path, path);
                prop_assert!(h.bad_upgrade.is_none());
            }
            other => prop_assert!(false, "not complete: {:?}", other),
        }
    }
}

/// A real CLI `connect` frame (tests/vectors).
const CONNECT: &str = r#"{"type":"req","id":"1:32b6aedb-035e-4916-a0c9-65d52b436622","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","version":"2026.9.6","platform":"linux","deviceFamily":"Linux","mode":"cli","instanceId":"e25a9836-8578-4cf7-952f-f12b1aa43018"},"caps":[],"auth":{"token":"0123456789abcdef0123456789abcdef0123456789a"},"role":"operator","scopes":["operator.read"],"device":{"id":"da823c26e26e2ad99fb9b1728a8d7c8333ec5396c5ae3ac18a9f1e9438e04dbc","publicKey":"eLYyH_tV7jBhYkERwUXv39d-GEPiC47PqtX6-XyMGSI","signature":"ATdqcYpk2pP9YqTCY7knjMgGZlEOG9c6BUJYhXXtDley4qCtqdnv31dETUAsXfYjtdvSoJCiX4PWHp6uy4lGAQ","signedAt":1795311692680,"nonce":"5565e69a-308f-4eef-95d0-f4d95aadc4b8"}}}"#;

#[test]
fn the_real_connect_frame_parses() {
    let req = parse_request(CONNECT.as_bytes()).unwrap();
    assert_eq!(req.method, "connect");
    let p = ConnectParams::parse(req.params).unwrap();
    assert_eq!(p.client.id, "cli");
}
