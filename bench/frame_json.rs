#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Request-frame parsing: serde_json (borrowing from the read buffer) vs simd-json (which
//! needs a mutable buffer; measured both in place and with the copy a `&[u8]` caller pays).
//! Frames are the real CLI's, from tests/vectors.
//!
//! Run: `cargo bench --bench frame_json -- --warm-up-time 1 --measurement-time 3`
//!
//! `gateway/*` is the production path ([`parse_request`]: envelope with borrowed strings,
//! `params` left raw, then parsed into a `Value` as the router does for a permitted call).
//! The library comparison parses into [`TreeRequest`] (params as a `Value`), the same shape
//! for both libraries: simd-json's serde front end has no `RawValue`.

use std::borrow::Cow;

use clawgate::protocol::frames::{params_value, parse_request};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TreeRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default)]
    params: Option<serde_json::Value>,
}

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let connect = br#"{"type":"req","id":"1:32b6aedb-035e-4916-a0c9-65d52b436622","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","version":"2026.9.6","platform":"linux","deviceFamily":"Linux","mode":"cli","instanceId":"e25a9836-8578-4cf7-952f-f12b1aa43018"},"caps":[],"auth":{"token":"0123456789abcdef0123456789abcdef0123456789a"},"role":"operator","scopes":["operator.read"],"device":{"id":"da823c26e26e2ad99fb9b1728a8d7c8333ec5396c5ae3ac18a9f1e9438e04dbc","publicKey":"eLYyH_tV7jBhYkERwUXv39d-GEPiC47PqtX6-XyMGSI","signature":"ATdqcYpk2pP9YqTCY7knjMgGZlEOG9c6BUJYhXXtDley4qCtqdnv31dETUAsXfYjtdvSoJCiX4PWHp6uy4lGAQ","signedAt":1795311692680,"nonce":"5565e69a-308f-4eef-95d0-f4d95aadc4b8"}}}"#.to_vec();
    let health = br#"{"type":"req","id":"2:7d3c1a55-35d4-4d4b-9a3c-0d2f4a5b6c7d","method":"health","params":{}}"#.to_vec();
    let chat = br#"{"type":"req","id":"3:7d3c1a55-35d4-4d4b-9a3c-0d2f4a5b6c7d","method":"chat.send","params":{"sessionKey":"main","message":"Summarise the last three emails from Alice and draft a polite reply declining the meeting on Thursday.","idempotencyKey":"0f8fad5b-d9cb-469f-a165-70867728950e"}}"#.to_vec();
    vec![
        ("connect_621B", connect),
        ("health_90B", health),
        ("chat_send_270B", chat),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_parse");
    for (name, frame) in frames() {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(format!("gateway_envelope/{name}"), |b| {
            b.iter(|| {
                let r = parse_request(black_box(&frame)).unwrap();
                black_box((r.method.len(), r.params.map(|p| p.get().len())))
            })
        });
        g.bench_function(format!("gateway_then_params/{name}"), |b| {
            b.iter(|| {
                let r = parse_request(black_box(&frame)).unwrap();
                let p = params_value(r.params).unwrap();
                black_box((r.method.len(), p.is_null()))
            })
        });
        g.bench_function(format!("serde_json/{name}"), |b| {
            b.iter(|| {
                let r: TreeRequest<'_> = serde_json::from_slice(black_box(&frame)).unwrap();
                black_box(r.method.len())
            })
        });
        let mut scratch = frame.clone();
        g.bench_function(format!("simd_json_in_place/{name}"), |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| {
                    let r: TreeRequest<'_> = simd_json::serde::from_slice(buf).unwrap();
                    black_box(r.method.len())
                },
                criterion::BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("simd_json_with_copy/{name}"), |b| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(black_box(&frame));
                let r: TreeRequest<'_> = simd_json::serde::from_slice(&mut scratch).unwrap();
                black_box(r.method.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
