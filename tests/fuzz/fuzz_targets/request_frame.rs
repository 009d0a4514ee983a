//! Fuzz the request path's parsers with arbitrary bytes: the frame envelope
//! (`protocol::frames::parse_request`), params (`params_value`), `connect` params
//! (`ConnectParams::parse`) and the HTTP request head (`transport::http::parse_head`).
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz request_frame -- -max_total_time=20
//! ```
//!
//! Oracles: no panics; a parsed request has a non-empty id and method and its params, when
//! they parse, re-serialize to JSON that parses again to the same value; a refused frame is
//! always INVALID_REQUEST; a complete HTTP head never claims more bytes than it was given.
#![no_main]

use clawgate::protocol::connect::ConnectParams;
use clawgate::protocol::frames::{params_value, parse_request};
use clawgate::transport::http::{parse_head, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            assert!(!req.id.is_empty() && !req.method.is_empty());
            if let Ok(v) = params_value(req.params) {
                let again: serde_json::Value =
                    serde_json::from_str(&v.to_string()).expect("re-serialized params parse");
                assert_eq!(again, v);
            }
            let _ = ConnectParams::parse(req.params);
        }
        Err(e) => assert_eq!(e.error.code, "INVALID_REQUEST"),
    }
    if let Parsed::Complete(_, n) = parse_head(data) {
        assert!(n <= data.len());
    }
});
