//! Ed25519 device identity (OWNED BY THE AUTH HELPER — stub).

/// Why a device proof was refused; maps to `details.code` / `details.reason` (PROTOCOL.md §3.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceAuthError {
    /// `device.id` is not sha256(publicKey).
    #[error("device identity mismatch")]
    DeviceIdMismatch,
    /// `|now - signedAt| > 120 s`.
    #[error("device signature expired")]
    SignatureExpired,
    /// No nonce in the proof.
    #[error("device nonce required")]
    NonceRequired,
    /// Nonce differs from the one sent on this socket.
    #[error("device nonce mismatch")]
    NonceMismatch,
    /// Neither the v3 nor the v2 payload verifies.
    #[error("device signature invalid")]
    SignatureInvalid,
    /// Public key not decodable.
    #[error("device public key invalid")]
    PublicKeyInvalid,
}

impl DeviceAuthError {
    /// `details.code`, e.g. `DEVICE_AUTH_SIGNATURE_INVALID`.
    pub fn detail_code(&self) -> &'static str {
        ""
    }
    /// `details.reason`, e.g. `device-signature`.
    pub fn reason(&self) -> &'static str {
        ""
    }
}

/// `connect.params.device` as received.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProof {
    /// Claimed device id (hex sha256 of the raw public key).
    pub id: String,
    /// Public key (base64url raw; PEM and std base64 accepted).
    pub public_key: String,
    /// Signature (base64url; permissive decoding).
    pub signature: String,
    /// Signing time (ms), the challenge `ts`.
    pub signed_at: i64,
    /// The challenge nonce.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// The connect fields that go into the signed payload.
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    /// `client.id`.
    pub client_id: &'a str,
    /// `client.mode`.
    pub client_mode: &'a str,
    /// Resolved role.
    pub role: &'a str,
    /// Scopes as sent (order preserved).
    pub scopes: &'a [String],
    /// `auth.token ?? auth.deviceToken ?? auth.bootstrapToken ?? ""`.
    pub token: &'a str,
    /// `client.platform` (raw; normalised inside).
    pub platform: &'a str,
    /// `client.deviceFamily` (raw; normalised inside).
    pub device_family: &'a str,
}

/// A verified device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    /// Hex sha256 of the raw public key.
    pub device_id: String,
    /// Raw public key as unpadded base64url.
    pub public_key: String,
}

/// Lower-case hex SHA-256 of a raw public key.
pub fn device_id_for(raw_public_key: &[u8; 32]) -> String {
    let _ = raw_public_key;
    String::new()
}

/// Decode a public key given as base64url/base64 raw bytes or an SPKI PEM.
pub fn decode_public_key(s: &str) -> Result<[u8; 32], DeviceAuthError> {
    let _ = s;
    Err(DeviceAuthError::PublicKeyInvalid)
}

/// The v3 payload string.
pub fn payload_v3(device_id: &str, f: &SignedFields<'_>, signed_at: i64, nonce: &str) -> String {
    let _ = (device_id, f, signed_at, nonce);
    String::new()
}

/// The v2 payload string.
pub fn payload_v2(device_id: &str, f: &SignedFields<'_>, signed_at: i64, nonce: &str) -> String {
    let _ = (device_id, f, signed_at, nonce);
    String::new()
}

/// Verify a device proof in the real server's order (id → skew → nonce → signature v3/v2).
pub fn verify(
    proof: &DeviceProof,
    fields: &SignedFields<'_>,
    expected_nonce: &str,
    now_ms: i64,
) -> Result<VerifiedDevice, DeviceAuthError> {
    let _ = (proof, fields, expected_nonce, now_ms);
    Err(DeviceAuthError::SignatureInvalid)
}
