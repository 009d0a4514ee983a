//! Session and chat methods: validate params, canonicalise the session key, and route the op
//! to the session's owner core (`shard_of(key, workers)`) — directly or by one mesh hop.
//!
//! Owns: the wire shapes of chat.send/abort/history, agent/agent.wait and sessions.*.
//! Must not touch: session state (that is `state::sessions` on the owner core).

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Session;
use crate::protocol::error::{ErrorShape, INVALID_REQUEST, UNAVAILABLE};
use crate::protocol::frames::{encode_err, encode_ok};
use crate::runtime::core::Core;
use crate::state::sessions::{OpReply, SessionOp};
use crate::store::sessions::{canonical_key, rest_of, shard_of, MAIN};
use crate::transport::ws::codec::OpCode;

/// The asynchronous (session-routed) methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatMethod {
    /// `chat.send`.
    Send,
    /// `chat.abort`.
    Abort,
    /// `chat.history`.
    History,
    /// `agent`.
    Agent,
    /// `agent.wait`.
    AgentWait,
    /// `sessions.list`.
    SessionsList,
    /// `sessions.preview`.
    SessionsPreview,
    /// `sessions.patch`.
    SessionsPatch,
    /// `sessions.reset`.
    SessionsReset,
    /// `sessions.delete`.
    SessionsDelete,
    /// `sessions.subscribe`.
    SessionsSubscribe,
    /// `sessions.describe`.
    SessionsDescribe,
    /// `sessions.create`.
    SessionsCreate,
}

fn obj<'a>(method: &str, p: &'a Value) -> Result<&'a serde_json::Map<String, Value>, ErrorShape> {
    p.as_object()
        .ok_or_else(|| ErrorShape::invalid_params(method, "params must be an object"))
}

fn req_str<'a>(
    method: &str,
    o: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a str, ErrorShape> {
    match o.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ErrorShape::invalid_params(
            method,
            format!("at /{field}: must not be empty"),
        )),
        Some(_) => Err(ErrorShape::invalid_params(
            method,
            format!("at /{field}: must be string"),
        )),
        None => Err(ErrorShape::invalid_params(
            method,
            format!("at root: must have required property '{field}'"),
        )),
    }
}

/// Optional `field` of `o`: absent or `null` → `None`; present, read by `get`, or an
/// INVALID_REQUEST saying it must be `want`.
fn opt<'a, T>(
    method: &str,
    o: &'a serde_json::Map<String, Value>,
    field: &str,
    want: &str,
    get: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, ErrorShape> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            ErrorShape::invalid_params(method, format!("at /{field}: must be {want}"))
        }),
    }
}

fn opt_u64(
    method: &str,
    o: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<u64>, ErrorShape> {
    opt(method, o, field, "a non-negative integer", Value::as_u64)
}

fn opt_bool(
    method: &str,
    o: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<bool>, ErrorShape> {
    opt(method, o, field, "boolean", Value::as_bool)
}

fn opt_str<'a>(
    method: &str,
    o: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ErrorShape> {
    opt(method, o, field, "string", Value::as_str)
}

fn key_of(s: &Session, method: &str, raw: &str) -> Result<String, ErrorShape> {
    canonical_key(raw, s.core.shared.config.default_agent_id())
        .map_err(|e| ErrorShape::invalid_params(method, e))
}

/// Run `op` on core `owner` (this core directly, else one mesh hop).
pub async fn route(core: &Rc<Core>, owner: usize, op: SessionOp) -> OpReply {
    if owner == core.id {
        return crate::state::sessions::exec(core, op).await;
    }
    core.session_op_remote(owner, op).await
}

fn value(r: OpReply) -> Result<Value, ErrorShape> {
    match r {
        OpReply::Value(v) => v,
        OpReply::Summaries(_) | OpReply::NotHere | OpReply::History(..) => Err(ErrorShape::new(
            UNAVAILABLE,
            "unexpected reply from session owner",
        )),
    }
}

/// Longest single wait of a pending `agent.wait` before it checks its connection again.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// Longest `idempotencyKey` accepted (bytes).
const MAX_IDEMPOTENCY_KEY: usize = 512;
/// `chat.history` pages hold at most this many bytes of messages (the real gateway's 6 MiB).
const HISTORY_MAX_BYTES: usize = 6 << 20;

/// `sessions.preview` answers for the first this-many keys (as the real gateway).
const MAX_PREVIEW_KEYS: usize = 64;

/// The real runner's reply for a run that hit its deadline.
const AGENT_TIMEOUT_TEXT: &str = "Request timed out before a response was generated. Please try again, or increase `agents.defaults.timeoutSeconds` in your config.";

/// `agent`'s second answer for a run that completed, or was aborted or timed out (both
/// "timeout", as the real gateway projects a cancellation): the reply text in
/// `result.payloads` (what `openclaw agent` prints) and the run's facts in `result.meta`.
fn agent_final(run_id: &str, mut wait: Value) -> Value {
    let text = wait["summary"].as_str().unwrap_or("").to_string();
    let mut meta = wait
        .as_object_mut()
        .and_then(|o| o.remove(crate::state::sessions::AGENT_META))
        .unwrap_or_else(|| json!({}));
    let notice = meta
        .get_mut("agentMeta")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("isStatusNotice"))
        .is_some();
    let payloads = match (text.is_empty(), notice) {
        (true, _) => json!([]),
        (false, false) => json!([{"text": text}]),
        (false, true) => json!([{"text": text, "isStatusNotice": true}]),
    };
    if wait["status"] == "ok" {
        return json!({
            "runId": run_id,
            "status": "ok",
            "summary": "completed",
            "result": {"payloads": payloads, "meta": meta},
        });
    }
    meta["aborted"] = json!(true);
    // A run past its deadline answers what the real runner does: the partial reply is
    // dropped for a notice the CLI prints (an abort keeps what was said).
    let payloads = if wait.get("stopReason") == Some(&json!("timeout")) {
        json!([{"text": AGENT_TIMEOUT_TEXT, "isError": true}])
    } else {
        payloads
    };
    let mut v = json!({
        "runId": run_id,
        "status": "timeout",
        "summary": "aborted",
        "result": {"payloads": payloads, "meta": meta},
    });
    if let Some(stop) = wait.get("stopReason") {
        v["stopReason"] = stop.clone();
    }
    v
}

/// `agent.wait`: the run lives on its session's owner; ask every core in turn (a core that
/// does not know the run answers at once), the owner answers when the run ends or times out.
async fn wait_any(
    core: &Rc<Core>,
    workers: usize,
    run_id: String,
    timeout_ms: u64,
) -> Result<Value, ErrorShape> {
    for c in 0..workers {
        let op = SessionOp::Wait {
            run_id: run_id.clone(),
            timeout_ms,
        };
        match route(core, c, op).await {
            OpReply::NotHere => continue,
            other => {
                return value(other).map(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("summary");
                        o.remove(crate::state::sessions::AGENT_META);
                    }
                    v
                })
            }
        }
    }
    Err(ErrorShape::invalid(format!("unknown runId: {run_id}")))
}

/// `{session: <sessions.list row> | null}` for one canonical key, from its owner core.
async fn describe(s: &Session, owner: usize, key: String) -> Result<Value, ErrorShape> {
    match route(&s.core, owner, SessionOp::Describe { key: key.clone() }).await {
        OpReply::Summaries(rows) => {
            Ok(s.with_sessions_view(&rows, |v| super::system::session_describe(v, &key)))
        }
        other => value(other),
    }
}

/// `sessions.list`: every core's rows, gathered and shaped here.
async fn sessions_list(s: &Session, name: &str, params: &Value) -> Result<Value, ErrorShape> {
    let core = &s.core;
    let mut all = Vec::new();
    for c in 0..core.shared.opts.workers {
        match route(core, c, SessionOp::List).await {
            OpReply::Summaries(mut v) => all.append(&mut v),
            // A core that could not answer (its queue is full): a partial list with a wrong
            // count would look authoritative; ask again instead.
            other => {
                value(other)?;
                return Err(
                    ErrorShape::new(UNAVAILABLE, "a session shard did not answer")
                        .retry_after(1000),
                );
            }
        }
    }
    s.with_sessions_view(&all, |v| super::system::sessions_list(v, params))
        .map_err(|e| ErrorShape::invalid_params(name, e))
}

/// Handle one session/chat method; queues the response(s) itself.
pub async fn handle(s: &Session, m: ChatMethod, id: &str, params: &Value) {
    let name = match m {
        ChatMethod::Send => "chat.send",
        ChatMethod::Abort => "chat.abort",
        ChatMethod::History => "chat.history",
        ChatMethod::Agent => "agent",
        ChatMethod::AgentWait => "agent.wait",
        ChatMethod::SessionsList => "sessions.list",
        ChatMethod::SessionsPreview => "sessions.preview",
        ChatMethod::SessionsPatch => "sessions.patch",
        ChatMethod::SessionsReset => "sessions.reset",
        ChatMethod::SessionsDelete => "sessions.delete",
        ChatMethod::SessionsSubscribe => "sessions.subscribe",
        ChatMethod::SessionsDescribe => "sessions.describe",
        ChatMethod::SessionsCreate => "sessions.create",
    };
    let result = run(s, m, name, id, params).await;
    match result {
        Ok(Some(v)) => s.send(&encode_ok(id, &v)),
        Ok(None) => {}
        Err(e) => s.send(&encode_err(id, &e, None)),
    }
}

async fn run(
    s: &Session,
    m: ChatMethod,
    name: &str,
    id: &str,
    params: &Value,
) -> Result<Option<Value>, ErrorShape> {
    let core = &s.core;
    let workers = core.shared.opts.workers;
    let empty = serde_json::Map::new();
    let o = if params.is_null() {
        &empty
    } else {
        obj(name, params)?
    };
    // Closed params where the spec lists every field (the others are open-ended there).
    let allowed: Option<&[&str]> = match m {
        ChatMethod::Abort => Some(&["sessionKey", "agentId", "runId", "preserveSideRuns"]),
        ChatMethod::History => Some(&[
            "sessionKey",
            "agentId",
            "limit",
            "offset",
            "cursor",
            "maxBytes",
            "maxChars",
        ]),
        ChatMethod::AgentWait => Some(&["runId", "timeoutMs"]),
        ChatMethod::SessionsDescribe => Some(&[
            "key",
            "agentId",
            "includeDerivedTitles",
            "includeLastMessage",
        ]),
        ChatMethod::SessionsPreview => Some(&["keys", "limit", "maxChars"]),
        ChatMethod::SessionsReset => Some(&["key", "agentId", "reason", "expectedSessionId"]),
        _ => None,
    };
    if let Some(allowed) = allowed {
        super::closed_params(name, params, allowed)?;
    }
    match m {
        ChatMethod::Send | ChatMethod::Agent => {
            let message = match o.get("message") {
                Some(Value::String(t)) => t.clone(),
                _ => {
                    return Err(ErrorShape::invalid_params(
                        name,
                        "at root: must have required property 'message'",
                    ))
                }
            };
            let idem = req_str(name, o, "idempotencyKey")?.to_string();
            if idem.len() > MAX_IDEMPOTENCY_KEY {
                // It is the runId of every event of the run and a dedupe-cache key.
                return Err(ErrorShape::invalid_params(
                    name,
                    format!("at /idempotencyKey: must NOT have more than {MAX_IDEMPOTENCY_KEY} characters"),
                ));
            }
            let raw_key = match m {
                ChatMethod::Send => req_str(name, o, "sessionKey")?.to_string(),
                _ => opt_str(name, o, "sessionKey")?
                    .unwrap_or("main")
                    .to_string(),
            };
            // `agent` answers again when the run ends, from a task of this connection:
            // bounded like `agent.wait`'s, and taken before anything is queued.
            let final_slot = if m == ChatMethod::Agent {
                Some(s.wait_slot().ok_or_else(|| {
                    ErrorShape::new(
                        UNAVAILABLE,
                        format!(
                            "too many agent calls pending on this connection (max {})",
                            super::MAX_PENDING_WAITS
                        ),
                    )
                    .retry_after(1000)
                })?)
            } else {
                None
            };
            let key = key_of(s, name, &raw_key)?;
            let owner = shard_of(&key, workers);
            let agent_style = m == ChatMethod::Agent;
            // Whole-run deadline: chat.send `timeoutMs`, agent `timeout` (seconds); 0 = none.
            let deadline = if agent_style {
                opt_u64(name, o, "timeout")?
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(s.min(86_400)))
            } else {
                opt_u64(name, o, "timeoutMs")?
                    .filter(|ms| *ms > 0)
                    .map(|ms| Duration::from_millis(ms.min(86_400_000)))
            };
            let ack = value(
                route(
                    core,
                    owner,
                    SessionOp::Send {
                        key,
                        message,
                        idem: idem.clone(),
                        agent_style,
                        deadline,
                    },
                )
                .await,
            )?;
            if agent_style {
                // First response now (accepted); the final one with the same id when the run ends.
                s.send(&encode_ok(id, &ack));
                let core = core.clone();
                let outbox = s.outbox_handle();
                let id = id.to_string();
                monoio::spawn(async move {
                    let r = route(
                        &core,
                        owner,
                        SessionOp::Wait {
                            run_id: idem.clone(),
                            timeout_ms: 24 * 3600 * 1000,
                        },
                    )
                    .await;
                    let frame = match value(r) {
                        Ok(v) if v["status"] == "ok" || v["status"] == "timeout" => {
                            encode_ok(&id, &agent_final(&idem, v))
                        }
                        Ok(v) => {
                            let msg = v["error"]
                                .as_str()
                                .or(v["summary"].as_str())
                                .unwrap_or("agent run failed")
                                .to_string();
                            encode_err(
                                &id,
                                &ErrorShape::new(UNAVAILABLE, msg.clone()),
                                Some(&json!({"runId": idem, "status": "error", "summary": msg})),
                            )
                        }
                        Err(e) => encode_err(&id, &e, None),
                    };
                    outbox.push_frame(OpCode::Text, &frame);
                    drop(final_slot);
                });
                return Ok(None);
            }
            Ok(Some(ack))
        }
        ChatMethod::Abort => {
            let key = key_of(s, name, req_str(name, o, "sessionKey")?)?;
            let run_id = opt_str(name, o, "runId")?.map(str::to_string);
            let owner = shard_of(&key, workers);
            value(route(core, owner, SessionOp::Abort { key, run_id }).await).map(Some)
        }
        ChatMethod::History => {
            let requested = req_str(name, o, "sessionKey")?.to_string();
            let key = key_of(s, name, &requested)?;
            let limit = opt_u64(name, o, "limit")?.unwrap_or(200).clamp(1, 1000) as usize;
            // As the real gateway: texts cut at 8000 characters unless asked otherwise, the
            // page at most 6 MiB of messages (less if `maxBytes` says so).
            let max_chars = opt_u64(name, o, "maxChars")?
                .map_or(8000, |n| usize::try_from(n).unwrap_or(usize::MAX).max(1));
            let max_bytes = opt_u64(name, o, "maxBytes")?
                .map_or(HISTORY_MAX_BYTES, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                })
                .min(HISTORY_MAX_BYTES);
            let owner = shard_of(&key, workers);
            let reply = route(
                core,
                owner,
                SessionOp::History {
                    key: key.clone(),
                    requested,
                    limit,
                    max_chars,
                    max_bytes,
                },
            )
            .await;
            let OpReply::History(page, summary) = reply else {
                return value(reply).map(Some);
            };
            let mut page = page?;
            // `sessionInfo` is the session's full list row, as the real gateway sends it (the
            // TUI restores its settings and token count from it).
            let rows: Vec<_> = summary.into_iter().map(|b| *b).collect();
            let described =
                s.with_sessions_view(&rows, |v| super::system::session_describe(v, &key));
            if let (Some(row), Some(info)) = (
                described.get("session").and_then(Value::as_object),
                page.get_mut("sessionInfo").and_then(Value::as_object_mut),
            ) {
                for (k, v) in row {
                    info.insert(k.clone(), v.clone());
                }
            }
            Ok(Some(page))
        }
        ChatMethod::AgentWait => {
            let run_id = req_str(name, o, "runId")?.to_string();
            let timeout_ms = opt_u64(name, o, "timeoutMs")?
                .unwrap_or(30_000)
                .min(24 * 3600 * 1000);
            // The wait can last up to a day: it must not hold the connection's read loop
            // (pongs, chat.abort and every other request on this socket go on meanwhile), so
            // it runs as its own task and answers when the run ends. Bounded per connection.
            let Some(slot) = s.wait_slot() else {
                return Err(ErrorShape::new(
                    UNAVAILABLE,
                    format!(
                        "too many agent.wait calls pending on this connection (max {})",
                        super::MAX_PENDING_WAITS
                    ),
                )
                .retry_after(1000));
            };
            let core = core.clone();
            let outbox = s.outbox_handle();
            let id = id.to_string();
            monoio::spawn(async move {
                // Waited in slices so a wait whose connection has gone ends within a slice
                // instead of living on (up to a day) after the socket closed.
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                let result = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let slice = left.min(WAIT_SLICE);
                    let r =
                        wait_any(&core, workers, run_id.clone(), slice.as_millis() as u64).await;
                    let timed_out = matches!(&r, Ok(v) if v["status"] == "timeout");
                    if !timed_out || slice >= left || outbox.is_closed() {
                        break r;
                    }
                };
                if !outbox.is_closed() {
                    let frame = match result {
                        Ok(v) => encode_ok(&id, &v),
                        Err(e) => encode_err(&id, &e, None),
                    };
                    outbox.push_frame(OpCode::Text, &frame);
                }
                drop(slot);
            });
            Ok(None)
        }
        ChatMethod::SessionsList => sessions_list(s, name, params).await.map(Some),
        ChatMethod::SessionsCreate => {
            // The real gateway's default key for a new session of an agent.
            let agent = match opt_str(name, o, "agentId")? {
                Some(a) => a.trim().to_lowercase(),
                None => core.shared.config.default_agent_id().to_string(),
            };
            if !super::system::is_known_agent(&core.shared.config, &agent) {
                return Err(ErrorShape::invalid(format!("Unknown agent id: {agent}")));
            }
            let raw = match opt_str(name, o, "key")? {
                Some(k) => k.to_string(),
                None => format!("agent:{agent}:dashboard:{}", crate::auth::token::uuid_v4()),
            };
            // A bare key belongs to the requested agent.
            let key =
                canonical_key(&raw, &agent).map_err(|e| ErrorShape::invalid_params(name, e))?;
            // Created (or adopted) with the settings clawgate acts on; the row is durable
            // before the answer, like a patch's. The rest of the real schema (turn, worktree,
            // catalog) is not supported and ignored.
            let mut patch = serde_json::Map::new();
            for k in ["label", "model", "thinkingLevel", "fastMode"] {
                if let Some(v) = o.get(k) {
                    patch.insert(k.to_string(), v.clone());
                }
            }
            if patch.get("fastMode").is_some_and(|v| v == "auto") {
                patch.remove("fastMode");
            }
            let owner = shard_of(&key, workers);
            let r = value(
                route(
                    core,
                    owner,
                    SessionOp::Patch {
                        key: key.clone(),
                        patch: Value::Object(patch),
                    },
                )
                .await,
            )?;
            let session_id = r["entry"]["sessionId"].clone();
            Ok(Some(json!({
                "ok": true,
                "key": key,
                "sessionId": session_id,
                "entry": r["entry"],
                "runStarted": false,
                "resolved": r["resolved"],
            })))
        }
        ChatMethod::SessionsDescribe => {
            let key = key_of(s, name, req_str(name, o, "key")?)?;
            let owner = shard_of(&key, workers);
            describe(s, owner, key).await.map(Some)
        }
        ChatMethod::SessionsSubscribe => {
            // As the real gateway: params are sessions.list's; with any, the list comes too.
            // Subscribed only once the params are known good (as the real gateway).
            if o.is_empty() {
                s.core.subscribe_session_events(s.conn_id);
                return Ok(Some(json!({"subscribed": true})));
            }
            let list = sessions_list(s, name, params).await?;
            s.core.subscribe_session_events(s.conn_id);
            Ok(Some(json!({"subscribed": true, "list": list})))
        }
        ChatMethod::SessionsPreview => {
            let keys = match o.get("keys") {
                Some(Value::Array(a)) if !a.is_empty() => a,
                _ => {
                    return Err(ErrorShape::invalid_params(
                        name,
                        "at /keys: must be a non-empty array",
                    ))
                }
            };
            let limit = opt_u64(name, o, "limit")?.unwrap_or(12).clamp(1, 200) as usize;
            let max_chars = opt_u64(name, o, "maxChars")?
                .unwrap_or(240)
                .clamp(20, 100_000) as usize;
            // As the real gateway: trimmed, empty keys skipped, the first 64 only, and the
            // core serves others between keys (each is a transcript read on its owner).
            let mut wanted = Vec::new();
            for k in keys {
                let Some(requested) = k.as_str() else {
                    return Err(ErrorShape::invalid_params(
                        name,
                        "at /keys: items must be strings",
                    ));
                };
                let requested = requested.trim();
                if !requested.is_empty() && wanted.len() < MAX_PREVIEW_KEYS {
                    wanted.push(requested);
                }
            }
            let mut previews = Vec::new();
            for requested in wanted {
                if !previews.is_empty() {
                    crate::runtime::yield_now().await;
                }
                let key = key_of(s, name, requested)?;
                let owner = shard_of(&key, workers);
                let op = SessionOp::Preview {
                    key,
                    requested: requested.to_string(),
                    limit,
                    max_chars,
                };
                previews.push(value(route(core, owner, op).await)?);
            }
            Ok(Some(
                json!({"ts": crate::runtime::core::now_ms(), "previews": previews}),
            ))
        }
        ChatMethod::SessionsPatch => {
            let key = key_of(s, name, req_str(name, o, "key")?)?;
            let mut patch = o.clone();
            patch.remove("key");
            patch.remove("agentId");
            let owner = shard_of(&key, workers);
            value(
                route(
                    core,
                    owner,
                    SessionOp::Patch {
                        key,
                        patch: Value::Object(patch),
                    },
                )
                .await,
            )
            .map(Some)
        }
        ChatMethod::SessionsReset => {
            let key = key_of(s, name, req_str(name, o, "key")?)?;
            let owner = shard_of(&key, workers);
            value(route(core, owner, SessionOp::Reset { key }).await).map(Some)
        }
        ChatMethod::SessionsDelete => {
            let key = key_of(s, name, req_str(name, o, "key")?)?;
            // An agent's main session (`agent:<id>:main`) cannot be deleted (reset it).
            if rest_of(&key) == MAIN {
                return Err(ErrorShape::new(
                    INVALID_REQUEST,
                    format!("Cannot delete the main session ({key})."),
                ));
            }
            // As the real gateway: archived unless `deleteTranscript: false`.
            let delete_transcript = opt_bool(name, o, "deleteTranscript")?.unwrap_or(true);
            let owner = shard_of(&key, workers);
            value(
                route(
                    core,
                    owner,
                    SessionOp::Delete {
                        key,
                        delete_transcript,
                    },
                )
                .await,
            )
            .map(Some)
        }
    }
}
