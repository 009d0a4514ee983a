//! Ed25519 device identity: fingerprints, key decoding, signed payloads, verification
//! (PROTOCOL.md §4, byte-exact with the reference gateway).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::token::{secret_eq, sha256, to_hex};

/// Maximum `|now - signedAt|` in milliseconds.
pub const MAX_SKEW_MS: u64 = 120_000;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Standard-alphabet decoder that, like Node's `Buffer.from(s, "base64")`, accepts input
/// with or without padding and non-zero trailing bits. Callers map `-_` to `+/` first.
const PERMISSIVE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

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
        match self {
            Self::DeviceIdMismatch => "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            Self::SignatureExpired => "DEVICE_AUTH_SIGNATURE_EXPIRED",
            Self::NonceRequired => "DEVICE_AUTH_NONCE_REQUIRED",
            Self::NonceMismatch => "DEVICE_AUTH_NONCE_MISMATCH",
            Self::SignatureInvalid => "DEVICE_AUTH_SIGNATURE_INVALID",
            Self::PublicKeyInvalid => "DEVICE_AUTH_PUBLIC_KEY_INVALID",
        }
    }
    /// `details.reason`, e.g. `device-signature`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DeviceIdMismatch => "device-id-mismatch",
            Self::SignatureExpired => "device-signature-stale",
            Self::NonceRequired => "device-nonce-missing",
            Self::NonceMismatch => "device-nonce-mismatch",
            Self::SignatureInvalid => "device-signature",
            Self::PublicKeyInvalid => "device-public-key",
        }
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
    to_hex(&sha256(raw_public_key))
}

/// Permissive base64 decode: ignores ASCII whitespace, maps the url alphabet (`-_`) onto the
/// standard one, accepts missing or present padding.
fn decode_b64_permissive(s: &str) -> Option<Vec<u8>> {
    let mapped: String = s
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    PERMISSIVE.decode(mapped.as_bytes()).ok()
}

/// Decode a public key given as base64url/base64 raw bytes or an SPKI PEM.
///
/// Accepted: the 32 raw key bytes as base64url or standard base64 (padding optional), or a
/// `-----BEGIN PUBLIC KEY-----` PEM whose DER is the 44-byte Ed25519 SPKI. Only the byte
/// form is checked; whether the bytes are a valid curve point is left to signature
/// verification (a non-point key fails as [`DeviceAuthError::SignatureInvalid`] there).
pub fn decode_public_key(s: &str) -> Result<[u8; 32], DeviceAuthError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let s = s.trim();
    if s.is_empty() {
        return Err(DeviceAuthError::PublicKeyInvalid);
    }
    if s.contains("-----") {
        let body = s
            .strip_prefix(BEGIN)
            .and_then(|rest| rest.trim_end().strip_suffix(END))
            .ok_or(DeviceAuthError::PublicKeyInvalid)?;
        let der = decode_b64_permissive(body).ok_or(DeviceAuthError::PublicKeyInvalid)?;
        let raw = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .ok_or(DeviceAuthError::PublicKeyInvalid)?;
        return raw
            .try_into()
            .map_err(|_| DeviceAuthError::PublicKeyInvalid);
    }
    let raw = decode_b64_permissive(s).ok_or(DeviceAuthError::PublicKeyInvalid)?;
    raw.as_slice()
        .try_into()
        .map_err(|_| DeviceAuthError::PublicKeyInvalid)
}

/// Trim (JS `String.prototype.trim` semantics) and lower-case ASCII `A`–`Z` only.
fn normalize_meta(s: &str) -> String {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .to_ascii_lowercase()
}

/// The fields common to v2 and v3: `{v}|{deviceId}|…|{token}|{nonce}`.
fn payload_common(
    version: &str,
    device_id: &str,
    f: &SignedFields<'_>,
    signed_at: i64,
    nonce: &str,
) -> String {
    format!(
        "{version}|{device_id}|{}|{}|{}|{}|{signed_at}|{}|{nonce}",
        f.client_id,
        f.client_mode,
        f.role,
        f.scopes.join(","),
        f.token,
    )
}

/// The v3 payload string:
/// `v3|{deviceId}|{clientId}|{clientMode}|{role}|{scopes,}|{signedAt}|{token}|{nonce}|{platform}|{deviceFamily}`
/// with platform/deviceFamily trimmed and ASCII-lower-cased.
pub fn payload_v3(device_id: &str, f: &SignedFields<'_>, signed_at: i64, nonce: &str) -> String {
    let mut p = payload_common("v3", device_id, f, signed_at, nonce);
    p.push('|');
    p.push_str(&normalize_meta(f.platform));
    p.push('|');
    p.push_str(&normalize_meta(f.device_family));
    p
}

/// The v2 payload string:
/// `v2|{deviceId}|{clientId}|{clientMode}|{role}|{scopes,}|{signedAt}|{token}|{nonce}`.
pub fn payload_v2(device_id: &str, f: &SignedFields<'_>, signed_at: i64, nonce: &str) -> String {
    payload_common("v2", device_id, f, signed_at, nonce)
}

/// Decompressed keys of recently seen devices, per thread (so per core: no lock). Bounded;
/// cleared when full. Reconnecting devices skip the point decompression (a square root on
/// the curve, ~8% of a device handshake's CPU).
const KEY_CACHE_MAX: usize = 4096;

thread_local! {
    static KEY_CACHE: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The key for `raw`, from the cache or decompressed; `true` when it came from the cache.
fn verifying_key(raw: &[u8; 32]) -> Option<(VerifyingKey, bool)> {
    if let Some(k) = KEY_CACHE.with(|c| c.borrow().get(raw).copied()) {
        return Some((k, true));
    }
    VerifyingKey::from_bytes(raw).ok().map(|k| (k, false))
}

/// Cache a key only once a signature made with it verified, so unauthenticated peers cannot
/// churn the cache with random keys.
fn remember_key(raw: &[u8; 32], key: VerifyingKey) {
    KEY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(*raw, key);
    });
}

/// Verify a device proof in the real server's order (id → skew → nonce → signature v3/v2).
///
/// 1. `proof.public_key` must decode ([`DeviceAuthError::PublicKeyInvalid`]) and
///    `proof.id` must equal its fingerprint exactly ([`DeviceAuthError::DeviceIdMismatch`]);
/// 2. `|now_ms - signed_at| <= 120 000` ([`DeviceAuthError::SignatureExpired`]);
/// 3. `proof.nonce`, trimmed, non-empty ([`DeviceAuthError::NonceRequired`]);
/// 4. trimmed nonce equals `expected_nonce` (constant time; [`DeviceAuthError::NonceMismatch`]);
/// 5. the signature verifies (`verify_strict`) over the v3 payload, else the v2 payload,
///    both built with the trimmed nonce ([`DeviceAuthError::SignatureInvalid`]).
///
/// `fields` must be what the connect frame carried (scopes in the order sent, the token
/// chosen as `auth.token ?? auth.deviceToken ?? auth.bootstrapToken ?? ""`).
pub fn verify(
    proof: &DeviceProof,
    fields: &SignedFields<'_>,
    expected_nonce: &str,
    now_ms: i64,
) -> Result<VerifiedDevice, DeviceAuthError> {
    let raw = decode_public_key(&proof.public_key)?;
    let device_id = device_id_for(&raw);
    if device_id != proof.id {
        return Err(DeviceAuthError::DeviceIdMismatch);
    }
    if now_ms.abs_diff(proof.signed_at) > MAX_SKEW_MS {
        return Err(DeviceAuthError::SignatureExpired);
    }
    let nonce = proof.nonce.as_deref().map(str::trim).unwrap_or("");
    if nonce.is_empty() {
        return Err(DeviceAuthError::NonceRequired);
    }
    if !secret_eq(nonce, expected_nonce) {
        return Err(DeviceAuthError::NonceMismatch);
    }
    let sig_bytes: [u8; 64] = decode_b64_permissive(proof.signature.trim())
        .and_then(|v| v.try_into().ok())
        .ok_or(DeviceAuthError::SignatureInvalid)?;
    let sig = Signature::from_bytes(&sig_bytes);
    let (key, cached) = verifying_key(&raw).ok_or(DeviceAuthError::SignatureInvalid)?;
    let v3 = payload_v3(&device_id, fields, proof.signed_at, nonce);
    let ok = key.verify_strict(v3.as_bytes(), &sig).is_ok() || {
        let v2 = payload_v2(&device_id, fields, proof.signed_at, nonce);
        key.verify_strict(v2.as_bytes(), &sig).is_ok()
    };
    if !ok {
        return Err(DeviceAuthError::SignatureInvalid);
    }
    if !cached {
        remember_key(&raw, key);
    }
    Ok(VerifiedDevice {
        device_id,
        public_key: URL_SAFE_NO_PAD.encode(raw),
    })
}

/// Sign the v3 payload with an Ed25519 seed; returns the unpadded base64url signature
/// (for tests, the load generator and the bundled client).
pub fn sign_v3(
    seed: &[u8; 32],
    device_id: &str,
    fields: &SignedFields<'_>,
    signed_at: i64,
    nonce: &str,
) -> String {
    let key = SigningKey::from_bytes(seed);
    let payload = payload_v3(device_id, fields, signed_at, nonce);
    URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes())
}

/// The raw public key of an Ed25519 seed as unpadded base64url (the wire form).
pub fn public_key_b64url(seed: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(SigningKey::from_bytes(seed).verifying_key().to_bytes())
}

/// The raw public key bytes of an Ed25519 seed.
pub fn public_key_raw(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTOR: &str = include_str!("../../tests/vectors/device-auth.json");
    const CLI_CAPTURE: &str = include_str!("../../tests/vectors/cli-device-signed-autopair.jsonl");
    const CLI_UPGRADE: &str =
        include_str!("../../tests/vectors/cli-device-scope-upgrade-pair-list.jsonl");

    fn vector() -> Value {
        serde_json::from_str(VECTOR).unwrap()
    }

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// Owned inputs of the golden vector.
    struct Inputs {
        scopes: Vec<String>,
        token: String,
        client_id: String,
        client_mode: String,
        role: String,
        platform: String,
        device_family: String,
        nonce: String,
        signed_at: i64,
    }

    impl Inputs {
        fn from(v: &Value) -> Self {
            let i = &v["inputs"];
            let s = |k: &str| i[k].as_str().unwrap().to_string();
            Inputs {
                scopes: i["scopes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
                token: s("token"),
                client_id: s("clientId"),
                client_mode: s("clientMode"),
                role: s("role"),
                platform: s("platform"),
                device_family: s("deviceFamily"),
                nonce: s("nonce"),
                signed_at: i["signedAt"].as_i64().unwrap(),
            }
        }
        fn fields(&self) -> SignedFields<'_> {
            SignedFields {
                client_id: &self.client_id,
                client_mode: &self.client_mode,
                role: &self.role,
                scopes: &self.scopes,
                token: &self.token,
                platform: &self.platform,
                device_family: &self.device_family,
            }
        }
    }

    fn proof_from(v: &Value) -> DeviceProof {
        serde_json::from_value(v["connectDeviceObject"].clone()).unwrap()
    }

    #[test]
    fn golden_device_id_and_key() {
        let v = vector();
        let seed = hex32(v["seedHex"].as_str().unwrap());
        let raw = hex32(v["publicKeyRawHex"].as_str().unwrap());
        assert_eq!(public_key_raw(&seed), raw);
        assert_eq!(
            public_key_b64url(&seed),
            v["publicKeyWire"].as_str().unwrap()
        );
        assert_eq!(device_id_for(&raw), v["deviceId"].as_str().unwrap());
        assert_eq!(
            decode_public_key(v["publicKeyWire"].as_str().unwrap()).unwrap(),
            raw
        );
        assert_eq!(
            decode_public_key(v["publicKeyPem"].as_str().unwrap()).unwrap(),
            raw
        );
    }

    #[test]
    fn public_key_encodings() {
        let v = vector();
        let raw = hex32(v["publicKeyRawHex"].as_str().unwrap());
        let std_padded = base64::engine::general_purpose::STANDARD.encode(raw);
        let std_nopad = base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw);
        let url_padded = base64::engine::general_purpose::URL_SAFE.encode(raw);
        assert!(std_padded.ends_with('='));
        for s in [&std_padded, &std_nopad, &url_padded] {
            assert_eq!(decode_public_key(s).unwrap(), raw, "{s}");
        }
        // PEM with CRLF line endings and surrounding whitespace.
        let pem = v["publicKeyPem"].as_str().unwrap().replace('\n', "\r\n");
        assert_eq!(decode_public_key(&format!("  {pem}  ")).unwrap(), raw);
        // PEM body split over lines.
        let body = "MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let split = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----",
            &body[..20],
            &body[20..]
        );
        assert_eq!(decode_public_key(&split).unwrap(), raw);
    }

    #[test]
    fn public_key_rejects() {
        let bad = [
            "",
            "   ",
            "not base64 !!",
            // 31 bytes
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUQ",
            // 33 bytes
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURoA",
            // raw key wrapped in a PEM without the SPKI prefix
            "-----BEGIN PUBLIC KEY-----\n11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----",
            // X25519 SPKI (OID 1.3.101.110)
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----",
            // wrong armour
            "-----BEGIN PRIVATE KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PRIVATE KEY-----",
            // truncated armour
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
        ];
        for s in bad {
            assert_eq!(
                decode_public_key(s),
                Err(DeviceAuthError::PublicKeyInvalid),
                "{s:?}"
            );
        }
    }

    #[test]
    fn golden_payloads() {
        let v = vector();
        let inp = Inputs::from(&v);
        let id = v["deviceId"].as_str().unwrap();
        let f = inp.fields();
        assert_eq!(
            payload_v3(id, &f, inp.signed_at, &inp.nonce),
            v["payloadV3"].as_str().unwrap()
        );
        assert_eq!(
            payload_v2(id, &f, inp.signed_at, &inp.nonce),
            v["payloadV2"].as_str().unwrap()
        );
        let no_token = SignedFields { token: "", ..f };
        assert_eq!(
            payload_v3(id, &no_token, inp.signed_at, &inp.nonce),
            v["payloadV3WithoutToken"].as_str().unwrap()
        );
    }

    #[test]
    fn payload_normalisation() {
        let scopes: Vec<String> = vec![];
        let f = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            token: "",
            platform: "\t MacOS\u{00C9}\n",
            device_family: "",
        };
        // Empty scopes → empty field; only ASCII A-Z lower-cased; non-ASCII untouched.
        assert_eq!(
            payload_v3("d", &f, 5, "n"),
            "v3|d|cli|cli|operator||5||n|macos\u{00C9}|"
        );
        assert_eq!(payload_v2("d", &f, -1, "n"), "v2|d|cli|cli|operator||-1||n");
        // Scope order is preserved, not sorted.
        let scopes = vec!["operator.write".to_string(), "operator.admin".to_string()];
        let f = SignedFields {
            scopes: &scopes,
            ..f
        };
        assert!(payload_v2("d", &f, 5, "n").contains("|operator.write,operator.admin|"));
    }

    #[test]
    fn golden_signatures() {
        let v = vector();
        let inp = Inputs::from(&v);
        let seed = hex32(v["seedHex"].as_str().unwrap());
        let id = v["deviceId"].as_str().unwrap();
        let f = inp.fields();
        assert_eq!(
            sign_v3(&seed, id, &f, inp.signed_at, &inp.nonce),
            v["signatureV3"].as_str().unwrap()
        );
        let no_token = SignedFields { token: "", ..f };
        assert_eq!(
            sign_v3(&seed, id, &no_token, inp.signed_at, &inp.nonce),
            v["signatureV3WithoutToken"].as_str().unwrap()
        );
        // The v2 signature is the seed's signature over payloadV2.
        let key = SigningKey::from_bytes(&seed);
        let sig2 = URL_SAFE_NO_PAD.encode(
            key.sign(v["payloadV2"].as_str().unwrap().as_bytes())
                .to_bytes(),
        );
        assert_eq!(sig2, v["signatureV2"].as_str().unwrap());
    }

    #[test]
    fn golden_verify_v3_v2_and_without_token() {
        let v = vector();
        let inp = Inputs::from(&v);
        let f = inp.fields();
        let mut proof = proof_from(&v);
        let ok = verify(&proof, &f, &inp.nonce, inp.signed_at).unwrap();
        assert_eq!(ok.device_id, v["deviceId"].as_str().unwrap());
        assert_eq!(ok.public_key, v["publicKeyWire"].as_str().unwrap());

        proof.signature = v["signatureV2"].as_str().unwrap().to_string();
        assert!(verify(&proof, &f, &inp.nonce, inp.signed_at).is_ok());

        proof.signature = v["signatureV3WithoutToken"].as_str().unwrap().to_string();
        assert_eq!(
            verify(&proof, &f, &inp.nonce, inp.signed_at),
            Err(DeviceAuthError::SignatureInvalid)
        );
        let no_token = SignedFields { token: "", ..f };
        assert!(verify(&proof, &no_token, &inp.nonce, inp.signed_at).is_ok());
    }

    #[test]
    fn verify_accepts_alternate_encodings() {
        let v = vector();
        let inp = Inputs::from(&v);
        let f = inp.fields();
        let mut proof = proof_from(&v);
        // PEM public key, normalised to raw base64url in the result.
        proof.public_key = v["publicKeyPem"].as_str().unwrap().to_string();
        let ok = verify(&proof, &f, &inp.nonce, inp.signed_at).unwrap();
        assert_eq!(ok.public_key, v["publicKeyWire"].as_str().unwrap());
        // Standard padded base64 signature.
        let sig = URL_SAFE_NO_PAD
            .decode(v["signatureV3"].as_str().unwrap())
            .unwrap();
        proof.signature = base64::engine::general_purpose::STANDARD.encode(&sig);
        assert!(verify(&proof, &f, &inp.nonce, inp.signed_at).is_ok());
        // Nonce with surrounding whitespace is trimmed.
        proof.nonce = Some(format!("  {}\n", inp.nonce));
        assert!(verify(&proof, &f, &inp.nonce, inp.signed_at).is_ok());
        // Skew boundary: exactly 120 s either way is fine.
        assert!(verify(&proof, &f, &inp.nonce, inp.signed_at + 120_000).is_ok());
        assert!(verify(&proof, &f, &inp.nonce, inp.signed_at - 120_000).is_ok());
    }

    #[test]
    fn verify_error_order() {
        let v = vector();
        let inp = Inputs::from(&v);
        let f = inp.fields();
        let good = proof_from(&v);
        let now = inp.signed_at;
        let n = inp.nonce.as_str();

        // Everything wrong: public key undecodable wins.
        let all_bad = DeviceProof {
            id: "00".repeat(32),
            public_key: "garbage".into(),
            signature: "AAAA".into(),
            signed_at: 0,
            nonce: None,
        };
        assert_eq!(
            verify(&all_bad, &f, n, now),
            Err(DeviceAuthError::PublicKeyInvalid)
        );

        // Good key, wrong id (+ stale, no nonce, bad signature): id mismatch first.
        let p = DeviceProof {
            public_key: good.public_key.clone(),
            ..all_bad.clone()
        };
        assert_eq!(
            verify(&p, &f, n, now),
            Err(DeviceAuthError::DeviceIdMismatch)
        );
        // Upper-case hex id is not the fingerprint.
        let p = DeviceProof {
            id: good.id.to_uppercase(),
            ..good.clone()
        };
        assert_eq!(
            verify(&p, &f, n, now),
            Err(DeviceAuthError::DeviceIdMismatch)
        );

        // Right id, stale: expired next (before nonce checks).
        let p = DeviceProof {
            id: good.id.clone(),
            ..p
        };
        let p = DeviceProof {
            nonce: None,
            signature: "AAAA".into(),
            ..p
        };
        assert_eq!(
            verify(&p, &f, n, now + 120_001),
            Err(DeviceAuthError::SignatureExpired)
        );
        assert_eq!(
            verify(&p, &f, n, now - 120_001),
            Err(DeviceAuthError::SignatureExpired)
        );
        assert_eq!(
            verify(&p, &f, n, i64::MIN),
            Err(DeviceAuthError::SignatureExpired)
        );

        // Fresh, no nonce / blank nonce.
        assert_eq!(verify(&p, &f, n, now), Err(DeviceAuthError::NonceRequired));
        let p = DeviceProof {
            nonce: Some("  ".into()),
            ..p
        };
        assert_eq!(verify(&p, &f, n, now), Err(DeviceAuthError::NonceRequired));

        // Wrong nonce.
        let p = DeviceProof {
            nonce: Some("other".into()),
            ..p
        };
        assert_eq!(verify(&p, &f, n, now), Err(DeviceAuthError::NonceMismatch));

        // Right nonce, bad signature (undecodable, wrong length, tampered, wrong fields).
        let p = DeviceProof {
            nonce: good.nonce.clone(),
            ..p
        };
        assert_eq!(
            verify(&p, &f, n, now),
            Err(DeviceAuthError::SignatureInvalid)
        );
        let p = DeviceProof {
            signature: "!!!!".into(),
            ..p
        };
        assert_eq!(
            verify(&p, &f, n, now),
            Err(DeviceAuthError::SignatureInvalid)
        );
        let mut tampered = good.signature.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let p = DeviceProof {
            signature: String::from_utf8(tampered).unwrap(),
            ..p
        };
        assert_eq!(
            verify(&p, &f, n, now),
            Err(DeviceAuthError::SignatureInvalid)
        );
        let other_scopes = vec!["operator.read".to_string(), "operator.admin".to_string()];
        let reordered = SignedFields {
            scopes: &other_scopes,
            ..f
        };
        assert_eq!(
            verify(&good, &reordered, n, now),
            Err(DeviceAuthError::SignatureInvalid)
        );

        // Sanity: the untouched proof passes.
        assert!(verify(&good, &f, n, now).is_ok());
    }

    #[test]
    fn non_point_key_is_signature_invalid() {
        // 32 bytes that do not decompress to a curve point (about half of all y values).
        let raw = (1u8..=255)
            .map(|b| {
                let mut k = [b; 32];
                k[31] &= 0x7f;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        let scopes: Vec<String> = vec![];
        let f = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            token: "",
            platform: "",
            device_family: "",
        };
        let p = DeviceProof {
            id: device_id_for(&raw),
            public_key: URL_SAFE_NO_PAD.encode(raw),
            signature: URL_SAFE_NO_PAD.encode([0u8; 64]),
            signed_at: 1,
            nonce: Some("n".into()),
        };
        assert_eq!(
            verify(&p, &f, "n", 1),
            Err(DeviceAuthError::SignatureInvalid)
        );
    }

    #[test]
    fn codes_and_reasons() {
        use DeviceAuthError::*;
        let table = [
            (
                DeviceIdMismatch,
                "DEVICE_AUTH_DEVICE_ID_MISMATCH",
                "device-id-mismatch",
            ),
            (
                SignatureExpired,
                "DEVICE_AUTH_SIGNATURE_EXPIRED",
                "device-signature-stale",
            ),
            (
                NonceRequired,
                "DEVICE_AUTH_NONCE_REQUIRED",
                "device-nonce-missing",
            ),
            (
                NonceMismatch,
                "DEVICE_AUTH_NONCE_MISMATCH",
                "device-nonce-mismatch",
            ),
            (
                SignatureInvalid,
                "DEVICE_AUTH_SIGNATURE_INVALID",
                "device-signature",
            ),
            (
                PublicKeyInvalid,
                "DEVICE_AUTH_PUBLIC_KEY_INVALID",
                "device-public-key",
            ),
        ];
        for (e, code, reason) in table {
            assert_eq!(e.detail_code(), code);
            assert_eq!(e.reason(), reason);
        }
    }

    /// Verify the real CLI's signed connect from a capture (password auth → empty token).
    fn verify_capture(capture: &str) {
        let lines: Vec<Value> = capture
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let challenge = lines
            .iter()
            .find(|l| l["frame"]["event"] == "connect.challenge")
            .map(|l| l["frame"]["payload"].clone())
            .unwrap();
        let params = lines
            .iter()
            .find(|l| l["frame"]["method"] == "connect")
            .map(|l| l["frame"]["params"].clone())
            .unwrap();
        let proof: DeviceProof = serde_json::from_value(params["device"].clone()).unwrap();
        assert!(params["auth"].get("token").is_none());
        let scopes: Vec<String> = params["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let client = &params["client"];
        let f = SignedFields {
            client_id: client["id"].as_str().unwrap(),
            client_mode: client["mode"].as_str().unwrap(),
            role: params["role"].as_str().unwrap(),
            scopes: &scopes,
            token: "",
            platform: client["platform"].as_str().unwrap(),
            device_family: client["deviceFamily"].as_str().unwrap(),
        };
        let nonce = challenge["nonce"].as_str().unwrap();
        let ts = challenge["ts"].as_i64().unwrap();
        assert_eq!(proof.signed_at, ts);
        let ok = verify(&proof, &f, nonce, ts).unwrap();
        assert_eq!(ok.device_id, proof.id);
        assert_eq!(ok.public_key, proof.public_key);
        // The capture's payload is exactly the documented example.
        assert!(payload_v3(&ok.device_id, &f, ts, nonce)
            .ends_with(&format!("|{ts}||{nonce}|linux|linux")));
        // A different challenge nonce is refused before the signature is looked at.
        assert_eq!(
            verify(&proof, &f, "5565e69a-0000-0000-0000-000000000000", ts),
            Err(DeviceAuthError::NonceMismatch)
        );
    }

    #[test]
    fn real_cli_signature_verifies() {
        verify_capture(CLI_CAPTURE);
        verify_capture(CLI_UPGRADE);
    }
}
