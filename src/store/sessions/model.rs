//! Session index rows, transcript messages and `sessions.patch` validation (pure).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::methods::system::SessionSummary;

/// Longest `label` accepted by `sessions.patch` (characters, after trimming).
pub const MAX_LABEL_CHARS: usize = 100;
/// Longest `model` reference accepted by `sessions.patch`.
pub const MAX_MODEL_CHARS: usize = 256;
/// Longest `lastMessagePreview` kept in the index (characters).
pub const PREVIEW_CHARS: usize = 200;
/// Thinking levels `sessions.patch {thinkingLevel}` accepts (the real gateway's list plus
/// `off`/`minimal`).
pub const THINKING_LEVELS: &[&str] = &[
    "off", "minimal", "low", "medium", "high", "xhigh", "max", "ultra",
];
/// Patch fields that address the session rather than change it; accepted and ignored so
/// callers can pass `sessions.patch` params through unchanged.
const ADDRESS_FIELDS: &[&str] = &["key", "agentId", "sessionKey"];

/// `sessions.patch` fields of the real gateway's schema (2026.9.6) that clawgate keeps
/// as given (`null` clears) without acting on them. `expected*` preconditions other than
/// `expectedSessionId` (checked by the caller) are accepted and ignored.
pub const KEPT_PATCH_FIELDS: &[&str] = &[
    "autoLabel",
    "icon",
    "color",
    "category",
    "boardFace",
    "boardPresentation",
    "statusNote",
    "attention",
    "unread",
    "contextWindow",
    "toolOverrides",
    "verboseLevel",
    "traceLevel",
    "reasoningLevel",
    "responseUsage",
    "elevatedLevel",
    "execHost",
    "execSecurity",
    "execAsk",
    "execNode",
    "permissionMode",
    "sandboxMode",
    "nativeRuntimeConsent",
    "agentRuntime",
    "completionOwnerSessionKey",
    "inheritedToolPolicyVersion",
    "inheritedToolAllow",
    "inheritedToolDeny",
    "sendPolicy",
    "groupActivation",
];

/// Serialized size one kept setting may take.
const MAX_SETTING_BYTES: usize = 4096;
/// Serialized size a session's kept settings may take together.
const MAX_SETTINGS_BYTES: usize = 8192;

/// One session: a row of a shard's index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEntry {
    /// Canonical key `agent:<agentId>:<rest>`.
    pub key: String,
    /// Current transcript id (UUID v4); changes on reset.
    pub session_id: String,
    /// Owning agent (the `<agentId>` of `key`).
    pub agent_id: String,
    /// Creation time (epoch ms).
    pub created_at_ms: i64,
    /// Last change (epoch ms).
    pub updated_at_ms: i64,
    /// User label (`sessions.patch {label}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Per-session model override (`provider/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Per-session thinking level override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_level: Option<String>,
    /// Short preview of the latest user/assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_preview: Option<String>,
    /// Messages in the current transcript.
    #[serde(default)]
    pub message_count: u64,
    /// Id of the latest run (from appended assistant messages or [`super::SessionShard::update`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
    /// Status of the latest run: `queued`, `running`, `done`, `failed`, `killed`, `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_status: Option<String>,
    /// The latest run was aborted.
    #[serde(default)]
    pub aborted_last_run: bool,
    /// Error message of the latest run, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_error: Option<String>,
    /// Start of the latest run (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started_at_ms: Option<i64>,
    /// End of the latest run (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ended_at_ms: Option<i64>,
    /// Last real user interaction (epoch ms): the latest appended `user` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_interaction_at_ms: Option<i64>,
    /// When the current session id started (creation or last reset); daily resets use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_started_at_ms: Option<i64>,
    /// Display name (set by channels; not patchable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Token total of the latest run, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    /// The system prompt was already sent in this transcript.
    #[serde(default)]
    pub system_sent: bool,
    /// Per-session fast-mode override (`sessions.patch {fastMode}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_mode: Option<bool>,
    /// Pinned in session lists.
    #[serde(default)]
    pub pinned: bool,
    /// Archived.
    #[serde(default)]
    pub archived: bool,
    /// Transcript length in bytes as of the last index write. Used at load to detect index
    /// rows that lag their transcript (crash between append and index flush) and rebuild
    /// count/preview from the transcript.
    #[serde(default)]
    pub transcript_bytes: u64,
    /// Other `sessions.patch` settings of the real gateway's schema ([`KEPT_PATCH_FIELDS`])
    /// that clawgate stores and returns but does not act on (TUI display and verbosity
    /// settings, send policy, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Value>,
}

impl SessionEntry {
    /// A fresh entry for `key` (canonical) with transcript id `session_id`.
    pub fn new(key: &str, agent_id: &str, session_id: String, now_ms: i64) -> Self {
        Self {
            key: key.to_string(),
            session_id,
            agent_id: agent_id.to_string(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            label: None,
            settings: BTreeMap::new(),
            model: None,
            thinking_level: None,
            last_message_preview: None,
            message_count: 0,
            last_run_id: None,
            last_run_status: None,
            aborted_last_run: false,
            last_run_error: None,
            run_started_at_ms: None,
            run_ended_at_ms: None,
            last_interaction_at_ms: None,
            session_started_at_ms: Some(now_ms),
            display_name: None,
            total_tokens: None,
            system_sent: false,
            fast_mode: None,
            pinned: false,
            archived: false,
            transcript_bytes: 0,
        }
    }

    /// The row `sessions.list` / `health` / `status` are built from. Runtime-only state
    /// (`active_run_ids`) is left empty for the caller to fill.
    pub fn summary(&self) -> SessionSummary {
        SessionSummary {
            key: self.key.clone(),
            session_id: self.session_id.clone(),
            updated_at_ms: self.updated_at_ms,
            created_at_ms: Some(self.created_at_ms),
            last_interaction_at_ms: self.last_interaction_at_ms,
            label: self.label.clone(),
            display_name: self.display_name.clone(),
            model: self.model.clone(),
            total_tokens: self.total_tokens,
            last_message_preview: self.last_message_preview.clone(),
            status: self.last_run_status.clone(),
            aborted_last_run: self.aborted_last_run,
            system_sent: self.system_sent,
            active_run_ids: Vec::new(),
            run_started_at_ms: self.run_started_at_ms,
            run_ended_at_ms: self.run_ended_at_ms,
            last_run_id: self.last_run_id.clone(),
            last_run_error: self.last_run_error.clone(),
            archived: self.archived,
            pinned: self.pinned,
            thinking_level: self.thinking_level.clone(),
            fast_mode: self.fast_mode,
            settings: std::sync::Arc::new(self.settings.clone()),
        }
    }

    /// The `entry` object of `sessions.patch` / `sessions.reset` results (the real
    /// gateway's field names: `sessionId`, `createdAt`, `updatedAt`, …).
    pub fn to_wire(&self) -> Value {
        let mut m = Map::new();
        m.insert("sessionId".into(), json!(self.session_id));
        m.insert("createdAt".into(), json!(self.created_at_ms));
        m.insert("updatedAt".into(), json!(self.updated_at_ms));
        if let Some(t) = self.last_interaction_at_ms {
            m.insert("lastInteractionAt".into(), json!(t));
        }
        m.insert("systemSent".into(), json!(self.system_sent));
        m.insert("abortedLastRun".into(), json!(self.aborted_last_run));
        m.insert("chatType".into(), json!("direct"));
        m.insert("totalTokens".into(), json!(self.total_tokens.unwrap_or(0)));
        let opt = |m: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        };
        opt(&mut m, "label", &self.label);
        opt(&mut m, "displayName", &self.display_name);
        opt(&mut m, "model", &self.model);
        opt(&mut m, "thinkingLevel", &self.thinking_level);
        opt(&mut m, "lastMessagePreview", &self.last_message_preview);
        opt(&mut m, "lastRunId", &self.last_run_id);
        if let Some(f) = self.fast_mode {
            m.insert("fastMode".into(), json!(f));
        }
        if self.pinned {
            m.insert("pinned".into(), json!(true));
        }
        if self.archived {
            m.insert("archived".into(), json!(true));
        }
        if let Some(t) = self.session_started_at_ms {
            m.insert("sessionStartedAt".into(), json!(t));
        }
        // Kept `sessions.patch` settings are entry fields in the real gateway's rows.
        for (k, v) in &self.settings {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }

    /// Fold an appended message into the row (count, preview, interaction and run state).
    pub(crate) fn absorb(&mut self, msg: &TranscriptMessage, now_ms: i64) {
        self.message_count += 1;
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        if matches!(msg.role.as_str(), "user" | "assistant") {
            let p = preview_of(&msg.text, PREVIEW_CHARS);
            if !p.is_empty() {
                self.last_message_preview = Some(p);
            }
        }
        if msg.role == "user" {
            self.last_interaction_at_ms = Some(msg.ts);
        }
        if msg.role == "assistant" {
            if let Some(run) = &msg.run_id {
                self.last_run_id = Some(run.clone());
            }
            let aborted = msg.stop_reason.as_deref() == Some("aborted");
            self.aborted_last_run = aborted;
            if let Some(err) = &msg.error {
                self.last_run_status = Some("failed".into());
                self.last_run_error = Some(err.clone());
            } else {
                self.last_run_status = Some(if aborted { "killed" } else { "done" }.into());
                self.last_run_error = None;
            }
            if let Some(total) = msg
                .usage
                .as_ref()
                .and_then(|u| u.get("totalTokens"))
                .and_then(Value::as_u64)
            {
                self.total_tokens = Some(total);
            }
        }
    }

    /// Apply a `sessions.patch` object. Validates everything before changing anything, so a
    /// rejected patch leaves the entry untouched. Returns whether something changed.
    pub(crate) fn apply_patch(&mut self, patch: &Value) -> Result<bool, String> {
        let obj = patch
            .as_object()
            .ok_or_else(|| "invalid patch: expected an object".to_string())?;
        let mut next = self.clone();
        for (k, v) in obj {
            match k.as_str() {
                "label" => next.label = opt_text(k, v, MAX_LABEL_CHARS)?,
                "model" => next.model = opt_text(k, v, MAX_MODEL_CHARS)?,
                "thinkingLevel" => {
                    next.thinking_level = match v {
                        Value::Null => None,
                        Value::String(s) => {
                            let lvl = s.trim().to_ascii_lowercase();
                            if !THINKING_LEVELS.contains(&lvl.as_str()) {
                                return Err(format!(
                                    "invalid thinkingLevel {s:?} (expected one of {})",
                                    THINKING_LEVELS.join(", ")
                                ));
                            }
                            Some(lvl)
                        }
                        _ => return Err("invalid thinkingLevel: expected string or null".into()),
                    }
                }
                "fastMode" => {
                    next.fast_mode = match v {
                        Value::Null => None,
                        Value::Bool(b) => Some(*b),
                        _ => return Err("invalid fastMode: expected boolean or null".into()),
                    }
                }
                "pinned" => next.pinned = flag(k, v)?,
                "archived" => next.archived = flag(k, v)?,
                k if ADDRESS_FIELDS.contains(&k) || k.starts_with("expected") => {}
                k if KEPT_PATCH_FIELDS.contains(&k) => {
                    if v.is_null() {
                        next.settings.remove(k);
                    } else if serde_json::to_string(v).map_or(true, |j| j.len() > MAX_SETTING_BYTES)
                    {
                        return Err(format!(
                            "invalid {k}: larger than {MAX_SETTING_BYTES} bytes"
                        ));
                    } else {
                        next.settings.insert(k.to_string(), v.clone());
                        // Every list row carries them: a session's settings stay small.
                        let total =
                            serde_json::to_string(&next.settings).map_or(usize::MAX, |j| j.len());
                        if total > MAX_SETTINGS_BYTES {
                            return Err(format!(
                                "invalid patch: settings larger than {MAX_SETTINGS_BYTES} bytes together"
                            ));
                        }
                    }
                }
                other => return Err(format!("invalid patch: unknown field {other:?}")),
            }
        }
        let changed = next != *self;
        *self = next;
        Ok(changed)
    }
}

fn opt_text(field: &str, v: &Value, max: usize) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Err(format!("invalid {field}: empty (send null to clear)"));
            }
            if t.chars().count() > max {
                return Err(format!("invalid {field}: longer than {max} characters"));
            }
            if t.chars().any(char::is_control) {
                return Err(format!("invalid {field}: control characters"));
            }
            Ok(Some(t.to_string()))
        }
        _ => Err(format!("invalid {field}: expected string or null")),
    }
}

fn flag(field: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(format!("invalid {field}: expected boolean")),
    }
}

/// Single-line preview: whitespace runs collapsed to one space, at most `max` characters
/// (an ellipsis marks a cut).
pub fn preview_of(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0usize;
    for word in text.split_whitespace() {
        let sep = (!out.is_empty()).then_some(' ');
        for c in sep.into_iter().chain(word.chars()) {
            if n == max {
                out.pop();
                out.push('…');
                return out;
            }
            out.push(c);
            n += 1;
        }
    }
    out
}

/// One transcript line (`<sessionId>.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptMessage {
    /// Message id (unique within the transcript).
    pub id: String,
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// Plain text content.
    pub text: String,
    /// Epoch ms.
    pub ts: i64,
    /// Run that produced (assistant) or started (user) this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why the model stopped (`stop`, `length`, `aborted`, `error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Error message of a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Provider usage object, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

impl TranscriptMessage {
    /// The `chat.history` message shape (OpenClaw agent message): `{role, content:
    /// [{type:"text", text}], timestamp, stopReason?, usage?, errorMessage?, __openclaw:
    /// {id, runId?}}`.
    pub fn to_wire(&self) -> Value {
        let mut meta = Map::new();
        meta.insert("id".into(), json!(self.id));
        if let Some(run) = &self.run_id {
            meta.insert("runId".into(), json!(run));
        }
        let mut m = Map::new();
        m.insert("role".into(), json!(self.role));
        m.insert(
            "content".into(),
            json!([{ "type": "text", "text": self.text }]),
        );
        m.insert("timestamp".into(), json!(self.ts));
        if let Some(s) = &self.stop_reason {
            m.insert("stopReason".into(), json!(s));
        }
        if let Some(u) = &self.usage {
            m.insert("usage".into(), u.clone());
        }
        if let Some(e) = &self.error {
            m.insert("errorMessage".into(), json!(e));
        }
        m.insert("__openclaw".into(), Value::Object(meta));
        Value::Object(m)
    }

    /// [`Self::to_wire`] plus the message's 1-based position in its transcript
    /// (`__openclaw.seq`), which clients use as a stable ordering key.
    pub fn to_wire_seq(&self, seq: u64) -> Value {
        let mut v = self.to_wire();
        if let Some(meta) = v.get_mut("__openclaw").and_then(Value::as_object_mut) {
            meta.insert("seq".into(), json!(seq));
        }
        v
    }

    /// A `sessions.preview` item `{role, text}` with `text` cut to `max_chars`.
    pub fn to_preview(&self, max_chars: usize) -> Value {
        json!({ "role": self.role, "text": preview_of(&self.text, max_chars.max(1)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SessionEntry {
        SessionEntry::new("agent:dev:main", "dev", "sid".into(), 1000)
    }

    fn msg(role: &str, text: &str) -> TranscriptMessage {
        TranscriptMessage {
            id: "m1".into(),
            role: role.into(),
            text: text.into(),
            ts: 5,
            run_id: None,
            stop_reason: None,
            error: None,
            usage: None,
        }
    }

    #[test]
    fn patch_sets_and_clears() {
        let mut e = entry();
        assert!(e
            .apply_patch(
                &json!({"key":"main","label":"  spec ","model":"openai/gpt","thinkingLevel":"High"})
            )
            .unwrap());
        assert_eq!(e.label.as_deref(), Some("spec"));
        assert_eq!(e.model.as_deref(), Some("openai/gpt"));
        assert_eq!(e.thinking_level.as_deref(), Some("high"));
        assert!(!e.apply_patch(&json!({"label":"spec"})).unwrap());
        assert!(e
            .apply_patch(&json!({"label":null,"model":null,"thinkingLevel":null,"pinned":true,"fastMode":false}))
            .unwrap());
        assert_eq!(e.label, None);
        assert_eq!(e.model, None);
        assert_eq!(e.thinking_level, None);
        assert!(e.pinned);
        assert_eq!(e.fast_mode, Some(false));
        assert!(e.apply_patch(&json!({})).is_ok());
    }

    #[test]
    fn patch_rejects_bad_input_atomically() {
        let mut e = entry();
        e.apply_patch(&json!({"label":"keep"})).unwrap();
        let before = e.clone();
        for bad in [
            json!({"label":"ok","bogus":1}),
            json!({"label":"x".repeat(MAX_LABEL_CHARS + 1)}),
            json!({"label":""}),
            json!({"label":"a\u{7}b"}),
            json!({"label":5}),
            json!({"model":"m".repeat(MAX_MODEL_CHARS + 1)}),
            json!({"model":["x"]}),
            json!({"thinkingLevel":"extreme"}),
            json!({"thinkingLevel":3}),
            json!({"fastMode":"yes"}),
            json!({"pinned":1}),
            json!("label"),
            json!(null),
        ] {
            assert!(e.apply_patch(&bad).is_err(), "{bad} accepted");
            assert_eq!(e, before, "{bad} changed the entry");
        }
        // Exactly the limit is fine, counted in characters.
        assert!(e
            .apply_patch(&json!({"label":"é".repeat(MAX_LABEL_CHARS)}))
            .is_ok());
    }

    #[test]
    fn absorb_tracks_preview_and_runs() {
        let mut e = entry();
        e.absorb(&msg("user", "Hello\n  from   the spec"), 2000);
        assert_eq!(e.message_count, 1);
        assert_eq!(
            e.last_message_preview.as_deref(),
            Some("Hello from the spec")
        );
        assert_eq!(e.last_interaction_at_ms, Some(5));
        assert_eq!(e.updated_at_ms, 2000);
        let mut a = msg("assistant", "hi");
        a.run_id = Some("r1".into());
        a.error = Some("boom".into());
        a.usage = Some(json!({"totalTokens": 42}));
        e.absorb(&a, 3000);
        assert_eq!(e.last_run_id.as_deref(), Some("r1"));
        assert_eq!(e.last_run_status.as_deref(), Some("failed"));
        assert_eq!(e.last_run_error.as_deref(), Some("boom"));
        assert_eq!(e.total_tokens, Some(42));
        let mut b = msg("assistant", "cut");
        b.stop_reason = Some("aborted".into());
        e.absorb(&b, 2500);
        assert!(e.aborted_last_run);
        assert_eq!(e.last_run_status.as_deref(), Some("killed"));
        assert_eq!(e.updated_at_ms, 3000, "updatedAt never goes backwards");
        e.absorb(&msg("system", "sys"), 4000);
        assert_eq!(e.last_message_preview.as_deref(), Some("cut"));
        let s = e.summary();
        assert_eq!(s.key, "agent:dev:main");
        assert_eq!(s.status.as_deref(), Some("killed"));
        assert_eq!(s.created_at_ms, Some(1000));
    }

    #[test]
    fn preview_truncates_by_chars() {
        assert_eq!(preview_of("  a  b\tc ", 10), "a b c");
        assert_eq!(preview_of("abcdef", 4), "abc…");
        assert_eq!(preview_of("ééééé", 5), "ééééé");
        assert_eq!(preview_of("", 5), "");
    }

    #[test]
    fn wire_shapes() {
        let mut m = msg("assistant", "pong");
        m.run_id = Some("r".into());
        m.stop_reason = Some("stop".into());
        assert_eq!(
            m.to_wire_seq(3),
            json!({"role":"assistant","content":[{"type":"text","text":"pong"}],"timestamp":5,
                   "stopReason":"stop","__openclaw":{"id":"m1","runId":"r","seq":3}})
        );
        assert_eq!(
            msg("user", "hi there").to_preview(20),
            json!({"role":"user","text":"hi there"})
        );
        let mut e = entry();
        e.label = Some("spec".into());
        let w = e.to_wire();
        assert_eq!(w["sessionId"], "sid");
        assert_eq!(w["label"], "spec");
        assert_eq!(w["updatedAt"], 1000);
        assert_eq!(w["abortedLastRun"], false);
    }

    #[test]
    fn entry_json_roundtrip_and_defaults() {
        let e = entry();
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"sessionId\""));
        assert!(s.contains("\"updatedAtMs\""));
        let back: SessionEntry = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
        let minimal: SessionEntry = serde_json::from_str(
            r#"{"key":"agent:a:b","sessionId":"s","agentId":"a","createdAtMs":1,"updatedAtMs":2}"#,
        )
        .unwrap();
        assert_eq!(minimal.message_count, 0);
        assert!(!minimal.aborted_last_run);
    }
}
