#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! RFC 6455 codec benchmarks (`transport::ws::codec`).
//!
//! Run: `cargo bench --bench ws_codec -- --warm-up-time 1 --measurement-time 3`
//!
//! Decoding unmasks in place, so every iteration decodes a fresh copy of the masked wire
//! bytes; the copy is made in criterion's untimed batch setup (`iter_batched_ref`).

use std::hint::black_box;

use clawgate::transport::ws::codec::{
    encode_frame, encode_raw_frame, Decoder, Message, OpCode, Role,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const LIMIT: usize = 25 << 20;
const MASK: [u8; 4] = [0x9a, 0x51, 0x3c, 0xe7];

/// ASCII JSON-ish text of exactly `len` bytes (what the gateway mostly carries).
fn json_text(len: usize) -> Vec<u8> {
    let unit = br#"{"type":"req","id":"c0ffee-42","method":"chat.send","params":{"text":"hello, world"}},"#;
    unit.iter().copied().cycle().take(len).collect()
}

/// Payload length of whatever `next` returned, summed over every message in `buf`.
fn decode_all(dec: &mut Decoder, buf: &mut Vec<u8>) -> usize {
    let mut total = 0;
    while let Ok(Some(m)) = dec.next(buf) {
        total += match m {
            Message::Text(p) | Message::Binary(p) | Message::Ping(p) | Message::Pong(p) => p.len(),
            Message::Close(_, p) => p.len(),
        };
    }
    total
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_decode");
    let cases: [(&str, OpCode, usize); 4] = [
        ("text_200B_masked", OpCode::Text, 200),
        ("text_4KiB_masked", OpCode::Text, 4 << 10),
        ("text_64KiB_masked", OpCode::Text, 64 << 10),
        ("binary_64KiB_masked", OpCode::Binary, 64 << 10),
    ];
    for (name, op, len) in cases {
        let payload = json_text(len);
        let mut wire = Vec::new();
        encode_raw_frame(&mut wire, true, op, &payload, Some(MASK));
        g.throughput(Throughput::Bytes(len as u64));
        let size = if len > 8192 {
            BatchSize::LargeInput
        } else {
            BatchSize::SmallInput
        };
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || (Decoder::new(Role::Server, LIMIT), wire.clone()),
                |(dec, buf)| black_box(decode_all(dec, buf)),
                size,
            )
        });
    }

    // One 3 KiB text message in three 1 KiB fragments (assembled in place by memmove).
    let payload = json_text(3 << 10);
    let mut wire = Vec::new();
    for (i, part) in payload.chunks(1 << 10).enumerate() {
        let op = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        encode_raw_frame(&mut wire, i == 2, op, part, Some(MASK));
    }
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("text_3x1KiB_fragments_masked", |b| {
        b.iter_batched_ref(
            || (Decoder::new(Role::Server, LIMIT), wire.clone()),
            |(dec, buf)| black_box(decode_all(dec, buf)),
            BatchSize::SmallInput,
        )
    });

    // 64 pipelined 200 B frames in one read: no memmove between them.
    let payload = json_text(200);
    let mut wire = Vec::new();
    for _ in 0..64 {
        encode_raw_frame(&mut wire, true, OpCode::Text, &payload, Some(MASK));
    }
    g.throughput(Throughput::Bytes(64 * 200));
    g.bench_function("text_64x200B_pipelined_masked", |b| {
        b.iter_batched_ref(
            || (Decoder::new(Role::Server, LIMIT), wire.clone()),
            |(dec, buf)| black_box(decode_all(dec, buf)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_encode");
    let payload = json_text(200);
    let mut out = Vec::with_capacity(256);
    g.throughput(Throughput::Bytes(200));
    g.bench_function("server_text_200B", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(&mut out, OpCode::Text, black_box(&payload));
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
