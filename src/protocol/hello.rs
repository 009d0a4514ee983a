//! Handshake payloads: the pre-auth `connect.challenge` event and the `hello-ok` answer to
//! `connect` (PROTOCOL.md §3, §3.2).
//!
//! Pure builders: no I/O, no clock, no randomness — every varying value (nonce, connection id,
//! uptime, device token, …) comes in through the arguments so the output is reproducible in
//! tests. The shapes follow the real 2026.9.6 gateway (`tests/vectors/cli-call-health.jsonl`,
//! `own-client-core-methods.jsonl`) and the client's closed `HelloOk` schema: we emit only
//! fields that schema knows, and omit optional strings rather than sending them empty
//! (the schema's `NonEmptyString`).

use serde_json::{json, Value};

/// The version clawgate reports as `server.version`, presence `version` and status
/// `runtimeVersion`.
///
/// This is the **protocol-compatible OpenClaw release** clawgate mirrors, not clawgate's own crate
/// version (that goes into `server.buildId`): the `openclaw` CLI compares the gateway's version
/// with its own and prints an "OpenClaw version mismatch" warning (`openclaw doctor`) when they
/// differ.
pub const SERVER_VERSION: &str = "2026.9.6";

/// `server.buildId`: identifies the actual implementation (≤ 96 chars per the schema).
pub const BUILD_ID: &str = concat!("clawgate-", env!("CARGO_PKG_VERSION"));

/// Negotiated protocol version for current clients.
pub const PROTOCOL_VERSION: u32 = 4;

/// `policy.maxPayload`: post-auth frame cap (25 MiB).
pub const MAX_PAYLOAD_BYTES: u64 = 26_214_400;

/// `policy.maxBufferedBytes`: per-socket outbound buffer cap (50 MiB).
pub const MAX_BUFFERED_BYTES: u64 = 52_428_800;

/// `policy.tickIntervalMs`: the server must send `tick` (or other traffic) this often; clients
/// close with 4000 after `2 ×` this without a frame.
pub const TICK_INTERVAL_MS: u64 = 30_000;

/// Default `session.mainKey`.
pub const MAIN_KEY: &str = "main";

/// Capabilities announced in `connect.challenge`, exactly as the real gateway does.
///
/// `model-catalog-snapshot` makes the reference client add a `modelCatalog` object and the
/// `model-catalog-snapshot` cap to its `connect` params, so the connect validator must accept
/// (and may ignore) `modelCatalog`.
pub const CHALLENGE_CAPABILITIES: &[&str] = &["model-catalog-snapshot"];

/// `hello-ok.auth.method` values the client schema accepts.
const AUTH_METHODS: &[&str] = &[
    "none",
    "token",
    "password",
    "tailscale",
    "device-token",
    "bootstrap-token",
    "trusted-proxy",
];

/// `snapshot.authMode` values the client schema accepts.
const AUTH_MODES: &[&str] = &["none", "token", "password", "trusted-proxy"];

/// The `connect.challenge` event payload: `{nonce, ts, capabilities}`.
///
/// `ts` is the server's epoch ms; clients with a device identity sign it back as `signedAt`.
pub fn challenge(nonce: &str, ts: i64) -> Value {
    json!({
        "nonce": nonce,
        "ts": ts.max(0),
        "capabilities": CHALLENGE_CAPABILITIES,
    })
}

/// The whole pre-auth `connect.challenge` event frame (no `seq`: it precedes the per-connection
/// event counter).
pub fn challenge_frame(nonce: &str, ts: i64) -> Value {
    json!({
        "type": "event",
        "event": "connect.challenge",
        "payload": challenge(nonce, ts),
    })
}

/// Everything `hello-ok` needs that is not a constant.
///
/// The three large parts (feature lists, presence, health) come in already serialized: they
/// change rarely and are cached per core, so a handshake copies them instead of rebuilding and
/// re-serializing a few KB of JSON values.
#[derive(Debug, Clone)]
pub struct HelloInputs<'a> {
    /// Negotiated protocol (4; 3 only for N-1 node/probe clients).
    pub protocol: u32,
    /// `server.connId`: this socket's id (non-empty).
    pub conn_id: &'a str,
    /// `features` as JSON (`{"methods":[…],"events":[…]}`, see [`features_json`]).
    pub features_json: &'a [u8],
    /// `snapshot.presence` as a JSON array (the real gateway sends `[]` to a socket without
    /// `operator.read`, e.g. `gateway probe`); anything but an array becomes `[]`.
    pub presence_json: &'a [u8],
    /// `snapshot.health` as a JSON object (`methods::system::health_snapshot`); anything but
    /// an object becomes `{}`.
    pub health_json: &'a [u8],
    /// `snapshot.stateVersion.presence`.
    pub state_version_presence: u64,
    /// `snapshot.stateVersion.health`.
    pub state_version_health: u64,
    /// `snapshot.uptimeMs` (negative values are clamped to 0).
    pub uptime_ms: i64,
    /// `auth.role` (`operator` or `node`).
    pub role: &'a str,
    /// `auth.scopes`: the socket's effective scopes (what dispatch will enforce).
    pub scopes: &'a [String],
    /// `auth.method` (`token`, `password`, `device-token`, `none`, …); an unknown or empty value
    /// is omitted, since the client schema only accepts its enum.
    pub auth_method: &'a str,
    /// `auth.deviceToken` and `auth.issuedAtMs`, when a device token was issued or rotated.
    pub device_token: Option<(&'a str, i64)>,
    /// `snapshot.configPath` (omitted when empty).
    pub config_path: &'a str,
    /// `snapshot.stateDir` (omitted when empty).
    pub state_dir: &'a str,
    /// `snapshot.sessionDefaults.defaultAgentId`.
    pub default_agent_id: &'a str,
    /// `snapshot.sessionDefaults.mainSessionKey` (`agent:<default>:main`).
    pub main_session_key: &'a str,
    /// `snapshot.sessionDefaults.modelConfigured`: the default agent has an effective model.
    /// clawgate always has the built-in offline model, so callers normally pass `true`
    /// (`false` makes UIs nag about configuring a model).
    pub model_configured: bool,
    /// `snapshot.authMode` (`token`, `password`, `none`, `trusted-proxy`; others omitted).
    pub auth_mode: &'a str,
}

/// `hello-ok.features`: `{"methods":[…],"events":[…]}` without empty names. Built once per
/// process by the caller.
pub fn features_json(methods: &[&str], events: &[&str]) -> Vec<u8> {
    let methods: Vec<&str> = methods.iter().copied().filter(|m| !m.is_empty()).collect();
    let events: Vec<&str> = events.iter().copied().filter(|e| !e.is_empty()).collect();
    serde_json::to_vec(&json!({"methods": methods, "events": events})).unwrap_or_default()
}

/// True when `json` (trusted, our own serialization) starts with `open` (`[` or `{`).
fn is_json_kind(json: &[u8], open: u8) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&open)
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Escaping into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b',');
    push_str(out, key);
    out.push(b':');
}

/// Build the `hello-ok` payload (the `payload` of the `connect` response) as JSON bytes.
///
/// Produces every field the client schema requires plus the optional ones clawgate can fill:
/// `server{version, buildId, connId}`, `features{methods, events}`,
/// `snapshot{presence, health, stateVersion, uptimeMs, configPath?, stateDir?, sessionDefaults,
/// authMode?}`, `auth{method?, role, scopes, deviceToken?, issuedAtMs?}`, `policy{…}`.
/// Written directly (no intermediate `Value`): it runs once per handshake.
pub fn hello_ok(i: &HelloInputs) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        768 + i.features_json.len() + i.presence_json.len() + i.health_json.len(),
    );
    out.extend_from_slice(br#"{"type":"hello-ok","protocol":"#);
    out.extend_from_slice(i.protocol.to_string().as_bytes());
    out.extend_from_slice(br#","server":{"version":"#);
    push_str(&mut out, SERVER_VERSION);
    push_key(&mut out, "buildId");
    push_str(&mut out, BUILD_ID);
    push_key(&mut out, "connId");
    push_str(&mut out, i.conn_id);
    out.extend_from_slice(br#"},"features":"#);
    if is_json_kind(i.features_json, b'{') {
        out.extend_from_slice(i.features_json);
    } else {
        out.extend_from_slice(br#"{"methods":[],"events":[]}"#);
    }

    out.extend_from_slice(br#","snapshot":{"presence":"#);
    if is_json_kind(i.presence_json, b'[') {
        out.extend_from_slice(i.presence_json);
    } else {
        out.extend_from_slice(b"[]");
    }
    push_key(&mut out, "health");
    if is_json_kind(i.health_json, b'{') {
        out.extend_from_slice(i.health_json);
    } else {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(
        format!(
            r#","stateVersion":{{"presence":{},"health":{}}},"uptimeMs":{}"#,
            i.state_version_presence,
            i.state_version_health,
            i.uptime_ms.max(0)
        )
        .as_bytes(),
    );
    if !i.config_path.is_empty() {
        push_key(&mut out, "configPath");
        push_str(&mut out, i.config_path);
    }
    if !i.state_dir.is_empty() {
        push_key(&mut out, "stateDir");
        push_str(&mut out, i.state_dir);
    }
    let default_agent = non_empty_or(i.default_agent_id, "main");
    let main_session_key = if i.main_session_key.is_empty() {
        format!("agent:{default_agent}:{MAIN_KEY}")
    } else {
        i.main_session_key.to_string()
    };
    out.extend_from_slice(br#","sessionDefaults":{"defaultAgentId":"#);
    push_str(&mut out, default_agent);
    out.extend_from_slice(if i.model_configured {
        br#","modelConfigured":true"#.as_slice()
    } else {
        br#","modelConfigured":false"#.as_slice()
    });
    // clawgate always resolves a default agent, so the roster is never ambiguous.
    out.extend_from_slice(br#","ownership":"sole","selectionRequired":false,"mainKey":"#);
    push_str(&mut out, MAIN_KEY);
    push_key(&mut out, "mainSessionKey");
    push_str(&mut out, &main_session_key);
    out.extend_from_slice(br#","scope":"per-sender"}"#);
    if AUTH_MODES.contains(&i.auth_mode) {
        push_key(&mut out, "authMode");
        push_str(&mut out, i.auth_mode);
    }

    out.extend_from_slice(br#"},"auth":{"role":"#);
    push_str(&mut out, non_empty_or(i.role, "operator"));
    if AUTH_METHODS.contains(&i.auth_method) {
        push_key(&mut out, "method");
        push_str(&mut out, i.auth_method);
    }
    out.extend_from_slice(br#","scopes":["#);
    let mut first = true;
    for s in i.scopes.iter().filter(|s| !s.is_empty()) {
        if !first {
            out.push(b',');
        }
        first = false;
        push_str(&mut out, s);
    }
    out.push(b']');
    if let Some((token, issued_at_ms)) = i.device_token {
        if !token.is_empty() {
            push_key(&mut out, "deviceToken");
            push_str(&mut out, token);
            push_key(&mut out, "issuedAtMs");
            out.extend_from_slice(issued_at_ms.max(0).to_string().as_bytes());
        }
    }
    out.extend_from_slice(
        format!(
            r#"}},"policy":{{"maxPayload":{MAX_PAYLOAD_BYTES},"maxBufferedBytes":{MAX_BUFFERED_BYTES},"tickIntervalMs":{TICK_INTERVAL_MS}}}}}"#
        )
        .as_bytes(),
    );
    out
}

fn non_empty_or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

/// Test support shared by the golden-shape tests of `protocol` and `methods`.
#[cfg(test)]
pub(crate) mod testkit {
    use serde_json::Value;

    /// Parse a `tests/vectors/*.jsonl` capture into its records.
    pub(crate) fn records(capture: &str) -> Vec<Value> {
        capture
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The `payload` of the successful response to the first request for `method`.
    pub(crate) fn result_of(capture: &str, method: &str) -> Value {
        let recs = records(capture);
        let id = recs
            .iter()
            .filter(|r| r["dir"] == "c2s")
            .find(|r| r["frame"]["method"] == method)
            .map(|r| r["frame"]["id"].clone());
        assert!(id.is_some(), "no {method} request in capture");
        let payload = recs
            .iter()
            .filter(|r| r["dir"] == "s2c")
            .find(|r| {
                r["frame"]["type"] == "res"
                    && Some(&r["frame"]["id"]) == id.as_ref()
                    && r["frame"]["ok"] == true
            })
            .map(|r| r["frame"]["payload"].clone());
        assert!(payload.is_some(), "no ok response to {method} in capture");
        payload.unwrap()
    }

    /// The `hello-ok` payload of a capture.
    pub(crate) fn hello_of(capture: &str) -> Value {
        records(capture)
            .into_iter()
            .find(|r| r["frame"]["payload"]["type"] == "hello-ok")
            .map(|r| r["frame"]["payload"].clone())
            .unwrap()
    }

    /// The first server event frame named `event`.
    pub(crate) fn event_frame_of(capture: &str, event: &str) -> Value {
        let frame = records(capture)
            .into_iter()
            .find(|r| r["dir"] == "s2c" && r["frame"]["event"] == event)
            .map(|r| r["frame"].clone());
        assert!(frame.is_some(), "no {event} event in capture");
        frame.unwrap()
    }

    fn type_name(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn ignored(path: &str, ignore: &[&str]) -> bool {
        ignore.iter().any(|ig| {
            path == *ig
                || path
                    .strip_prefix(ig)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    /// Every key path of `real` that `ours` lacks or holds with a different JSON type.
    ///
    /// Objects are walked key by key; arrays compare their first elements when both are
    /// non-empty (path suffix `[]`). JSON types are compared (`null`, `bool`, `number`, `string`,
    /// `array`, `object`); integer-vs-float is not a type difference (the schemas' `Number`
    /// fields carry either). Paths in `ignore` (and everything below them) are skipped. Keys
    /// only `ours` has are not reported.
    pub(crate) fn shape_diff(real: &Value, ours: &Value, ignore: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        walk("", real, ours, ignore, &mut out);
        out
    }

    fn walk(path: &str, real: &Value, ours: &Value, ignore: &[&str], out: &mut Vec<String>) {
        let (rt, ot) = (type_name(real), type_name(ours));
        if rt != ot {
            out.push(format!("{}: real {rt}, ours {ot}", display(path)));
            return;
        }
        match (real, ours) {
            (Value::Object(r), Value::Object(o)) => {
                for (k, rv) in r {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if ignored(&p, ignore) {
                        continue;
                    }
                    match o.get(k) {
                        None => out.push(format!("{p}: missing in ours (real {})", type_name(rv))),
                        Some(ov) => walk(&p, rv, ov, ignore, out),
                    }
                }
            }
            (Value::Array(r), Value::Array(o)) => {
                if let (Some(rv), Some(ov)) = (r.first(), o.first()) {
                    let p = format!("{path}[]");
                    if !ignored(&p, ignore) {
                        walk(&p, rv, ov, ignore, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn display(path: &str) -> &str {
        if path.is_empty() {
            "<root>"
        } else {
            path
        }
    }

    #[test]
    fn shape_diff_reports_missing_keys_and_type_changes() {
        let real =
            serde_json::json!({"a": 1, "b": {"c": "x", "d": [ {"e": true} ]}, "f": 1.5, "g": null});
        let ours = serde_json::json!({"a": "1", "b": {"d": [ {"e": "no"} ]}, "f": 2, "g": 0});
        let diff = shape_diff(&real, &ours, &[]);
        assert_eq!(
            diff,
            vec![
                "a: real number, ours string",
                "b.c: missing in ours (real string)",
                "b.d[].e: real bool, ours string",
                "g: real null, ours number",
            ]
        );
        assert!(shape_diff(&real, &ours, &["a", "b", "g"]).is_empty());
        // A prefix that is not a whole path segment does not ignore anything.
        assert_eq!(
            shape_diff(&real, &ours, &["b.d[].e", "a", "g", "b.c"]).len(),
            0
        );
        assert_eq!(shape_diff(&real, &ours, &["b.", "a", "g"]).len(), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{event_frame_of, hello_of, records, shape_diff};
    use super::*;

    const HEALTH_CAPTURE: &str = include_str!("../../tests/vectors/cli-call-health.jsonl");
    const CORE_CAPTURE: &str = include_str!("../../tests/vectors/own-client-core-methods.jsonl");
    const PROBE_CAPTURE: &str = include_str!("../../tests/vectors/cli-gateway-probe.jsonl");

    fn leak(v: Vec<u8>) -> &'static [u8] {
        Box::leak(v.into_boxed_slice())
    }

    fn sample_inputs(scopes: &[String], health: Value, presence: Value) -> HelloInputs<'_> {
        HelloInputs {
            protocol: 4,
            conn_id: "c0nn-1",
            features_json: leak(features_json(
                &["health", "", "status", "system-presence"],
                &["tick", "health", "presence"],
            )),
            presence_json: leak(serde_json::to_vec(&presence).unwrap()),
            health_json: leak(serde_json::to_vec(&health).unwrap()),
            state_version_presence: 1,
            state_version_health: 2,
            uptime_ms: 35_830,
            role: "operator",
            scopes,
            auth_method: "token",
            device_token: Some(("tok-abc", 1_795_311_893_172)),
            config_path: "/home/u/.openclaw/openclaw.json",
            state_dir: "/home/u/.openclaw",
            default_agent_id: "main",
            main_session_key: "agent:main:main",
            model_configured: true,
            auth_mode: "token",
        }
    }

    /// Build, check the bytes are one JSON object, and parse.
    fn parse_hello(i: &HelloInputs) -> Value {
        let bytes = hello_ok(i);
        let v: Value = serde_json::from_slice(&bytes).expect("hello-ok is valid JSON");
        assert!(v.is_object());
        v
    }

    /// Paths of the real hello-ok that clawgate deliberately does not send.
    const HELLO_IGNORE: &[&str] = &[
        // Control-UI / plugin surfaces: clawgate serves no plugins or Control UI extensions.
        "controlUiWidgetKinds",
        "controlUiLinkReaders",
        "pluginSurfaceUrls",
        "server.controlUiBuildSource",
        "server.bootId", // optional; clawgate has no restart-generation concept yet
        // Server feature flags for features clawgate lacks (profiles, worktrees, widgets…).
        "features.capabilities",
        // Long real method/event lists: contents are the real server's, ours list what we serve.
        "features.methods[]",
        "features.events[]",
        // Suspend/drain lifecycle is not implemented; the field is optional.
        "snapshot.suspension",
        // Signed config revision (hmac) from the real config projector; optional.
        "snapshot.appliedConfigHash",
        // Update scheduler does not exist in clawgate.
        "snapshot.updateSchedule",
        // Recovery-scope migration is a real-server account feature.
        "auth.recoveryScope",
        "auth.recoveryMigrationAllowed",
        // Attachment limits / session sharing visibility: no attachments or sharing yet.
        "policy.attachments",
        "policy.allowedSessionVisibilities",
        "policy.hasMultipleSessionSharingIdentities",
        // Health body is checked by methods::system's own golden test.
        "snapshot.health",
        "snapshot.presence[]",
    ];

    #[test]
    fn hello_ok_matches_real_cli_capture_shape() {
        let real = hello_of(HEALTH_CAPTURE);
        let scopes = vec!["operator.read".to_string()];
        let presence = real["snapshot"]["presence"].clone();
        let ours = parse_hello(&sample_inputs(&scopes, json!({"ok": true}), presence));
        let diff = shape_diff(&real, &ours, HELLO_IGNORE);
        assert!(
            diff.is_empty(),
            "hello-ok shape differs from the real gateway: {diff:#?}"
        );
    }

    #[test]
    fn hello_ok_matches_device_capture_with_token_and_paths() {
        // This capture carries deviceToken/issuedAtMs and configPath/stateDir/authMode.
        let real = hello_of(CORE_CAPTURE);
        let scopes = vec!["operator.admin".to_string()];
        let ours = parse_hello(&sample_inputs(&scopes, json!({}), json!([])));
        let diff = shape_diff(&real, &ours, HELLO_IGNORE);
        assert!(diff.is_empty(), "hello-ok shape differs: {diff:#?}");
    }

    #[test]
    fn hello_ok_emits_only_fields_the_real_server_sends() {
        // Closed client schema: every path we send must exist in a real hello-ok.
        let real = hello_of(CORE_CAPTURE);
        let scopes = vec!["operator.read".to_string()];
        let ours = parse_hello(&sample_inputs(&scopes, json!({}), json!([])));
        let extra = shape_diff(&ours, &real, &["features.methods[]", "features.events[]"]);
        assert!(
            extra.is_empty(),
            "fields the real server never sends: {extra:#?}"
        );
    }

    #[test]
    fn hello_ok_fixed_values() {
        let scopes: Vec<String> = Vec::new();
        let ours = parse_hello(&sample_inputs(&scopes, json!({}), json!([])));
        assert_eq!(ours["type"], "hello-ok");
        assert_eq!(
            ours["features"],
            json!({"methods": ["health", "status", "system-presence"], "events": ["tick", "health", "presence"]})
        );
        assert_eq!(ours["protocol"], 4);
        assert_eq!(ours["server"]["version"], "2026.9.6");
        assert_eq!(ours["server"]["connId"], "c0nn-1");
        assert_eq!(
            ours["server"]["buildId"],
            format!("clawgate-{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(BUILD_ID.len() <= 96);
        assert_eq!(
            ours["policy"],
            json!({"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000})
        );
        assert_eq!(ours["snapshot"]["sessionDefaults"]["mainKey"], "main");
        assert_eq!(
            ours["snapshot"]["sessionDefaults"]["mainSessionKey"],
            "agent:main:main"
        );
        assert_eq!(
            ours["snapshot"]["stateVersion"],
            json!({"presence": 1, "health": 2})
        );
        assert_eq!(ours["auth"]["scopes"], json!([]));
        assert_eq!(ours["auth"]["deviceToken"], "tok-abc");
        assert_eq!(ours["auth"]["issuedAtMs"], 1_795_311_893_172_i64);
        let real_policy = hello_of(HEALTH_CAPTURE)["policy"].clone();
        for k in ["maxPayload", "maxBufferedBytes", "tickIntervalMs"] {
            assert_eq!(ours["policy"][k], real_policy[k], "{k}");
        }
    }

    #[test]
    fn hello_ok_omits_what_the_schema_would_reject() {
        let scopes = vec![String::new(), "operator.read".to_string()];
        let mut inputs = sample_inputs(&scopes, json!("not an object"), json!({"not": "array"}));
        inputs.auth_method = "magic";
        inputs.auth_mode = "";
        inputs.config_path = "";
        inputs.state_dir = "";
        inputs.device_token = Some(("", 5));
        inputs.uptime_ms = -5;
        inputs.main_session_key = "";
        inputs.default_agent_id = "";
        let ours = parse_hello(&inputs);
        let snap = &ours["snapshot"];
        assert!(ours["auth"].get("method").is_none());
        assert!(ours["auth"].get("deviceToken").is_none());
        assert!(ours["auth"].get("issuedAtMs").is_none());
        assert_eq!(ours["auth"]["scopes"], json!(["operator.read"]));
        assert!(snap.get("authMode").is_none());
        assert!(snap.get("configPath").is_none());
        assert!(snap.get("stateDir").is_none());
        assert_eq!(snap["uptimeMs"], 0);
        assert_eq!(snap["presence"], json!([]));
        assert_eq!(snap["health"], json!({}));
        assert_eq!(snap["sessionDefaults"]["defaultAgentId"], "main");
        assert_eq!(snap["sessionDefaults"]["mainSessionKey"], "agent:main:main");
    }

    #[test]
    fn challenge_matches_every_capture() {
        for capture in [HEALTH_CAPTURE, CORE_CAPTURE, PROBE_CAPTURE] {
            let real = event_frame_of(capture, "connect.challenge");
            let nonce = real["payload"]["nonce"].as_str().unwrap();
            let ts = real["payload"]["ts"].as_i64().unwrap();
            assert_eq!(challenge_frame(nonce, ts), real);
            assert_eq!(challenge(nonce, ts), real["payload"]);
        }
        // The challenge is the first frame on the wire and carries no seq.
        let first = &records(HEALTH_CAPTURE)[0];
        assert_eq!(first["frame"]["event"], "connect.challenge");
        assert!(first["frame"].get("seq").is_none());
    }
}
