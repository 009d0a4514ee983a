//! `connect` parameters, client id/mode enums and protocol negotiation (PROTOCOL.md §3).

use serde::Deserialize;
use serde_json::json;

use super::error::ErrorShape;
use crate::auth::device::DeviceProof;

/// Protocol version clawgate speaks.
pub const PROTOCOL_VERSION: u32 = 4;
/// Oldest protocol a node (role node, mode node) may speak.
pub const MIN_NODE_PROTOCOL_VERSION: u32 = 3;
/// Oldest protocol a probe may speak.
pub const MIN_PROBE_PROTOCOL_VERSION: u32 = 3;

/// Client ids the real gateway accepts.
pub const CLIENT_IDS: &[&str] = &[
    "cli",
    "openclaw-control-ui",
    "webchat-ui",
    "webchat",
    "openclaw-tui",
    "gateway-client",
    "openclaw-macos",
    "openclaw-linux",
    "openclaw-ios",
    "openclaw-watchos",
    "openclaw-android",
    "node-host",
    "openclaw-worker",
    "openclaw-browser-copilot",
    "test",
    "fingerprint",
    "openclaw-probe",
];

/// Client modes the real gateway accepts.
pub const CLIENT_MODES: &[&str] = &[
    "cli", "webchat", "ui", "backend", "node", "worker", "probe", "test",
];

/// `connect.params.client`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    /// Client id (enum, lower-cased).
    pub id: String,
    /// Client version.
    #[serde(default)]
    pub version: String,
    /// Platform.
    #[serde(default)]
    pub platform: String,
    /// Mode (enum).
    pub mode: String,
    /// Device family.
    #[serde(default)]
    pub device_family: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Model identifier.
    #[serde(default)]
    pub model_identifier: Option<String>,
    /// Instance id.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Time zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Build id.
    #[serde(default)]
    pub build_id: Option<String>,
}

/// `connect.params.auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectAuth {
    /// Shared token (or a device token).
    #[serde(default)]
    pub token: Option<String>,
    /// Shared password.
    #[serde(default)]
    pub password: Option<String>,
    /// Device token.
    #[serde(default)]
    pub device_token: Option<String>,
    /// Bootstrap token (unsupported; part of the signed payload).
    #[serde(default)]
    pub bootstrap_token: Option<String>,
}

/// `connect` params. Unknown fields are accepted and ignored (the client sends many optional ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams {
    /// Lowest protocol the client speaks.
    pub min_protocol: u32,
    /// Highest protocol the client speaks.
    pub max_protocol: u32,
    /// Client description.
    pub client: ClientInfo,
    /// Role (default operator).
    #[serde(default)]
    pub role: Option<String>,
    /// Requested scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Capabilities.
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    /// Credentials.
    #[serde(default)]
    pub auth: Option<ConnectAuth>,
    /// Signed device identity.
    #[serde(default)]
    pub device: Option<DeviceProof>,
}

impl ConnectParams {
    /// Parse and validate enums; errors are `INVALID_REQUEST` like the real validator's.
    pub fn parse(params: Option<&serde_json::value::RawValue>) -> Result<Self, ErrorShape> {
        let raw =
            params.ok_or_else(|| ErrorShape::invalid("invalid connect params: params required"))?;
        // Straight from the frame's bytes into the struct: no intermediate `Value` tree.
        let mut p: ConnectParams = serde_json::from_str(raw.get()).map_err(|e| {
            ErrorShape::invalid(format!(
                "invalid connect params: {}",
                super::frames::error_message(&e)
            ))
        })?;
        p.client.id = p.client.id.to_ascii_lowercase();
        if !CLIENT_IDS.contains(&p.client.id.as_str()) {
            return Err(ErrorShape::invalid(format!(
                "invalid connect params: at /client/id: unknown client id {:?}",
                p.client.id
            )));
        }
        if !CLIENT_MODES.contains(&p.client.mode.as_str()) {
            return Err(ErrorShape::invalid(format!(
                "invalid connect params: at /client/mode: unknown client mode {:?}",
                p.client.mode
            )));
        }
        if p.min_protocol < 1 || p.max_protocol < 1 {
            return Err(ErrorShape::invalid(
                "invalid connect params: protocol versions must be >= 1",
            ));
        }
        match p.role.as_deref() {
            None | Some("operator") | Some("node") => {}
            Some(other) => {
                return Err(ErrorShape::invalid(format!(
                    "invalid connect params: unknown role {other:?}"
                )));
            }
        }
        Ok(p)
    }

    /// The resolved role.
    pub fn role(&self) -> &str {
        self.role.as_deref().unwrap_or("operator")
    }

    /// Requested scopes (empty when absent).
    pub fn scopes(&self) -> &[String] {
        self.scopes.as_deref().unwrap_or(&[])
    }
}

/// Negotiate the protocol version (§3.3). On mismatch returns the exact error to send
/// before closing 1002.
pub fn negotiate(min: u32, max: u32, role: &str, mode: &str) -> Result<u32, ErrorShape> {
    if min <= PROTOCOL_VERSION && PROTOCOL_VERSION <= max {
        return Ok(PROTOCOL_VERSION);
    }
    if mode == "probe" && max >= MIN_PROBE_PROTOCOL_VERSION && min <= PROTOCOL_VERSION {
        return Ok(PROTOCOL_VERSION);
    }
    if role == "node"
        && mode == "node"
        && min <= MIN_NODE_PROTOCOL_VERSION
        && MIN_NODE_PROTOCOL_VERSION <= max
    {
        return Ok(MIN_NODE_PROTOCOL_VERSION);
    }
    Err(
        ErrorShape::invalid("protocol mismatch").with_details(json!({
            "code": "PROTOCOL_MISMATCH",
            "clientMinProtocol": min,
            "clientMaxProtocol": max,
            "expectedProtocol": PROTOCOL_VERSION,
            "minimumProbeProtocol": MIN_PROBE_PROTOCOL_VERSION,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_the_real_gateway() {
        assert_eq!(negotiate(4, 4, "operator", "cli"), Ok(4));
        assert_eq!(negotiate(3, 4, "operator", "probe"), Ok(4));
        assert_eq!(negotiate(3, 3, "node", "node"), Ok(3));
        let err = negotiate(3, 3, "operator", "cli").unwrap_err();
        assert_eq!(err.details.unwrap()["code"], "PROTOCOL_MISMATCH");
        assert!(negotiate(5, 6, "operator", "cli").is_err());
    }

    #[test]
    fn parses_the_real_cli_connect_and_rejects_unknown_client_ids() {
        let v = serde_json::json!({"minProtocol":4,"maxProtocol":4,"client":{"id":"CLI","version":"2026.9.6","platform":"linux","deviceFamily":"Linux","mode":"cli","instanceId":"x"},"caps":[],"auth":{"token":"t"},"role":"operator","scopes":["operator.read"],"locale":"en"});
        let raw = serde_json::value::to_raw_value(&v).unwrap();
        let p = ConnectParams::parse(Some(&raw)).unwrap();
        assert_eq!(p.client.id, "cli");
        assert_eq!(p.scopes(), ["operator.read".to_string()]);
        let bad = serde_json::json!({"minProtocol":4,"maxProtocol":4,"client":{"id":"evil","mode":"cli"}});
        let bad = serde_json::value::to_raw_value(&bad).unwrap();
        assert!(ConnectParams::parse(Some(&bad)).is_err());
        let wrong_type =
            serde_json::value::RawValue::from_string(r#"{"minProtocol":"4"}"#.into()).unwrap();
        let err = ConnectParams::parse(Some(&wrong_type)).unwrap_err();
        assert!(
            err.message.starts_with("invalid connect params: "),
            "{}",
            err.message
        );
        assert!(!err.message.contains(" at line "), "{}", err.message);
    }
}
