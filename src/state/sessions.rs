//! The sessions this core owns (`shard_of(key, workers) == core`), their lanes (one FIFO per
//! session: one run at a time), the runs, and the idempotency dedupe cache.
//!
//! Owns: everything about a session's runs on its owner core. Reached only through
//! [`SessionOp`]s — directly when the request arrived on the owner core, by one mesh hop
//! otherwise. Must not touch: sockets (events go out through `Core::publish`).
//!
//! Concurrency cap: `agents.defaults.maxConcurrent` is one gateway-wide count kept by core 0
//! ([`Core::acquire_run_slot`]: one mesh hop when a run starts and one when it ends); queued
//! runs wait in their lane, FIFO, never dropped: a run behind its session's current one, or
//! held by the gateway-wide cap, is announced to every client (`agent` lifecycle `queued`),
//! `agent.wait` on it reports `timeout` until it ends, and a lane holds at most
//! [`MAX_RUNS_PER_LANE`] and a core's lanes [`MAX_RUNS_PER_CORE`] (more sends are refused
//! before anything is written). Unfinished
//! runs are never evicted from the run table.
//!
//! Durability without stalling the core: the shard only stages index rows that a reply
//! depends on; [`persisted`] starts the core's one in-flight index write ([`kick_index`])
//! and parks the request's task until the row is on disk (bounded by `STORE_WAIT`), while
//! every other connection on the core keeps being served.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agents::{self, Abort, ChatMessage, ProviderEvent};
use crate::auth::scopes;
use crate::methods::system::SessionSummary;
use crate::protocol::error::{ErrorShape, UNAVAILABLE};
use crate::runtime::core::{now_ms, Core};
use crate::store::sessions::{Durability, IndexWrite, SessionShard, TranscriptMessage};

/// Dedupe entries live this long (PROTOCOL.md §7).
pub const DEDUPE_TTL_MS: i64 = 300_000;
/// At most this many dedupe entries per core.
pub const DEDUPE_MAX: usize = 1000;
/// Longest silence from a provider (connect, first byte, between chunks).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest assistant reply kept; past it the run ends with an error (every delta event
/// carries the text so far, so an endless reply must not grow memory or per-event cost
/// without bound).
pub const MAX_REPLY_BYTES: usize = 1 << 20;
/// At most one chat `delta` event per run per this window, as the real gateway
/// (`emitChatDelta`): a fast provider costs one broadcast per window, not one per token.
/// The `agent` assistant stream is not throttled.
pub const DELTA_THROTTLE: Duration = Duration::from_millis(150);
/// A run still waiting for a gateway-wide slot after this long is announced as queued.
const SLOT_WAIT_ANNOUNCE: Duration = Duration::from_millis(50);
/// Most runs one session's lane may hold (running + queued).
pub const MAX_RUNS_PER_LANE: usize = 64;
/// Most runs all the lanes of one core may hold together (running + queued).
pub const MAX_RUNS_PER_CORE: usize = 1024;
/// Most bytes of user messages that runs not yet started may hold on one core (one larger
/// message is still taken when nothing else waits).
pub const MAX_QUEUED_BYTES: usize = 128 << 20;

/// A request for the owner core of a session.
#[derive(Debug)]
pub enum SessionOp {
    /// `chat.send` / `agent`: append the user message, queue a run.
    Send {
        /// Canonical key.
        key: String,
        /// User text.
        message: String,
        /// Idempotency key (= runId).
        idem: String,
        /// `agent` (accepted-style ack) vs `chat.send`.
        agent_style: bool,
        /// Whole-run deadline asked for by the client (`chat.send` `timeoutMs`, `agent`
        /// `timeout`); `None` = only the provider's per-wait timeout.
        deadline: Option<Duration>,
    },
    /// `chat.abort`.
    Abort {
        /// Canonical key.
        key: String,
        /// Only this run.
        run_id: Option<String>,
    },
    /// `chat.history`.
    History {
        /// Canonical key.
        key: String,
        /// As sent by the client.
        requested: String,
        /// Max messages.
        limit: usize,
        /// Each message's text is cut to this many characters (`maxChars`, default 8000).
        max_chars: usize,
        /// The messages together stay under this many bytes of JSON (`maxBytes`, at most
        /// 6 MiB): the oldest are left out first.
        max_bytes: usize,
    },
    /// `sessions.preview` for one key.
    Preview {
        /// Canonical key.
        key: String,
        /// As sent.
        requested: String,
        /// Items.
        limit: usize,
        /// Max chars per item.
        max_chars: usize,
    },
    /// `sessions.patch`.
    Patch {
        /// Canonical key.
        key: String,
        /// Fields.
        patch: Value,
    },
    /// `sessions.reset`.
    Reset {
        /// Canonical key.
        key: String,
    },
    /// `sessions.delete`.
    Delete {
        /// Canonical key.
        key: String,
        /// Also delete the transcript.
        delete_transcript: bool,
    },
    /// `sessions.list` gather.
    List,
    /// One session's summary (none when unknown): `sessions.describe`, `chat.history`'s
    /// `sessionInfo`.
    Describe {
        /// Canonical key.
        key: String,
    },
    /// Wait for a run's end (`agent.wait`, the second `agent` response).
    Wait {
        /// Run id.
        run_id: String,
        /// Timeout.
        timeout_ms: u64,
    },
}

/// The owner core's answer.
#[derive(Debug)]
pub enum OpReply {
    /// A payload or an error.
    Value(Result<Value, ErrorShape>),
    /// Session summaries (list gather).
    Summaries(Vec<SessionSummary>),
    /// The run is not on this core (wait gather).
    NotHere,
    /// A `chat.history` page and the session's summary (for `sessionInfo`), in one hop.
    History(Result<Value, ErrorShape>, Option<Box<SessionSummary>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunStatus {
    Queued,
    Running,
    Ok,
    Error,
    Aborted,
    /// Ended by its whole-run deadline.
    TimedOut,
}

struct Run {
    key: String,
    /// The session id its user line went into: a run whose session was reset, deleted or
    /// pruned meanwhile does not run (or append) into whatever now has its key.
    session_id: String,
    /// The user's message until the run starts (then only the transcript keeps it: up to
    /// 2000 finished runs are remembered for `agent.wait`).
    message: RefCell<String>,
    abort: Abort,
    status: Cell<RunStatus>,
    started_at: Cell<i64>,
    ended_at: Cell<i64>,
    summary: RefCell<String>,
    error: RefCell<Option<String>>,
    waiters: RefCell<Vec<std::task::Waker>>,
    /// `agent` event seqs used before the run started (the `queued` lifecycle event).
    agent_seq: Cell<u64>,
    /// Whole-run deadline from the request, counted from the run's start.
    deadline: Option<Duration>,
    /// `provider`/`model` it ran on, once resolved.
    target: RefCell<Option<(String, String)>>,
    /// A bare `/new` or `/reset`: the run answers this status notice instead of asking the
    /// model (as the real gateway's command handling does).
    notice: Option<&'static str>,
}

impl Run {
    fn finished(&self) -> bool {
        matches!(
            self.status.get(),
            RunStatus::Ok | RunStatus::Error | RunStatus::Aborted | RunStatus::TimedOut
        )
    }
    fn finish(&self, st: RunStatus) {
        self.status.set(st);
        self.ended_at.set(now_ms());
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
    fn outcome(&self, run_id: &str) -> Value {
        // As the real gateway projects run ends: a cancelled run counts as a timeout.
        let status = match self.status.get() {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Aborted | RunStatus::TimedOut | RunStatus::Queued | RunStatus::Running => {
                "timeout"
            }
        };
        let mut v = json!({"runId": run_id, "status": status});
        match self.status.get() {
            RunStatus::Aborted => v["stopReason"] = json!("rpc"),
            RunStatus::TimedOut => v["stopReason"] = json!("timeout"),
            _ => {}
        }
        if self.started_at.get() > 0 {
            v["startedAt"] = json!(self.started_at.get());
        }
        if self.ended_at.get() > 0 && self.finished() {
            v["endedAt"] = json!(self.ended_at.get());
        }
        if let Some(e) = self.error.borrow().as_ref() {
            v["error"] = json!(e);
        }
        v
    }
}

/// Key of the run's provider/session facts in a `SessionOp::Wait` reply (internal: the
/// `agent` final answer moves it to `result.meta`; `agent.wait` removes it).
pub const AGENT_META: &str = "_agentMeta";

/// What a `chat.send`/`agent` answered (a retried idempotency key gets the same).
type SendOutcome = Result<Value, ErrorShape>;

/// One core's sessions in brief, replicated to every core for `health` and `status`
/// (which answer from the core a client is on, without a gather per call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionDigest {
    /// Sessions per agent id.
    pub counts: std::collections::BTreeMap<String, usize>,
    /// The most recently updated sessions of each agent (newest first, at most
    /// [`DIGEST_RECENT`] per agent).
    pub recent: Vec<SessionSummary>,
}

/// Recent rows per agent kept in a [`SessionDigest`] (≥ what `status` and `health` show).
pub const DIGEST_RECENT: usize = 10;

/// How many of `mine` sessions this core prunes when the gateway holds `mine + elsewhere`
/// against a cap of `max`: its proportional share of the excess, rounded up.
fn cap_share(mine: usize, elsewhere: usize, max: usize) -> usize {
    let total = mine.saturating_add(elsewhere);
    let excess = total.saturating_sub(max);
    if excess == 0 || total == 0 {
        return 0;
    }
    let share = (excess as u128 * mine as u128).div_ceil(total as u128);
    usize::try_from(share).unwrap_or(mine).min(mine)
}

/// Per-core owner of sessions.
pub struct SessionOwner {
    shard: RefCell<SessionShard>,
    lanes: RefCell<HashMap<String, VecDeque<String>>>,
    runs: RefCell<HashMap<String, Rc<Run>>>,
    run_order: RefCell<VecDeque<(i64, String)>>,
    dedupe: RefCell<HashMap<String, (i64, SendOutcome)>>,
    dedupe_order: RefCell<VecDeque<(i64, String)>>,
    /// Tasks waiting for an index write to finish ([`persisted`]).
    index_waiters: RefCell<Vec<std::task::Waker>>,
    /// Idempotency keys whose first send is still waiting for its session row.
    unacked: RefCell<std::collections::HashSet<String>>,
    /// Bytes of user messages held by runs that have not started (see [`MAX_QUEUED_BYTES`]).
    queued_bytes: Cell<usize>,
    policy: crate::state::policy::SessionPolicy,
}

impl SessionOwner {
    /// Wrap this core's shard.
    pub fn new(shard: SessionShard, policy: crate::state::policy::SessionPolicy) -> Self {
        Self {
            shard: RefCell::new(shard),
            lanes: RefCell::new(HashMap::new()),
            runs: RefCell::new(HashMap::new()),
            run_order: RefCell::new(VecDeque::new()),
            dedupe: RefCell::new(HashMap::new()),
            dedupe_order: RefCell::new(VecDeque::new()),
            index_waiters: RefCell::new(Vec::new()),
            unacked: RefCell::new(std::collections::HashSet::new()),
            queued_bytes: Cell::new(0),
            policy,
        }
    }

    /// Apply `session.maintenance`: pruneAfter, and maxEntries gateway-wide. `elsewhere` is
    /// how many sessions the other cores hold (from their replicated digests, up to 2 s
    /// old): past the cap, each core prunes its proportional share of the excess, so the
    /// cap is not split evenly across shards that hash unevenly. Sessions with a run
    /// queued or running are never pruned.
    pub fn maintain(&self, now_ms: i64, elsewhere: usize) {
        let mine = self.shard.borrow().len();
        if !self.policy.maintenance_enforce {
            // `maintenance.mode: "warn"`: report what enforcing would do, change nothing.
            if let Some(max) = self.policy.max_entries {
                if cap_share(mine, elsewhere, max) > 0 {
                    tracing::warn!(
                        message = "Session store is over session.maintenance.maxEntries (mode warn: nothing pruned).",
                        sessions = mine + elsewhere,
                        max_entries = max
                    );
                }
            }
            return;
        }
        let max = self
            .policy
            .max_entries
            .map(|max| mine - cap_share(mine, elsewhere, max));
        let lanes = self.lanes.borrow();
        let busy = |key: &str| lanes.contains_key(key);
        let pruned =
            self.shard
                .borrow_mut()
                .maintain(now_ms, self.policy.prune_after_ms, max, &busy);
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(message = "Session maintenance pruned entries.", removed = n),
            Err(e) => tracing::error!(message = "Session maintenance failed.", error = %e),
        }
    }

    /// Flush batched index/fsync work (called periodically by the core's ticker).
    pub fn flush(&self) {
        if let Err(e) = self.shard.borrow_mut().flush() {
            tracing::error!(message = "Session store flush failed.", error = %e);
        }
    }

    /// Queue durable-write jobs on this core's store thread without blocking and return the
    /// slot that gets the outcome; without a store thread (tests that build a core by hand)
    /// the jobs run in place and `None` means they are done.
    pub fn store_async(
        &self,
        jobs: Vec<crate::store::io_thread::Job>,
    ) -> std::io::Result<
        Option<std::sync::Arc<crate::runtime::reply::ReplySlot<std::io::Result<()>>>>,
    > {
        match self.shard.borrow().io() {
            Some(io) => io.run_async(jobs).map(Some),
            None => crate::store::io_thread::run_inline(jobs).map(|()| None),
        }
    }

    /// Offer batches waiting in the store thread's overflow again (a write just finished,
    /// so the queue has room: a parked index write or registry save must not wait for the
    /// next flush tick).
    pub fn pump_store(&self) {
        if let Some(io) = self.shard.borrow().io() {
            io.pump();
        }
    }

    fn wake_index_waiters(&self) {
        let waiters = std::mem::take(&mut *self.index_waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Flush and wait until everything is on disk (graceful shutdown).
    pub fn flush_blocking(&self) {
        self.shard.borrow_mut().flush_blocking();
    }

    fn dedupe_get(&self, idem: &str) -> Option<SendOutcome> {
        let now = now_ms();
        let mut order = self.dedupe_order.borrow_mut();
        let mut map = self.dedupe.borrow_mut();
        while let Some((at, k)) = order.front() {
            if now - *at > DEDUPE_TTL_MS || map.len() > DEDUPE_MAX {
                map.remove(k);
                order.pop_front();
            } else {
                break;
            }
        }
        map.get(idem).map(|(_, v)| v.clone())
    }

    fn dedupe_put(&self, idem: &str, v: SendOutcome) {
        let now = now_ms();
        self.dedupe.borrow_mut().insert(idem.to_string(), (now, v));
        self.dedupe_order
            .borrow_mut()
            .push_back((now, idem.to_string()));
    }

    fn remember_run(&self, id: &str, run: Rc<Run>) {
        let now = now_ms();
        let mut runs = self.runs.borrow_mut();
        let mut order = self.run_order.borrow_mut();
        // Finished runs go after the dedupe TTL or past the cap. A queued or running run is
        // never forgotten (its lane, abort and agent.wait still need it): it moves to the
        // back, so one long run cannot keep every later finished one (and its summary) alive.
        let mut still_running = Vec::new();
        for _ in 0..order.len() {
            let Some((at, _)) = order.front() else { break };
            if now - *at <= DEDUPE_TTL_MS && runs.len() <= DEDUPE_MAX * 2 {
                break;
            }
            let Some((_, k)) = order.pop_front() else {
                break;
            };
            if runs.get(&k).is_some_and(|r| !r.finished()) {
                still_running.push(k);
            } else {
                runs.remove(&k);
            }
        }
        order.extend(still_running.into_iter().map(|k| (now, k)));
        runs.insert(id.to_string(), run);
        order.push_back((now, id.to_string()));
    }

    /// The run's session is still the one its user line went into.
    fn is_current(&self, run: &Run) -> bool {
        self.shard
            .borrow()
            .get(&run.key)
            .is_some_and(|e| e.session_id == run.session_id)
    }

    fn summaries(&self) -> Vec<SessionSummary> {
        self.shard.borrow().list().map(|e| e.summary()).collect()
    }

    /// Moves whenever a row of this core's shard changes.
    pub fn changes(&self) -> u64 {
        self.shard.borrow().changes()
    }

    /// This core's [`SessionDigest`]: counts per agent and the newest rows of each.
    pub fn digest(&self) -> SessionDigest {
        let shard = self.shard.borrow();
        let mut by_agent: HashMap<&str, Vec<&crate::store::sessions::SessionEntry>> =
            HashMap::new();
        for e in shard.list() {
            by_agent.entry(e.agent_id.as_str()).or_default().push(e);
        }
        let mut d = SessionDigest::default();
        for (agent, mut rows) in by_agent {
            d.counts.insert(agent.to_string(), rows.len());
            let newest_first =
                |a: &&crate::store::sessions::SessionEntry,
                 b: &&crate::store::sessions::SessionEntry| {
                    b.updated_at_ms
                        .cmp(&a.updated_at_ms)
                        .then_with(|| a.key.cmp(&b.key))
                };
            if rows.len() > DIGEST_RECENT {
                rows.select_nth_unstable_by(DIGEST_RECENT - 1, newest_first);
                rows.truncate(DIGEST_RECENT);
            }
            rows.sort_by(newest_first);
            d.recent.extend(rows.iter().map(|e| e.summary()));
        }
        d
    }
}

fn store_err(e: std::io::Error) -> ErrorShape {
    ErrorShape::new(UNAVAILABLE, format!("session store error: {e}")).retry_after(1000)
}

/// Longest a reply waits for its session row to reach the on-disk index. The request's
/// connection reads nothing else meanwhile, so this stays well inside the 25 s pong window.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// Start the next index write if staged rows wait for one and none is in flight; the task
/// that awaits it reports the outcome, wakes [`persisted`] waiters and starts the next.
pub fn kick_index(core: &Rc<Core>) {
    let started = core.sessions.shard.borrow_mut().start_index_write();
    match started {
        IndexWrite::Idle => {}
        IndexWrite::Finished => core.sessions.wake_index_waiters(),
        IndexWrite::Queued(gen, slot) => {
            let core = core.clone();
            monoio::spawn(async move {
                let outcome = slot.wait().await;
                core.sessions.pump_store();
                core.sessions
                    .shard
                    .borrow_mut()
                    .index_write_done(gen, outcome);
                core.sessions.wake_index_waiters();
                kick_index(&core);
            });
        }
    }
}

/// Wait (bounded) until `key`'s latest change is in the on-disk index. The core keeps
/// serving meanwhile; changes of other sessions made while one write is in flight share
/// the next write.
pub async fn persisted(core: &Rc<Core>, key: &str) -> Result<(), ErrorShape> {
    let state = core.sessions.shard.borrow().durability(key);
    if state == Durability::Durable {
        return Ok(());
    }
    kick_index(core);
    let wait = std::future::poll_fn(|cx| match core.sessions.shard.borrow().durability(key) {
        Durability::Durable => std::task::Poll::Ready(Ok(())),
        Durability::Failed(msg) => std::task::Poll::Ready(Err(ErrorShape::new(
            UNAVAILABLE,
            format!("session store error: {msg}"),
        )
        .retry_after(1000))),
        Durability::Pending => {
            core.sessions
                .index_waiters
                .borrow_mut()
                .push(cx.waker().clone());
            std::task::Poll::Pending
        }
    });
    match monoio::time::timeout(STORE_WAIT, wait).await {
        Ok(r) => r,
        Err(_) => Err(ErrorShape::new(
            UNAVAILABLE,
            "session store is not keeping up (disk too slow); retry",
        )
        .retry_after(5000)),
    }
}

/// Execute an op on the owner core.
pub async fn exec(core: &Rc<Core>, op: SessionOp) -> OpReply {
    let owner = &core.sessions;
    match op {
        SessionOp::Send {
            key,
            message,
            idem,
            agent_style,
            deadline,
        } => OpReply::Value(send(core, key, message, idem, agent_style, deadline).await),
        SessionOp::Abort { key, run_id } => {
            OpReply::Value(Ok(abort(core, &key, run_id.as_deref())))
        }
        SessionOp::History {
            key,
            requested,
            limit,
            max_chars,
            max_bytes,
        } => {
            let shard = owner.shard.borrow();
            let mut msgs = match shard.history(&key, limit.saturating_add(1)) {
                Ok(m) => m,
                Err(e) => return OpReply::History(Err(store_err(e)), None),
            };
            let row = shard.get(&key);
            let total = row.map(|e| e.message_count).unwrap_or(0);
            let summary = row.map(|e| Box::new(e.summary()));
            let read = msgs.len();
            let start = read.saturating_sub(limit);
            let (wire, kept_all) = history_page(msgs.split_off(start), max_chars, max_bytes);
            let has_more = !kept_all || start > 0 || (read as u64) < total.min(limit as u64);
            let agent_id = crate::store::sessions::agent_of(&key).to_string();
            let is_main = key.ends_with(":main");
            OpReply::History(
                Ok(json!({
                    "sessionKey": requested,
                    "messages": wire,
                    "pendingInputs": {"items": [], "total": 0},
                    "hasMore": has_more,
                    "totalMessages": total,
                    "defaults": {"modelProvider": "clawgate", "model": "offline"},
                    "sessionInfo": {"key": key, "kind": "direct", "classification": if is_main {"main"} else {"direct"}, "agentId": agent_id, "isMain": is_main, "isBackground": false},
                })),
                summary,
            )
        }
        SessionOp::Preview {
            key,
            requested,
            limit,
            max_chars,
        } => {
            let shard = owner.shard.borrow();
            let items: Vec<Value> = match shard.history(&key, limit) {
                Ok(m) => m
                    .iter()
                    .map(|m| json!({"role": m.role, "text": m.text.chars().take(max_chars).collect::<String>()}))
                    .collect(),
                Err(e) => return OpReply::Value(Err(store_err(e))),
            };
            let status = if shard.get(&key).is_some() {
                "ok"
            } else {
                "missing"
            };
            OpReply::Value(Ok(
                json!({"key": requested, "status": status, "items": items}),
            ))
        }
        SessionOp::Patch { key, patch } => {
            // A client editing what it saw (`sessions archive` sends this): refuse if the
            // session was reset or replaced since.
            if let Some(expected) = patch.get("expectedSessionId").and_then(Value::as_str) {
                let current = owner.shard.borrow().get(&key).map(|e| e.session_id.clone());
                if current.is_some_and(|c| c != expected) {
                    return OpReply::Value(Err(ErrorShape::invalid(format!(
                        "session {key} changed (expectedSessionId does not match); reload and retry"
                    ))));
                }
            }
            if patch.get("archived") == Some(&Value::Bool(true))
                && crate::store::sessions::rest_of(&key) == crate::store::sessions::MAIN
            {
                return OpReply::Value(Err(ErrorShape::invalid(
                    "Cannot archive an agent's main session.",
                )));
            }
            let r = owner
                .shard
                .borrow_mut()
                .patch(&key, &patch, now_ms())
                .map(|e| entry_json(core, e));
            if r.is_ok() {
                if let Err(e) = persisted(core, &key).await {
                    return OpReply::Value(Err(e));
                }
            }
            match r {
                Ok((entry, resolved)) => {
                    sessions_changed(core, &key, "patch");
                    OpReply::Value(Ok(
                        json!({"ok": true, "key": key, "entry": entry, "resolved": resolved}),
                    ))
                }
                Err(e) => OpReply::Value(Err(ErrorShape::invalid(format!(
                    "invalid sessions.patch params: {e}"
                )))),
            }
        }
        SessionOp::Reset { key } => {
            abort(core, &key, None);
            let r = owner
                .shard
                .borrow_mut()
                .reset(&key, now_ms())
                .map(|e| entry_json(core, e));
            if r.is_ok() {
                if let Err(e) = persisted(core, &key).await {
                    return OpReply::Value(Err(e));
                }
            }
            match r {
                Ok((entry, resolved)) => {
                    sessions_changed(core, &key, "reset");
                    OpReply::Value(Ok(
                        json!({"ok": true, "key": key, "entry": entry, "resolved": resolved}),
                    ))
                }
                Err(e) => OpReply::Value(Err(store_err(e))),
            }
        }
        SessionOp::Delete {
            key,
            delete_transcript,
        } => {
            abort(core, &key, None);
            let r = owner
                .shard
                .borrow_mut()
                .delete(&key, delete_transcript, now_ms());
            if let Ok(Some(_)) = r {
                if let Err(e) = persisted(core, &key).await {
                    return OpReply::Value(Err(e));
                }
            }
            match r {
                Ok(gone) => {
                    let deleted = gone.is_some();
                    if deleted {
                        sessions_changed(core, &key, "delete");
                    }
                    let archived: Vec<String> = gone
                        .flatten()
                        .map(|p| p.display().to_string())
                        .into_iter()
                        .collect();
                    OpReply::Value(Ok(json!({
                        "ok": true,
                        "key": key,
                        "deleted": deleted,
                        "archived": archived,
                    })))
                }
                Err(e) => OpReply::Value(Err(store_err(e))),
            }
        }
        SessionOp::List => OpReply::Summaries(owner.summaries()),
        SessionOp::Describe { key } => OpReply::Summaries(
            owner
                .shard
                .borrow()
                .get(&key)
                .map(|e| e.summary())
                .into_iter()
                .collect(),
        ),
        SessionOp::Wait { run_id, timeout_ms } => {
            let run = owner.runs.borrow().get(&run_id).cloned();
            let Some(run) = run else {
                return OpReply::NotHere;
            };
            let waited =
                monoio::time::timeout(Duration::from_millis(timeout_ms), wait_run(run.clone()))
                    .await;
            let mut v = run.outcome(&run_id);
            if waited.is_err() {
                v["status"] = json!("timeout");
            }
            v["summary"] = json!(run.summary.borrow().clone());
            // For `agent`'s final answer (`result.meta`); `agent.wait` strips it.
            let mut meta = json!({"sessionId": run.session_id});
            if run.notice.is_some() {
                meta["isStatusNotice"] = json!(true);
            }
            if let Some((provider, model)) = run.target.borrow().as_ref() {
                meta["provider"] = json!(provider);
                meta["model"] = json!(model);
            }
            let ended = if run.finished() {
                run.ended_at.get()
            } else {
                now_ms()
            };
            let started = run.started_at.get();
            let duration = if started > 0 {
                ended.saturating_sub(started).max(0)
            } else {
                0
            };
            v[AGENT_META] = json!({"durationMs": duration, "agentMeta": meta});
            OpReply::Value(Ok(v))
        }
    }
}

/// The real gateway's per-message bound on `chat.history` (larger ones are replaced).
const HISTORY_MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// The placeholder it puts in their place.
const HISTORY_OVERSIZED: &str = "[chat.history omitted: message too large]";

/// `chat.history`'s messages, newest kept: texts cut to `max_chars` (with the real
/// gateway's "…(truncated)…" marker), a message still over 128 KiB replaced by its
/// placeholder, and the oldest left out once the page passes `max_bytes`. Returns the page
/// and whether every message made it in.
fn history_page(
    msgs: Vec<TranscriptMessage>,
    max_chars: usize,
    max_bytes: usize,
) -> (Vec<Value>, bool) {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for mut m in msgs.into_iter().rev() {
        if let Some((cut, _)) = m.text.char_indices().nth(max_chars) {
            m.text.truncate(cut);
            m.text.push_str("\n...(truncated)...");
        }
        let mut wire = m.to_wire();
        let mut size = serde_json::to_string(&wire).map_or(usize::MAX, |j| j.len());
        if size > HISTORY_MAX_MESSAGE_BYTES {
            m.text = HISTORY_OVERSIZED.to_string();
            wire = m.to_wire();
            size = serde_json::to_string(&wire).map_or(usize::MAX, |j| j.len());
        }
        if bytes.saturating_add(size) > max_bytes {
            page.reverse();
            return (page, false);
        }
        bytes += size;
        page.push(wire);
    }
    page.reverse();
    (page, true)
}

/// A session row as `sessions.patch`/`sessions.reset` answer it: the real gateway's entry
/// shape (`updatedAt`, … — the TUI reads those) and the model it resolves to.
fn entry_json(core: &Core, e: &crate::store::sessions::SessionEntry) -> (Value, Value) {
    let resolved = match agents::resolve_model(&core.shared.config, e.model.as_deref()) {
        Ok(t) => json!({"modelProvider": t.provider, "model": t.model}),
        Err(_) => json!({}),
    };
    (e.to_wire(), resolved)
}

async fn wait_run(run: Rc<Run>) {
    std::future::poll_fn(|cx| {
        if run.finished() {
            std::task::Poll::Ready(())
        } else {
            run.waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
    .await
}

fn sessions_changed(core: &Core, key: &str, reason: &str) {
    let agent = crate::store::sessions::agent_of(key);
    core.publish(
        "sessions.changed",
        &json!({"sessionKey": key, "agentId": agent, "reason": reason}),
        None,
        // Only to connections that called `sessions.subscribe` (which needs operator.read).
        Some(scopes::SESSION_EVENTS),
        true,
    );
}

/// `chat.send` / `agent` on the owner core. Everything up to the run's place in its lane
/// happens at once, in arrival order; the ack waits until the session's row is in the
/// on-disk index (a new or reset session), so an acknowledged message is never in a
/// transcript the index does not know. If that write fails the run is aborted before it
/// starts and the send fails (the same error for a retry with this idempotency key).
async fn send(
    core: &Rc<Core>,
    key: String,
    message: String,
    idem: String,
    agent_style: bool,
    deadline: Option<Duration>,
) -> Result<Value, ErrorShape> {
    if let Some(prev) = core.sessions.dedupe_get(&idem) {
        let ack = prev?;
        // The first send of this key may still be waiting for its row: the retry is
        // answered no earlier. Only the first send acts on a failure.
        if core.sessions.unacked.borrow().contains(&idem) {
            persisted(core, &key).await?;
        }
        return Ok(ack);
    }
    let sent = send_now(core, &key, message, &idem, agent_style, deadline)?;
    let (ack, start_lane) = (sent.ack, sent.starts_lane);
    core.sessions.unacked.borrow_mut().insert(idem.clone());
    let durable = persisted(core, &key).await;
    core.sessions.unacked.borrow_mut().remove(&idem);
    if durable.is_ok() {
        // Announced once the row is on disk, like the RPC reset/patch/delete paths: no
        // client hears of a session that a crash now would not bring back.
        if sent.reset {
            sessions_changed(core, &key, "reset");
        }
        if sent.created {
            sessions_changed(core, &key, "created");
        }
    }
    if let Err(e) = &durable {
        let run = core.sessions.runs.borrow().get(&idem).cloned();
        if let Some(run) = run {
            if !run.finished() && run.status.get() == RunStatus::Queued {
                run.abort.abort();
            }
        }
        core.sessions.dedupe_put(&idem, Err(e.clone()));
    }
    if start_lane {
        // Spawned only now, so the run's first event is published after this ack leaves
        // (a local caller writes it before the lane task is first polled).
        monoio::spawn(drive_lane(core.clone(), key));
    }
    durable.map(|()| ack)
}

/// What [`send_now`] did.
struct Sent {
    ack: Value,
    /// This run is first in its lane (the caller starts the lane task).
    starts_lane: bool,
    /// The session was reset before this turn (trigger or reset policy).
    reset: bool,
    /// The session row was created by this turn.
    created: bool,
}

/// The synchronous part of [`send`].
fn send_now(
    core: &Rc<Core>,
    key: &str,
    message: String,
    idem: &str,
    agent_style: bool,
    deadline: Option<Duration>,
) -> Result<Sent, ErrorShape> {
    let owner = &core.sessions;
    let key = key.to_string();
    let idem = idem.to_string();
    // Budget: a session's lane holds a bounded number of runs; past it the send is refused
    // (not acknowledged, nothing written), so nothing accepted is ever dropped.
    let queued = owner.lanes.borrow().get(&key).map_or(0, |l| l.len());
    if queued >= MAX_RUNS_PER_LANE {
        return Err(ErrorShape::new(
            UNAVAILABLE,
            format!("session {key} already has {queued} runs queued; retry when one ends"),
        )
        .retry_after(1000));
    }
    // And this core's lanes together (each queued run holds its message until it starts),
    // by count and by bytes.
    let on_core: usize = owner.lanes.borrow().values().map(VecDeque::len).sum();
    let bytes = owner.queued_bytes.get();
    if on_core >= MAX_RUNS_PER_CORE || (bytes > 0 && bytes + message.len() > MAX_QUEUED_BYTES) {
        return Err(ErrorShape::new(
            UNAVAILABLE,
            format!("{on_core} runs are queued on this gateway core; retry when some end"),
        )
        .retry_after(1000));
    }
    let now = now_ms();
    // Reset policy: an explicit trigger (`/new`, `/reset`) or an expired daily/idle window
    // starts a fresh session id before this turn.
    let trigger = owner.policy.trigger(&message).map(str::to_string);
    let reset_now = trigger.is_some()
        || owner.shard.borrow().get(&key).is_some_and(|e| {
            owner.policy.reset_due(
                &key,
                e.session_started_at_ms.unwrap_or(e.created_at_ms),
                e.last_interaction_at_ms,
                now,
            )
        });
    // `/new hello` starts the fresh session with "hello" (as OpenClaw does); a bare trigger
    // is answered with a status notice instead of a model turn.
    let notice = match trigger.as_deref() {
        Some("") if message.trim_start().to_lowercase().starts_with("/reset") => {
            Some("✅ Session reset.")
        }
        Some("") => Some("✅ New session started."),
        _ => None,
    };
    let message = match trigger {
        Some(rest) if !rest.is_empty() => rest,
        _ => message,
    };
    let reset = reset_now && owner.shard.borrow().get(&key).is_some();
    if reset {
        // Runs of the old session stop (as `sessions.reset` does): their replies would
        // belong to a transcript that is no longer the session's.
        abort(core, &key, None);
        owner
            .shard
            .borrow_mut()
            .reset(&key, now)
            .map_err(store_err)?;
    }
    let (created, session_id) = {
        let mut shard = owner.shard.borrow_mut();
        let existed = shard.get(&key).is_some();
        shard.ensure(&key, now).map_err(store_err)?;
        let msg = TranscriptMessage {
            id: crate::auth::token::uuid_v4(),
            role: "user".into(),
            text: message.clone(),
            ts: now,
            run_id: Some(idem.clone()),
            stop_reason: None,
            error: None,
            usage: None,
        };
        // Durable before acknowledged: the append is written before the ack goes out. A
        // bare reset command is not a turn: the fresh session starts empty.
        if notice.is_none() {
            shard.append(&key, &msg, now).map_err(store_err)?;
        }
        let session_id = shard.get(&key).map(|e| e.session_id.clone());
        (!existed, session_id.unwrap_or_default())
    };
    owner
        .queued_bytes
        .set(owner.queued_bytes.get() + message.len());
    let run = Rc::new(Run {
        key: key.clone(),
        session_id,
        message: RefCell::new(message),
        abort: Abort::new(),
        status: Cell::new(RunStatus::Queued),
        started_at: Cell::new(0),
        ended_at: Cell::new(0),
        summary: RefCell::new(String::new()),
        error: RefCell::new(None),
        waiters: RefCell::new(Vec::new()),
        agent_seq: Cell::new(0),
        deadline,
        target: RefCell::new(None),
        notice,
    });
    owner.remember_run(&idem, run.clone());
    let ahead = {
        let mut lanes = owner.lanes.borrow_mut();
        let lane = lanes.entry(key.clone()).or_default();
        lane.push_back(idem.clone());
        lane.len() - 1
    };
    if ahead > 0 {
        // Queued behind this session's current run: every client sees it waiting.
        announce_queued(
            core,
            &idem,
            &run,
            json!({"phase": "queued", "ahead": ahead}),
        );
    }
    let agent_id = crate::store::sessions::agent_of(&key).to_string();
    let ack = if agent_style {
        json!({"runId": idem, "agentId": agent_id, "status": "accepted", "acceptedAt": now})
    } else {
        json!({"runId": idem, "status": "started"})
    };
    owner.dedupe_put(&idem, Ok(ack.clone()));
    Ok(Sent {
        ack,
        starts_lane: ahead == 0,
        reset,
        created,
    })
}

fn abort(core: &Core, key: &str, run_id: Option<&str>) -> Value {
    let owner = &core.sessions;
    let mut ids = Vec::new();
    let lane: Vec<String> = owner
        .lanes
        .borrow()
        .get(key)
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default();
    for id in lane {
        if run_id.is_some_and(|r| r != id) {
            continue;
        }
        if let Some(run) = owner.runs.borrow().get(&id) {
            if !run.finished() {
                run.abort.abort();
                ids.push(id.clone());
            }
        }
    }
    json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids})
}

/// Run the session's queued runs one after another.
async fn drive_lane(core: Rc<Core>, key: String) {
    loop {
        let next = core
            .sessions
            .lanes
            .borrow()
            .get(&key)
            .and_then(|l| l.front().cloned());
        let Some(run_id) = next else { break };
        // Events only after the send's ack: a new session's row must be on disk first (a
        // failure there aborts the run in `send`; a later change of the row only delays).
        let _ = persisted(&core, &key).await;
        let run = core.sessions.runs.borrow().get(&run_id).cloned();
        if let Some(run) = run {
            if !core.sessions.is_current(&run) {
                run.abort.abort();
            }
            if run.abort.is_aborted() {
                report_aborted_before_start(&core, &run_id, &run);
            } else {
                // Wait for a gateway-wide slot, but an abort while queued is reported at once:
                // the pending request then lives on in a task that hands the slot straight
                // back when core 0 grants it.
                let mut acquire = Box::pin(core.clone().acquire_run_slot());
                // A slot normally comes within one mesh round trip; a run still waiting after
                // SLOT_WAIT_ANNOUNCE is held by the gateway-wide cap and is announced.
                let first = monoio::select! {
                    s = &mut acquire => Some(Some(s)),
                    _ = run.abort.aborted() => Some(None),
                    _ = monoio::time::sleep(SLOT_WAIT_ANNOUNCE) => None,
                };
                let slot = match first {
                    Some(s) => s,
                    None => {
                        announce_queued(
                            &core,
                            &run_id,
                            &run,
                            json!({"phase": "queued", "reason": "maxConcurrent"}),
                        );
                        monoio::select! {
                            s = &mut acquire => Some(s),
                            _ = run.abort.aborted() => None,
                        }
                    }
                };
                match slot {
                    Some(_slot) => execute(&core, &run_id, &run).await,
                    None => {
                        monoio::spawn(async move { drop(acquire.await) });
                        report_aborted_before_start(&core, &run_id, &run);
                    }
                }
            }
        }
        let mut lanes = core.sessions.lanes.borrow_mut();
        if let Some(l) = lanes.get_mut(&key) {
            l.pop_front();
            if l.is_empty() {
                lanes.remove(&key);
                break;
            }
        } else {
            break;
        }
    }
}

/// A run that has to wait: an `agent` lifecycle event on the run's next agent seq (the
/// run's own events continue after it).
fn announce_queued(core: &Core, run_id: &str, run: &Run, data: Value) {
    let seq = run.agent_seq.get() + 1;
    run.agent_seq.set(seq);
    emit_agent(core, run_id, &run.key, seq, "lifecycle", data);
}

/// A run aborted before it got to run: its one `aborted` event.
/// Take a run's message (once), releasing its bytes from the core's queued budget.
fn take_message(owner: &SessionOwner, run: &Run) -> String {
    let m = std::mem::take(&mut *run.message.borrow_mut());
    owner
        .queued_bytes
        .set(owner.queued_bytes.get().saturating_sub(m.len()));
    m
}

fn report_aborted_before_start(core: &Core, run_id: &str, run: &Run) {
    drop(take_message(&core.sessions, run));
    run.started_at.set(now_ms());
    emit_chat(
        core,
        run_id,
        &run.key,
        1,
        json!({"state": "aborted", "stopReason": "aborted"}),
        false,
    );
    run.finish(RunStatus::Aborted);
}

fn emit_chat(core: &Core, run_id: &str, key: &str, seq: u64, extra: Value, droppable: bool) {
    let agent = crate::store::sessions::agent_of(key);
    let mut payload = json!({"runId": run_id, "sessionKey": key, "agentId": agent, "seq": seq});
    if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    core.publish("chat", &payload, None, Some(scopes::READ), droppable);
}

fn emit_agent(core: &Core, run_id: &str, key: &str, seq: u64, stream: &str, data: Value) {
    let agent = crate::store::sessions::agent_of(key);
    let payload = json!({"runId": run_id, "seq": seq, "stream": stream, "ts": now_ms(), "data": data, "sessionKey": key, "agentId": agent, "isHeartbeat": false});
    core.publish(
        "agent",
        &payload,
        None,
        Some(scopes::READ),
        stream == "assistant",
    );
}

/// The conversation for run `run_id`: every user message up to and including this run's,
/// each followed by its own run's reply (replies are written when a run ends, so a message
/// queued behind a running turn sits before that turn's reply in the transcript). Later
/// queued messages, empty replies (failed/aborted runs) and a leading reply cut off by the
/// history window are left out.
fn prompt_for(history: &[TranscriptMessage], run_id: &str, message: &str) -> Vec<ChatMessage> {
    let replies: HashMap<&str, &TranscriptMessage> = history
        .iter()
        .filter(|m| m.role == "assistant" && !m.text.is_empty())
        .filter_map(|m| m.run_id.as_deref().map(|r| (r, m)))
        .collect();
    let msg = |role: &str, text: &str| ChatMessage {
        role: role.into(),
        text: text.into(),
    };
    let mut out: Vec<ChatMessage> = Vec::new();
    for m in history {
        match (m.role.as_str(), m.run_id.as_deref()) {
            ("user", Some(r)) if r == run_id => {
                out.push(msg("user", &m.text));
                return out;
            }
            ("user", r) => {
                out.push(msg("user", &m.text));
                if let Some(a) = r.and_then(|r| replies.get(r)) {
                    out.push(msg("assistant", &a.text));
                }
            }
            ("assistant", None) if !m.text.is_empty() && !out.is_empty() => {
                out.push(msg("assistant", &m.text));
            }
            _ => {}
        }
    }
    // This run's message fell outside the window (or was never written): ask it anyway.
    out.push(msg("user", message));
    out
}

/// Which part of a run's reply the next chat `delta` carries, and when.
#[derive(Default)]
struct DeltaThrottle {
    /// Bytes of the reply already sent in `delta` events.
    sent: Cell<usize>,
    /// When the last `delta` went out.
    last: Cell<Option<std::time::Instant>>,
}

impl DeltaThrottle {
    /// How long until a held-back tail of a `len`-byte reply may go out (a full window
    /// when nothing is held back).
    fn wait(&self, len: usize, at: std::time::Instant) -> Duration {
        match self.last.get() {
            Some(last) if len > self.sent.get() => (last + DELTA_THROTTLE)
                .saturating_duration_since(at)
                .max(Duration::from_millis(1)),
            _ => DELTA_THROTTLE,
        }
    }

    /// The unsent range of a `len`-byte reply if a `delta` may go out at `at` (always when
    /// `force`), marking it sent.
    fn take(
        &self,
        len: usize,
        force: bool,
        at: std::time::Instant,
    ) -> Option<std::ops::Range<usize>> {
        let from = self.sent.get();
        if len <= from {
            return None;
        }
        let open = match self.last.get() {
            Some(last) => at.saturating_duration_since(last) >= DELTA_THROTTLE,
            None => true,
        };
        if !(open || force) {
            return None;
        }
        self.sent.set(len);
        self.last.set(Some(at));
        Some(from..len)
    }
}

fn assistant_message(text: &str) -> Value {
    json!({"role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": now_ms()})
}

/// How a provider stream ended: `(stop_reason, usage)` or `(message, kind)`.
type RunOutcome = Result<(Option<String>, Option<Value>), (String, &'static str)>;

async fn execute(core: &Rc<Core>, run_id: &str, run: &Rc<Run>) {
    run.status.set(RunStatus::Running);
    run.started_at.set(now_ms());
    let key = run.key.clone();
    let chat_seq = Cell::new(0u64);
    let mut agent_seq = run.agent_seq.get();
    let next_chat = || {
        chat_seq.set(chat_seq.get() + 1);
        chat_seq.get()
    };
    agent_seq += 1;
    emit_agent(
        core,
        run_id,
        &key,
        agent_seq,
        "lifecycle",
        json!({"phase": "start"}),
    );

    if let Some(notice) = run.notice {
        answer_notice(core, run_id, run, &key, notice, next_chat(), agent_seq + 1);
        return;
    }
    let (history, model) = {
        let shard = core.sessions.shard.borrow();
        let h = shard.history(&key, 40).unwrap_or_default();
        (h, shard.get(&key).and_then(|e| e.model.clone()))
    };
    let message = take_message(&core.sessions, run);
    let messages = prompt_for(&history, run_id, &message);
    let target = match agents::resolve_model(&core.shared.config, model.as_deref()) {
        Ok(t) => {
            *run.target.borrow_mut() = Some((t.provider.clone(), t.model.clone()));
            t
        }
        Err(e) => {
            finish_error(
                core,
                run_id,
                run,
                &key,
                next_chat(),
                &e,
                "unknown",
                agent_seq + 1,
            );
            return;
        }
    };
    let text = RefCell::new(String::new());
    let deltas = DeltaThrottle::default();
    // Sends the text not yet in a `delta` event, at most once per DELTA_THROTTLE unless
    // `now` (the tail before the terminal event).
    let flush = |now: bool| {
        let t = text.borrow();
        if let Some(fresh) = deltas.take(t.len(), now, std::time::Instant::now()) {
            emit_chat(
                core,
                run_id,
                &key,
                next_chat(),
                json!({"state": "delta", "deltaText": &t[fresh], "message": assistant_message(&t)}),
                true,
            );
        }
    };
    let mut outcome: Option<RunOutcome> = None;
    let too_long = Cell::new(false);
    {
        let mut on = |ev: ProviderEvent| match ev {
            ProviderEvent::Delta(_) if too_long.get() => {}
            ProviderEvent::Delta(d) if text.borrow().len() + d.len() > MAX_REPLY_BYTES => {
                too_long.set(true);
                outcome = Some(Err((
                    format!("the reply exceeded {MAX_REPLY_BYTES} bytes"),
                    agents::error_kind::UNKNOWN,
                )));
            }
            ProviderEvent::Delta(d) => {
                text.borrow_mut().push_str(&d);
                flush(false);
                agent_seq += 1;
                emit_agent(
                    core,
                    run_id,
                    &key,
                    agent_seq,
                    "assistant",
                    json!({"text": &*text.borrow(), "delta": d}),
                );
            }
            ProviderEvent::Done { .. } | ProviderEvent::Error { .. } if too_long.get() => {}
            ProviderEvent::Done { stop_reason, usage } => outcome = Some(Ok((stop_reason, usage))),
            ProviderEvent::Error { message, kind } => outcome = Some(Err((message, kind))),
        };
        let reply = agents::stream_reply(&target, &messages, RUN_TIMEOUT, &run.abort, &mut on);
        // Whole-run deadline: the request's, else `agents.defaults.timeoutSeconds` (an
        // upstream trickling keep-alives would otherwise hold the run and its slot forever).
        let d = run
            .deadline
            .unwrap_or(Duration::from_secs(core.shared.config.run_timeout_secs));
        // The provider keeps calling `on` until it ends; a reply past the cap stops it here.
        let capped = std::future::poll_fn(|_| {
            if too_long.get() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        // A tail held back by the throttle goes out once its window ends, even if the
        // provider goes quiet (the real gateway only flushes it before `final`).
        let trailing = async {
            loop {
                let wait = deltas.wait(text.borrow().len(), std::time::Instant::now());
                monoio::time::sleep(wait).await;
                flush(false);
            }
        };
        let timed_out = monoio::select! {
            r = monoio::time::timeout(d, reply) => r.is_err(),
            () = capped => false,
            () = trailing => false,
        };
        if timed_out {
            outcome = Some(Err((
                format!("agent run timed out after {} ms", d.as_millis()),
                agents::error_kind::TIMEOUT,
            )));
        }
    }
    if !run.abort.is_aborted() {
        flush(true);
    }
    let text = text.into_inner();
    *run.summary.borrow_mut() = text.clone();
    let now = now_ms();
    let append = |stop: &str, err: Option<String>, usage: Option<Value>| {
        let msg = TranscriptMessage {
            id: crate::auth::token::uuid_v4(),
            role: "assistant".into(),
            text: text.clone(),
            ts: now,
            run_id: Some(run_id.to_string()),
            stop_reason: Some(stop.to_string()),
            error: err,
            usage,
        };
        // Deleted, reset or pruned while the run streamed: the reply belongs to a
        // transcript that is gone; appending would bring the session back under a new id.
        if !core.sessions.is_current(run) {
            return;
        }
        let mut shard = core.sessions.shard.borrow_mut();
        if let Err(e) = shard.append(&key, &msg, now) {
            tracing::error!(message = "Transcript append failed.", error = %e);
        }
    };
    if run.abort.is_aborted() {
        append("aborted", None, None);
        let s = next_chat();
        emit_chat(
            core,
            run_id,
            &key,
            s,
            json!({"state": "aborted", "message": assistant_message(&text), "stopReason": "aborted"}),
            false,
        );
        emit_agent(
            core,
            run_id,
            &key,
            agent_seq + 1,
            "lifecycle",
            json!({"phase": "end", "aborted": true}),
        );
        *run.error.borrow_mut() = Some("aborted".into());
        run.finish(RunStatus::Aborted);
        return;
    }
    match outcome {
        Some(Ok((stop, usage))) => {
            let stop = stop.unwrap_or_else(|| "stop".into());
            append(&stop, None, usage.clone());
            let s = next_chat();
            let mut fin =
                json!({"state": "final", "message": assistant_message(&text), "stopReason": stop});
            if let Some(u) = usage {
                fin["usage"] = u;
            }
            emit_chat(core, run_id, &key, s, fin, false);
            emit_agent(
                core,
                run_id,
                &key,
                agent_seq + 1,
                "lifecycle",
                json!({"phase": "end"}),
            );
            run.finish(RunStatus::Ok);
        }
        Some(Err((message, kind))) => {
            let s = next_chat();
            finish_error(core, run_id, run, &key, s, &message, kind, agent_seq + 1);
        }
        None => {
            let s = next_chat();
            finish_error(
                core,
                run_id,
                run,
                &key,
                s,
                "provider ended without a result",
                "unknown",
                agent_seq + 1,
            );
        }
    }
}

/// A bare `/new` or `/reset`: the status notice is the run's whole reply (not stored in
/// the fresh transcript, as it is not a model turn).
fn answer_notice(
    core: &Core,
    run_id: &str,
    run: &Run,
    key: &str,
    notice: &str,
    chat_seq: u64,
    agent_seq: u64,
) {
    drop(take_message(&core.sessions, run));
    *run.summary.borrow_mut() = notice.to_string();
    emit_chat(
        core,
        run_id,
        key,
        chat_seq,
        json!({"state": "final", "message": assistant_message(notice), "stopReason": "stop"}),
        false,
    );
    emit_agent(
        core,
        run_id,
        key,
        agent_seq,
        "lifecycle",
        json!({"phase": "end"}),
    );
    run.finish(RunStatus::Ok);
}

#[allow(clippy::too_many_arguments)]
fn finish_error(
    core: &Core,
    run_id: &str,
    run: &Run,
    key: &str,
    chat_seq: u64,
    message: &str,
    kind: &str,
    agent_seq: u64,
) {
    emit_agent(
        core,
        run_id,
        key,
        agent_seq,
        "lifecycle",
        json!({"phase": "error", "error": message}),
    );
    emit_chat(
        core,
        run_id,
        key,
        chat_seq,
        json!({"state": "error", "errorMessage": message, "errorKind": kind}),
        false,
    );
    *run.error.borrow_mut() = Some(message.to_string());
    let timed_out = kind == agents::error_kind::TIMEOUT;
    // A timed-out run's summary stays its partial reply (`agent` answers it as a result);
    // a failed run's is the error.
    if run.summary.borrow().is_empty() && !timed_out {
        *run.summary.borrow_mut() = message.to_string();
    }
    run.finish(if timed_out {
        RunStatus::TimedOut
    } else {
        RunStatus::Error
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, text: &str, run: &str) -> TranscriptMessage {
        TranscriptMessage {
            id: format!("{role}-{run}"),
            role: role.into(),
            text: text.into(),
            ts: 0,
            run_id: Some(run.into()),
            stop_reason: None,
            error: None,
            usage: None,
        }
    }

    #[test]
    fn history_pages_cut_texts_replace_giants_and_keep_the_newest_under_the_byte_cap() {
        let h = vec![
            m("user", "old", "r1"),
            m("assistant", &"é".repeat(20), "r1"),
            m("user", &"x".repeat(200 * 1024), "r2"),
            m("assistant", "newest", "r2"),
        ];
        let (page, all) = history_page(h.clone(), 10, usize::MAX);
        assert!(all);
        let texts: Vec<&str> = page
            .iter()
            .map(|w| w["content"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts[0], "old");
        assert_eq!(texts[1], format!("{}\n...(truncated)...", "é".repeat(10)));
        assert_eq!(texts[3], "newest");
        // A text cut to its chars can still be a giant when maxChars is large: replaced.
        let (page, _) = history_page(h.clone(), usize::MAX, usize::MAX);
        assert_eq!(page[2]["content"][0]["text"], HISTORY_OVERSIZED);
        // The byte cap keeps the newest and reports that some were left out.
        let one = serde_json::to_string(&page[3]).unwrap().len();
        let (page, all) = history_page(h.clone(), usize::MAX, one);
        assert!(!all);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["content"][0]["text"], "newest");
    }

    #[test]
    fn each_core_prunes_its_share_of_the_gateway_wide_excess() {
        // Under the cap: nothing, however unevenly the shards hold the sessions.
        assert_eq!(cap_share(640, 4260, 5000), 0);
        // 5100 against 5000: the core holding 60% prunes 60 of the 100.
        assert_eq!(cap_share(3060, 2040, 5000), 60);
        assert_eq!(cap_share(2040, 3060, 5000), 40);
        // Small caps are not exceeded by rounding (3 over 2 cores holding 2 + 2).
        assert_eq!(cap_share(2, 2, 3), 1);
        assert_eq!(cap_share(0, 10, 3), 0);
        assert_eq!(cap_share(5, 0, 0), 5);
    }

    fn roles_texts(v: &[ChatMessage]) -> Vec<(String, String)> {
        v.iter().map(|c| (c.role.clone(), c.text.clone())).collect()
    }

    #[test]
    fn a_queued_turn_sees_earlier_turns_in_order_and_nothing_after_it() {
        // u2 and u3 were sent while run 1 streamed: the transcript is u1 u2 u3 a1 (a2 …).
        let h = vec![
            m("user", "u1", "r1"),
            m("user", "u2", "r2"),
            m("user", "u3", "r3"),
            m("assistant", "a1", "r1"),
        ];
        let p = prompt_for(&h, "r2", "u2");
        let want: Vec<(String, String)> = [("user", "u1"), ("assistant", "a1"), ("user", "u2")]
            .iter()
            .map(|(r, t)| (r.to_string(), t.to_string()))
            .collect();
        assert_eq!(roles_texts(&p), want);
        // A failed run's empty reply and a reply cut off by the window are left out.
        let h = vec![
            m("assistant", "a0", "r0"),
            m("user", "u1", "r1"),
            m("assistant", "", "r1"),
            m("user", "u2", "r2"),
        ];
        let p = prompt_for(&h, "r2", "u2");
        assert_eq!(p.first().map(|c| c.role.as_str()), Some("user"));
        assert_eq!(p.len(), 2);
        // Not in the window: the run's own message is still asked.
        let p = prompt_for(&[], "r9", "hello");
        assert_eq!(
            roles_texts(&p),
            vec![("user".to_string(), "hello".to_string())]
        );
    }
}
