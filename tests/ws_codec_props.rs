#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property tests for the RFC 6455 codec (`transport::ws::codec`).
//!
//! * Streams of text/binary messages of arbitrary sizes (up to ~70 KB), arbitrarily
//!   fragmented, with pings interleaved between fragments, encoded (masked with random keys
//!   for the server role, unmasked for the client role) and fed to the decoder split at
//!   arbitrary read boundaries, with `reclaim` before every read as the connection loop
//!   does, decode to exactly the input.
//! * encode ∘ decode = identity for single frames, both roles.
//! * Invalid UTF-8 fails exactly when the offending byte arrives.
//! * Arbitrary (or mutated) bytes never panic.

use clawgate::transport::ws::codec::{
    encode_close, encode_frame, encode_frame_masked, encode_raw_frame, Decoder, Message, OpCode,
    Role, WsError,
};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

fn own(m: Message<'_>) -> Owned {
    match m {
        Message::Text(p) => Owned::Text(p.to_vec()),
        Message::Binary(p) => Owned::Binary(p.to_vec()),
        Message::Ping(p) => Owned::Ping(p.to_vec()),
        Message::Pong(p) => Owned::Pong(p.to_vec()),
        Message::Close(c, p) => Owned::Close(c, p.to_vec()),
    }
}

/// Cheap deterministic generator so large payloads don't go through proptest's value trees.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Characters at the UTF-8 width boundaries.
const PALETTE: [char; 12] = [
    'a',
    '{',
    '\u{7F}',
    '\u{80}',
    'é',
    '\u{7FF}',
    '\u{800}',
    '€',
    '\u{FFFF}',
    '\u{10000}',
    '😀',
    '\u{10FFFF}',
];

#[derive(Debug, Clone)]
struct MsgSpec {
    text: bool,
    len: usize,
    seed: u64,
    /// Fragment cut points (indices into the payload, sorted/deduped when used).
    cuts: Vec<prop::sample::Index>,
    /// For each fragment boundary: a ping to insert after that fragment.
    pings: Vec<Option<Vec<u8>>>,
}

impl MsgSpec {
    fn payload(&self) -> Vec<u8> {
        let mut rng = XorShift(self.seed);
        if self.text {
            let mut s = String::with_capacity(self.len + 4);
            while s.len() < self.len {
                let r = rng.next();
                // Mostly ASCII (JSON-like), sometimes multi-byte.
                let c = if r % 4 == 0 {
                    PALETTE[(r >> 8) as usize % PALETTE.len()]
                } else {
                    char::from(b' ' + (r >> 16) as u8 % 95)
                };
                s.push(c);
            }
            s.into_bytes()
        } else {
            (0..self.len).map(|_| rng.next() as u8).collect()
        }
    }
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..200,
        3 => 200usize..5000,
        1 => 60_000usize..70_000,
    ]
}

fn msg_strategy() -> impl Strategy<Value = MsgSpec> {
    (
        any::<bool>(),
        size_strategy(),
        any::<u64>(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        prop::collection::vec(
            prop::option::weighted(0.3, prop::collection::vec(any::<u8>(), 0..=125)),
            6,
        ),
    )
        .prop_map(|(text, len, seed, cuts, pings)| MsgSpec {
            text,
            len,
            seed,
            cuts,
            pings,
        })
}

fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![1usize..16, 1usize..2_000, 1usize..100_000],
        1..20,
    )
}

/// Encode the message stream; returns (wire bytes, expected decoded sequence, and for each
/// payload byte of every data message the wire index it lives at).
fn encode_stream(msgs: &[MsgSpec], mask_seed: Option<u64>) -> (Vec<u8>, Vec<Owned>) {
    let mut rng = XorShift(mask_seed.unwrap_or(1));
    let mask = |rng: &mut XorShift| mask_seed.map(|_| (rng.next() as u32).to_ne_bytes());
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for m in msgs {
        let payload = m.payload();
        let mut cuts: Vec<usize> = m.cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        cuts.dedup();
        if cuts.len() == 1 {
            cuts.push(0); // empty payload: one frame [0, 0)
        }
        let nfrag = cuts.len() - 1;
        for (i, w) in cuts.windows(2).enumerate() {
            let op = match (i, m.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let fin = i + 1 == nfrag;
            encode_raw_frame(&mut wire, fin, op, &payload[w[0]..w[1]], mask(&mut rng));
            if fin {
                expected.push(if m.text {
                    Owned::Text(payload.clone())
                } else {
                    Owned::Binary(payload.clone())
                });
            }
            if let Some(Some(p)) = m.pings.get(i) {
                encode_raw_frame(&mut wire, true, OpCode::Ping, p, mask(&mut rng));
                expected.push(Owned::Ping(p.clone()));
            }
        }
    }
    (wire, expected)
}

/// Feed `wire` like a connection loop: reclaim, read `sizes[i]` bytes (cycled), drain
/// every complete message. `extra_reclaims` adds reclaim calls between `next` calls.
fn feed(
    dec: &mut Decoder,
    wire: &[u8],
    sizes: &[usize],
    extra_reclaims: bool,
) -> Result<Vec<Owned>, WsError> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut off = 0;
    let mut i = 0;
    while off < wire.len() {
        dec.reclaim(&mut buf);
        let n = sizes[i % sizes.len()].max(1).min(wire.len() - off);
        i += 1;
        buf.extend_from_slice(&wire[off..off + n]);
        off += n;
        while let Some(m) = dec.next(&mut buf)? {
            got.push(own(m));
            if extra_reclaims && i % 2 == 0 {
                dec.reclaim(&mut buf);
            }
        }
    }
    dec.reclaim(&mut buf);
    assert!(buf.is_empty(), "everything consumed at a message boundary");
    Ok(got)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn fragmented_stream_roundtrips_through_arbitrary_reads(
        msgs in prop::collection::vec(msg_strategy(), 1..6),
        mask_seed in any::<u64>(),
        server in any::<bool>(),
        sizes in read_sizes(),
        extra_reclaims in any::<bool>(),
    ) {
        let (wire, expected) = encode_stream(&msgs, server.then_some(mask_seed));
        let role = if server { Role::Server } else { Role::Client };
        let mut dec = Decoder::new(role, 80_000);
        let got = feed(&mut dec, &wire, &sizes, extra_reclaims);
        prop_assert_eq!(got, Ok(expected));
    }

    #[test]
    fn whole_stream_in_one_read_roundtrips(
        msgs in prop::collection::vec(msg_strategy(), 1..6),
        mask_seed in any::<u64>(),
    ) {
        let (wire, expected) = encode_stream(&msgs, Some(mask_seed));
        let mut dec = Decoder::new(Role::Server, 80_000);
        prop_assert_eq!(feed(&mut dec, &wire, &[usize::MAX], false), Ok(expected));
    }

    #[test]
    fn single_frame_encode_decode_identity(
        kind in 0u8..5,
        len in size_strategy(),
        seed in any::<u64>(),
        code in prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999],
        mask in any::<[u8; 4]>(),
    ) {
        let spec = MsgSpec { text: kind == 0, len, seed, cuts: vec![], pings: vec![] };
        let mut payload = spec.payload();
        let (op, expected) = match kind {
            0 => (OpCode::Text, Owned::Text(payload.clone())),
            1 => (OpCode::Binary, Owned::Binary(payload.clone())),
            2 => {
                payload.truncate(125);
                (OpCode::Ping, Owned::Ping(payload.clone()))
            }
            3 => {
                payload.truncate(125);
                (OpCode::Pong, Owned::Pong(payload.clone()))
            }
            _ => {
                let reason = MsgSpec { text: true, ..spec.clone() }.payload();
                let reason = String::from_utf8(reason).unwrap_or_default();
                let mut server_frame = Vec::new();
                encode_close(&mut server_frame, code, &reason);
                let mut dec = Decoder::new(Role::Client, 1 << 20);
                let got = dec.next(&mut server_frame).map(|m| m.map(own));
                let Ok(Some(Owned::Close(Some(c), r))) = got else {
                    return Err(TestCaseError::fail(format!("{got:?}")));
                };
                prop_assert_eq!(c, code);
                prop_assert!(r.len() <= 123);
                prop_assert!(reason.as_bytes().starts_with(&r));
                if reason.len() <= 123 {
                    prop_assert_eq!(r, reason.as_bytes());
                } else {
                    prop_assert!(r.len() + 4 > 123, "truncated more than needed");
                }
                return Ok(());
            }
        };
        let mut server_frame = Vec::new();
        encode_frame(&mut server_frame, op, &payload);
        let mut dec = Decoder::new(Role::Client, 1 << 20);
        prop_assert_eq!(dec.next(&mut server_frame).map(|m| m.map(own)), Ok(Some(expected.clone())));

        let mut client_frame = Vec::new();
        encode_frame_masked(&mut client_frame, op, &payload, mask);
        let mut dec = Decoder::new(Role::Server, 1 << 20);
        prop_assert_eq!(dec.next(&mut client_frame).map(|m| m.map(own)), Ok(Some(expected)));
    }

    #[test]
    fn invalid_utf8_fails_exactly_when_offending_byte_arrives(
        prefix in "\\PC{0,40}",
        garbage in prop::collection::vec(any::<u8>(), 1..6),
        suffix in "\\PC{0,10}",
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        mask in any::<[u8; 4]>(),
    ) {
        let mut payload = prefix.into_bytes();
        payload.extend_from_slice(&garbage);
        payload.extend_from_slice(suffix.as_bytes());
        prop_assume!(std::str::from_utf8(&payload).is_err());
        // Smallest payload prefix that is definitely invalid (None: only an incomplete
        // sequence at the very end, detected when the message ends).
        let bad = (1..=payload.len()).find(|&j| {
            matches!(std::str::from_utf8(&payload[..j]), Err(e) if e.error_len().is_some())
        });
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        cuts.extend([0, payload.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        let mut wire = Vec::new();
        let mut wire_pos = Vec::new(); // wire index of each payload byte
        let nfrag = cuts.len() - 1;
        for (i, w) in cuts.windows(2).enumerate() {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            let before = wire.len();
            encode_raw_frame(&mut wire, i + 1 == nfrag, op, &payload[w[0]..w[1]], Some(mask));
            let body = wire.len() - (w[1] - w[0]);
            wire_pos.extend(body..wire.len());
            prop_assert!(body > before);
        }
        let expect_at = match bad {
            Some(j) => wire_pos[j - 1],
            None => wire.len() - 1,
        };
        let mut dec = Decoder::new(Role::Server, 1 << 20);
        let mut buf = Vec::new();
        for (i, &b) in wire.iter().enumerate() {
            dec.reclaim(&mut buf);
            buf.push(b);
            match dec.next(&mut buf) {
                Ok(None) => prop_assert!(i < expect_at, "no error at wire byte {} (expected {})", i, expect_at),
                Err(WsError::InvalidUtf8) => {
                    prop_assert_eq!(i, expect_at);
                    return Ok(());
                }
                other => return Err(TestCaseError::fail(format!("{other:?} at {i}"))),
            }
        }
        prop_assert!(false, "never failed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in prop::collection::vec(1usize..64, 1..8),
        server in any::<bool>(),
        max in prop_oneof![0usize..200, Just(65_536usize)],
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let mut dec = Decoder::new(role, max);
        let _ = feed_until_error(&mut dec, &bytes, &sizes);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        msgs in prop::collection::vec(msg_strategy(), 1..4),
        mask_seed in any::<u64>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        sizes in read_sizes(),
    ) {
        let (mut wire, _) = encode_stream(&msgs, Some(mask_seed));
        for (at, x) in flips {
            let i = at.index(wire.len());
            wire[i] ^= x;
        }
        let mut dec = Decoder::new(Role::Server, 70_000);
        let _ = feed_until_error(&mut dec, &wire, &sizes);
    }
}

/// Like `feed` but tolerant: stops at the first error, exercising `wanted` and `reclaim`.
fn feed_until_error(dec: &mut Decoder, wire: &[u8], sizes: &[usize]) -> Result<(), WsError> {
    let mut buf = Vec::new();
    let mut off = 0;
    let mut i = 0;
    while off < wire.len() {
        dec.reclaim(&mut buf);
        let n = sizes[i % sizes.len()].max(dec.wanted().min(4096)).max(1);
        let n = n.min(wire.len() - off);
        i += 1;
        buf.extend_from_slice(&wire[off..off + n]);
        off += n;
        while let Some(m) = dec.next(&mut buf)? {
            let _ = own(m);
        }
    }
    dec.reclaim(&mut buf);
    Ok(())
}
