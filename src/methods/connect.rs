//! The `connect` request: version negotiation, shared-secret and device-token auth, Ed25519
//! device proof, loopback silent pairing, effective scopes, and `hello-ok` (PROTOCOL.md §3–§6).

use std::rc::Rc;

use serde_json::{json, Value};

use super::{Session, Verdict};
use crate::auth::device::{self, SignedFields};
use crate::auth::{scopes, token::secret_eq};
use crate::config::AuthMode;
use crate::protocol::connect::{negotiate, ConnectParams};
use crate::protocol::error::{ErrorShape, NOT_PAIRED, UNAVAILABLE};
use crate::protocol::frames::encode_ok_raw;
use crate::protocol::hello::{hello_ok, HelloInputs};
use crate::runtime::core::{now_ms, Authority, PairJob, PairOutcome};

fn auth_error(message: &str, code: &str, step: &str, extra: Value) -> ErrorShape {
    let mut details = json!({"code": code, "recommendedNextStep": step});
    if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    ErrorShape::invalid(message).with_details(details)
}

/// How the socket authenticated.
enum Via {
    Shared,
    DeviceToken {
        device_id: String,
        scopes: Vec<String>,
    },
}

/// Handle `connect`. On failure the error response is queued and the socket closes.
pub async fn handle(
    s: &mut Session,
    id: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Verdict {
    // Single use: whatever happens, this socket's nonce is spent.
    let nonce = s.take_nonce().unwrap_or_default();
    let p = match ConnectParams::parse(params) {
        Ok(p) => p,
        Err(e) => return s.fail(id, e, 1008),
    };
    let protocol = match negotiate(p.min_protocol, p.max_protocol, p.role(), &p.client.mode) {
        Ok(v) => v,
        Err(e) => return s.fail(id, e, 1002),
    };
    let shared = s.core.shared.clone();
    let auth = p.auth.clone().unwrap_or_default();
    // A remote client that keeps presenting wrong secrets is refused for a while (§3.4).
    if let Some(wait) = (!s.local)
        .then(|| s.core.auth_locked(s.peer.ip()))
        .flatten()
    {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let err = auth_error(
            "unauthorized: too many failed authentication attempts (retry later)",
            "AUTH_RATE_LIMITED",
            "wait_then_retry",
            json!({"retryAfterMs": ms}),
        )
        .retry_after(ms);
        return s.fail(id, err, 1008);
    }
    tracing::debug!(
        message = "Connect.",
        client = %p.client.id,
        mode = %p.client.mode,
        role = %p.role(),
        device = p.device.is_some(),
        token = auth.token.is_some(),
        password = auth.password.is_some(),
        device_token = auth.device_token.is_some(),
        local = s.local
    );
    let mode = shared.auth.mode;

    // 1. Shared secret: the mode picks the configured secret; either field may carry it.
    let presented: Vec<&str> = [auth.token.as_deref(), auth.password.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let shared_ok: Option<bool> = match (mode, &shared.auth.secret) {
        (AuthMode::None, _) => Some(true),
        (_, None) => Some(false),
        (_, Some(_)) if presented.is_empty() => None,
        (_, Some(secret)) => Some(presented.iter().any(|p| secret_eq(p, secret))),
    };

    // For the failure report only: a wrong secret in the other mode's field (a password
    // sent to a token gateway) is a missing token to the real gateway, not a mismatch.
    let own_field = match mode {
        AuthMode::Password => auth.password.is_some(),
        _ => auth.token.is_some(),
    };
    let reported_ok = if shared_ok == Some(false) && !own_field {
        None
    } else {
        shared_ok
    };

    // 2. Device token (auth.deviceToken, or auth.token when it is not the shared secret).
    let device_token = auth.device_token.as_deref().or(if shared_ok == Some(true) {
        None
    } else {
        auth.token.as_deref()
    });
    let token_match = device_token.and_then(|t| {
        let reg = s.core.devices.borrow();
        reg.check_token(t).map(|(d, rec)| {
            (
                d.device_id.clone(),
                rec.role.clone(),
                rec.scopes.clone(),
                rec.rotated_at_ms.unwrap_or(rec.created_at_ms),
            )
        })
    });

    let requested: Vec<String> = p.scopes().to_vec();
    let role = p.role().to_string();
    let via: Via;
    let mut device_id: Option<String> = None;
    let mut issued: Option<(String, i64)> = None;
    let effective_scopes: Vec<String>;

    if let Some(proof) = &p.device {
        // 3. Device proof, in the real server's check order.
        let signed_token = auth
            .token
            .as_deref()
            .or(auth.device_token.as_deref())
            .or(auth.bootstrap_token.as_deref())
            .unwrap_or("");
        let fields = SignedFields {
            client_id: &p.client.id,
            client_mode: &p.client.mode,
            role: &role,
            scopes: &requested,
            token: signed_token,
            platform: &p.client.platform,
            device_family: p.client.device_family.as_deref().unwrap_or(""),
        };
        let verified = match device::verify(proof, &fields, &nonce, now_ms()) {
            Ok(v) => v,
            Err(e) => {
                let err = ErrorShape::invalid(e.to_string())
                    .with_details(json!({"code": e.detail_code(), "reason": e.reason()}));
                return s.fail(id, err, 1008);
            }
        };
        let token_for_this_device = token_match
            .as_ref()
            .filter(|(d, r, _, _)| *d == verified.device_id && *r == role);
        if shared_ok == Some(true) {
            via = Via::Shared;
        } else if let Some((d, _, sc, at)) = token_for_this_device {
            via = Via::DeviceToken {
                device_id: d.clone(),
                scopes: sc.clone(),
            };
            // The real gateway hands the (unchanged) token back on every device connect.
            issued = device_token.map(|t| (t.to_string(), *at));
        } else {
            if !s.local {
                s.core.auth_failed(s.peer.ip());
            }
            return s.fail(
                id,
                secret_failure(
                    mode,
                    reported_ok,
                    device_token.is_some(),
                    Some(verified.device_id.as_str()).filter(|_| auth.device_token.is_none()),
                ),
                1008,
            );
        }
        match &via {
            Via::DeviceToken {
                scopes: granted, ..
            } => {
                if let Some(missing) = requested.iter().find(|r| !scopes::satisfied(granted, r)) {
                    if !s.local {
                        return s.fail(id, pairing_required(&verified.device_id, missing), 1008);
                    }
                    // Local scope upgrade: approved silently (observed), token rotated.
                    match pair(s, &p, &verified, &role, &requested).await {
                        Ok(t) => issued = Some(t),
                        Err(e) => return s.fail(id, e, 1008),
                    }
                }
            }
            _ => {
                let paired_ok = s
                    .core
                    .devices
                    .borrow()
                    .get(&verified.device_id)
                    .is_some_and(|d| {
                        d.roles.contains(&role)
                            && requested.iter().all(|r| scopes::satisfied(&d.scopes, r))
                    });
                if !s.local && !paired_ok {
                    let first = requested.first().map(String::as_str).unwrap_or("");
                    return s.fail(id, pairing_required(&verified.device_id, first), 1008);
                }
                match pair(s, &p, &verified, &role, &requested).await {
                    Ok(t) => issued = Some(t),
                    Err(e) => return s.fail(id, e, 1008),
                }
            }
        }
        device_id = Some(verified.device_id.clone());
        effective_scopes = if role == "operator" {
            requested.clone()
        } else {
            Vec::new()
        };
    } else if shared_ok == Some(true) {
        via = Via::Shared;
        let trusted_client = matches!(
            (p.client.id.as_str(), p.client.mode.as_str()),
            ("cli", "cli") | ("gateway-client", "backend")
        );
        // Device-less sockets keep their scopes only for the local CLI/backend (§4.1).
        effective_scopes = if s.local && trusted_client && role == "operator" {
            requested.clone()
        } else {
            Vec::new()
        };
    // A device token is only ever checked against the device that signed this connect
    // (§4.1: device-less sockets need the shared secret); on its own it is no bearer
    // credential.
    } else {
        if !s.local {
            s.core.auth_failed(s.peer.ip());
        }
        return s.fail(
            id,
            secret_failure(mode, reported_ok, device_token.is_some(), None),
            1008,
        );
    }

    let method = match (&via, mode) {
        (Via::DeviceToken { .. }, _) => "device-token",
        (_, AuthMode::None) => "none",
        (_, AuthMode::Password) => "password",
        _ => "token",
    };
    if let Via::DeviceToken { device_id: d, .. } = &via {
        device_id.get_or_insert_with(|| d.clone());
    }
    let authority = Rc::new(Authority {
        role: role.clone(),
        scopes: effective_scopes,
    });
    let presence = (!matches!(p.client.mode.as_str(), "cli" | "probe")).then(|| {
        crate::methods::system::ClientPresence {
            host: p.client.display_name.clone(),
            ip: (!s.peer.ip().is_loopback()).then(|| s.peer.ip().to_string()),
            version: p.client.version.clone(),
            platform: p.client.platform.clone(),
            device_family: p.client.device_family.clone(),
            model_identifier: p.client.model_identifier.clone(),
            time_zone: p.client.time_zone.clone(),
            mode: p.client.mode.clone(),
            client_id: p.client.id.clone(),
            instance_id: p.client.instance_id.clone(),
            device_id,
            roles: vec![authority.role.clone()],
            scopes: authority.scopes.clone(),
            connected_at_ms: crate::runtime::core::now_ms(),
        }
    });
    s.authenticated(authority.clone(), presence);

    // Zero-scope sockets (probes) get an empty presence list, as the real gateway does;
    // so does any socket that may not read presence (rows carry IPs, hosts, device ids).
    let presence = s.core.presence.borrow().clone();
    let presence_json: &[u8] =
        if !crate::auth::scopes::satisfied(&authority.scopes, crate::auth::scopes::READ) {
            b"[]"
        } else {
            &presence.json
        };
    let health_json = s.core.health_payload();
    // Straight from the config: building a whole `SystemView` (session store path and all)
    // for three strings showed up in handshake profiles.
    let cfg = &shared.config;
    let config_path = cfg.paths.config_path.display().to_string();
    let state_dir = cfg.paths.state_dir.display().to_string();
    let default_agent = cfg.default_agent_id();
    let main_key = format!("agent:{default_agent}:main");
    let conn_id = format!("{}-{}", s.core.id, s.conn_id);
    let auth_mode = match mode {
        AuthMode::Token => "token",
        AuthMode::Password => "password",
        AuthMode::None => "none",
    };
    let hello = hello_ok(&HelloInputs {
        protocol,
        conn_id: &conn_id,
        features_json: super::features_json(),
        presence_json,
        health_json: &health_json,
        state_version_presence: presence.version,
        state_version_health: s.core.health_version.get(),
        uptime_ms: shared.uptime_ms(),
        role: &authority.role,
        scopes: &authority.scopes,
        auth_method: method,
        device_token: issued.as_ref().map(|(t, at)| (t.as_str(), *at)),
        config_path: &config_path,
        state_dir: &state_dir,
        default_agent_id: default_agent,
        main_session_key: &main_key,
        auth_mode,
        model_configured: true,
    });
    // hello-ok (its presence snapshot can be large) and everything after it get the full
    // per-client budget.
    s.lift_budget();
    s.send(&encode_ok_raw(id, &hello));
    Verdict::Authenticated
}

async fn pair(
    s: &Session,
    p: &ConnectParams,
    v: &device::VerifiedDevice,
    role: &str,
    requested: &[String],
) -> Result<(String, i64), ErrorShape> {
    let job = PairJob {
        device_id: v.device_id.clone(),
        public_key: v.public_key.clone(),
        client_id: p.client.id.clone(),
        client_mode: p.client.mode.clone(),
        platform: Some(p.client.platform.clone()).filter(|x| !x.is_empty()),
        device_family: p.client.device_family.clone(),
        role: role.to_string(),
        scopes: requested.to_vec(),
    };
    // Already paired with everything asked for: answer from this core's replica, no hop to
    // core 0 (the common reconnect case) — unless core 0's record is not on disk yet.
    if !s.core.device_durable(&job.device_id) {
        // Falls through to `pair`, which waits for (or redoes) the save.
    } else if let Some(t) = s.core.devices.borrow().unchanged_token(
        &job.device_id,
        &job.public_key,
        &job.role,
        &job.scopes,
    ) {
        return Ok(t);
    }
    match s.core.pair(job).await {
        PairOutcome::Approved {
            token,
            issued_at_ms,
        } => Ok((token, issued_at_ms)),
        PairOutcome::Failed(why) => {
            Err(ErrorShape::new(UNAVAILABLE, format!("pairing failed: {why}")).retry_after(1000))
        }
    }
}

fn pairing_required(device_id: &str, scope: &str) -> ErrorShape {
    ErrorShape::new(NOT_PAIRED, "pairing required").with_details(json!({
        "code": "PAIRING_REQUIRED",
        "deviceId": device_id,
        "requestedScope": scope,
        "recommendedNextStep": "approve_pairing",
        "retryable": false,
        "pauseReconnect": true,
    }))
}

/// The failure for a wrong or missing shared secret / device token (PROTOCOL.md §3.4).
/// `canRetryWithDeviceToken` (and the step `retry_with_device_token`) only for a token
/// mismatch on a connect that carried a device and no `auth.deviceToken`: the client then
/// retries once with its stored device token. `retry_device`: the signed device of a
/// connect that sent no `auth.deviceToken`.
fn secret_failure(
    mode: AuthMode,
    shared_ok: Option<bool>,
    had_device_token: bool,
    retry_device: Option<&str>,
) -> ErrorShape {
    match (mode, shared_ok) {
        (AuthMode::Password, Some(false)) => auth_error(
            "unauthorized: gateway password mismatch (use this gateway's gateway.auth.password or pair the device)",
            "AUTH_PASSWORD_MISMATCH",
            "update_auth_credentials",
            json!({"authReason": "password_mismatch", "canRetryWithDeviceToken": false}),
        ),
        (_, Some(false)) => {
            let can_retry = retry_device.is_some();
            auth_error(
                "unauthorized: gateway token mismatch (use this gateway's gateway.auth.token or pair the device)",
                "AUTH_TOKEN_MISMATCH",
                if can_retry {
                    "retry_with_device_token"
                } else {
                    "update_auth_credentials"
                },
                json!({"authReason": "token_mismatch", "canRetryWithDeviceToken": can_retry}),
            )
        }
        _ if had_device_token => auth_error(
            "unauthorized: device token mismatch (rotate or reissue the device token)",
            "AUTH_DEVICE_TOKEN_MISMATCH",
            "update_auth_credentials",
            json!({"authReason": "device_token_mismatch"}),
        ),
        (AuthMode::Password, _) => auth_error(
            "unauthorized: gateway password missing (provide this gateway's gateway.auth.password)",
            "AUTH_PASSWORD_MISSING",
            "update_auth_configuration",
            json!({"authReason": "password_missing"}),
        ),
        _ => auth_error(
            "unauthorized: gateway token missing (provide this gateway's gateway.auth.token)",
            "AUTH_TOKEN_MISSING",
            "update_auth_configuration",
            json!({"authReason": "token_missing"}),
        ),
    }
}
