//! Result payloads of the read-only system methods: `health` (also the `health` event and
//! `hello-ok.snapshot.health`), `status`, `system-presence` rows, `agents.list`, `models.list`,
//! `sessions.list` and `config.get` (PROTOCOL.md §3.2, §9).
//!
//! Key components: [`SystemView`] (a borrowed, per-call view of gateway state that the runtime
//! assembles), [`SessionSummary`] (one row of a session store), [`ClientPresence`] (a connected
//! client), and one pure builder per method. Nothing here does I/O, reads the clock or allocates
//! ids: the same view always yields the same JSON, so the golden-shape tests below can hold each
//! builder against the real gateway's captured result (`tests/vectors/*.jsonl`).
//!
//! Shapes follow the real 2026.9.6 gateway field for field where clawgate has the feature.
//! Subtrees for features clawgate lacks are either sent empty (`channels: {}`, `plugins` with
//! empty lists, zeroed task counters, because CLI renderers read them unguarded) or left out
//! when they are optional (`hostDesktop`, `workerPools`, `modelRuntime`, …); each omission is
//! listed with its reason in the tests' ignore lists.
//!
//! ```ignore
//! let view = SystemView { now_ms, started_at_ms, config: &cfg, host, ip, platform, instance_id,
//!     sessions: &rows, sessions_path: &path, heartbeat_seconds: 1800, ..};
//! respond(health_snapshot(&view));
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::config::{redact_secrets, Config};
use crate::protocol::hello::{MAIN_KEY, SERVER_VERSION};

/// Provider id of clawgate's built-in offline model.
pub const OFFLINE_PROVIDER: &str = "clawgate";
/// Model id (within [`OFFLINE_PROVIDER`]) of the built-in offline model.
pub const OFFLINE_MODEL_ID: &str = "offline";
/// `provider/model` reference of the built-in offline model.
pub const OFFLINE_MODEL_REF: &str = "clawgate/offline";
/// Display name of the built-in offline model.
pub const OFFLINE_MODEL_NAME: &str = "Offline echo agent";

/// Context window reported when nothing better is known (the real gateway's fallback too).
pub const DEFAULT_CONTEXT_TOKENS: u64 = 200_000;
/// Recent sessions listed per store in `health` (real: `HEALTH_RECENT_SESSION_LIMIT`).
pub const HEALTH_RECENT_SESSION_LIMIT: usize = 5;
/// Recent sessions listed in `status` for admin callers.
pub const STATUS_RECENT_SESSION_LIMIT: usize = 10;
/// `sessions.list` page size when `limit` is omitted (echoed as `limitApplied`).
pub const SESSIONS_LIST_DEFAULT_LIMIT: u64 = 100;
/// `heartbeat.ackMaxChars` (fixed in the real gateway).
pub const HEARTBEAT_ACK_MAX_CHARS: u64 = 300;
/// The prompt clawgate's heartbeat runs send to the agent.
pub const HEARTBEAT_PROMPT: &str = "Heartbeat check. If nothing needs attention, reply NO_REPLY.";
/// Heartbeat delivery target: clawgate has no channels, so results stay in the main session.
pub const HEARTBEAT_TARGET: &str = "none";

/// Event-loop vitals (`health.eventLoop`, `status.eventLoop`); the runtime measures them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EventLoopStats {
    /// Whether the loop is currently considered degraded.
    pub degraded: bool,
    /// How long the loop has been degraded (ms; the CLI prints "degraded for 2s"); only sent
    /// while degraded, `null` otherwise.
    pub degraded_since_ms: Option<i64>,
    /// The delay reasons: `event_loop_delay`, `event_loop_utilization`, `cpu` (bit flags:
    /// 1 = delay, 2 = utilization, 4 = cpu).
    pub reasons: u8,
    /// Sampling interval (ms).
    pub interval_ms: f64,
    /// p99 scheduling delay (ms).
    pub delay_p99_ms: f64,
    /// Max scheduling delay (ms).
    pub delay_max_ms: f64,
    /// Busy fraction of the sampling interval, 0..=1.
    pub utilization: f64,
    /// Process CPU time / wall time (may exceed 1 with several cores).
    pub cpu_core_ratio: f64,
}

/// Borrowed view of the gateway state the system builders read.
#[derive(Debug, Clone, Copy)]
pub struct SystemView<'a> {
    /// Current time (epoch ms).
    pub now_ms: i64,
    /// When this gateway process started (epoch ms).
    pub started_at_ms: i64,
    /// Loaded configuration.
    pub config: &'a Config,
    /// Host name of the machine (presence `host`; omitted when empty).
    pub host: &'a str,
    /// Primary LAN IPv4 (presence `ip`; omitted when empty).
    pub ip: &'a str,
    /// OS and release, e.g. `linux 6.18.44` (presence `platform`; omitted when empty).
    pub platform: &'a str,
    /// The gateway's own presence `instanceId` (a UUID fixed for the process lifetime).
    pub instance_id: &'a str,
    /// Every session of every agent (keys canonical: `agent:<agentId>:<rest>`), or, with
    /// `session_counts`, only the most recent ones of each agent.
    pub sessions: &'a [SessionSummary],
    /// Sessions per agent id when `sessions` holds only the most recent rows (the
    /// gateway-wide digest `health` and `status` answer from); `None`: count `sessions`.
    pub session_counts: Option<&'a std::collections::BTreeMap<String, usize>>,
    /// The default agent's session store path (normally
    /// [`session_store_path`]`(state_dir, default_agent_id)`).
    pub sessions_path: &'a str,
    /// Heartbeat interval of the default agent; 0 = heartbeats disabled.
    pub heartbeat_seconds: u64,
    /// Gateway process id (`status.pid`).
    pub pid: u32,
    /// The caller holds `operator.admin`: `status` then reveals store paths and recent rows
    /// (others get `[]` and `"[redacted]"`, as the real gateway does for read-only callers).
    pub include_sensitive: bool,
    /// Event-loop vitals, when the runtime samples them (omitted otherwise).
    pub event_loop: Option<EventLoopStats>,
    /// Config hot-reload watcher state: `Some(true)` active, `Some(false)` disabled (the CLI
    /// then prints a warning), `None` = not reported.
    pub hot_reload: Option<bool>,
}

/// One session of a store, as the sessions store summarizes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionSummary {
    /// Canonical key `agent:<agentId>:<rest>` (the main one `agent:<id>:main`).
    pub key: String,
    /// Current session (transcript) id.
    pub session_id: String,
    /// Last update (epoch ms; ≤ 0 = never).
    pub updated_at_ms: i64,
    /// Creation time (epoch ms), if known.
    pub created_at_ms: Option<i64>,
    /// Last real user interaction (epoch ms), if any.
    pub last_interaction_at_ms: Option<i64>,
    /// User label (`sessions.patch {label}`).
    pub label: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Per-session model override (`provider/model`).
    pub model: Option<String>,
    /// Token total of the last run, when known.
    pub total_tokens: Option<u64>,
    /// Short preview of the latest visible message.
    pub last_message_preview: Option<String>,
    /// Run status: `queued`, `running`, `done`, `failed`, `killed`, `timeout` (others dropped).
    pub status: Option<String>,
    /// The last run was aborted.
    pub aborted_last_run: bool,
    /// The system prompt was already sent in this session.
    pub system_sent: bool,
    /// Runs currently executing in this session.
    pub active_run_ids: Vec<String>,
    /// Start of the latest run (epoch ms).
    pub run_started_at_ms: Option<i64>,
    /// End of the latest run (epoch ms), once it finished.
    pub run_ended_at_ms: Option<i64>,
    /// Id of the last finished run.
    pub last_run_id: Option<String>,
    /// Error message of the last run, if it failed.
    pub last_run_error: Option<String>,
    /// Archived (`sessions.patch {archived}`): listed only when asked for.
    pub archived: bool,
    /// Pinned.
    pub pinned: bool,
    /// `thinkingLevel` override.
    pub thinking_level: Option<String>,
    /// `fastMode` override.
    pub fast_mode: Option<bool>,
    /// Kept `sessions.patch` settings (`verboseLevel`, `responseUsage`, `archivedAt`, …),
    /// row fields in the real gateway. Shared, not copied, by every list gather and digest.
    pub settings: std::sync::Arc<std::collections::BTreeMap<String, Value>>,
}

/// A connected client, for its `system-presence` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientPresence {
    /// Display host (`client.displayName`); falls back to `client_id`.
    pub host: Option<String>,
    /// Peer IP; leave `None` for loopback clients (the real gateway omits it for local peers).
    pub ip: Option<String>,
    /// `client.version`.
    pub version: String,
    /// `client.platform`.
    pub platform: String,
    /// `client.deviceFamily`.
    pub device_family: Option<String>,
    /// `client.modelIdentifier`.
    pub model_identifier: Option<String>,
    /// `client.timeZone`.
    pub time_zone: Option<String>,
    /// `client.mode`.
    pub mode: String,
    /// `client.id`.
    pub client_id: String,
    /// `client.instanceId` (for nodes: the device id).
    pub instance_id: Option<String>,
    /// Verified device id.
    pub device_id: Option<String>,
    /// Roles held (`["operator"]`, `["node"]`).
    pub roles: Vec<String>,
    /// Effective scopes.
    pub scopes: Vec<String>,
    /// When the socket completed `connect` (epoch ms).
    pub connected_at_ms: i64,
}

/// `<state_dir>/agents/<agentId>/sessions/sessions.json`: where an agent's session store lives.
pub fn session_store_path(state_dir: &Path, agent_id: &str) -> String {
    state_dir
        .join("agents")
        .join(agent_id)
        .join("sessions")
        .join("sessions.json")
        .display()
        .to_string()
}

/// The agent id of a canonical session key (`agent:<id>:…`), if it is one.
pub fn session_agent_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("agent:")?;
    let (id, tail) = rest.split_once(':')?;
    (!id.is_empty() && !tail.is_empty()).then_some(id)
}

/// Human form of a heartbeat interval, as OpenClaw writes it in config (`30m`, `1h`, `45s`).
pub fn format_every(seconds: u64) -> String {
    if seconds == 0 {
        "disabled".to_string()
    } else if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else if seconds % 60 == 0 {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

// ---------------------------------------------------------------------------------------------
// Roster and model helpers

/// One agent of the roster as the builders see it.
struct Agent<'c> {
    id: &'c str,
    name: Option<&'c str>,
    is_default: bool,
    /// Effective primary model (`provider/model`).
    model: &'c str,
}

/// `id` is one of the configured agents (or the built-in `main` when none are).
pub fn is_known_agent(cfg: &Config, id: &str) -> bool {
    roster(cfg).iter().any(|a| a.id == id)
}

/// Configured agents in config order (deduplicated), or the built-in `main` agent.
fn roster(cfg: &Config) -> Vec<Agent<'_>> {
    let default_id = cfg.default_agent_id();
    let fallback_model = cfg
        .default_model
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(OFFLINE_MODEL_REF);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for a in &cfg.agents {
        if a.id.is_empty() || !seen.insert(a.id.as_str()) {
            continue;
        }
        out.push(Agent {
            id: &a.id,
            name: a.name.as_deref().filter(|n| !n.is_empty()),
            is_default: a.id == default_id,
            model: a
                .model
                .as_deref()
                .filter(|m| !m.is_empty())
                .unwrap_or(fallback_model),
        });
    }
    if out.is_empty() {
        out.push(Agent {
            id: default_id,
            name: None,
            is_default: true,
            model: fallback_model,
        });
    } else if !out.iter().any(|a| a.is_default) {
        if let Some(first) = out.first_mut() {
            first.is_default = true;
        }
    }
    out
}

fn default_agent<'a, 'c>(agents: &'a [Agent<'c>]) -> Option<&'a Agent<'c>> {
    agents
        .iter()
        .find(|a| a.is_default)
        .or_else(|| agents.first())
}

/// Split a `provider/model` reference; `None` when it has no provider part.
fn split_model_ref(model_ref: &str) -> Option<(&str, &str)> {
    let (provider, model) = model_ref.split_once('/')?;
    (!provider.is_empty() && !model.is_empty()).then_some((provider, model))
}

/// `(provider, model)` of a reference; `unknown` provider when it has none.
fn provider_and_model(model_ref: &str) -> (&str, &str) {
    split_model_ref(model_ref).unwrap_or(("unknown", model_ref))
}

/// The agent a session belongs to (its key's agent, else the default agent).
fn session_agent<'s>(s: &'s SessionSummary, default_id: &'s str) -> &'s str {
    session_agent_id(&s.key).unwrap_or(default_id)
}

fn store_path(v: &SystemView, agent_id: &str, default_id: &str) -> String {
    if agent_id == default_id && !v.sessions_path.is_empty() {
        v.sessions_path.to_string()
    } else {
        session_store_path(&v.config.paths.state_dir, agent_id)
    }
}

/// The agent's sessions, most recently updated first.
fn sessions_of<'s>(
    v: &SystemView<'s>,
    agent_id: &str,
    default_id: &str,
) -> Vec<&'s SessionSummary> {
    let mut rows: Vec<&SessionSummary> = v
        .sessions
        .iter()
        .filter(|s| session_agent(s, default_id) == agent_id)
        .collect();
    rows.sort_by(|a, b| {
        b.updated_at_ms
            .cmp(&a.updated_at_ms)
            .then_with(|| a.key.cmp(&b.key))
    });
    rows
}

fn updated_at(s: &SessionSummary) -> Value {
    if s.updated_at_ms > 0 {
        json!(s.updated_at_ms)
    } else {
        Value::Null
    }
}

fn age(s: &SessionSummary, now_ms: i64) -> Value {
    if s.updated_at_ms > 0 {
        json!(now_ms.saturating_sub(s.updated_at_ms).max(0))
    } else {
        Value::Null
    }
}

/// How many sessions `agent_id` has (`rows`: its rows in `v.sessions`).
fn count_of(v: &SystemView, agent_id: &str, rows: usize) -> usize {
    v.session_counts
        .map_or(rows, |c| c.get(agent_id).copied().unwrap_or(0))
}

/// `{path, count, recent:[{key, updatedAt, age}]}` for one store.
fn health_sessions(v: &SystemView, agent_id: &str, default_id: &str) -> Value {
    let rows = sessions_of(v, agent_id, default_id);
    let recent: Vec<Value> = rows
        .iter()
        .take(HEALTH_RECENT_SESSION_LIMIT)
        .map(|s| json!({"key": s.key, "updatedAt": updated_at(s), "age": age(s, v.now_ms)}))
        .collect();
    json!({
        "path": store_path(v, agent_id, default_id),
        "count": count_of(v, agent_id, rows.len()),
        "recent": recent,
    })
}

fn heartbeat_enabled(v: &SystemView, agent: &Agent) -> bool {
    agent.is_default && v.heartbeat_seconds > 0
}

fn event_loop_json(e: &EventLoopStats) -> Value {
    let mut reasons = Vec::new();
    for (bit, name) in [
        (1u8, "event_loop_delay"),
        (2, "event_loop_utilization"),
        (4, "cpu"),
    ] {
        if e.reasons & bit != 0 {
            reasons.push(name);
        }
    }
    let nn = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    json!({
        "degraded": e.degraded,
        "degradedSinceMs": e.degraded_since_ms.filter(|_| e.degraded).map(|ms| ms.max(0)),
        "reasons": reasons,
        "intervalMs": nn(e.interval_ms),
        "delayP99Ms": nn(e.delay_p99_ms),
        "delayMaxMs": nn(e.delay_max_ms),
        "utilization": nn(e.utilization),
        "cpuCoreRatio": nn(e.cpu_core_ratio),
    })
}

// ---------------------------------------------------------------------------------------------
// health

/// The health snapshot: the `health` RPC result, the `health` event payload and
/// `hello-ok.snapshot.health`.
///
/// `{ok, ts, durationMs, eventLoop?, plugins{loaded,errors,unavailable}, configReload?,
/// channels{}, channelOrder[], channelLabels{}, heartbeatSeconds, defaultAgentId,
/// agents[{agentId, name?, isDefault, heartbeat{enabled, every, everyMs, prompt, target,
/// ackMaxChars}, sessions{path, count, recent[{key, updatedAt, age}]}}], sessions{…}}`.
/// Only fields of the client's closed `HealthSnapshot` schema are emitted (so no
/// `modelRuntime`, which the real RPC adds but its events never carry).
pub fn health_snapshot(v: &SystemView) -> Value {
    let agents = roster(v.config);
    let default_id = default_agent(&agents).map(|a| a.id).unwrap_or("main");
    let agent_rows: Vec<Value> = agents
        .iter()
        .map(|a| {
            let enabled = heartbeat_enabled(v, a);
            let mut row = Map::new();
            row.insert("agentId".into(), json!(a.id));
            if let Some(name) = a.name {
                row.insert("name".into(), json!(name));
            }
            row.insert("isDefault".into(), json!(a.is_default));
            row.insert(
                "heartbeat".into(),
                json!({
                    "enabled": enabled,
                    "every": if enabled { format_every(v.heartbeat_seconds) } else { "disabled".to_string() },
                    "everyMs": if enabled { json!(v.heartbeat_seconds.saturating_mul(1000)) } else { Value::Null },
                    "prompt": HEARTBEAT_PROMPT,
                    "target": HEARTBEAT_TARGET,
                    "ackMaxChars": HEARTBEAT_ACK_MAX_CHARS,
                }),
            );
            row.insert("sessions".into(), health_sessions(v, a.id, default_id));
            Value::Object(row)
        })
        .collect();
    let heartbeat_seconds = agents
        .iter()
        .find(|a| heartbeat_enabled(v, a))
        .map(|_| v.heartbeat_seconds)
        .unwrap_or(0);

    let mut out = Map::new();
    out.insert("ok".into(), json!(true));
    out.insert("ts".into(), json!(v.now_ms.max(0)));
    // Built from in-memory state: there is no probe round to time.
    out.insert("durationMs".into(), json!(0));
    if let Some(e) = &v.event_loop {
        out.insert("eventLoop".into(), event_loop_json(e));
    }
    out.insert(
        "plugins".into(),
        json!({"loaded": [], "errors": [], "unavailable": []}),
    );
    if let Some(active) = v.hot_reload {
        out.insert(
            "configReload".into(),
            json!({"hotReloadStatus": if active { "active" } else { "disabled" }}),
        );
    }
    out.insert("channels".into(), json!({}));
    out.insert("channelOrder".into(), json!([]));
    out.insert("channelLabels".into(), json!({}));
    out.insert("heartbeatSeconds".into(), json!(heartbeat_seconds));
    out.insert("defaultAgentId".into(), json!(default_id));
    out.insert("agents".into(), Value::Array(agent_rows));
    out.insert(
        "sessions".into(),
        health_sessions(v, default_id, default_id),
    );
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// status

/// The `status` result for `params` omitted or `{}`; see [`status_with_params`].
pub fn status(v: &SystemView) -> Value {
    status_with_params(v, &Value::Null)
}

/// The `status` result. `params.includeCliProjection: true` (sent by `openclaw status`) adds
/// `cliProjection{agents{defaultId, ownership, selectionRequired, rows[{id, name?}]},
/// updateChannel, memoryPlugin}`; other params are ignored.
///
/// `runtimeVersion` is [`SERVER_VERSION`] (the protocol-compatible OpenClaw release, not the
/// crate version): `openclaw doctor` warns when it differs from the CLI's own version.
/// The CLI reads `heartbeat.agents[]`, `tasks.{total,active,failures,byStatus.*}`,
/// `taskAudit.{errors,warnings}`, `queuedSystemEvents`, `sessions.{count,recent,byAgent}`
/// without null checks, so all of them are always present.
pub fn status_with_params(v: &SystemView, params: &Value) -> Value {
    let agents = roster(v.config);
    let default_id = default_agent(&agents).map(|a| a.id).unwrap_or("main");
    let heartbeat_agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            let enabled = heartbeat_enabled(v, a);
            json!({
                "agentId": a.id,
                "enabled": enabled,
                "every": if enabled { format_every(v.heartbeat_seconds) } else { "disabled".to_string() },
                "everyMs": if enabled { json!(v.heartbeat_seconds.saturating_mul(1000)) } else { Value::Null },
                // Heartbeats reply into the main session; there is no channel route to wait for.
                "waitingForRoute": false,
            })
        })
        .collect();

    let mut paths = Vec::new();
    let mut by_agent = Vec::new();
    for a in &agents {
        let rows = sessions_of(v, a.id, default_id);
        let path = store_path(v, a.id, default_id);
        let recent: Vec<Value> = if v.include_sensitive {
            rows.iter()
                .take(STATUS_RECENT_SESSION_LIMIT)
                .map(|s| status_session_row(v, s, a))
                .collect()
        } else {
            Vec::new()
        };
        by_agent.push(json!({
            "agentId": a.id,
            "path": if v.include_sensitive { path.clone() } else { "[redacted]".to_string() },
            "count": count_of(v, a.id, rows.len()),
            "recent": recent,
        }));
        paths.push(path);
    }
    let recent: Vec<Value> = if v.include_sensitive {
        let mut all: Vec<&SessionSummary> = v.sessions.iter().collect();
        all.sort_by(|a, b| {
            b.updated_at_ms
                .cmp(&a.updated_at_ms)
                .then_with(|| a.key.cmp(&b.key))
        });
        all.into_iter()
            .take(STATUS_RECENT_SESSION_LIMIT)
            .map(|s| {
                let aid = session_agent(s, default_id);
                let agent = agents
                    .iter()
                    .find(|a| a.id == aid)
                    .or_else(|| default_agent(&agents));
                match agent {
                    Some(agent) => status_session_row(v, s, agent),
                    None => Value::Null,
                }
            })
            .filter(|r| !r.is_null())
            .collect()
    } else {
        Vec::new()
    };
    let defaults = if v.include_sensitive {
        let model = default_agent(&agents)
            .map(|a| a.model)
            .unwrap_or(OFFLINE_MODEL_REF);
        let model_id = split_model_ref(model).map(|(_, m)| m).unwrap_or(model);
        json!({"model": model_id, "contextTokens": DEFAULT_CONTEXT_TOKENS})
    } else {
        json!({"model": null, "contextTokens": null})
    };

    let mut out = Map::new();
    out.insert("runtimeVersion".into(), json!(SERVER_VERSION));
    if params.get("includeCliProjection").and_then(Value::as_bool) == Some(true) {
        let rows: Vec<Value> = agents
            .iter()
            .map(|a| match a.name {
                Some(name) => json!({"id": a.id, "name": name}),
                None => json!({"id": a.id}),
            })
            .collect();
        out.insert(
            "cliProjection".into(),
            json!({
                "agents": {"defaultId": default_id, "ownership": "sole", "selectionRequired": false, "rows": rows},
                "updateChannel": null,
                "memoryPlugin": {"enabled": false, "slot": null, "reason": "not supported by clawgate"},
            }),
        );
    }
    out.insert(
        "heartbeat".into(),
        json!({"defaultAgentId": default_id, "agents": heartbeat_agents}),
    );
    out.insert("channelSummary".into(), json!([]));
    out.insert("queuedSystemEvents".into(), json!([]));
    out.insert("degradedSecretOwners".into(), json!([]));
    out.insert("degradedPlugins".into(), json!([]));
    out.insert(
        "tasks".into(),
        json!({
            "total": 0, "active": 0, "terminal": 0, "failures": 0,
            "byStatus": {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "timed_out": 0, "cancelled": 0, "lost": 0},
            "byRuntime": {"subagent": 0, "acp": 0, "cli": 0, "cron": 0},
        }),
    );
    out.insert(
        "taskAudit".into(),
        json!({
            "total": 0, "warnings": 0, "errors": 0,
            "byCode": {"stale_queued": 0, "stale_running": 0, "lost": 0, "delivery_failed": 0, "missing_cleanup": 0, "inconsistent_timestamps": 0},
        }),
    );
    out.insert(
        "sessions".into(),
        json!({
            "paths": if v.include_sensitive { json!(paths) } else { json!([]) },
            "count": v.session_counts.map_or(v.sessions.len(), |c| c.values().sum()),
            "defaults": defaults,
            "recent": recent,
            "byAgent": by_agent,
        }),
    );
    if let Some(e) = &v.event_loop {
        out.insert("eventLoop".into(), event_loop_json(e));
    }
    out.insert("pid".into(), json!(v.pid));
    // clawgate extra (additive): process uptime.
    out.insert(
        "uptimeMs".into(),
        json!(v.now_ms.saturating_sub(v.started_at_ms).max(0)),
    );
    Value::Object(out)
}

/// One `status.sessions.recent[]` row (admin callers only), as `openclaw status` renders it:
/// it reads `key, kind, updatedAt, age, model, runtime, totalTokens, contextTokens, percentUsed,
/// flags, configuredModel, selectedModel, modelSelectionReason`.
fn status_session_row(v: &SystemView, s: &SessionSummary, agent: &Agent) -> Value {
    let configured = agent.model;
    let selected = s
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(configured);
    let model_id = split_model_ref(selected)
        .map(|(_, m)| m)
        .unwrap_or(selected);
    let percent = s
        .total_tokens
        .map(|t| (t.saturating_mul(100) / DEFAULT_CONTEXT_TOKENS).min(999));
    let remaining = s
        .total_tokens
        .map(|t| DEFAULT_CONTEXT_TOKENS.saturating_sub(t));
    json!({
        "agentId": agent.id,
        "key": s.key,
        "kind": "direct",
        "sessionId": s.session_id,
        "updatedAt": updated_at(s),
        "age": age(s, v.now_ms),
        "systemSent": s.system_sent,
        "abortedLastRun": s.aborted_last_run,
        "totalTokens": s.total_tokens,
        "totalTokensFresh": s.total_tokens.is_some(),
        "remainingTokens": remaining,
        "percentUsed": percent,
        "model": model_id,
        "configuredModel": configured,
        "selectedModel": selected,
        "modelSelectionReason": if selected != configured { json!("session override") } else { Value::Null },
        "runtime": "clawgate",
        "contextTokens": DEFAULT_CONTEXT_TOKENS,
        "flags": [],
    })
}

// ---------------------------------------------------------------------------------------------
// agents.list / models.list

/// The `agents.list` result: `{defaultId, ownership:"sole", selectionRequired:false,
/// mainKey:"main", scope:"per-sender", agents:[{id, kind:"agent", name?, identity?{name},
/// model{primary}}]}` — default agent first, the rest by id (as the real gateway orders them).
pub fn agents_list(v: &SystemView) -> Value {
    let mut agents = roster(v.config);
    let default_id = default_agent(&agents).map(|a| a.id).unwrap_or("main");
    agents.sort_by(|a, b| b.is_default.cmp(&a.is_default).then_with(|| a.id.cmp(b.id)));
    let rows: Vec<Value> = agents
        .iter()
        .map(|a| {
            let mut row = Map::new();
            row.insert("id".into(), json!(a.id));
            row.insert("kind".into(), json!("agent"));
            if let Some(name) = a.name {
                row.insert("name".into(), json!(name));
                row.insert("identity".into(), json!({"name": name}));
            }
            row.insert("model".into(), json!({"primary": a.model}));
            Value::Object(row)
        })
        .collect();
    json!({
        "defaultId": default_id,
        "ownership": "sole",
        "selectionRequired": false,
        "mainKey": MAIN_KEY,
        "scope": "per-sender",
        "agents": rows,
    })
}

/// The `models.list` result `{models:[{id, name, provider, …}]}`: the built-in offline model
/// (`clawgate/offline`, listed as `{id:"offline", provider:"clawgate"}`) first, then every
/// distinct `provider/model` from `agents.defaults.model.primary` and per-agent overrides.
/// References without a `provider/` part cannot be listed (the schema requires a provider).
pub fn models_list(v: &SystemView) -> Value {
    let mut models = vec![json!({
        "id": OFFLINE_MODEL_ID,
        "name": OFFLINE_MODEL_NAME,
        "provider": OFFLINE_PROVIDER,
        "available": true,
        "local": true,
        "reasoning": false,
        "input": ["text"],
    })];
    let mut seen = BTreeSet::new();
    seen.insert((OFFLINE_PROVIDER, OFFLINE_MODEL_ID));
    let refs = v
        .config
        .default_model
        .iter()
        .chain(v.config.agents.iter().filter_map(|a| a.model.as_ref()))
        .filter_map(|r| split_model_ref(r));
    for (provider, model) in refs {
        if seen.insert((provider, model)) {
            models.push(json!({"id": model, "name": model, "provider": provider}));
        }
    }
    json!({ "models": models })
}

// ---------------------------------------------------------------------------------------------
// sessions.list

/// Every property of the real (closed) `SessionsListParams` schema.
const SESSIONS_LIST_PARAMS: &[&str] = &[
    "limit",
    "offset",
    "activeMinutes",
    "activeOnly",
    "requireLastInteraction",
    "sortBy",
    "includeGlobal",
    "includeUnknown",
    "excludeSubagents",
    "excludeCron",
    "excludeSystem",
    "configuredAgentsOnly",
    "includeDerivedTitles",
    "includeLastMessage",
    "includeActivitySummary",
    "label",
    "projectId",
    "workspaceDir",
    "group",
    "pinned",
    "boardFace",
    "hasBoard",
    "creatorId",
    "ownerId",
    "ownerFirst",
    "involvingMe",
    "profileRelation",
    "involvingProfileId",
    "includePeople",
    "spawnedBy",
    "agentId",
    "search",
    "archived",
];

const SESSIONS_LIST_BOOLS: &[&str] = &[
    "activeOnly",
    "requireLastInteraction",
    "includeGlobal",
    "includeUnknown",
    "excludeSubagents",
    "excludeCron",
    "excludeSystem",
    "configuredAgentsOnly",
    "includeDerivedTitles",
    "includeLastMessage",
    "includeActivitySummary",
    "pinned",
    "hasBoard",
    "ownerFirst",
    "involvingMe",
    "includePeople",
];

const SESSIONS_LIST_NON_EMPTY_STRINGS: &[&str] = &[
    "projectId",
    "workspaceDir",
    "creatorId",
    "ownerId",
    "involvingProfileId",
    "spawnedBy",
    "agentId",
];

const RUN_STATUSES: &[&str] = &["queued", "running", "done", "failed", "killed", "timeout"];

/// A JSON integer (ajv accepts `2.0` as an integer too).
fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
            // `as` saturates: huge whole floats clamp to the i64 range.
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.fract() == 0.0)
                    .map(|f| f as i64)
            }),
        _ => None,
    }
}

/// Validate `sessions.list` params like the real closed schema; messages mimic its
/// `invalid sessions.list params: …` wording.
fn validate_sessions_list(params: &Value) -> Result<Map<String, Value>, String> {
    let bad = |detail: String| Err(format!("invalid sessions.list params: {detail}"));
    let obj = match params {
        Value::Null => return Ok(Map::new()),
        Value::Object(o) => o,
        _ => return bad("must be object".to_string()),
    };
    for (k, val) in obj {
        if !SESSIONS_LIST_PARAMS.contains(&k.as_str()) {
            return bad(format!("at root: unexpected property '{k}'"));
        }
        let ok = match k.as_str() {
            "limit" | "activeMinutes" => match as_integer(val) {
                Some(n) if n >= 1 => true,
                Some(_) => return bad(format!("at /{k}: must be >= 1")),
                None => return bad(format!("at /{k}: must be integer")),
            },
            "offset" => match as_integer(val) {
                Some(n) if n >= 0 => true,
                Some(_) => return bad("at /offset: must be >= 0".to_string()),
                None => return bad("at /offset: must be integer".to_string()),
            },
            "sortBy" => matches!(
                val.as_str(),
                Some("updatedAt" | "lastInteractionAt" | "activity")
            ),
            "boardFace" => matches!(val.as_str(), Some("chat" | "dashboard")),
            "archived" => val.is_boolean() || val.as_str() == Some("all"),
            "profileRelation" => val.is_object(),
            "label" | "group" | "search" => val.is_string(),
            k if SESSIONS_LIST_BOOLS.contains(&k) => val.is_boolean(),
            k if SESSIONS_LIST_NON_EMPTY_STRINGS.contains(&k) => {
                val.as_str().is_some_and(|s| !s.is_empty())
            }
            _ => true,
        };
        if !ok {
            let expected = match k.as_str() {
                "sortBy" | "boardFace" | "archived" => "must be equal to one of the allowed values",
                "profileRelation" => "must be object",
                "label" | "group" | "search" => "must be string",
                k if SESSIONS_LIST_BOOLS.contains(&k) => "must be boolean",
                _ => "must NOT have fewer than 1 characters",
            };
            return bad(format!("at /{k}: {expected}"));
        }
    }
    Ok(obj.clone())
}

/// `classification` of a canonical key: `main` for `agent:<id>:main`, else the first segment of
/// the rest when it has several (`explicit`, `cron`, `hook`, …), else `explicit`.
fn classification(key: &str) -> &str {
    let rest = key
        .strip_prefix("agent:")
        .and_then(|r| r.split_once(':'))
        .map(|(_, rest)| rest);
    match rest {
        Some(MAIN_KEY) => "main",
        Some(rest) => match rest.split_once(':') {
            Some((kind, _)) if !kind.is_empty() => kind,
            _ => "explicit",
        },
        None => "explicit",
    }
}

/// `sessions.describe`: `{session: <its sessions.list row>}`, `{session: null}` when `key`
/// (canonical) is not among `v.sessions`, archived or not.
pub fn session_describe(v: &SystemView, key: &str) -> Value {
    let agents = roster(v.config);
    let default_id = default_agent(&agents).map(|a| a.id).unwrap_or("main");
    let Some(s) = v.sessions.iter().find(|s| s.key == key) else {
        return json!({"session": null});
    };
    let aid = session_agent(s, default_id);
    let agent_model = agents
        .iter()
        .find(|a| a.id == aid)
        .map(|a| a.model)
        .or_else(|| default_agent(&agents).map(|a| a.model))
        .unwrap_or(OFFLINE_MODEL_REF);
    json!({"session": session_row(v, s, aid, agent_model)})
}

/// One `sessions.list` row (the same projection the real gateway sends in `sessions.changed`).
fn session_row(v: &SystemView, s: &SessionSummary, agent_id: &str, agent_model: &str) -> Value {
    let class = classification(&s.key);
    let selected = s.model.as_deref().filter(|m| !m.is_empty());
    let model_ref = selected.unwrap_or(agent_model);
    let (provider, model) = provider_and_model(model_ref);
    let mut row = Map::new();
    row.insert("key".into(), json!(s.key));
    row.insert("visibility".into(), json!("shared"));
    row.insert("permissionModePending".into(), json!(false));
    if let Some(created) = s.created_at_ms.filter(|t| *t > 0) {
        row.insert("createdAt".into(), json!(created));
    }
    row.insert("kind".into(), json!("direct"));
    row.insert("classification".into(), json!(class));
    row.insert("agentId".into(), json!(agent_id));
    row.insert("isMain".into(), json!(class == "main"));
    row.insert("isBackground".into(), json!(false));
    if let Some(label) = s.label.as_deref().filter(|l| !l.is_empty()) {
        row.insert("label".into(), json!(label));
    }
    if let Some(name) = s.display_name.as_deref().filter(|n| !n.is_empty()) {
        row.insert("displayName".into(), json!(name));
    }
    if let Some(preview) = s.last_message_preview.as_deref().filter(|p| !p.is_empty()) {
        row.insert("lastMessagePreview".into(), json!(preview));
    }
    row.insert("chatType".into(), json!("direct"));
    row.insert("updatedAt".into(), updated_at(s));
    row.insert("archived".into(), json!(s.archived));
    row.insert("pinned".into(), json!(s.pinned));
    row.insert("unread".into(), json!(false));
    if let Some(t) = s.last_interaction_at_ms.filter(|t| *t > 0) {
        row.insert("lastInteractionAt".into(), json!(t));
    }
    if !s.session_id.is_empty() {
        row.insert("sessionId".into(), json!(s.session_id));
    }
    row.insert("systemSent".into(), json!(s.system_sent));
    row.insert("abortedLastRun".into(), json!(s.aborted_last_run));
    if let Some(total) = s.total_tokens {
        row.insert("totalTokens".into(), json!(total));
    }
    row.insert("totalTokensFresh".into(), json!(s.total_tokens.is_some()));
    if let Some(level) = s.thinking_level.as_deref() {
        row.insert("thinkingLevel".into(), json!(level));
    }
    if let Some(fast) = s.fast_mode {
        row.insert("fastMode".into(), json!(fast));
    }
    for (k, v) in s.settings.iter() {
        row.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if let Some(status) = s.status.as_deref().filter(|st| RUN_STATUSES.contains(st)) {
        row.insert("status".into(), json!(status));
    }
    if let Some(started) = s.run_started_at_ms.filter(|t| *t > 0) {
        row.insert("startedAt".into(), json!(started));
        if let Some(ended) = s.run_ended_at_ms.filter(|t| *t >= started) {
            row.insert("endedAt".into(), json!(ended));
            row.insert("runtimeMs".into(), json!(ended - started));
        }
    }
    if let Some(err) = s.last_run_error.as_deref().filter(|e| !e.is_empty()) {
        row.insert("lastRunError".into(), json!(err));
    }
    if let Some(run) = s.last_run_id.as_deref().filter(|r| !r.is_empty()) {
        row.insert("lastRunId".into(), json!(run));
    }
    row.insert("modelProvider".into(), json!(provider));
    row.insert("model".into(), json!(model));
    row.insert(
        "modelOverrideSource".into(),
        if selected.is_some() {
            json!("user")
        } else {
            Value::Null
        },
    );
    row.insert("snapshotAt".into(), json!(v.now_ms.max(0)));
    let active: Vec<&str> = s
        .active_run_ids
        .iter()
        .map(String::as_str)
        .filter(|r| !r.is_empty())
        .collect();
    row.insert("hasActiveRun".into(), json!(!active.is_empty()));
    row.insert("activeRunIds".into(), json!(active));
    Value::Object(row)
}

fn matches_search(s: &SessionSummary, row: &Value, agent_name: Option<&str>, needle: &str) -> bool {
    let fields = [
        Some(s.key.as_str()),
        s.label.as_deref(),
        Some(s.session_id.as_str()),
        s.display_name.as_deref(),
        row["model"].as_str(),
        row["modelProvider"].as_str(),
        s.status.as_deref(),
        row["classification"].as_str(),
        agent_name,
    ];
    if fields
        .iter()
        .flatten()
        .any(|f| f.to_lowercase().contains(needle))
    {
        return true;
    }
    let model_ref = format!(
        "{}/{}",
        row["modelProvider"].as_str().unwrap_or_default(),
        row["model"].as_str().unwrap_or_default()
    );
    model_ref.to_lowercase().contains(needle)
}

/// The `sessions.list` result: `{ts, path, count, totalCount, limitApplied, offset?,
/// nextOffset, hasMore, owners[], defaults{modelProvider, model, contextTokens,
/// modelSelectionTarget}, sessions[row]}`, newest first.
///
/// Honours `limit` (default 100), `offset`, `search` (case-insensitive substring of key, label,
/// session id, display name, model, status, agent name), `agentId`, `label` (exact),
/// `activeMinutes`, `activeOnly`, `configuredAgentsOnly`, `archived: true` (only archived
/// sessions; without it they are left out) and `pinned: true`. Other schema params are accepted and ignored;
/// unknown params or wrong types are `Err` with the real server's message wording.
pub fn sessions_list(v: &SystemView, params: &Value) -> Result<Value, String> {
    let p = validate_sessions_list(params)?;
    let agents = roster(v.config);
    let default_id = default_agent(&agents).map(|a| a.id).unwrap_or("main");
    let agent_filter = p
        .get("agentId")
        .and_then(Value::as_str)
        .map(str::to_lowercase);
    let search = p
        .get("search")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let label = p.get("label").and_then(Value::as_str);
    let active_minutes = p.get("activeMinutes").and_then(as_integer);
    let active_only = p.get("activeOnly").and_then(Value::as_bool) == Some(true);
    let configured_only = p.get("configuredAgentsOnly").and_then(Value::as_bool) == Some(true);
    // As the real gateway: `archived: true` lists only archived sessions, `"all"` every
    // one, anything else only the others; `pinned` true/false filters likewise.
    let archived_filter = match p.get("archived") {
        Some(Value::String(a)) if a == "all" => None,
        Some(Value::Bool(true)) => Some(true),
        _ => Some(false),
    };
    let pinned_filter = p.get("pinned").and_then(Value::as_bool);
    let limit = p
        .get("limit")
        .and_then(as_integer)
        .map_or(SESSIONS_LIST_DEFAULT_LIMIT, |n| n.max(1) as u64);
    let offset = p
        .get("offset")
        .and_then(as_integer)
        .map_or(0, |n| n.max(0) as u64);

    let mut sorted: Vec<&SessionSummary> = v.sessions.iter().collect();
    sorted.sort_by(|a, b| {
        b.updated_at_ms
            .cmp(&a.updated_at_ms)
            .then_with(|| a.key.cmp(&b.key))
    });

    let mut matched = Vec::new();
    for s in sorted {
        if archived_filter.is_some_and(|a| a != s.archived)
            || pinned_filter.is_some_and(|p| p != s.pinned)
        {
            continue;
        }
        let aid = session_agent(s, default_id);
        let agent = agents.iter().find(|a| a.id == aid);
        if agent_filter
            .as_deref()
            .is_some_and(|f| f != aid.to_lowercase())
        {
            continue;
        }
        if configured_only && agent.is_none() {
            continue;
        }
        if label.is_some_and(|l| s.label.as_deref() != Some(l)) {
            continue;
        }
        if let Some(m) = active_minutes {
            if s.updated_at_ms < v.now_ms.saturating_sub(m.saturating_mul(60_000)) {
                continue;
            }
        }
        if active_only && s.active_run_ids.is_empty() {
            continue;
        }
        let agent_model = agent
            .map(|a| a.model)
            .or_else(|| default_agent(&agents).map(|a| a.model))
            .unwrap_or(OFFLINE_MODEL_REF);
        let row = session_row(v, s, aid, agent_model);
        if let Some(needle) = &search {
            if !matches_search(s, &row, agent.and_then(|a| a.name), needle) {
                continue;
            }
        }
        matched.push(row);
    }

    let total = matched.len() as u64;
    let start = offset.min(total) as usize;
    let page: Vec<Value> = matched
        .into_iter()
        .skip(start)
        .take(limit.min(total) as usize)
        .collect();
    let next = offset.saturating_add(page.len() as u64);
    let has_more = next < total;

    let defaults_agent = agent_filter
        .as_deref()
        .and_then(|f| agents.iter().find(|a| a.id.to_lowercase() == f))
        .or_else(|| default_agent(&agents));
    let defaults_model = defaults_agent.map(|a| a.model).unwrap_or(OFFLINE_MODEL_REF);
    let (provider, model) = provider_and_model(defaults_model);
    let path = match &agent_filter {
        Some(f) => store_path(v, f, default_id),
        None if agents.len() == 1 => store_path(v, default_id, default_id),
        None => "(multiple)".to_string(),
    };

    let mut out = Map::new();
    out.insert("ts".into(), json!(v.now_ms.max(0)));
    out.insert("path".into(), json!(path));
    out.insert("count".into(), json!(page.len()));
    out.insert("totalCount".into(), json!(total));
    out.insert("limitApplied".into(), json!(limit));
    if offset > 0 {
        out.insert("offset".into(), json!(offset));
    }
    out.insert(
        "nextOffset".into(),
        if has_more { json!(next) } else { Value::Null },
    );
    out.insert("hasMore".into(), json!(has_more));
    out.insert("owners".into(), json!([]));
    out.insert(
        "defaults".into(),
        json!({
            "modelProvider": provider,
            "model": model,
            "contextTokens": DEFAULT_CONTEXT_TOKENS,
            "modelSelectionTarget": "session",
        }),
    );
    out.insert("sessions".into(), Value::Array(page));
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------------
// config.get

/// The per-process HMAC key of `config.get`'s `hash`. A plain digest of the unredacted file
/// would let an `operator.read` client test guesses of a redacted low-entropy secret offline
/// (OpenClaw keys the same HMAC with a per-install secret). The hash only has to be stable
/// while the process serves the same file.
fn config_hash_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(crate::auth::token::random_bytes::<32>)
}

/// The resolved tree with every string that `${VAR}` substitution produced shown as written
/// in the file (`"Bearer ${OPENAI_KEY}"`), so no value taken from the environment — an API
/// key inside an `Authorization` header, say — is served, whatever its key is called.
fn unsubstituted(resolved: &Value, source: &Value) -> Value {
    match (resolved, source) {
        (Value::Object(r), Value::Object(src)) => Value::Object(
            r.iter()
                .map(|(k, v)| {
                    let v = match src.get(k) {
                        Some(sv) => unsubstituted(v, sv),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Value::Array(r), Value::Array(src)) => Value::Array(
            r.iter()
                .enumerate()
                .map(|(i, v)| match src.get(i) {
                    Some(sv) => unsubstituted(v, sv),
                    None => v.clone(),
                })
                .collect(),
        ),
        (r, Value::String(src)) if src.contains("${") && r != source => source.clone(),
        (r, _) => r.clone(),
    }
}

/// Split a loader issue `"<path>: <message>"` into `{path, message}` (path `<root>` when the
/// text has no path prefix).
fn issue_json(issue: &str) -> Value {
    match issue.split_once(": ") {
        Some((path, message)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            json!({"path": path, "message": message})
        }
        _ => json!({"path": "<root>", "message": issue}),
    }
}

/// The `config.get` result: `{path, exists, raw, parsed, sourceConfig, resolved, valid,
/// runtimeConfig, config, hash, issues[], warnings[{path,message}], legacyIssues[],
/// configRevisionHash, appliedConfigHash, includedPaths[], includeProvenance[], …}`.
///
/// Secrets are redacted everywhere, `raw` included (`null` when the file does not exist). A
/// loaded config is valid by construction; the loader's non-fatal issues are `warnings`.
/// `hash` is the real gateway's `hmac-sha256:v1:…` of the raw text under a per-process key;
/// `configRevisionHash` and
/// `appliedConfigHash` equal it because the served config is the one in force (the CLI treats
/// `configRevisionHash === appliedConfigHash` as "applied"). The CLI reads `config` and the TUI
/// reads `runtimeConfig.gateway.controlUi.basePath` unguarded, so both are always objects.
pub fn config_get(v: &SystemView) -> Value {
    let cfg = v.config;
    let object_or_empty = |v: Value| {
        if v.is_object() {
            v
        } else {
            Value::Object(Map::new())
        }
    };
    // As written (`${VAR}` references intact), secrets redacted.
    let source = object_or_empty(redact_secrets(&cfg.source));
    // As in force, but values that came from the environment shown as their reference.
    let resolved = object_or_empty(redact_secrets(&unsubstituted(&cfg.parsed, &cfg.source)));
    let raw = if cfg.exists {
        json!(crate::config::redact_raw(&cfg.raw))
    } else {
        Value::Null
    };
    let hash = crate::config::config_hash_keyed(config_hash_key(), &cfg.raw);
    let warnings: Vec<Value> = cfg.issues.iter().map(|i| issue_json(i)).collect();
    json!({
        "path": cfg.paths.config_path.display().to_string(),
        "includedPaths": [],
        "includeProvenance": [],
        "agentRosterIncludeOwned": false,
        "bindingsIncludeOwned": false,
        "exists": cfg.exists,
        "raw": raw,
        "parsed": source,
        "sourceConfig": source,
        "resolved": resolved,
        "valid": true,
        "runtimeConfig": resolved,
        "config": resolved,
        "hash": hash,
        "issues": [],
        "warnings": warnings,
        "legacyIssues": [],
        "configRevisionHash": hash,
        "appliedConfigHash": hash,
    })
}

// ---------------------------------------------------------------------------------------------
// presence

/// `deviceFamily` for an OS platform string (`linux …` → `Linux`, `darwin`/`macos` → `Mac`,
/// `win32`/`windows` → `Windows`).
fn device_family(platform: &str) -> Option<String> {
    let first = platform.split_whitespace().next()?.to_ascii_lowercase();
    Some(match first.as_str() {
        "linux" => "Linux".to_string(),
        "darwin" | "macos" => "Mac".to_string(),
        "win32" | "windows" => "Windows".to_string(),
        _ => first,
    })
}

/// The gateway's own presence row: `{host, ip, version, platform, deviceFamily, mode:"gateway",
/// reason:"self", instanceId, text, ts}` (`gateway probe` shows its host/ip/platform/version as
/// the "Gateway" line). Empty host/ip/platform are omitted (the schema wants non-empty strings).
pub fn gateway_presence_entry(v: &SystemView) -> Value {
    let mut row = Map::new();
    if !v.host.is_empty() {
        row.insert("host".into(), json!(v.host));
    }
    if !v.ip.is_empty() {
        row.insert("ip".into(), json!(v.ip));
    }
    row.insert("version".into(), json!(SERVER_VERSION));
    if !v.platform.is_empty() {
        row.insert("platform".into(), json!(v.platform));
    }
    if let Some(family) = device_family(v.platform) {
        row.insert("deviceFamily".into(), json!(family));
    }
    row.insert("mode".into(), json!("gateway"));
    row.insert("reason".into(), json!("self"));
    if !v.instance_id.is_empty() {
        row.insert("instanceId".into(), json!(v.instance_id));
    }
    let host = if v.host.is_empty() { "unknown" } else { v.host };
    let ip = if v.ip.is_empty() {
        String::new()
    } else {
        format!(" ({})", v.ip)
    };
    row.insert(
        "text".into(),
        json!(format!(
            "Gateway: {host}{ip} · app {SERVER_VERSION} · mode gateway · reason self"
        )),
    );
    row.insert("ts".into(), json!(v.now_ms.max(0)));
    Value::Object(row)
}

/// Trimmed, non-empty, first-occurrence-ordered unique strings.
fn trimmed_unique(xs: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    xs.iter()
        .map(|x| x.trim())
        .filter(|x| !x.is_empty() && seen.insert(*x))
        .collect()
}

/// `s` cut to at most `max` characters (on a character boundary).
pub fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// A connected client's presence row: `{host, clientId, ip?, version, platform, deviceFamily?,
/// modelIdentifier?, timeZone?, mode, deviceId?, roles, scopes, instanceId?, reason:"connect",
/// text, ts, onlineSince}`. The real gateway lists only non-ephemeral clients (not `cli`
/// one-shot calls); that choice is the caller's.
pub fn client_presence_entry(c: &ClientPresence, now_ms: i64) -> Value {
    let field_max = super::PRESENCE_FIELD_MAX;
    let non_empty = |s: &Option<String>| {
        s.as_deref()
            .filter(|x| !x.trim().is_empty())
            .map(|x| clip(x, field_max).to_string())
    };
    let clipped = |s: &str| clip(s, field_max).to_string();
    let host = non_empty(&c.host).unwrap_or_else(|| clipped(&c.client_id));
    let mut row = Map::new();
    if !host.is_empty() {
        row.insert("host".into(), json!(host));
    }
    if !c.client_id.is_empty() {
        row.insert("clientId".into(), json!(clipped(&c.client_id)));
    }
    if let Some(ip) = non_empty(&c.ip) {
        row.insert("ip".into(), json!(ip));
    }
    if !c.version.is_empty() {
        row.insert("version".into(), json!(clipped(&c.version)));
    }
    if !c.platform.is_empty() {
        row.insert("platform".into(), json!(clipped(&c.platform)));
    }
    if let Some(family) = non_empty(&c.device_family) {
        row.insert("deviceFamily".into(), json!(family));
    }
    if let Some(model) = non_empty(&c.model_identifier) {
        row.insert("modelIdentifier".into(), json!(model));
    }
    if let Some(tz) = non_empty(&c.time_zone) {
        row.insert("timeZone".into(), json!(tz));
    }
    if !c.mode.is_empty() {
        row.insert("mode".into(), json!(clipped(&c.mode)));
    }
    if let Some(device) = non_empty(&c.device_id) {
        row.insert("deviceId".into(), json!(device));
    }
    row.insert("roles".into(), json!(trimmed_unique(&c.roles)));
    row.insert("scopes".into(), json!(trimmed_unique(&c.scopes)));
    if let Some(instance) = non_empty(&c.instance_id) {
        row.insert("instanceId".into(), json!(instance));
    }
    row.insert("reason".into(), json!("connect"));
    let host_text = if host.is_empty() {
        "unknown"
    } else {
        host.as_str()
    };
    let mode_text = if c.mode.is_empty() {
        "unknown"
    } else {
        clip(&c.mode, field_max)
    };
    row.insert(
        "text".into(),
        json!(format!("Node: {host_text} · mode {mode_text}")),
    );
    row.insert("ts".into(), json!(now_ms.max(0)));
    row.insert("onlineSince".into(), json!(c.connected_at_ms.max(0)));
    Value::Object(row)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::{json, Value};

    use super::*;
    use crate::config::{AgentConfig, Config, Paths};
    use crate::protocol::hello::testkit::{event_frame_of, records, result_of, shape_diff};

    const HEALTH: &str = include_str!("../../tests/vectors/cli-call-health.jsonl");
    const STATUS: &str = include_str!("../../tests/vectors/cli-call-status.jsonl");
    const PRESENCE: &str = include_str!("../../tests/vectors/cli-call-system-presence.jsonl");
    const SESSIONS_LIST: &str = include_str!("../../tests/vectors/cli-call-sessions-list.jsonl");
    const CONFIG_GET: &str = include_str!("../../tests/vectors/cli-call-config-get.jsonl");
    const MODELS_LIST: &str = include_str!("../../tests/vectors/cli-call-models-list.jsonl");
    const AGENTS_LIST: &str = include_str!("../../tests/vectors/cli-call-agents-list.jsonl");
    const CHAT_SEND: &str =
        include_str!("../../tests/vectors/own-client-chat-send-no-provider.jsonl");
    const CORE: &str = include_str!("../../tests/vectors/own-client-core-methods.jsonl");

    const NOW: i64 = 1_795_311_643_379;

    fn paths() -> Paths {
        Paths {
            state_dir: PathBuf::from("/home/u/.openclaw"),
            config_path: PathBuf::from("/home/u/.openclaw/openclaw.json"),
        }
    }

    /// The capture's setup: one configured agent `dev` ("C3-PO") on `openai/gpt-6-astra`.
    fn dev_config() -> Config {
        let mut c = Config::embedded(paths());
        c.agents = vec![AgentConfig {
            id: "dev".into(),
            name: Some("C3-PO".into()),
            default: true,
            model: Some("openai/gpt-6-astra".into()),
        }];
        c
    }

    fn dev_sessions() -> Vec<SessionSummary> {
        vec![
            SessionSummary {
                key: "agent:dev:explicit:spec-agent-0001".into(),
                session_id: "spec-agent-0001".into(),
                updated_at_ms: NOW - 120_000,
                status: Some("failed".into()),
                last_run_id: Some("spec-agent-0001".into()),
                last_run_error: Some("no provider".into()),
                run_started_at_ms: Some(NOW - 125_000),
                run_ended_at_ms: Some(NOW - 121_000),
                ..Default::default()
            },
            SessionSummary {
                key: "agent:dev:main".into(),
                session_id: "1b45e91b-9527-4056-816c-ed80dd39f510".into(),
                updated_at_ms: NOW - 60_000,
                created_at_ms: Some(NOW - 600_000),
                last_interaction_at_ms: Some(NOW - 600_000),
                label: Some("spec".into()),
                total_tokens: Some(0),
                last_message_preview: Some("Hello from the spec capture".into()),
                status: Some("running".into()),
                system_sent: true,
                active_run_ids: vec!["spec-capture-0001".into()],
                ..Default::default()
            },
        ]
    }

    fn view<'a>(
        cfg: &'a Config,
        sessions: &'a [SessionSummary],
        sessions_path: &'a str,
    ) -> SystemView<'a> {
        SystemView {
            session_counts: None,
            now_ms: NOW,
            started_at_ms: NOW - 35_830,
            config: cfg,
            host: "vm",
            ip: "192.0.2.2",
            platform: "linux 6.18.44-fc-v669",
            instance_id: "4959c01b-e8d0-4098-ab1c-43c65374622c",
            sessions,
            sessions_path,
            heartbeat_seconds: 1800,
            pid: 4847,
            include_sensitive: false,
            event_loop: Some(EventLoopStats {
                degraded: false,
                degraded_since_ms: None,
                reasons: 0,
                interval_ms: 1016.88,
                delay_p99_ms: 23.0,
                delay_max_ms: 23.0,
                utilization: 0.006,
                cpu_core_ratio: 0.006,
            }),
            hot_reload: Some(true),
        }
    }

    const DEV_PATH: &str = "/home/u/.openclaw/agents/dev/sessions/sessions.json";

    fn assert_no_diff(what: &str, diff: Vec<String>) {
        assert!(
            diff.is_empty(),
            "{what}: shape differs from the real gateway: {diff:#?}"
        );
    }

    // ---- health ---------------------------------------------------------------------------

    /// Real health fields clawgate does not send.
    const HEALTH_IGNORE: &[&str] = &[
        // RPC-only extra of the real server (not in the closed HealthSnapshot schema the health
        // event and hello-ok snapshot use); clawgate has no model-runtime warm-up to report.
        "modelRuntime",
        // Per-thread CPU split of a Node process (main/worker threads); optional.
        "eventLoop.cpuBreakdown",
    ];

    #[test]
    fn health_matches_real_rpc_result() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let ours = health_snapshot(&view(&cfg, &sessions, DEV_PATH));
        assert_no_diff(
            "health",
            shape_diff(&result_of(HEALTH, "health"), &ours, HEALTH_IGNORE),
        );
    }

    #[test]
    fn health_matches_real_event_and_hello_snapshot_both_ways() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let event = event_frame_of(HEALTH, "health")["payload"].clone();
        let snapshot =
            crate::protocol::hello::testkit::hello_of(HEALTH)["snapshot"]["health"].clone();
        for real in [&event, &snapshot] {
            // `degradedSinceMs` is `number | null` by state: mirror the capture's state.
            let mut v = view(&cfg, &sessions, DEV_PATH);
            if real["eventLoop"]["degraded"] == true {
                v.event_loop = Some(EventLoopStats {
                    degraded: true,
                    degraded_since_ms: Some(2294),
                    reasons: 4,
                    ..v.event_loop.unwrap_or_default()
                });
            }
            let ours = health_snapshot(&v);
            assert_eq!(
                ours["eventLoop"]["reasons"].as_array().unwrap().len(),
                real["eventLoop"]["reasons"].as_array().unwrap().len()
            );
            assert_no_diff("health event", shape_diff(real, &ours, HEALTH_IGNORE));
            // Closed schema: nothing we send may be unknown to the real payload.
            let extra = shape_diff(
                &ours,
                real,
                &[
                    "agents[].name", // in the closed schema; the capture's agent had no `name`
                ],
            );
            assert!(
                extra.is_empty(),
                "health fields the real gateway never sends: {extra:#?}"
            );
        }
    }

    #[test]
    fn health_content_for_clawgate() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let ours = health_snapshot(&view(&cfg, &sessions, DEV_PATH));
        assert_eq!(ours["ok"], true);
        assert_eq!(ours["ts"], NOW);
        assert_eq!(ours["defaultAgentId"], "dev");
        assert_eq!(ours["heartbeatSeconds"], 1800);
        let agent = &ours["agents"][0];
        assert_eq!(agent["agentId"], "dev");
        assert_eq!(agent["isDefault"], true);
        assert_eq!(agent["heartbeat"]["every"], "30m");
        assert_eq!(agent["heartbeat"]["everyMs"], 1_800_000);
        assert_eq!(agent["heartbeat"]["ackMaxChars"], 300);
        assert_eq!(agent["sessions"]["path"], DEV_PATH);
        assert_eq!(agent["sessions"]["count"], 2);
        // `openclaw health` prints `- <key> (<age/60000>m ago)` from recent[]: newest first.
        let recent = agent["sessions"]["recent"].as_array().unwrap();
        assert_eq!(
            recent[0],
            json!({"key": "agent:dev:main", "updatedAt": NOW - 60_000, "age": 60_000})
        );
        assert_eq!(recent[1]["key"], "agent:dev:explicit:spec-agent-0001");
        assert_eq!(ours["sessions"], agent["sessions"]);
        assert_eq!(ours["channels"], json!({}));
        assert_eq!(ours["eventLoop"]["reasons"], json!([]));
        assert!(ours["eventLoop"]["degradedSinceMs"].is_null());
    }

    #[test]
    fn health_builtin_agent_and_disabled_heartbeat() {
        let cfg = Config::embedded(paths());
        let path = session_store_path(&cfg.paths.state_dir, "main");
        assert_eq!(path, "/home/u/.openclaw/agents/main/sessions/sessions.json");
        let mut v = view(&cfg, &[], &path);
        v.heartbeat_seconds = 0;
        v.event_loop = None;
        v.hot_reload = None;
        let ours = health_snapshot(&v);
        assert_eq!(ours["defaultAgentId"], "main");
        assert_eq!(ours["heartbeatSeconds"], 0);
        let hb = &ours["agents"][0]["heartbeat"];
        assert_eq!(
            (
                hb["enabled"].clone(),
                hb["every"].clone(),
                hb["everyMs"].clone()
            ),
            (json!(false), json!("disabled"), Value::Null)
        );
        assert!(ours.get("eventLoop").is_none());
        assert!(ours.get("configReload").is_none());
        assert_eq!(
            ours["sessions"],
            json!({"path": path, "count": 0, "recent": []})
        );
    }

    #[test]
    fn health_recent_is_capped_and_ages_never_negative() {
        let cfg = dev_config();
        let mut sessions: Vec<SessionSummary> = (0..8)
            .map(|i| SessionSummary {
                key: format!("agent:dev:s{i}"),
                updated_at_ms: NOW - i * 1000,
                ..Default::default()
            })
            .collect();
        sessions.push(SessionSummary {
            key: "agent:dev:future".into(),
            updated_at_ms: NOW + 5_000,
            ..Default::default()
        });
        sessions.push(SessionSummary {
            key: "agent:dev:never".into(),
            updated_at_ms: 0,
            ..Default::default()
        });
        let ours = health_snapshot(&view(&cfg, &sessions, DEV_PATH));
        let recent = ours["sessions"]["recent"].as_array().unwrap();
        assert_eq!(recent.len(), HEALTH_RECENT_SESSION_LIMIT);
        assert_eq!(recent[0]["key"], "agent:dev:future");
        assert_eq!(recent[0]["age"], 0);
        assert_eq!(ours["sessions"]["count"], 10);
        for r in recent {
            assert_eq!(
                r.as_object().unwrap().len(),
                3,
                "closed schema: key/updatedAt/age only"
            );
        }
    }

    // ---- status ---------------------------------------------------------------------------

    const STATUS_IGNORE: &[&str] = &[
        "hostDesktop",  // no managed VNC desktop in clawgate (CLI renders absent as "disabled")
        "modelRuntime", // no model-runtime warm-up
        "processMemory", // V8 heap figures; a Rust process has no heap/external split
        "workerPools",  // Node worker pools (transcript reconciliation, catalog)
        "shutdownBudget", // real shutdown-custody accounting; not implemented
        "eventLoop.cpuBreakdown", // per-thread CPU split of a Node process; optional
    ];

    #[test]
    fn status_matches_real_result() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let ours = status(&view(&cfg, &sessions, DEV_PATH));
        assert_no_diff(
            "status",
            shape_diff(&result_of(STATUS, "status"), &ours, STATUS_IGNORE),
        );
        assert_eq!(ours["runtimeVersion"], "2026.9.6");
        assert_eq!(ours["heartbeat"]["defaultAgentId"], "dev");
        assert_eq!(ours["heartbeat"]["agents"][0]["every"], "30m");
        assert_eq!(ours["sessions"]["count"], 2);
        // Read-only callers get the redacted projection, like the real gateway.
        assert_eq!(ours["sessions"]["paths"], json!([]));
        assert_eq!(ours["sessions"]["byAgent"][0]["path"], "[redacted]");
        assert_eq!(ours["sessions"]["byAgent"][0]["count"], 2);
        assert_eq!(ours["sessions"]["recent"], json!([]));
        assert!(ours.get("cliProjection").is_none());
    }

    #[test]
    fn status_for_admin_reveals_paths_and_rows() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let mut v = view(&cfg, &sessions, DEV_PATH);
        v.include_sensitive = true;
        let ours = status_with_params(
            &v,
            &json!({"includeChannelSummary": false, "includeCliProjection": true}),
        );
        let mut ignore = STATUS_IGNORE.to_vec();
        // The capture's caller was read-only (both null); admin callers get the configured
        // default model and its context window, as the real summary does.
        ignore.extend(["sessions.defaults.model", "sessions.defaults.contextTokens"]);
        assert_no_diff(
            "status(admin)",
            shape_diff(&result_of(STATUS, "status"), &ours, &ignore),
        );
        assert_eq!(ours["sessions"]["paths"], json!([DEV_PATH]));
        assert_eq!(
            ours["sessions"]["defaults"],
            json!({"model": "gpt-6-astra", "contextTokens": 200000})
        );
        let row = &ours["sessions"]["recent"][0];
        assert_eq!(row["key"], "agent:dev:main");
        assert_eq!(row["age"], 60_000);
        assert_eq!(row["model"], "gpt-6-astra");
        assert_eq!(row["configuredModel"], "openai/gpt-6-astra");
        assert_eq!(row["flags"], json!([]));
        assert_eq!(
            ours["sessions"]["byAgent"][0]["recent"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let projection = &ours["cliProjection"];
        assert_eq!(projection["agents"]["defaultId"], "dev");
        assert_eq!(
            projection["agents"]["rows"],
            json!([{"id": "dev", "name": "C3-PO"}])
        );
        assert_eq!(projection["memoryPlugin"]["enabled"], false);
    }

    // ---- system-presence ------------------------------------------------------------------

    /// Every `PresenceEntry` property of the client's closed schema.
    const PRESENCE_KEYS: &[&str] = &[
        "host",
        "clientId",
        "ip",
        "version",
        "platform",
        "deviceFamily",
        "modelIdentifier",
        "timeZone",
        "mode",
        "lastInputSeconds",
        "reason",
        "tags",
        "text",
        "ts",
        "onlineSince",
        "lastActivityAt",
        "deviceId",
        "roles",
        "scopes",
        "instanceId",
        "user",
        "watchedSessions",
    ];

    #[test]
    fn gateway_presence_equals_real_row() {
        let real = result_of(PRESENCE, "system-presence");
        let real_row = &real[0];
        let cfg = dev_config();
        let mut v = view(&cfg, &[], DEV_PATH);
        v.now_ms = real_row["ts"].as_i64().unwrap();
        let ours = json!([gateway_presence_entry(&v)]);
        assert_no_diff("system-presence", shape_diff(&real, &ours, &[]));
        assert!(shape_diff(&ours, &real, &[]).is_empty());
        // Same machine facts → byte-identical row, text included.
        assert_eq!(&ours[0], real_row);
        // hello-ok snapshot presence carries the same row.
        let hello = crate::protocol::hello::testkit::hello_of(HEALTH);
        assert_no_diff(
            "hello presence",
            shape_diff(&hello["snapshot"]["presence"], &ours, &[]),
        );
    }

    #[test]
    fn gateway_presence_omits_unknown_machine_facts() {
        let cfg = dev_config();
        let mut v = view(&cfg, &[], DEV_PATH);
        v.host = "";
        v.ip = "";
        v.platform = "";
        v.instance_id = "";
        let row = gateway_presence_entry(&v);
        for k in ["host", "ip", "platform", "deviceFamily", "instanceId"] {
            assert!(row.get(k).is_none(), "{k}");
        }
        assert_eq!(
            row["text"],
            "Gateway: unknown · app 2026.9.6 · mode gateway · reason self"
        );
        let mac = SystemView {
            session_counts: None,
            platform: "macos 15.1",
            ..v
        };
        assert_eq!(gateway_presence_entry(&mac)["deviceFamily"], "Mac");
    }

    #[test]
    fn client_presence_row() {
        let c = ClientPresence {
            host: Some("Ada's Mac".into()),
            version: "2026.9.6".into(),
            platform: "macos".into(),
            device_family: Some("Mac".into()),
            mode: "webchat".into(),
            client_id: "openclaw-control-ui".into(),
            instance_id: Some("inst-1".into()),
            device_id: Some("b147".into()),
            roles: vec!["operator".into(), "operator".into()],
            scopes: vec!["operator.read".into(), " ".into()],
            connected_at_ms: NOW - 1000,
            ..Default::default()
        };
        let row = client_presence_entry(&c, NOW);
        for k in row.as_object().unwrap().keys() {
            assert!(
                PRESENCE_KEYS.contains(&k.as_str()),
                "not in PresenceEntry schema: {k}"
            );
        }
        assert_eq!(row["host"], "Ada's Mac");
        assert_eq!(row["clientId"], "openclaw-control-ui");
        assert_eq!(row["reason"], "connect");
        assert_eq!(row["roles"], json!(["operator"]));
        assert_eq!(row["scopes"], json!(["operator.read"]));
        assert_eq!(row["ts"], NOW);
        assert_eq!(row["onlineSince"], NOW - 1000);
        assert_eq!(row["text"], "Node: Ada's Mac · mode webchat");
        assert!(row.get("ip").is_none());
        // Without a display name the host is the client id (as the real gateway does).
        let bare = ClientPresence {
            client_id: "webchat".into(),
            ..Default::default()
        };
        let row = client_presence_entry(&bare, -1);
        assert_eq!(row["host"], "webchat");
        assert_eq!(row["ts"], 0);
        assert!(row.get("version").is_none() && row.get("mode").is_none());
    }

    // ---- sessions.list --------------------------------------------------------------------

    const SESSIONS_LIST_IGNORE: &[&str] = &[
        // Agent runtime placement (codex/cloud/device) and thinking-level menus: clawgate has a
        // single in-process runtime and no thinking levels.
        "defaults.agentRuntime",
        "defaults.thinkingLevels",
        "defaults.thinkingOptions",
        "defaults.thinkingDefault",
    ];

    /// Row fields of the real projection that belong to features clawgate lacks.
    const SESSION_ROW_IGNORE: &[&str] = &[
        "createdVia",           // session provenance (operator/spawn/channel/cron…) not tracked
        "participants",         // multi-user session sharing
        "expandedParticipants", // multi-user session sharing
        "participantCount",     // multi-user session sharing
        "sharingRole",          // multi-user session sharing
        "thinkingLevels",       // no thinking levels
        "thinkingOptions",      // no thinking levels
        "thinkingDefault",      // no thinking levels
        "effectiveFastMode",    // no fast mode
        "effectiveFastModeSource",
        "fastAutoOnSeconds",
        "hasAutomation",          // per-session automations
        "effectiveResponseUsage", // usage footers
        "effectiveQueueMode",     // queue modes (steer/followup/collect)
        "runtimeSelectionLocked", // agent runtime selection
        "agentRuntime",           // agent runtime selection
        "placement",              // worker placement
        "activitySummary",        // activity recaps
    ];

    #[test]
    fn sessions_list_matches_real_result() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let ours = sessions_list(&view(&cfg, &sessions, DEV_PATH), &json!({})).unwrap();
        let real = result_of(SESSIONS_LIST, "sessions.list");
        assert_no_diff(
            "sessions.list",
            shape_diff(&real, &ours, SESSIONS_LIST_IGNORE),
        );
        assert_eq!(ours["limitApplied"], 100);
        assert_eq!(ours["count"], 2);
        assert_eq!(ours["totalCount"], 2);
        assert_eq!(ours["hasMore"], false);
        assert!(ours["nextOffset"].is_null());
        assert!(ours.get("offset").is_none());
        assert_eq!(ours["path"], DEV_PATH);
        assert_eq!(ours["defaults"]["modelProvider"], "openai");
        assert_eq!(ours["defaults"]["model"], "gpt-6-astra");
    }

    #[test]
    fn sessions_list_rows_match_real_session_projection() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let ours = sessions_list(&view(&cfg, &sessions, DEV_PATH), &Value::Null).unwrap();
        let main_row = &ours["sessions"][0];
        assert_eq!(main_row["key"], "agent:dev:main");
        let real_rows: Vec<Value> = records(CHAT_SEND)
            .into_iter()
            .chain(records(CORE))
            .filter(|r| r["frame"]["event"] == "sessions.changed")
            .map(|r| r["frame"]["payload"]["session"].clone())
            .collect();
        assert!(real_rows.len() >= 3);
        for real in &real_rows {
            let ours_row = if real["isMain"] == true {
                main_row
            } else {
                &ours["sessions"][1]
            };
            let mut ignore = SESSION_ROW_IGNORE.to_vec();
            if real["isMain"] != true {
                // Our non-main test session has no interaction/token data and no preview.
                ignore.extend(["lastInteractionAt", "totalTokens", "createdAt"]);
            }
            assert_no_diff("session row", shape_diff(real, ours_row, &ignore));
        }
        assert_eq!(main_row["classification"], "main");
        assert_eq!(main_row["isMain"], true);
        assert_eq!(main_row["label"], "spec");
        assert_eq!(main_row["status"], "running");
        assert_eq!(main_row["hasActiveRun"], true);
        assert_eq!(main_row["modelProvider"], "openai");
        assert!(main_row["modelOverrideSource"].is_null());
        let other = &ours["sessions"][1];
        assert_eq!(other["classification"], "explicit");
        assert_eq!(other["status"], "failed");
        assert_eq!(other["lastRunError"], "no provider");
        assert_eq!(other["runtimeMs"], 4_000);
    }

    #[test]
    fn sessions_list_pages_filters_and_searches() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let v = view(&cfg, &sessions, DEV_PATH);
        let keys = |r: &Value| -> Vec<String> {
            r["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["key"].as_str().unwrap().to_string())
                .collect()
        };
        let p1 = sessions_list(&v, &json!({"limit": 1})).unwrap();
        assert_eq!(keys(&p1), ["agent:dev:main"]);
        assert_eq!(
            (
                p1["hasMore"].clone(),
                p1["nextOffset"].clone(),
                p1["limitApplied"].clone()
            ),
            (json!(true), json!(1), json!(1))
        );
        let p2 = sessions_list(&v, &json!({"limit": 1, "offset": 1})).unwrap();
        assert_eq!(keys(&p2), ["agent:dev:explicit:spec-agent-0001"]);
        assert_eq!(
            (p2["hasMore"].clone(), p2["offset"].clone()),
            (json!(false), json!(1))
        );
        assert!(p2["nextOffset"].is_null());
        let past = sessions_list(&v, &json!({"offset": 10})).unwrap();
        assert_eq!(
            (past["count"].clone(), past["totalCount"].clone()),
            (json!(0), json!(2))
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"search": "SPEC-AGENT"})).unwrap()),
            ["agent:dev:explicit:spec-agent-0001"]
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"search": "c3-po"})).unwrap()).len(),
            2
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"search": "openai/gpt"})).unwrap()).len(),
            2
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"label": "spec"})).unwrap()),
            ["agent:dev:main"]
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"activeOnly": true})).unwrap()),
            ["agent:dev:main"]
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"activeMinutes": 1})).unwrap()),
            ["agent:dev:main"]
        );
        assert_eq!(
            keys(&sessions_list(&v, &json!({"agentId": "DEV"})).unwrap()).len(),
            2
        );
        let other = sessions_list(&v, &json!({"agentId": "other"})).unwrap();
        assert_eq!(other["count"], 0);
        assert_eq!(
            other["path"],
            "/home/u/.openclaw/agents/other/sessions/sessions.json"
        );
        assert_eq!(
            sessions_list(&v, &json!({"archived": true})).unwrap()["count"],
            0
        );
        assert_eq!(
            sessions_list(&v, &json!({"archived": "all", "includeGlobal": true})).unwrap()["count"],
            2
        );
        assert_eq!(
            sessions_list(&v, &json!({"limit": 2.0})).unwrap()["limitApplied"],
            2
        );
    }

    #[test]
    fn sessions_list_rejects_invalid_params_like_the_real_schema() {
        let (cfg, sessions) = (dev_config(), dev_sessions());
        let v = view(&cfg, &sessions, DEV_PATH);
        let err = |p: Value| sessions_list(&v, &p).unwrap_err();
        assert_eq!(
            err(json!({"bogus": 1})),
            "invalid sessions.list params: at root: unexpected property 'bogus'"
        );
        assert_eq!(
            err(json!({"limit": 0})),
            "invalid sessions.list params: at /limit: must be >= 1"
        );
        assert_eq!(
            err(json!({"limit": "5"})),
            "invalid sessions.list params: at /limit: must be integer"
        );
        assert_eq!(
            err(json!({"limit": 1.5})),
            "invalid sessions.list params: at /limit: must be integer"
        );
        assert_eq!(
            err(json!({"offset": -1})),
            "invalid sessions.list params: at /offset: must be >= 0"
        );
        assert_eq!(
            err(json!({"search": 3})),
            "invalid sessions.list params: at /search: must be string"
        );
        assert_eq!(
            err(json!({"agentId": ""})),
            "invalid sessions.list params: at /agentId: must NOT have fewer than 1 characters"
        );
        assert_eq!(
            err(json!({"includeGlobal": "yes"})),
            "invalid sessions.list params: at /includeGlobal: must be boolean"
        );
        assert_eq!(
            err(json!({"sortBy": "name"})),
            "invalid sessions.list params: at /sortBy: must be equal to one of the allowed values"
        );
        assert_eq!(
            err(json!([1])),
            "invalid sessions.list params: must be object"
        );
    }

    // ---- config.get -----------------------------------------------------------------------

    const CONFIG_GET_IGNORE: &[&str] = &[
        // The real runtime view materializes schema defaults and every bundled plugin entry
        // (commands, messages, plugins.entries.*); clawgate serves the file's own values.
        // Both stay objects (asserted below).
        "runtimeConfig",
        "config",
    ];

    #[test]
    fn config_get_matches_real_result() {
        let real = result_of(CONFIG_GET, "config.get");
        let mut cfg = dev_config();
        cfg.exists = true;
        cfg.raw = real["raw"].as_str().unwrap().to_string();
        cfg.parsed = real["parsed"].clone();
        cfg.source = real["parsed"].clone();
        cfg.issues =
            vec!["agents.entries: Removed retired agents.entries.*.default markers.".into()];
        let ours = config_get(&view(&cfg, &[], DEV_PATH));
        assert_no_diff("config.get", shape_diff(&real, &ours, CONFIG_GET_IGNORE));
        assert!(ours["runtimeConfig"].is_object() && ours["config"].is_object());
        assert_eq!(ours["raw"], real["raw"]);
        assert_eq!(ours["parsed"], real["parsed"]);
        assert_eq!(ours["path"], "/home/u/.openclaw/openclaw.json");
        assert_eq!(ours["warnings"], real["warnings"]);
        assert_eq!(ours["valid"], true);
        let hash = ours["hash"].as_str().unwrap();
        assert!(
            hash.starts_with("hmac-sha256:v1:"),
            "the real format: {hash}"
        );
        assert_eq!(ours["configRevisionHash"], ours["appliedConfigHash"]);
    }

    #[test]
    fn config_get_without_file() {
        let cfg = Config::embedded(paths());
        let ours = config_get(&view(&cfg, &[], DEV_PATH));
        assert_eq!(ours["exists"], false);
        assert!(ours["raw"].is_null());
        assert_eq!(ours["config"], json!({}));
        assert_eq!(ours["runtimeConfig"], json!({}));
        assert!(ours["hash"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:v1:"));
    }

    #[test]
    fn config_get_serves_no_value_that_came_from_the_environment_or_a_secret_key() {
        let mut cfg = Config::embedded(paths());
        cfg.exists = true;
        cfg.raw = r#"{
  // providers
  models: { providers: { acme: { baseUrl: "${ACME_URL}", apiKey: "${ACME_KEY}",
    headers: { Authorization: "Bearer ${ACME_KEY}", "X-Org": "org-1" } } } },
  gateway: { port: 18789, auth: { mode: "token", token: 918273645 } },
}
"#
        .into();
        cfg.source = json!({"models": {"providers": {"acme": {"baseUrl": "${ACME_URL}",
            "apiKey": "${ACME_KEY}", "headers": {"Authorization": "Bearer ${ACME_KEY}",
            "X-Org": "org-1"}}}}, "gateway": {"port": 18789, "auth": {"mode": "token",
            "token": 918273645}}});
        cfg.parsed = json!({"models": {"providers": {"acme": {"baseUrl": "https://acme.test/v1",
            "apiKey": "sk-live-123", "headers": {"Authorization": "Bearer sk-live-123",
            "X-Org": "org-1"}}}}, "gateway": {"port": 18789, "auth": {"mode": "token",
            "token": 918273645}}});
        let ours = config_get(&view(&cfg, &[], DEV_PATH));
        let text = ours.to_string();
        for leaked in ["sk-live-123", "918273645"] {
            assert!(!text.contains(leaked), "{leaked} leaked: {text}");
        }
        let acme = &ours["config"]["models"]["providers"]["acme"];
        assert_eq!(
            acme["headers"]["Authorization"],
            crate::config::REDACTED_SENTINEL
        );
        assert_eq!(acme["headers"]["X-Org"], "org-1");
        assert_eq!(
            acme["baseUrl"], "${ACME_URL}",
            "environment values show as references"
        );
        assert_eq!(
            ours["parsed"]["models"]["providers"]["acme"]["apiKey"],
            "${ACME_KEY}"
        );
        assert_eq!(ours["config"]["gateway"]["port"], 18789);
        // (A numeric secret makes `raw` the re-serialised redacted document.)
        assert!(ours["raw"].as_str().unwrap().contains("${ACME_URL}"));
        // Keyed: not a plain digest anyone could recompute from a guessed secret.
        let hash = ours["hash"].as_str().unwrap();
        assert!(hash.starts_with("hmac-sha256:v1:"), "{hash}");
        assert_ne!(hash, crate::config::config_hash(&cfg.raw));
    }

    #[test]
    fn loader_issues_become_warnings() {
        assert_eq!(
            issue_json("gateway.foo: unknown key"),
            json!({"path": "gateway.foo", "message": "unknown key"})
        );
        assert_eq!(
            issue_json("something odd"),
            json!({"path": "<root>", "message": "something odd"})
        );
        assert_eq!(
            issue_json("two words: x"),
            json!({"path": "<root>", "message": "two words: x"})
        );
    }

    // ---- models.list / agents.list --------------------------------------------------------

    const MODEL_CHOICE_KEYS: &[&str] = &[
        "id",
        "name",
        "provider",
        "alias",
        "tags",
        "available",
        "manualSelectionAllowed",
        "unavailableReason",
        "unavailableUntil",
        "contextWindow",
        "contextTokens",
        "local",
        "contextWindows",
        "contextWindowDefault",
        "reasoning",
        "thinkingLevels",
        "thinkingDefault",
        "effectiveFastMode",
        "supportsFastMode",
        "supportsTools",
        "input",
        "agentRuntime",
        "apiKeySupported",
        "runtimeChoices",
    ];

    #[test]
    fn models_list_matches_real_result_and_schema() {
        let mut cfg = dev_config();
        cfg.default_model = Some("openai/gpt-6-astra".into());
        cfg.agents.push(AgentConfig {
            id: "b".into(),
            name: None,
            default: false,
            model: Some("anthropic/claude".into()),
        });
        cfg.agents.push(AgentConfig {
            id: "c".into(),
            name: None,
            default: false,
            model: Some("bare-model".into()),
        });
        let ours = models_list(&view(&cfg, &[], DEV_PATH));
        assert_no_diff(
            "models.list",
            shape_diff(&result_of(MODELS_LIST, "models.list"), &ours, &[]),
        );
        let models = ours["models"].as_array().unwrap();
        assert_eq!(models[0]["id"], "offline");
        assert_eq!(models[0]["provider"], "clawgate");
        assert_eq!(models[0]["name"], "Offline echo agent");
        let refs: Vec<String> = models
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["provider"].as_str().unwrap(),
                    m["id"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            refs,
            ["clawgate/offline", "openai/gpt-6-astra", "anthropic/claude"]
        );
        for m in models {
            for k in m.as_object().unwrap().keys() {
                assert!(
                    MODEL_CHOICE_KEYS.contains(&k.as_str()),
                    "not in ModelChoice schema: {k}"
                );
            }
        }
        let builtin = Config::embedded(paths());
        assert_eq!(
            models_list(&view(&builtin, &[], DEV_PATH))["models"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    const AGENTS_LIST_IGNORE: &[&str] = &[
        "agents[].identity.theme", // clawgate config has no identity theme/emoji
        "agents[].identity.emoji",
        "agents[].workspace", // the built-in agent has no workspace directory
        "agents[].workspaceGit",
        "agents[].agentRuntime",   // single in-process runtime
        "agents[].thinkingLevels", // no thinking levels
        "agents[].thinkingOptions",
        "agents[].thinkingDefault",
        "agents[].defaultPermissionMode", // no per-session permission modes
    ];

    #[test]
    fn agents_list_matches_real_result() {
        let cfg = dev_config();
        let ours = agents_list(&view(&cfg, &[], DEV_PATH));
        assert_no_diff(
            "agents.list",
            shape_diff(
                &result_of(AGENTS_LIST, "agents.list"),
                &ours,
                AGENTS_LIST_IGNORE,
            ),
        );
        assert_eq!(ours["defaultId"], "dev");
        assert_eq!(ours["agents"][0]["name"], "C3-PO");
        assert_eq!(ours["agents"][0]["model"]["primary"], "openai/gpt-6-astra");
    }

    #[test]
    fn agents_list_orders_default_first_and_has_builtin_main() {
        let builtin = Config::embedded(paths());
        let ours = agents_list(&view(&builtin, &[], DEV_PATH));
        assert_eq!(ours["defaultId"], "main");
        assert_eq!(
            ours["agents"],
            json!([{"id": "main", "kind": "agent", "model": {"primary": "clawgate/offline"}}])
        );
        let mut cfg = Config::embedded(paths());
        for (id, default) in [
            ("zed", false),
            ("alpha", false),
            ("work", true),
            ("alpha", false),
        ] {
            cfg.agents.push(AgentConfig {
                id: id.into(),
                name: None,
                default,
                model: None,
            });
        }
        let ours = agents_list(&view(&cfg, &[], DEV_PATH));
        let ids: Vec<&str> = ours["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["work", "alpha", "zed"]);
        assert_eq!(ours["defaultId"], "work");
    }

    // ---- robustness -----------------------------------------------------------------------

    #[test]
    fn builders_survive_odd_inputs() {
        let mut cfg = Config::embedded(paths());
        cfg.agents.push(AgentConfig {
            id: String::new(),
            name: Some(String::new()),
            default: true,
            model: Some(String::new()),
        });
        cfg.parsed = json!("not an object");
        cfg.default_model = Some("/".into());
        let sessions = vec![
            SessionSummary {
                key: String::new(),
                updated_at_ms: i64::MIN,
                ..Default::default()
            },
            SessionSummary {
                key: "agent::".into(),
                updated_at_ms: i64::MAX,
                status: Some("weird".into()),
                ..Default::default()
            },
            SessionSummary {
                key: "agent:x".into(),
                total_tokens: Some(u64::MAX),
                model: Some("m".into()),
                ..Default::default()
            },
        ];
        let mut v = view(&cfg, &sessions, "");
        v.now_ms = i64::MIN;
        v.started_at_ms = i64::MAX;
        v.heartbeat_seconds = u64::MAX;
        v.include_sensitive = true;
        v.event_loop = Some(EventLoopStats {
            degraded: true,
            degraded_since_ms: Some(-4),
            reasons: 0xff,
            interval_ms: f64::NAN,
            ..Default::default()
        });
        let h = health_snapshot(&v);
        assert_eq!(h["ts"], 0);
        assert_eq!(h["eventLoop"]["intervalMs"], 0.0);
        assert_eq!(h["eventLoop"]["degradedSinceMs"], 0);
        assert_eq!(h["eventLoop"]["reasons"].as_array().unwrap().len(), 3);
        let s = status_with_params(&v, &json!({"includeCliProjection": true}));
        assert_eq!(s["uptimeMs"], 0);
        assert_eq!(s["sessions"]["recent"].as_array().unwrap().len(), 3);
        let list = sessions_list(
            &v,
            &json!({"search": "x", "activeMinutes": 9_000_000_000_000_i64, "offset": u64::MAX}),
        )
        .unwrap();
        assert_eq!(list["count"], 0);
        let list = sessions_list(&v, &json!({})).unwrap();
        assert!(list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("status").is_none()));
        let _ = (
            agents_list(&v),
            models_list(&v),
            config_get(&v),
            gateway_presence_entry(&v),
        );
        assert_eq!(format_every(90), "90s");
        assert_eq!(format_every(7200), "2h");
        assert_eq!(session_agent_id("agent:dev:main"), Some("dev"));
        assert_eq!(session_agent_id("agent::main"), None);
        assert_eq!(session_agent_id("main"), None);
        assert_eq!(classification("agent:dev:cron:job-1"), "cron");
        assert_eq!(classification("agent:dev:work"), "explicit");
    }
}
