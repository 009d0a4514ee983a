//! Fuzz the RFC 6455 decoder (`transport::ws::codec::Decoder`) with arbitrary bytes.
//!
//! Works on stable Rust (cargo-fuzz needs `-Z` flags, unlocked by RUSTC_BOOTSTRAP), from the
//! repository root:
//!
//! ```sh
//! cargo install cargo-fuzz   # once
//! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz ws_frame -- -max_total_time=20
//! ```
//!
//! (`--sanitizer none` builds faster; the crate has no unsafe code, so ASan adds little.)
//!
//! Input layout: byte 0 picks the read-split seed's shape, bytes 1..5 seed the read sizes,
//! the rest is the wire. For both roles and two limits (small, large), the wire is decoded
//! (a) in one read and (b) split at pseudo-random read boundaries with `reclaim` before
//! every read (and sometimes between messages), like the connection loop. Oracles: no
//! panics, both feeds yield the same messages and the same final outcome, every message
//! obeys the protocol invariants, errors are sticky.
#![no_main]

use clawgate::transport::ws::codec::{Decoder, Message, Role, WsError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

fn check_and_own(m: Message<'_>, limit: usize) -> Owned {
    match m {
        Message::Text(p) => {
            assert!(p.len() <= limit);
            assert!(std::str::from_utf8(p).is_ok(), "text must be valid UTF-8");
            Owned::Text(p.to_vec())
        }
        Message::Binary(p) => {
            assert!(p.len() <= limit);
            Owned::Binary(p.to_vec())
        }
        Message::Ping(p) => {
            assert!(p.len() <= 125);
            Owned::Ping(p.to_vec())
        }
        Message::Pong(p) => {
            assert!(p.len() <= 125);
            Owned::Pong(p.to_vec())
        }
        Message::Close(code, reason) => {
            assert!(reason.len() <= 123);
            assert!(code.is_some() || reason.is_empty());
            assert!(std::str::from_utf8(reason).is_ok());
            Owned::Close(code, reason.to_vec())
        }
    }
}

struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// Decode `wire`; `split` = None means one read. Returns messages and the final outcome.
fn run(
    role: Role,
    limit: usize,
    wire: &[u8],
    split: Option<(u32, u8)>,
) -> (Vec<Owned>, Result<(), WsError>) {
    let mut dec = Decoder::new(role, limit);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut off = 0;
    let mut rng = Rng(split.map_or(1, |s| s.0));
    let shape = split.map_or(0, |s| s.1);
    loop {
        dec.reclaim(&mut buf);
        if off >= wire.len() {
            break;
        }
        let n = match split {
            None => wire.len(),
            Some(_) => {
                let r = rng.next() as usize;
                let small = 1 + r % (1 + usize::from(shape & 0x3F));
                if shape & 0x40 != 0 && r & 0x100 != 0 {
                    dec.wanted().max(1)
                } else {
                    small
                }
            }
        };
        let n = n.min(wire.len() - off);
        buf.extend_from_slice(&wire[off..off + n]);
        off += n;
        loop {
            match dec.next(&mut buf) {
                Ok(Some(m)) => out.push(check_and_own(m, limit)),
                Ok(None) => break,
                Err(e) => {
                    // Sticky, and reclaim afterwards must not panic.
                    assert_eq!(dec.next(&mut buf), Err(e.clone()));
                    dec.reclaim(&mut buf);
                    return (out, Err(e));
                }
            }
            if shape & 0x80 != 0 && rng.next() & 1 == 0 {
                dec.reclaim(&mut buf);
            }
        }
    }
    (out, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let (shape, seed, wire) = match data {
        [s, a, b, c, d, rest @ ..] => (*s, u32::from_le_bytes([*a, *b, *c, *d]), rest),
        _ => return,
    };
    for role in [Role::Server, Role::Client] {
        for limit in [64usize, 1 << 20] {
            let whole = run(role, limit, wire, None);
            let split = run(role, limit, wire, Some((seed, shape)));
            assert_eq!(whole, split, "split reads must not change the outcome");
        }
    }
});
