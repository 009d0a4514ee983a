//! Paired devices and their tokens (OWNED BY THE AUTH HELPER — stub).

use std::path::Path;

/// A token issued to a device for one role. Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenRecord {
    /// Role the token authenticates as.
    pub role: String,
    /// Scopes granted to the token.
    pub scopes: Vec<String>,
    /// Hex sha256 of the token secret.
    pub token_sha256: String,
    /// Issue time (ms).
    pub created_at_ms: i64,
    /// Last rotation time (ms).
    pub rotated_at_ms: Option<i64>,
}

/// One paired device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairedDevice {
    /// Device id.
    pub device_id: String,
    /// Raw public key, base64url.
    pub public_key: String,
    /// Platform as sent.
    pub platform: Option<String>,
    /// Device family as sent.
    pub device_family: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client mode.
    pub client_mode: String,
    /// Primary role.
    pub role: String,
    /// All roles.
    pub roles: Vec<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `silent` for loopback auto-approval.
    pub approved_via: String,
    /// First pairing (ms).
    pub created_at_ms: i64,
    /// Approval (ms).
    pub approved_at_ms: i64,
    /// Last seen (ms).
    pub last_seen_at_ms: i64,
    /// Tokens per role.
    pub tokens: Vec<DeviceTokenRecord>,
}

/// Input for pairing: a verified device and what it asked for.
#[derive(Debug, Clone)]
pub struct PairingRequest<'a> {
    /// Verified id.
    pub device_id: &'a str,
    /// Verified public key (base64url).
    pub public_key: &'a str,
    /// Client id.
    pub client_id: &'a str,
    /// Client mode.
    pub client_mode: &'a str,
    /// Platform.
    pub platform: Option<&'a str>,
    /// Device family.
    pub device_family: Option<&'a str>,
    /// Role requested.
    pub role: &'a str,
    /// Scopes requested.
    pub scopes: &'a [String],
}

/// The registry of paired devices (in memory; `save` persists it).
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    devices: std::collections::BTreeMap<String, PairedDevice>,
}

impl DeviceRegistry {
    /// Load `<state_dir>/devices/paired.json` (missing → empty).
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let _ = state_dir;
        Ok(Self::default())
    }
    /// Persist atomically (0600).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let _ = state_dir;
        Ok(())
    }
    /// Look up a device.
    pub fn get(&self, device_id: &str) -> Option<&PairedDevice> {
        self.devices.get(device_id)
    }
    /// All devices.
    pub fn iter(&self) -> impl Iterator<Item = &PairedDevice> {
        self.devices.values()
    }
    /// Silent (local) approval: create the record or union new scopes/roles into it.
    pub fn approve_silently(&mut self, req: &PairingRequest<'_>, now_ms: i64) -> &PairedDevice {
        let _ = now_ms;
        self.devices.entry(req.device_id.to_string()).or_insert_with(|| PairedDevice {
            device_id: req.device_id.to_string(),
            public_key: req.public_key.to_string(),
            platform: None,
            device_family: None,
            client_id: String::new(),
            client_mode: String::new(),
            role: String::new(),
            roles: Vec::new(),
            scopes: Vec::new(),
            approved_via: String::new(),
            created_at_ms: 0,
            approved_at_ms: 0,
            last_seen_at_ms: 0,
            tokens: Vec::new(),
        })
    }
    /// Issue (or rotate) the token for (device, role); returns the secret (shown once).
    pub fn issue_token(&mut self, device_id: &str, role: &str, scopes: &[String], now_ms: i64) -> Option<String> {
        let _ = (device_id, role, scopes, now_ms);
        None
    }
    /// Find the device and token record matching a presented secret (hash compare).
    pub fn check_token(&self, secret: &str) -> Option<(&PairedDevice, &DeviceTokenRecord)> {
        let _ = secret;
        None
    }
    /// Apply a record received from the owner core (replica update).
    pub fn put(&mut self, device: PairedDevice) {
        self.devices.insert(device.device_id.clone(), device);
    }
}
