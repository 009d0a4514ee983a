//! Shared-secret helpers: constant-time comparison, random tokens and UUIDs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Constant-time string equality.
///
/// Both sides are hashed with SHA-256 first and the digests compared with
/// [`subtle::ConstantTimeEq`]: the content never leaks, and the lengths are not compared
/// at all (only the number of 64-byte SHA-256 blocks hashed depends on them).
pub fn secret_eq(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

/// SHA-256 of a secret as raw bytes (for hashed-secret stores).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of arbitrary bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// `N` bytes from the OS CSPRNG.
///
/// Small requests are served from a per-thread pool refilled from `getrandom(2)` 512 bytes
/// at a time: every byte still comes straight from the OS generator and is handed out once
/// (and wiped from the pool when taken), but a handshake's nonce no longer costs a syscall.
/// The gateway never forks, so a pool cannot be duplicated into a child.
///
/// # Panics
/// Only if the operating system cannot supply randomness after several attempts: issuing a
/// predictable secret would be worse than stopping.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if N > POOL_BYTES {
        os_random(&mut buf);
        return buf;
    }
    POOL.with(|cell| {
        let mut pool = cell.borrow_mut();
        if pool.pos + N > POOL_BYTES {
            os_random(&mut pool.bytes);
            pool.pos = 0;
        }
        let start = pool.pos;
        let taken = &mut pool.bytes[start..start + N];
        buf.copy_from_slice(taken);
        taken.fill(0);
        pool.pos += N;
    });
    buf
}

const POOL_BYTES: usize = 512;

struct RandomPool {
    bytes: [u8; POOL_BYTES],
    /// Bytes before `pos` were handed out (and wiped); a fresh pool starts empty.
    pos: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool { bytes: [0; POOL_BYTES], pos: POOL_BYTES })
    };
}

#[allow(clippy::panic)]
fn os_random(buf: &mut [u8]) {
    let mut last_err = None;
    for _ in 0..8 {
        match getrandom::getrandom(buf) {
            Ok(()) => return,
            Err(e) => last_err = Some(e),
        }
    }
    panic!("OS random number generator unavailable: {last_err:?}");
}

/// A fresh 256-bit random secret as 43 chars of unpadded base64url.
pub fn generate_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A random UUID v4 string (nonces, connection ids): lower-case, 8-4-4-4-12, version 4,
/// RFC 4122 variant.
pub fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = to_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_never_repeat_across_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        // 2 000 × 16 bytes spans many 512-byte refills; a reused or zeroed chunk would repeat.
        for _ in 0..2000 {
            assert!(seen.insert(random_bytes::<16>()), "random chunk repeated");
        }
        let big = random_bytes::<600>();
        assert!(big.iter().any(|&b| b != 0));
    }

    #[test]
    fn secret_eq_basic() {
        assert!(secret_eq("", ""));
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert!(!secret_eq("", "a"));
        assert!(!secret_eq("Abc", "abc"));
    }

    #[test]
    fn token_shape_and_uniqueness() {
        let t = generate_token();
        assert_eq!(t.len(), 43);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        let set: std::collections::HashSet<String> = (0..256).map(|_| generate_token()).collect();
        assert_eq!(set.len(), 256);
    }

    #[test]
    fn uuid_shape() {
        for _ in 0..256 {
            let u = uuid_v4();
            assert_eq!(u.len(), 36);
            let parts: Vec<&str> = u.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(u
                .bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert_eq!(&parts[2][0..1], "4");
            assert!(matches!(&parts[3][0..1], "8" | "9" | "a" | "b"));
        }
        assert_ne!(uuid_v4(), uuid_v4());
    }

    #[test]
    fn hex_and_sha() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
