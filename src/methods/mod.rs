//! The protocol session of one WebSocket (handshake, then requests) and the flat method table.
//!
//! Owns: what a text frame means — `connect` first, then `req`s dispatched through [`TABLE`]
//! after the role and scope checks. Handlers return values; they never write to sockets
//! directly (the session queues the response on the connection's outbox).
//! Must not touch: raw bytes or the WebSocket layer.

pub mod chat;
pub mod connect;
pub mod system;

use std::cell::{Cell, OnceCell};
use std::net::SocketAddr;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::auth::{scopes, token};
use crate::protocol::error::ErrorShape;
use crate::protocol::frames::{
    encode_err, encode_event_unsequenced, encode_ok, encode_ok_raw, params_value, parse_request,
};
use crate::runtime::core::{now_ms, Authority, Core};
use crate::transport::outbox::Outbox;
use crate::transport::ws::codec::OpCode;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleReq {
    /// Operators (then the scope check applies).
    Operator,
    /// Node hosts only.
    Node,
    /// Any authenticated socket.
    Any,
}

/// A synchronous handler: session + params → payload or error.
pub type SyncHandler = fn(&Session, &Value) -> Result<Value, ErrorShape>;

/// How a method is executed.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Answered on this core, right away.
    Sync(SyncHandler),
    /// Routed to the session's owner core (may answer twice, like `agent`).
    Chat(chat::ChatMethod),
    /// A per-core cached snapshot, already serialized (`health`).
    Snapshot(fn(&Core) -> Rc<Vec<u8>>),
}

/// One row of the method table.
pub struct MethodSpec {
    /// Wire name.
    pub name: &'static str,
    /// Role required.
    pub role: RoleReq,
    /// Scope required (`None` = any authenticated operator).
    pub scope: Option<&'static str>,
    /// The handler.
    pub handler: Handler,
}

/// Every method clawgate implements. `features.methods` in hello-ok is this list.
pub static TABLE: &[MethodSpec] = &[
    // `health` is answered on any authenticated socket, even zero-scope probes (observed).
    MethodSpec {
        name: "health",
        role: RoleReq::Any,
        scope: None,
        handler: Handler::Snapshot(Core::health_payload),
    },
    MethodSpec {
        name: "status",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::status),
    },
    MethodSpec {
        name: "system-presence",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Snapshot(Core::presence_payload),
    },
    MethodSpec {
        name: "system-event",
        role: RoleReq::Operator,
        scope: Some(scopes::ADMIN),
        handler: Handler::Sync(system_methods::system_event),
    },
    MethodSpec {
        name: "last-heartbeat",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::last_heartbeat),
    },
    MethodSpec {
        name: "models.list",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::models_list),
    },
    MethodSpec {
        name: "agents.list",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::agents_list),
    },
    MethodSpec {
        name: "config.get",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::config_get),
    },
    MethodSpec {
        name: "sessions.list",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Chat(chat::ChatMethod::SessionsList),
    },
    MethodSpec {
        name: "sessions.subscribe",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Chat(chat::ChatMethod::SessionsSubscribe),
    },
    MethodSpec {
        name: "sessions.create",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::SessionsCreate),
    },
    MethodSpec {
        name: "sessions.describe",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Chat(chat::ChatMethod::SessionsDescribe),
    },
    MethodSpec {
        name: "sessions.preview",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Chat(chat::ChatMethod::SessionsPreview),
    },
    MethodSpec {
        name: "sessions.patch",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::SessionsPatch),
    },
    MethodSpec {
        name: "sessions.reset",
        role: RoleReq::Operator,
        scope: Some(scopes::ADMIN),
        handler: Handler::Chat(chat::ChatMethod::SessionsReset),
    },
    MethodSpec {
        name: "sessions.delete",
        role: RoleReq::Operator,
        scope: Some(scopes::ADMIN),
        handler: Handler::Chat(chat::ChatMethod::SessionsDelete),
    },
    MethodSpec {
        name: "chat.history",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Chat(chat::ChatMethod::History),
    },
    MethodSpec {
        name: "chat.send",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::Send),
    },
    MethodSpec {
        name: "chat.abort",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::Abort),
    },
    MethodSpec {
        name: "agent",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::Agent),
    },
    MethodSpec {
        name: "agent.wait",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Chat(chat::ChatMethod::AgentWait),
    },
    MethodSpec {
        name: "channels.status",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::channels_status),
    },
    MethodSpec {
        name: "commands.list",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::commands_list),
    },
    MethodSpec {
        name: "wake",
        role: RoleReq::Operator,
        scope: Some(scopes::WRITE),
        handler: Handler::Sync(system_methods::wake),
    },
    MethodSpec {
        name: "node.list",
        role: RoleReq::Operator,
        scope: Some(scopes::READ),
        handler: Handler::Sync(system_methods::node_list),
    },
    MethodSpec {
        name: "device.pair.list",
        role: RoleReq::Operator,
        scope: Some(scopes::PAIRING),
        handler: Handler::Sync(system_methods::device_pair_list),
    },
];

/// Events clawgate emits (`features.events`).
pub static EVENTS: &[&str] = &[
    "tick",
    "health",
    "presence",
    "shutdown",
    "chat",
    "agent",
    "sessions.changed",
];

/// Names of [`TABLE`] in order.
pub fn method_names() -> Vec<&'static str> {
    TABLE.iter().map(|m| m.name).collect()
}

/// `hello-ok.features` as JSON, built once per process (the table and events are static).
pub fn features_json() -> &'static [u8] {
    static FEATURES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FEATURES.get_or_init(|| crate::protocol::hello::features_json(&method_names(), EVENTS))
}

fn lookup(name: &str) -> Option<&'static MethodSpec> {
    TABLE.iter().find(|m| m.name == name)
}

/// What the connection loop must do after a text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep reading.
    Continue,
    /// `hello-ok` was sent: lift the pre-auth limits.
    Authenticated,
    /// Close with this code and reason (the error response is already queued).
    Close(u16, String),
}

/// Protocol state of one WebSocket.
pub struct Session {
    /// This core.
    pub core: Rc<Core>,
    /// Connection id on this core.
    pub conn_id: u64,
    /// Remote address.
    pub peer: SocketAddr,
    /// Direct local (loopback peer, no forwarding, no browser origin).
    pub local: bool,
    outbox: Rc<Outbox>,
    /// The challenge nonce; taken (single-use) by the first `connect`.
    nonce: Option<String>,
    /// Set after hello-ok.
    pub authority: Option<Rc<Authority>>,
    in_presence: bool,
    /// `agent.wait` calls answered later by their own task (bounded per connection);
    /// allocated on the first one, so idle connections pay nothing.
    pending_waits: OnceCell<Rc<Cell<usize>>>,
}

/// Most `agent.wait` calls one connection may have pending at once.
pub const MAX_PENDING_WAITS: usize = 64;
/// Longest string kept in a presence row field (client-supplied; every row is in every
/// presence event and hello-ok).
pub const PRESENCE_FIELD_MAX: usize = 256;
/// Longest `system-event` text kept in its presence row.
pub const PRESENCE_TEXT_MAX: usize = 1024;

/// One pending `agent.wait`; dropping it frees the connection's slot.
pub(crate) struct WaitSlot(Rc<Cell<usize>>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Session {
    /// A session for a freshly upgraded socket.
    pub fn new(
        core: Rc<Core>,
        conn_id: u64,
        peer: SocketAddr,
        local: bool,
        outbox: Rc<Outbox>,
    ) -> Self {
        Self {
            core,
            conn_id,
            peer,
            local,
            outbox,
            nonce: None,
            authority: None,
            in_presence: false,
            pending_waits: OnceCell::new(),
        }
    }

    /// Give the socket the full write budget (it authenticated).
    pub(crate) fn lift_budget(&self) {
        self.outbox.set_budget(self.core.shared.opts.budget);
    }

    /// A slot for one more pending `agent.wait`, if this connection has one left.
    pub(crate) fn wait_slot(&self) -> Option<WaitSlot> {
        let pending = self.pending_waits.get_or_init(Rc::default);
        let n = pending.get();
        if n >= MAX_PENDING_WAITS {
            return None;
        }
        pending.set(n + 1);
        Some(WaitSlot(pending.clone()))
    }

    /// Send `connect.challenge` (must be the first frame on the socket).
    pub fn send_challenge(&mut self) {
        let nonce = token::uuid_v4();
        let payload = crate::protocol::hello::challenge(&nonce, now_ms());
        self.outbox.push_frame(
            OpCode::Text,
            &encode_event_unsequenced("connect.challenge", &payload),
        );
        self.nonce = Some(nonce);
    }

    fn reply(&self, bytes: &[u8]) {
        self.outbox.push_frame(OpCode::Text, bytes);
    }

    fn fail(&self, id: &str, err: ErrorShape, code: u16) -> Verdict {
        let reason = err.message.clone();
        self.reply(&encode_err(id, &err, None));
        Verdict::Close(code, reason)
    }

    /// Handle one complete text message.
    pub async fn on_text(&mut self, payload: &[u8]) -> Verdict {
        let req = match parse_request(payload) {
            Ok(r) => r,
            Err(fe) => {
                let id = fe.id.unwrap_or_default();
                if self.authority.is_none() {
                    return self.fail(&id, fe.error, 1008);
                }
                self.reply(&encode_err(&id, &fe.error, None));
                return Verdict::Continue;
            }
        };
        let Some(authority) = self.authority.clone() else {
            if req.method != "connect" {
                let err = ErrorShape::invalid("invalid handshake: first request must be connect");
                return self.fail(&req.id, err, 1008);
            }
            let id = req.id.into_owned();
            return connect::handle(self, &id, req.params).await;
        };
        // Method, role and scope first; only then are the params parsed (a caller cannot
        // make the gateway build a tree out of params it was never allowed to send).
        let handler = match self.dispatch(&authority, &req.method) {
            Ok(h) => h,
            Err(e) => {
                self.reply(&encode_err(&req.id, &e, None));
                return Verdict::Continue;
            }
        };
        if let Handler::Snapshot(f) = handler {
            self.reply(&encode_ok_raw(&req.id, &f(&self.core)));
            return Verdict::Continue;
        }
        let params = match params_value(req.params) {
            Ok(p) => p,
            Err(e) => {
                self.reply(&encode_err(&req.id, &e, None));
                return Verdict::Continue;
            }
        };
        match handler {
            Handler::Sync(f) => match f(self, &params) {
                Ok(v) => self.reply(&encode_ok(&req.id, &v)),
                Err(e) => self.reply(&encode_err(&req.id, &e, None)),
            },
            Handler::Chat(m) => chat::handle(self, m, &req.id, &params).await,
            Handler::Snapshot(_) => {}
        }
        Verdict::Continue
    }

    fn dispatch(&self, a: &Authority, method: &str) -> Result<Handler, ErrorShape> {
        if method == "connect" {
            return Err(ErrorShape::invalid(
                "connect already completed on this socket",
            ));
        }
        let spec = lookup(method).ok_or_else(|| ErrorShape::unknown_method(method))?;
        match spec.role {
            RoleReq::Any => {}
            RoleReq::Operator if a.role == "operator" => {}
            RoleReq::Node if a.role == "node" => {}
            _ => {
                return Err(ErrorShape::new(
                    crate::protocol::error::FORBIDDEN,
                    format!("unauthorized role: {}", a.role),
                ))
            }
        }
        if let Some(scope) = spec.scope {
            if !scopes::satisfied(&a.scopes, scope) {
                return Err(ErrorShape::missing_scope(scope));
            }
        }
        Ok(spec.handler)
    }

    /// Called by `connect` on success.
    /// `presence` is the client's row for long-lived clients (`None` for one-shot CLI and
    /// probe sockets, which the real gateway does not list); it is not kept per connection.
    pub(crate) fn authenticated(
        &mut self,
        authority: Rc<Authority>,
        presence: Option<system::ClientPresence>,
    ) {
        // Presence first: on core 0 the join is published at once, and this socket must
        // not get that event (seq 1, under the pre-auth budget) before its hello-ok.
        if let Some(p) = presence {
            self.core
                .presence_join(self.conn_id, system::client_presence_entry(&p, now_ms()));
            self.in_presence = true;
        }
        self.core.set_authority(self.conn_id, authority.clone());
        self.authority = Some(authority);
    }

    /// Take the challenge nonce (single use).
    pub(crate) fn take_nonce(&mut self) -> Option<String> {
        self.nonce.take()
    }

    /// Queue a frame (used by `connect` and the chat methods).
    pub(crate) fn send(&self, bytes: &[u8]) {
        self.reply(bytes);
    }

    /// The connection's outbox (for responses sent later, like `agent`'s final one).
    pub(crate) fn outbox_handle(&self) -> Rc<Outbox> {
        self.outbox.clone()
    }

    /// A view with the given sessions (sessions.list gathers them from every core).
    pub fn with_sessions_view<R>(
        &self,
        sessions: &[system::SessionSummary],
        f: impl FnOnce(&system::SystemView<'_>) -> R,
    ) -> R {
        with_view_sessions(&self.core, self.sees_sensitive(), sessions, f)
    }

    /// The caller holds `operator.admin` (views then reveal paths and recent rows).
    fn sees_sensitive(&self) -> bool {
        self.authority
            .as_ref()
            .is_some_and(|a| scopes::satisfied(&a.scopes, scopes::ADMIN))
    }

    /// The socket is gone.
    pub fn on_closed(&mut self) {
        if self.in_presence {
            self.core.presence_leave(self.conn_id);
            self.in_presence = false;
        }
    }

    /// A view of gateway state for the payload builders.
    pub fn with_view<R>(&self, f: impl FnOnce(&system::SystemView<'_>) -> R) -> R {
        with_view(&self.core, self.sees_sensitive(), f)
    }
}

/// Build a [`system::SystemView`] of this core's state.
pub fn with_view<R>(
    core: &Core,
    include_sensitive: bool,
    f: impl FnOnce(&system::SystemView<'_>) -> R,
) -> R {
    with_view_sessions(core, include_sensitive, &[], f)
}

/// [`with_view`] with the gateway-wide sessions from every core's replicated digest
/// (≤ 2 s old: counts per agent and each agent's newest rows), for `health` and `status`.
pub fn with_digest_view<R>(
    core: &Core,
    include_sensitive: bool,
    f: impl FnOnce(&system::SystemView<'_>) -> R,
) -> R {
    let (recent, counts) = core.session_digest();
    with_view_parts(core, include_sensitive, &recent, Some(&counts), f)
}

fn with_view_sessions<R>(
    core: &Core,
    include_sensitive: bool,
    sessions: &[system::SessionSummary],
    f: impl FnOnce(&system::SystemView<'_>) -> R,
) -> R {
    with_view_parts(core, include_sensitive, sessions, None, f)
}

fn with_view_parts<R>(
    core: &Core,
    include_sensitive: bool,
    sessions: &[system::SessionSummary],
    session_counts: Option<&std::collections::BTreeMap<String, usize>>,
    f: impl FnOnce(&system::SystemView<'_>) -> R,
) -> R {
    let cfg = &core.shared.config;
    let sessions_path = system::session_store_path(&cfg.paths.state_dir, cfg.default_agent_id());
    let view = system::SystemView {
        now_ms: now_ms(),
        started_at_ms: core.shared.started_at_ms,
        config: cfg,
        host: &core.shared.host,
        ip: "127.0.0.1",
        instance_id: &core.shared.instance_id,
        sessions,
        session_counts,
        sessions_path: &sessions_path,
        heartbeat_seconds: 0,
        platform: std::env::consts::OS,
        // Cached: `getpid` is a real syscall on every call (glibc stopped caching it).
        pid: *PID.get_or_init(std::process::id),
        include_sensitive,
        event_loop: None,
        hot_reload: None,
    };
    f(&view)
}

static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The gateway's own presence row.
pub fn gateway_presence(core: &Core) -> Value {
    with_view(core, false, system::gateway_presence_entry)
}

/// Reject params outside `allowed` (where the real schema is a closed object), with the
/// real gateway's wording.
pub(crate) fn closed_params(method: &str, p: &Value, allowed: &[&str]) -> Result<(), ErrorShape> {
    match p {
        Value::Null => Ok(()),
        Value::Object(o) => match o.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ErrorShape::invalid_params(
                method,
                format!("at root: unexpected property '{k}'"),
            )),
            None => Ok(()),
        },
        _ => Err(ErrorShape::invalid_params(
            method,
            "params must be an object",
        )),
    }
}

mod system_methods {
    //! Thin adapters from the table to the pure builders in `system`.
    use super::*;

    pub(super) fn status(s: &Session, p: &Value) -> Result<Value, ErrorShape> {
        Ok(with_digest_view(&s.core, s.sees_sensitive(), |v| {
            system::status_with_params(v, p)
        }))
    }
    pub(super) fn last_heartbeat(_s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        Ok(Value::Null)
    }
    pub(super) fn models_list(s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        Ok(s.with_view(system::models_list))
    }
    pub(super) fn agents_list(s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        Ok(s.with_view(system::agents_list))
    }
    pub(super) fn config_get(s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        Ok(s.with_view(system::config_get))
    }
    /// `channels.status`: clawgate has no chat channels; the real gateway's answer for none.
    pub(super) fn channels_status(_s: &Session, p: &Value) -> Result<Value, ErrorShape> {
        closed_params("channels.status", p, &["probe", "timeoutMs", "channel"])?;
        if let Some(ch) = p.get("channel").and_then(Value::as_str) {
            return Err(ErrorShape::invalid(format!("unknown channel: {ch}")));
        }
        Ok(json!({
            "ts": now_ms(),
            "channelOrder": [],
            "channelLabels": {},
            "channelDetailLabels": {},
            "channelSystemImages": {},
            "channelMeta": [],
            "channels": {},
            "channelAccounts": {},
            "channelDefaultAccountId": {},
            "statusIssues": [],
        }))
    }

    /// `commands.list`: the chat commands clawgate handles (`/new`, `/reset`).
    pub(super) fn commands_list(_s: &Session, p: &Value) -> Result<Value, ErrorShape> {
        closed_params(
            "commands.list",
            p,
            &["sessionKey", "agentId", "provider", "scope", "includeArgs"],
        )?;
        let scope = p.get("scope").and_then(Value::as_str).unwrap_or("both");
        if !matches!(scope, "text" | "native" | "both") {
            return Err(ErrorShape::invalid_params(
                "commands.list",
                "at /scope: must be one of text, native, both",
            ));
        }
        let cmd = |name: &str, description: &str| {
            json!({
                "name": name,
                "nativeName": name,
                "textAliases": [format!("/{name}")],
                "description": description,
                "category": "session",
                "source": "native",
                "scope": "both",
                "acceptsArgs": true,
            })
        };
        Ok(json!({"commands": [
            cmd("new", "Start a new session."),
            cmd("reset", "Reset the current session."),
        ]}))
    }

    /// `wake`: clawgate runs no heartbeat or cron, so no session can be woken; answered as
    /// the real gateway answers when it has no scheduler (`ok: false` with its reason).
    pub(super) fn wake(_s: &Session, p: &Value) -> Result<Value, ErrorShape> {
        let mode = p.get("mode").and_then(Value::as_str);
        if !matches!(mode, Some("now" | "next-heartbeat")) {
            return Err(ErrorShape::invalid_params(
                "wake",
                "at /mode: must be one of now, next-heartbeat",
            ));
        }
        if p.get("text")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ErrorShape::invalid_params(
                "wake",
                "at /text: must be a non-empty string",
            ));
        }
        Ok(json!({"ok": false, "reason": "unwakeable-session-key"}))
    }

    pub(super) fn node_list(_s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        Ok(json!({"ts": now_ms(), "nodes": []}))
    }
    pub(super) fn device_pair_list(s: &Session, _p: &Value) -> Result<Value, ErrorShape> {
        let reg = s.core.devices.borrow();
        let paired: Vec<Value> = reg
            .iter()
            .map(|d| crate::store::devices::to_pair_list_entry(d, false))
            .collect();
        Ok(json!({"pending": [], "paired": paired}))
    }

    /// `system-event`: upsert a presence row (keyed by instance/device/host) and broadcast.
    pub(super) fn system_event(s: &Session, p: &Value) -> Result<Value, ErrorShape> {
        let Some(obj) = p.as_object() else {
            return Err(ErrorShape::invalid_params(
                "system-event",
                "params must be an object",
            ));
        };
        let text = obj
            .get("text")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty());
        let Some(text) = text else {
            return Err(ErrorShape::invalid_params(
                "system-event",
                "text (non-empty string) is required",
            ));
        };
        let bad = |k: &str, want: &str| {
            ErrorShape::invalid_params("system-event", format!("at /{k}: must be {want}"))
        };
        let mut entry = serde_json::Map::new();
        // Every row is in every presence event and hello-ok: typed and bounded.
        for k in [
            "deviceId",
            "instanceId",
            "host",
            "ip",
            "mode",
            "version",
            "platform",
            "deviceFamily",
            "modelIdentifier",
            "reason",
        ] {
            match obj.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) => {
                    entry.insert(k.to_string(), json!(system::clip(v, PRESENCE_FIELD_MAX)));
                }
                Some(_) => return Err(bad(k, "string")),
            }
        }
        match obj.get("lastInputSeconds") {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                entry.insert("lastInputSeconds".into(), v.clone());
            }
            Some(_) => return Err(bad("lastInputSeconds", "number")),
        }
        for k in ["roles", "scopes", "tags"] {
            match obj.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) if items.len() <= 64 => {
                    let mut out = Vec::with_capacity(items.len());
                    for i in items {
                        let Some(t) = i.as_str() else {
                            return Err(bad(k, "an array of strings"));
                        };
                        out.push(json!(system::clip(t, PRESENCE_FIELD_MAX)));
                    }
                    entry.insert(k.to_string(), Value::Array(out));
                }
                Some(_) => return Err(bad(k, "an array of at most 64 strings")),
            }
        }
        let text = system::clip(text.trim(), PRESENCE_TEXT_MAX);
        entry.insert("text".into(), Value::String(text.to_string()));
        entry.insert("ts".into(), json!(now_ms()));
        // The row's identity, as the real gateway: device, instance, host, ip, else the
        // text's first 64 characters.
        let named = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .map(|v| v.trim().to_lowercase())
                .filter(|v| !v.is_empty())
        };
        let key_src = ["deviceId", "instanceId", "host", "ip"]
            .iter()
            .find_map(|k| named(k))
            .unwrap_or_else(|| system::clip(text, 64).to_string());
        let key = crate::store::sessions::fnv1a64(key_src.as_bytes());
        s.core.presence_event(key, Value::Object(entry));
        Ok(json!({"ok": true}))
    }
}
