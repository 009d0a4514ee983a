//! Shared-secret helpers (OWNED BY THE AUTH HELPER — stub).

/// Constant-time string equality (length may leak; content does not).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a == b
}

/// A fresh 256-bit random secret as 43 chars of unpadded base64url.
pub fn generate_token() -> String {
    String::new()
}

/// A random UUID v4 string (nonces, connection ids).
pub fn uuid_v4() -> String {
    String::new()
}
