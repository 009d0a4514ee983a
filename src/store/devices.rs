//! Paired devices and their tokens, persisted at `<state_dir>/devices/paired.json`.
//!
//! File format: `{"version":1,"devices":[PairedDevice…]}` (camelCase fields), written with
//! [`write_atomic`] at mode 0600. Token secrets are stored (0600) beside their SHA-256 index so a reconnecting device gets the same token back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;

use super::io_thread::{run_inline, Job};
use crate::auth::device::decode_public_key;
use crate::auth::token::{generate_token, sha256, to_hex};

/// Current `paired.json` format version.
pub const FILE_VERSION: u32 = 1;

/// `approvedVia` for loopback auto-approval.
pub const APPROVED_VIA_SILENT: &str = "silent";

/// A token issued to a device for one role. Looked up by the SHA-256 of the secret.
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
    #[serde(default)]
    pub rotated_at_ms: Option<i64>,
    /// The secret itself, so a reconnecting device gets the same token back (the real
    /// gateway's `ensureDeviceToken` returns the existing token; rotating on every connect
    /// breaks CLIs that discard the token in read-only mode). The file is 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
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
    #[serde(default)]
    pub platform: Option<String>,
    /// Device family as sent.
    #[serde(default)]
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
    #[serde(default)]
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

/// On-disk shape (owned, for loading).
#[derive(serde::Deserialize)]
struct FileIn {
    version: u32,
    #[serde(default)]
    devices: Vec<PairedDevice>,
}

/// On-disk shape (borrowed, for saving).
#[derive(serde::Serialize)]
struct FileOut<'a> {
    version: u32,
    devices: Vec<&'a PairedDevice>,
}

/// `<state_dir>/devices/paired.json`.
pub fn paired_path(state_dir: &Path) -> PathBuf {
    state_dir.join("devices").join("paired.json")
}

/// Decode a 64-char hex SHA-256 (either case); `None` when malformed.
fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// Append each of `new` to `into` unless already present; true when anything was added.
fn union_into(into: &mut Vec<String>, new: &[String]) -> bool {
    let mut added = false;
    for s in new {
        if !into.iter().any(|x| x == s) {
            into.push(s.clone());
            added = true;
        }
    }
    added
}

/// Same key? Compares decoded bytes so encoding differences (PEM, padding) don't matter.
fn same_public_key(a: &str, b: &str) -> bool {
    match (decode_public_key(a), decode_public_key(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The registry of paired devices (in memory; `save` persists it).
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    devices: std::collections::BTreeMap<String, PairedDevice>,
    /// sha256(token secret) → (device id, role). Derived from `devices`; kept in sync by
    /// every mutation.
    by_token_hash: HashMap<[u8; 32], (String, String)>,
}

impl DeviceRegistry {
    /// Load `<state_dir>/devices/paired.json` (missing → empty).
    ///
    /// Unparseable JSON or an unknown `version` is an `InvalidData` error (never silently
    /// treated as empty, which would un-pair every device on the next save).
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        remove_stale_temps(&paired_path(state_dir));
        let bytes = match std::fs::read(paired_path(state_dir)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let file: FileIn = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if file.version != FILE_VERSION {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("devices/paired.json: unsupported version {}", file.version),
            ));
        }
        let mut reg = Self::default();
        for d in file.devices {
            reg.put(d);
        }
        Ok(reg)
    }
    /// Persist atomically (0600); the `devices` directory is created 0700 if missing.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        run_inline(vec![self.save_job(state_dir)?])
    }

    /// [`Self::save`] as a job for a store thread ([`super::io_thread`]): the registry is
    /// serialized now (and the directory created), the write happens there.
    pub fn save_job(&self, state_dir: &Path) -> std::io::Result<Job> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = paired_path(state_dir);
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let out = FileOut {
            version: FILE_VERSION,
            devices: self.devices.values().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&out)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        bytes.push(b'\n');
        Ok(Job::WriteAtomic {
            path,
            bytes,
            mode: 0o600,
        })
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
    ///
    /// New device: a record with `approvedVia:"silent"`, `role`/`roles` = the requested
    /// role, the requested scopes (deduplicated, order kept), all timestamps `now_ms`, no
    /// tokens. Known device: `lastSeenAtMs = now_ms`; the requested role and scopes are
    /// appended when missing (existing order kept) and, if anything was added,
    /// `approvedAtMs = now_ms` and `approvedVia = "silent"`. Other metadata is untouched.
    ///
    /// If the stored public key differs from `req.public_key` the stored record is returned
    /// **unchanged** (no grant, no last-seen update): callers must compare
    /// `returned.public_key` with the verified key and refuse on mismatch.
    pub fn approve_silently(&mut self, req: &PairingRequest<'_>, now_ms: i64) -> &PairedDevice {
        match self.devices.entry(req.device_id.to_string()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                let mut scopes = Vec::with_capacity(req.scopes.len());
                union_into(&mut scopes, req.scopes);
                v.insert(PairedDevice {
                    device_id: req.device_id.to_string(),
                    public_key: req.public_key.to_string(),
                    platform: req.platform.map(str::to_string),
                    device_family: req.device_family.map(str::to_string),
                    client_id: req.client_id.to_string(),
                    client_mode: req.client_mode.to_string(),
                    role: req.role.to_string(),
                    roles: vec![req.role.to_string()],
                    scopes,
                    approved_via: APPROVED_VIA_SILENT.to_string(),
                    created_at_ms: now_ms,
                    approved_at_ms: now_ms,
                    last_seen_at_ms: now_ms,
                    tokens: Vec::new(),
                })
            }
            std::collections::btree_map::Entry::Occupied(o) => {
                let dev = o.into_mut();
                if same_public_key(&dev.public_key, req.public_key) {
                    let role_added = union_into(&mut dev.roles, &[req.role.to_string()]);
                    let scopes_added = union_into(&mut dev.scopes, req.scopes);
                    if role_added || scopes_added {
                        dev.approved_at_ms = now_ms;
                        dev.approved_via = APPROVED_VIA_SILENT.to_string();
                    }
                    dev.last_seen_at_ms = now_ms;
                }
                dev
            }
        }
    }
    /// Issue (or rotate) the token for (device, role); returns the secret (shown once).
    ///
    /// Replaces any previous token of that (device, role): the old secret stops working
    /// immediately. The record's scopes become `scopes` exactly (order as given);
    /// `createdAtMs` is kept on rotation and `rotatedAtMs = now_ms`; a first issue has
    /// `createdAtMs = now_ms`, `rotatedAtMs = None`. `None` when the device is unknown.
    /// Does not check that `role`/`scopes` are within the device's grant: callers do.
    pub fn issue_token(
        &mut self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Option<String> {
        let dev = self.devices.get_mut(device_id)?;
        let secret = generate_token();
        let hash = sha256(secret.as_bytes());
        let hash_hex = to_hex(&hash);
        match dev.tokens.iter_mut().find(|t| t.role == role) {
            Some(t) => {
                if let Some(old) = parse_sha256_hex(&t.token_sha256) {
                    self.by_token_hash.remove(&old);
                }
                t.token_sha256 = hash_hex;
                t.scopes = scopes.to_vec();
                t.rotated_at_ms = Some(now_ms);
                t.secret = Some(secret.clone());
            }
            None => dev.tokens.push(DeviceTokenRecord {
                role: role.to_string(),
                scopes: scopes.to_vec(),
                token_sha256: hash_hex,
                created_at_ms: now_ms,
                rotated_at_ms: None,
                secret: Some(secret.clone()),
            }),
        }
        self.by_token_hash
            .insert(hash, (device_id.to_string(), role.to_string()));
        Some(secret)
    }
    /// Return the existing token for (device, role) when it already covers `scopes`; otherwise
    /// issue (rotate) one. Returns the secret, its issue time, and whether anything changed
    /// (the caller persists only then).
    pub fn ensure_token(
        &mut self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Option<(String, i64, bool)> {
        let existing = self
            .devices
            .get(device_id)?
            .tokens
            .iter()
            .find(|t| t.role == role)
            .and_then(|t| {
                let covers = scopes
                    .iter()
                    .all(|s| crate::auth::scopes::satisfied(&t.scopes, s));
                let secret = t.secret.clone()?;
                covers.then(|| (secret, t.rotated_at_ms.unwrap_or(t.created_at_ms)))
            });
        if let Some((secret, at)) = existing {
            return Some((secret, at, false));
        }
        self.issue_token(device_id, role, scopes, now_ms)
            .map(|s| (s, now_ms, true))
    }

    /// The token a paired device would get back right now without any change to the
    /// registry: the device is paired with this key, holds `role`, its grant covers `scopes`,
    /// and its token for `role` covers them too. `None` means pairing work is needed.
    pub fn unchanged_token(
        &self,
        device_id: &str,
        public_key: &str,
        role: &str,
        scopes: &[String],
    ) -> Option<(String, i64)> {
        let d = self.devices.get(device_id)?;
        let covered = |granted: &[String]| {
            scopes
                .iter()
                .all(|s| crate::auth::scopes::satisfied(granted, s))
        };
        if d.public_key != public_key || !d.roles.iter().any(|r| r == role) || !covered(&d.scopes) {
            return None;
        }
        let t = d.tokens.iter().find(|t| t.role == role)?;
        if !covered(&t.scopes) {
            return None;
        }
        Some((
            t.secret.clone()?,
            t.rotated_at_ms.unwrap_or(t.created_at_ms),
        ))
    }

    /// Find the device and token record matching a presented secret (hash compare).
    ///
    /// The secret is hashed, looked up in the hash index and the stored hash re-checked in
    /// constant time. The caller still has to check that the returned record's role and
    /// scopes cover what the connect asked for.
    pub fn check_token(&self, secret: &str) -> Option<(&PairedDevice, &DeviceTokenRecord)> {
        let hash = sha256(secret.as_bytes());
        let (device_id, role) = self.by_token_hash.get(&hash)?;
        let dev = self.devices.get(device_id)?;
        let rec = dev.tokens.iter().find(|t| &t.role == role)?;
        let stored = parse_sha256_hex(&rec.token_sha256)?;
        bool::from(stored.ct_eq(&hash)).then_some((dev, rec))
    }
    /// Apply a record received from the owner core (replica update).
    pub fn put(&mut self, device: PairedDevice) {
        if let Some(old) = self.devices.remove(&device.device_id) {
            self.unindex(&old);
        }
        self.index(&device);
        self.devices.insert(device.device_id.clone(), device);
    }
    /// Remove a device and its tokens; returns the removed record.
    pub fn remove(&mut self, device_id: &str) -> Option<PairedDevice> {
        let old = self.devices.remove(device_id)?;
        self.unindex(&old);
        Some(old)
    }
    /// Drop the token of (device, role); true when one existed.
    pub fn revoke_token(&mut self, device_id: &str, role: &str) -> bool {
        let Some(dev) = self.devices.get_mut(device_id) else {
            return false;
        };
        let Some(pos) = dev.tokens.iter().position(|t| t.role == role) else {
            return false;
        };
        let rec = dev.tokens.remove(pos);
        if let Some(h) = parse_sha256_hex(&rec.token_sha256) {
            self.by_token_hash.remove(&h);
        }
        true
    }
    fn index(&mut self, dev: &PairedDevice) {
        for t in &dev.tokens {
            if let Some(h) = parse_sha256_hex(&t.token_sha256) {
                self.by_token_hash
                    .insert(h, (dev.device_id.clone(), t.role.clone()));
            }
        }
    }
    fn unindex(&mut self, dev: &PairedDevice) {
        for t in &dev.tokens {
            if let Some(h) = parse_sha256_hex(&t.token_sha256) {
                if self
                    .by_token_hash
                    .get(&h)
                    .is_some_and(|(d, _)| d == &dev.device_id)
                {
                    self.by_token_hash.remove(&h);
                }
            }
        }
    }
}

/// One `device.pair.list` `paired[]` entry (PROTOCOL.md §4.1), token secrets omitted.
///
/// `platform`/`deviceFamily`/token `rotatedAtMs` are omitted when unset;
/// `lastSeenReason` is always `"connect"` (the only reason recorded).
pub fn to_pair_list_entry(d: &PairedDevice, connected: bool) -> Value {
    let tokens: Vec<Value> = d
        .tokens
        .iter()
        .map(|t| {
            let mut o = json!({
                "role": t.role,
                "scopes": t.scopes,
                "createdAtMs": t.created_at_ms,
            });
            if let (Some(r), Some(m)) = (t.rotated_at_ms, o.as_object_mut()) {
                m.insert("rotatedAtMs".into(), json!(r));
            }
            o
        })
        .collect();
    let mut o = json!({
        "deviceId": d.device_id,
        "publicKey": d.public_key,
        "clientId": d.client_id,
        "clientMode": d.client_mode,
        "role": d.role,
        "roles": d.roles,
        "scopes": d.scopes,
        "approvedVia": d.approved_via,
        "createdAtMs": d.created_at_ms,
        "approvedAtMs": d.approved_at_ms,
        "lastSeenAtMs": d.last_seen_at_ms,
        "lastSeenReason": "connect",
        "connected": connected,
        "tokens": tokens,
    });
    if let Some(m) = o.as_object_mut() {
        if let Some(p) = &d.platform {
            m.insert("platform".into(), json!(p));
        }
        if let Some(f) = &d.device_family {
            m.insert("deviceFamily".into(), json!(f));
        }
    }
    o
}

/// Remove `<file>.tmp.<pid>.<random>` files a killed writer left next to `path` (an
/// atomic write interrupted before its rename), unless their process is still alive.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.tmp.");
    for ent in entries.flatten() {
        let file = ent.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| {
            p == std::process::id() || Path::new("/proc").join(p.to_string()).exists()
        });
        if !alive {
            let _ = std::fs::remove_file(ent.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::random_bytes;

    const CLI_UPGRADE: &str =
        include_str!("../../tests/vectors/cli-device-scope-upgrade-pair-list.jsonl");
    const DEV_ID: &str = "da823c26e26e2ad99fb9b1728a8d7c8333ec5396c5ae3ac18a9f1e9438e04dbc";
    const DEV_KEY: &str = "eLYyH_tV7jBhYkERwUXv39d-GEPiC47PqtX6-XyMGSI";

    fn test_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "clawgate-devices-{tag}-{}-{}",
            std::process::id(),
            to_hex(&random_bytes::<6>())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn load_removes_temp_files_of_dead_writers_only() {
        let d = test_dir("stale-temps");
        let devices = d.join("devices");
        std::fs::create_dir_all(&devices).unwrap();
        let dead = devices.join("paired.json.tmp.4000000000.ab12");
        let ours = devices.join(format!("paired.json.tmp.{}.cd34", std::process::id()));
        let other = devices.join("other.json.tmp.4000000000.ef56");
        for f in [&dead, &ours, &other] {
            std::fs::write(f, b"{").unwrap();
        }
        DeviceRegistry::load(&d).unwrap();
        assert!(!dead.exists(), "a dead writer's temp file stays forever");
        assert!(ours.exists() && other.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req<'a>(scopes: &'a [String], role: &'a str) -> PairingRequest<'a> {
        PairingRequest {
            device_id: DEV_ID,
            public_key: DEV_KEY,
            client_id: "cli",
            client_mode: "cli",
            platform: Some("linux"),
            device_family: Some("Linux"),
            role,
            scopes,
        }
    }

    #[test]
    fn new_device_record() {
        let mut r = DeviceRegistry::default();
        let scopes = sv(&["operator.read", "operator.read"]);
        let d = r.approve_silently(&req(&scopes, "operator"), 100).clone();
        assert_eq!(d.device_id, DEV_ID);
        assert_eq!(d.public_key, DEV_KEY);
        assert_eq!(d.approved_via, "silent");
        assert_eq!(d.roles, ["operator"]);
        assert_eq!(d.role, "operator");
        assert_eq!(d.scopes, ["operator.read"]);
        assert_eq!(
            (d.created_at_ms, d.approved_at_ms, d.last_seen_at_ms),
            (100, 100, 100)
        );
        assert_eq!(d.platform.as_deref(), Some("linux"));
        assert_eq!(d.device_family.as_deref(), Some("Linux"));
        assert!(d.tokens.is_empty());
        assert_eq!(r.get(DEV_ID), Some(&d));
        assert_eq!(r.iter().count(), 1);
    }

    #[test]
    fn scope_and_role_union() {
        let mut r = DeviceRegistry::default();
        let s1 = sv(&["operator.read"]);
        r.approve_silently(&req(&s1, "operator"), 100);
        // Nothing new: only last-seen moves.
        let d = r.approve_silently(&req(&s1, "operator"), 150).clone();
        assert_eq!((d.approved_at_ms, d.last_seen_at_ms), (100, 150));
        // New scope appended after existing ones.
        let s2 = sv(&["operator.pairing", "operator.read"]);
        let d = r.approve_silently(&req(&s2, "operator"), 200).clone();
        assert_eq!(d.scopes, ["operator.read", "operator.pairing"]);
        assert_eq!(
            (d.created_at_ms, d.approved_at_ms, d.last_seen_at_ms),
            (100, 200, 200)
        );
        // New role appended; primary role unchanged.
        let d = r.approve_silently(&req(&[], "node"), 300).clone();
        assert_eq!(d.roles, ["operator", "node"]);
        assert_eq!(d.role, "operator");
        assert_eq!(d.scopes, ["operator.read", "operator.pairing"]);
    }

    #[test]
    fn different_key_is_not_overwritten() {
        let mut r = DeviceRegistry::default();
        let s1 = sv(&["operator.read"]);
        r.approve_silently(&req(&s1, "operator"), 100);
        let s2 = sv(&["operator.admin"]);
        let other = PairingRequest {
            public_key: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            ..req(&s2, "operator")
        };
        let d = r.approve_silently(&other, 200).clone();
        assert_eq!(d.public_key, DEV_KEY);
        assert_eq!(d.scopes, ["operator.read"]);
        assert_eq!(d.last_seen_at_ms, 100);
        // The same key in another encoding is the same device.
        let padded = format!("{DEV_KEY}=");
        let same = PairingRequest {
            public_key: &padded,
            ..req(&s2, "operator")
        };
        let d = r.approve_silently(&same, 300).clone();
        assert_eq!(d.public_key, DEV_KEY);
        assert_eq!(d.scopes, ["operator.read", "operator.admin"]);
    }

    #[test]
    fn issue_check_and_rotate() {
        let mut r = DeviceRegistry::default();
        let s = sv(&["operator.read"]);
        assert_eq!(r.issue_token(DEV_ID, "operator", &s, 1), None);
        r.approve_silently(&req(&s, "operator"), 100);
        let t1 = r.issue_token(DEV_ID, "operator", &s, 100).unwrap();
        assert_eq!(t1.len(), 43);
        let (d, rec) = r.check_token(&t1).unwrap();
        assert_eq!(d.device_id, DEV_ID);
        assert_eq!(
            (rec.role.as_str(), rec.created_at_ms, rec.rotated_at_ms),
            ("operator", 100, None)
        );
        assert_eq!(rec.token_sha256, to_hex(&sha256(t1.as_bytes())));
        assert!(!d.tokens.iter().any(|t| t.token_sha256.contains(&t1)));

        let s2 = sv(&["operator.pairing", "operator.read"]);
        let t2 = r.issue_token(DEV_ID, "operator", &s2, 200).unwrap();
        assert_ne!(t1, t2);
        assert!(
            r.check_token(&t1).is_none(),
            "rotation must invalidate the old secret"
        );
        let (d, rec) = r.check_token(&t2).unwrap();
        assert_eq!(d.tokens.len(), 1);
        assert_eq!(rec.scopes, s2);
        assert_eq!((rec.created_at_ms, rec.rotated_at_ms), (100, Some(200)));

        // A second role gets its own token; both work.
        let t3 = r.issue_token(DEV_ID, "node", &[], 300).unwrap();
        assert_eq!(r.check_token(&t3).unwrap().1.role, "node");
        assert_eq!(r.check_token(&t2).unwrap().1.role, "operator");
        assert!(r.check_token("").is_none());
        assert!(r.check_token(&t2[..42]).is_none());

        assert!(r.revoke_token(DEV_ID, "node"));
        assert!(!r.revoke_token(DEV_ID, "node"));
        assert!(r.check_token(&t3).is_none());
        assert!(r.check_token(&t2).is_some());

        assert!(r.remove(DEV_ID).is_some());
        assert!(r.check_token(&t2).is_none());
    }

    #[test]
    fn put_reindexes() {
        let mut r = DeviceRegistry::default();
        let s = sv(&["operator.read"]);
        r.approve_silently(&req(&s, "operator"), 100);
        let t1 = r.issue_token(DEV_ID, "operator", &s, 100).unwrap();
        // Replica built from a snapshot of the owner.
        let mut replica = DeviceRegistry::default();
        replica.put(r.get(DEV_ID).unwrap().clone());
        assert!(replica.check_token(&t1).is_some());
        let t2 = r.issue_token(DEV_ID, "operator", &s, 200).unwrap();
        replica.put(r.get(DEV_ID).unwrap().clone());
        assert!(replica.check_token(&t1).is_none());
        assert!(replica.check_token(&t2).is_some());
    }

    #[test]
    fn save_load_roundtrip() {
        let dir = test_dir("roundtrip");
        assert_eq!(DeviceRegistry::load(&dir).unwrap().iter().count(), 0);

        let mut r = DeviceRegistry::default();
        let s = sv(&["operator.read", "operator.pairing"]);
        r.approve_silently(&req(&s, "operator"), 100);
        let t = r.issue_token(DEV_ID, "operator", &s, 100).unwrap();
        r.save(&dir).unwrap();

        let path = paired_path(&dir);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        // The secret is kept (file is 0600) so a reconnecting device gets the same token back,
        // as the real gateway's ensureDeviceToken does.
        assert!(
            text.contains(&t),
            "token secret must be persisted for ensure_token"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["devices"][0]["deviceId"], DEV_ID);
        assert_eq!(
            v["devices"][0]["tokens"][0]["tokenSha256"],
            to_hex(&sha256(t.as_bytes()))
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp files left");

        let back = DeviceRegistry::load(&dir).unwrap();
        assert_eq!(
            back.iter().cloned().collect::<Vec<_>>(),
            r.iter().cloned().collect::<Vec<_>>()
        );
        let (d, rec) = back.check_token(&t).unwrap();
        assert_eq!(
            (d.device_id.as_str(), rec.role.as_str()),
            (DEV_ID, "operator")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_rejects_garbage_and_unknown_version() {
        let dir = test_dir("garbage");
        std::fs::create_dir_all(dir.join("devices")).unwrap();
        std::fs::write(paired_path(&dir), b"{not json").unwrap();
        assert_eq!(
            DeviceRegistry::load(&dir).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        std::fs::write(paired_path(&dir), br#"{"version":2,"devices":[]}"#).unwrap();
        assert_eq!(
            DeviceRegistry::load(&dir).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        // Optional fields may be absent.
        std::fs::write(
            paired_path(&dir),
            format!(
                r#"{{"version":1,"devices":[{{"deviceId":"{DEV_ID}","publicKey":"{DEV_KEY}","clientId":"cli","clientMode":"cli","role":"operator","roles":["operator"],"scopes":[],"approvedVia":"silent","createdAtMs":1,"approvedAtMs":1,"lastSeenAtMs":1}}]}}"#
            ),
        )
        .unwrap();
        let r = DeviceRegistry::load(&dir).unwrap();
        assert_eq!(r.get(DEV_ID).unwrap().platform, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pair_list_entry_matches_capture() {
        // Reproduce the capture: first connect (read) at T1, upgrade to pairing at T2.
        let (t1, t2_seen, t2) = (1795311692716, 1795311702797, 1795311702809);
        let mut r = DeviceRegistry::default();
        let s1 = sv(&["operator.read"]);
        r.approve_silently(&req(&s1, "operator"), t1);
        r.issue_token(DEV_ID, "operator", &s1, t1).unwrap();
        let s2 = sv(&["operator.pairing"]);
        r.approve_silently(&req(&s2, "operator"), t2_seen);
        // The real server's upgrade approval and rotation happen a few ms after last-seen.
        let mut d = r.get(DEV_ID).unwrap().clone();
        d.approved_at_ms = t2;
        r.put(d);
        r.issue_token(
            DEV_ID,
            "operator",
            &sv(&["operator.pairing", "operator.read"]),
            t2,
        )
        .unwrap();

        let got = to_pair_list_entry(r.get(DEV_ID).unwrap(), true);
        let want = CLI_UPGRADE
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["frame"]["payload"]["paired"].is_array())
            .map(|l| l["frame"]["payload"]["paired"][0].clone())
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn pair_list_entry_omits_unset() {
        let mut r = DeviceRegistry::default();
        let s = sv(&[]);
        let rq = PairingRequest {
            platform: None,
            device_family: None,
            ..req(&s, "operator")
        };
        r.approve_silently(&rq, 5);
        r.issue_token(DEV_ID, "operator", &s, 5).unwrap();
        let e = to_pair_list_entry(r.get(DEV_ID).unwrap(), false);
        assert!(e.get("platform").is_none());
        assert!(e.get("deviceFamily").is_none());
        assert_eq!(e["connected"], false);
        assert_eq!(
            e["tokens"][0],
            json!({"role": "operator", "scopes": [], "createdAtMs": 5})
        );
    }

    #[test]
    fn unchanged_token_only_when_nothing_would_change() {
        let mut reg = DeviceRegistry::default();
        let read = vec!["operator.read".to_string()];
        let req = PairingRequest {
            device_id: "dev1",
            public_key: "pk1",
            client_id: "cli",
            client_mode: "cli",
            platform: None,
            device_family: None,
            role: "operator",
            scopes: &read,
        };
        assert!(reg
            .unchanged_token("dev1", "pk1", "operator", &read)
            .is_none());
        reg.approve_silently(&req, 1);
        let (tok, _, _) = reg.ensure_token("dev1", "operator", &read, 1).unwrap();
        assert_eq!(
            reg.unchanged_token("dev1", "pk1", "operator", &read)
                .map(|t| t.0),
            Some(tok)
        );
        // Another key, another role, or more scopes need the owner core.
        assert!(reg
            .unchanged_token("dev1", "pk2", "operator", &read)
            .is_none());
        assert!(reg.unchanged_token("dev1", "pk1", "node", &read).is_none());
        assert!(reg
            .unchanged_token("dev1", "pk1", "operator", &["operator.pairing".to_string()])
            .is_none());
    }
}
