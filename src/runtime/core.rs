//! `Core`: everything one worker thread owns, and the messages cores exchange.
//!
//! Owns: this core's connections (outboxes + authority), its pre-auth budget per IP, its
//! replicas of gateway-wide state (paired devices, presence). Core 0 is the owner of
//! gateway-wide state: it applies changes, persists them, and sends the result to every core.
//! Must not touch: another core's memory (only [`MeshMsg`]s cross threads).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::backlog::{Backlog, Coalesce, Pending, LANE_BUDGET_BYTES};
use super::mesh::Mesh;
use super::reply::ReplySlot;
use crate::auth::scopes;
use crate::config::{AuthMode, Config};
use crate::methods::system::SessionSummary;
use crate::protocol::frames::{encode_event_body, encode_event_body_raw};
use crate::state::sessions::SessionDigest;
use crate::store::commit::{Durability, Generations};
use crate::store::devices::{DeviceRegistry, PairedDevice, PairingRequest};
use crate::transport::outbox::{Budget, Outbox, Push};

/// Resolved shared-secret settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Effective mode.
    pub mode: AuthMode,
    /// The shared secret for token/password modes.
    pub secret: Option<String>,
}

/// Options fixed at start.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker count.
    pub workers: usize,
    /// Mount the test-only `/__echo` WebSocket endpoint.
    pub ws_echo: bool,
    /// Time allowed from TCP accept to `hello-ok`.
    pub handshake_timeout_ms: u64,
    /// Unauthenticated sockets allowed per client IP (gateway-wide; split across cores).
    pub preauth_per_ip: usize,
    /// Unauthenticated sockets allowed in total.
    pub preauth_global: usize,
    /// `tick` interval.
    pub tick_interval_ms: u64,
    /// Pong window after a server ping.
    pub pong_timeout_ms: u64,
    /// Core 0 publishes a `health` event (and bumps `stateVersion.health`) this often.
    pub health_interval_ms: u64,
    /// Per-connection write budget.
    pub budget: Budget,
    /// Test-only: every store-thread batch waits this long first (a slow disk).
    pub store_delay_ms: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            ws_echo: false,
            handshake_timeout_ms: 15_000,
            preauth_per_ip: 32,
            preauth_global: 4096,
            tick_interval_ms: 30_000,
            pong_timeout_ms: 25_000,
            health_interval_ms: 60_000,
            budget: Budget::default(),
            store_delay_ms: 0,
        }
    }
}

/// Read-mostly state shared by all cores (immutable after start, or atomics).
pub struct Shared {
    /// Loaded configuration.
    pub config: Arc<Config>,
    /// Shared-secret settings.
    pub auth: AuthSettings,
    /// Start options.
    pub opts: RunOptions,
    /// The core mesh.
    pub mesh: Arc<Mesh<MeshMsg>>,
    /// Workers currently accepting (readiness = all of them).
    pub accepting: AtomicUsize,
    /// Unauthenticated sockets gateway-wide.
    pub preauth_total: AtomicUsize,
    /// Set once shutdown starts.
    pub shutting_down: AtomicBool,
    /// Monotonic start.
    pub started: Instant,
    /// Wall-clock start (ms).
    pub started_at_ms: i64,
    /// This gateway's instance id (presence).
    pub instance_id: String,
    /// Host name (presence).
    pub host: String,
    /// `gateway.trustedProxies`, parsed once.
    pub trusted_proxies: crate::transport::proxy::TrustedProxies,
}

impl Shared {
    /// Milliseconds since start.
    pub fn uptime_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
    /// Ready when every worker accepts and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::Acquire) >= self.opts.workers
            && !self.shutting_down.load(Ordering::Acquire)
    }
}

/// Mask bit every authenticated operator has (events without a scope requirement).
const SCOPE_ANY: u16 = 1 << 15;

/// Wall clock in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A serialized event on its way to every matching socket.
pub struct Broadcast {
    /// Event body without `seq` (see `protocol::frames::encode_event_body`).
    pub body: Vec<u8>,
    /// Scope a recipient needs (`None` = any authenticated operator).
    pub scope: Option<&'static str>,
    /// May be skipped for a slow client.
    pub droppable: bool,
}

/// The presence list as last published by core 0.
#[derive(Debug, Clone, Default)]
pub struct PresenceSnap {
    /// `stateVersion.presence`.
    pub version: u64,
    /// The entries (the gateway's own first) serialized once as a JSON array: `hello-ok`
    /// snapshots, `system-presence` answers and `presence` broadcasts copy these bytes.
    pub json: Vec<u8>,
}

/// Tags that keep the coalescing keys of different message kinds apart.
const KEY_DEVICE: u128 = 1 << 120;
const KEY_PRESENCE_CONN: u128 = 2 << 120;
const KEY_PRESENCE_SNAPSHOT: u128 = 3 << 120;
const KEY_HEALTH_VERSION: u128 = 4 << 120;
const KEY_SESSION_DIGEST: u128 = 5 << 120;

/// A device id's coalescing key: its first 120 bits (ids are hex SHA-256), else a hash.
fn device_key(id: &str) -> u128 {
    let bits = id
        .get(..30)
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| u128::from(crate::store::sessions::fnv1a64(id.as_bytes())));
    KEY_DEVICE | bits
}

fn presence_conn_key((core, conn): (usize, u64)) -> u128 {
    KEY_PRESENCE_CONN | (core as u128) << 64 | u128::from(conn)
}

impl Pending for MeshMsg {
    fn cost(&self) -> usize {
        // Estimates of what each holds; broadcasts dominate and are measured exactly.
        64 + match self {
            MeshMsg::Broadcast(b) => b.body.len(),
            MeshMsg::PresenceSnapshot(s) => s.json.len(),
            MeshMsg::DeviceUpsert(_) | MeshMsg::Pair(..) => 1024,
            MeshMsg::PresenceJoin(..) | MeshMsg::SessionOp(..) => 2048,
            MeshMsg::SessionDigest(_, d) => 256 * (d.recent.len() + d.counts.len()),
            MeshMsg::PresenceLeave(_)
            | MeshMsg::HealthVersion(_)
            | MeshMsg::RunSlotAcquire(_)
            | MeshMsg::RunSlotRelease
            | MeshMsg::Shutdown => 0,
        }
    }

    fn coalesce(&self) -> Coalesce {
        match self {
            MeshMsg::DeviceUpsert(d) => Coalesce::Replaces(device_key(&d.device_id)),
            // Explicit `system-event` rows are each broadcast: never merged.
            MeshMsg::PresenceJoin(k, _) if k.0 != SYSTEM_EVENT_PRESENCE => {
                Coalesce::Replaces(presence_conn_key(*k))
            }
            MeshMsg::PresenceLeave(k) => Coalesce::Cancels(presence_conn_key(*k)),
            MeshMsg::PresenceSnapshot(_) => Coalesce::Replaces(KEY_PRESENCE_SNAPSHOT),
            MeshMsg::HealthVersion(_) => Coalesce::Replaces(KEY_HEALTH_VERSION),
            MeshMsg::SessionDigest(from, _) => {
                Coalesce::Replaces(KEY_SESSION_DIGEST | *from as u128)
            }
            _ => Coalesce::No,
        }
    }

    fn exempt(&self) -> bool {
        // Run-slot bookkeeping is bounded by the run caps (and a lost release would leak a
        // slot for good); coalesced replica updates and leaves are bounded by the number of
        // devices, connections and cores, and losing one would leave a replica wrong
        // until the next change.
        matches!(
            self,
            MeshMsg::RunSlotAcquire(_) | MeshMsg::RunSlotRelease | MeshMsg::Shutdown
        ) || !matches!(self.coalesce(), Coalesce::No)
    }
}

/// Outcome of a pairing/token request handled by core 0.
#[derive(Debug, Clone)]
pub enum PairOutcome {
    /// Paired (or upgraded) silently; the device token and its issue time.
    Approved {
        /// The new secret.
        token: String,
        /// Issue time.
        issued_at_ms: i64,
    },
    /// Persisting failed.
    Failed(String),
}

/// An owned pairing request (crosses cores).
#[derive(Debug, Clone)]
pub struct PairJob {
    /// Device id.
    pub device_id: String,
    /// Public key.
    pub public_key: String,
    /// Client id.
    pub client_id: String,
    /// Client mode.
    pub client_mode: String,
    /// Platform.
    pub platform: Option<String>,
    /// Device family.
    pub device_family: Option<String>,
    /// Role.
    pub role: String,
    /// Scopes.
    pub scopes: Vec<String>,
}

/// Messages between cores.
pub enum MeshMsg {
    /// Fan this event out to local sockets.
    Broadcast(Arc<Broadcast>),
    /// A device record changed (replica update).
    DeviceUpsert(Arc<PairedDevice>),
    /// To core 0: pair/upgrade a device and issue its token.
    Pair(Box<PairJob>, Arc<ReplySlot<PairOutcome>>),
    /// To core 0: a client joined presence.
    PresenceJoin((usize, u64), Value),
    /// To core 0: a client left presence.
    PresenceLeave((usize, u64)),
    /// New presence snapshot (replica update).
    PresenceSnapshot(Arc<PresenceSnap>),
    /// Core 0 published a `health` event with this `stateVersion.health` (replica update).
    HealthVersion(u64),
    /// Core `.0`'s sessions in brief changed (replica update for `health`/`status`).
    SessionDigest(usize, Arc<SessionDigest>),
    /// To a session's owner core: run this op and reply.
    SessionOp(
        Box<crate::state::sessions::SessionOp>,
        Arc<ReplySlot<crate::state::sessions::OpReply>>,
    ),
    /// To core 0: ask for one of the `agents.defaults.maxConcurrent` run slots; answered
    /// when one is free (FIFO).
    RunSlotAcquire(Arc<ReplySlot<()>>),
    /// To core 0: a run holding a slot ended.
    RunSlotRelease,
    /// Stop accepting and close every connection with 1001.
    Shutdown,
}

/// What an authenticated connection may do.
#[derive(Debug, Clone)]
pub struct Authority {
    /// `operator` or `node`.
    pub role: String,
    /// Effective scopes.
    pub scopes: Vec<String>,
}

/// One live connection as the core sees it.
pub struct ConnEntry {
    /// Its write queue.
    pub outbox: Rc<Outbox>,
    /// Set at hello-ok.
    pub authority: Option<Rc<Authority>>,
    /// `scopes::mask` of an operator's authority (0 for nodes and before hello-ok).
    pub scope_mask: u16,
    /// Last time a pong (or any frame) was received, ms since start.
    pub last_seen_ms: Rc<Cell<i64>>,
    /// When the outstanding ping was sent (0 = none).
    pub ping_sent_ms: Rc<Cell<i64>>,
}

/// One worker's state.
pub struct Core {
    /// Core index.
    pub id: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    conns: RefCell<HashMap<u64, ConnEntry>>,
    next_conn: Cell<u64>,
    preauth_by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Replica of the paired-device registry (authoritative on core 0). Replicas only ever
    /// receive records that are on disk.
    pub devices: RefCell<DeviceRegistry>,
    /// Core 0: registry saves (group commit, one in flight) and the devices whose latest
    /// change is not yet known to be on disk. Their tokens must not be handed out.
    devices_commits: RefCell<Generations>,
    /// Core 0: approved pairings waiting for the registry save (generation `.0`) that
    /// carries their device's record; answered when it completes. A reconnect that changes
    /// nothing waits for the save already on its way instead of queueing another (a device
    /// reconnecting in a storm would otherwise never be seen durable). Entries whose
    /// requester gave up (handshake timeout) are dropped when the next one is parked.
    devices_parked: RefCell<Vec<ParkedPairing>>,
    /// Replica of the presence list.
    pub presence: RefCell<Arc<PresenceSnap>>,
    presence_master: RefCell<BTreeMap<(usize, u64), Value>>,
    /// Every core's [`SessionDigest`] (index = core), for `health` and `status`.
    session_digests: RefCell<Vec<Option<Arc<SessionDigest>>>>,
    /// The shard's change counter when this core's digest was last computed.
    digest_changes: Cell<Option<u64>>,
    /// `stateVersion.health`.
    pub health_version: Cell<u64>,
    /// Broadcasts this core could not relay (a peer queue was full).
    pub relay_drops: Cell<u64>,
    /// The sessions this core owns.
    pub sessions: crate::state::sessions::SessionOwner,
    /// Serialized health snapshot and when it was built (uptime ms); rebuilt at most once per
    /// [`HEALTH_CACHE_MS`] so `health` RPCs cost a copy, not a JSON build.
    health_json: RefCell<Option<(i64, Rc<Vec<u8>>)>>,
    /// Core 0 only: a presence change is waiting for the next publish, when the last one
    /// went out, and the flusher task to wake (see [`Core::presence_changed`]).
    presence_dirty: Cell<bool>,
    presence_published_at: Cell<Option<Instant>>,
    presence_flusher: RefCell<Option<std::task::Waker>>,
    /// Core 0 only: runs holding a global slot, and the requests waiting for one (FIFO).
    run_slots_used: Cell<usize>,
    run_slot_waiters: RefCell<VecDeque<Arc<ReplySlot<()>>>>,
    /// Control messages (device upserts, presence changes and snapshots, run slots) a full
    /// mesh queue refused: kept in order and re-sent by [`Core::mesh_backlog_flusher`].
    mesh_backlog: RefCell<Backlog<MeshMsg>>,
    /// Messages the backlog refused over its budget (a stalled destination core).
    pub mesh_backlog_refused: Cell<u64>,
    mesh_backlog_waker: RefCell<Option<std::task::Waker>>,
    /// Failed shared-secret attempts per remote client IP in the current window (this
    /// core's share of the gateway-wide limit; no shared map).
    auth_failures: RefCell<HashMap<IpAddr, (Instant, u32)>>,
}

/// Failed shared-secret connects allowed per remote client IP per [`AUTH_FAIL_WINDOW`]
/// (gateway-wide; each core enforces its share). Loopback clients are exempt.
pub const AUTH_FAIL_MAX: u32 = 10;
/// Source addresses whose failures one core tracks at most.
const AUTH_FAIL_TRACKED: usize = 4096;
/// The auth-failure counting window (also the lockout once the limit is reached).
pub const AUTH_FAIL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A held global run slot; dropping it gives the slot back (by message unless on core 0).
pub struct RunSlot {
    core: Rc<Core>,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.core.release_run_slot();
    }
}

/// The "core" part of presence keys for rows set by `system-event` (not a connection).
const SYSTEM_EVENT_PRESENCE: usize = usize::MAX;
/// `system-event` presence rows expire after this long without an update (real gateway).
const SYSTEM_PRESENCE_TTL_MS: i64 = 5 * 60 * 1000;
/// At most this many `system-event` presence rows; the oldest go first (real gateway).
const SYSTEM_PRESENCE_MAX: usize = 200;

/// Core 0 publishes connection joins/leaves at most once per this interval (the latest list
/// wins); `system-event` updates are published each time.
pub const PRESENCE_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a serialized health snapshot is reused.
pub const HEALTH_CACHE_MS: i64 = 1000;

impl Core {
    /// Build a core's state.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        devices: DeviceRegistry,
        sessions: crate::state::sessions::SessionOwner,
    ) -> Self {
        let core = Self {
            id,
            shared,
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            preauth_by_ip: RefCell::new(HashMap::new()),
            devices: RefCell::new(devices),
            devices_commits: RefCell::new(Generations::default()),
            devices_parked: RefCell::new(Vec::new()),
            presence: RefCell::new(Arc::new(PresenceSnap::default())),
            presence_master: RefCell::new(BTreeMap::new()),
            session_digests: RefCell::new(Vec::new()),
            digest_changes: Cell::new(None),
            health_version: Cell::new(1),
            relay_drops: Cell::new(0),
            sessions,
            health_json: RefCell::new(None),
            presence_dirty: Cell::new(false),
            presence_published_at: Cell::new(None),
            presence_flusher: RefCell::new(None),
            run_slots_used: Cell::new(0),
            run_slot_waiters: RefCell::new(VecDeque::new()),
            mesh_backlog: RefCell::new(Backlog::new(LANE_BUDGET_BYTES)),
            mesh_backlog_refused: Cell::new(0),
            mesh_backlog_waker: RefCell::new(None),
            auth_failures: RefCell::new(HashMap::new()),
        };
        let snap = core.build_presence(1);
        *core.presence.borrow_mut() = Arc::new(snap);
        core
    }

    /// The health snapshot as JSON bytes (cached for [`HEALTH_CACHE_MS`]).
    pub fn health_payload(&self) -> Rc<Vec<u8>> {
        let now = self.shared.uptime_ms();
        if let Some((at, bytes)) = self.health_json.borrow().as_ref() {
            if now - at < HEALTH_CACHE_MS {
                return bytes.clone();
            }
        }
        let v =
            crate::methods::with_digest_view(self, false, crate::methods::system::health_snapshot);
        let bytes = Rc::new(serde_json::to_vec(&v).unwrap_or_default());
        *self.health_json.borrow_mut() = Some((now, bytes.clone()));
        bytes
    }

    /// The presence list as JSON bytes (`system-presence`), copied from the snapshot.
    pub fn presence_payload(&self) -> Rc<Vec<u8>> {
        Rc::new(self.presence.borrow().json.clone())
    }

    /// Register a connection; returns its id (unique on this core).
    pub fn add_conn(&self, outbox: Rc<Outbox>) -> (u64, Rc<Cell<i64>>, Rc<Cell<i64>>) {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let last_seen = Rc::new(Cell::new(self.shared.uptime_ms()));
        let ping_sent = Rc::new(Cell::new(0));
        self.conns.borrow_mut().insert(
            id,
            ConnEntry {
                outbox,
                authority: None,
                scope_mask: 0,
                last_seen_ms: last_seen.clone(),
                ping_sent_ms: ping_sent.clone(),
            },
        );
        (id, last_seen, ping_sent)
    }

    /// Mark a connection authenticated (it starts receiving broadcasts).
    pub fn set_authority(&self, id: u64, a: Rc<Authority>) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
            // Operators get every event with no scope requirement: keep a bit set for that.
            c.scope_mask = if a.role == "operator" {
                scopes::mask(&a.scopes) | SCOPE_ANY
            } else {
                0
            };
            c.authority = Some(a);
        }
    }

    /// The connection called `sessions.subscribe`: it gets `sessions.changed` from now on.
    pub fn subscribe_session_events(&self, id: u64) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
            if c.scope_mask & SCOPE_ANY != 0 {
                c.scope_mask |= scopes::SESSION_EVENTS_BIT;
            }
        }
    }

    /// Forget a connection.
    pub fn remove_conn(&self, id: u64) {
        self.conns.borrow_mut().remove(&id);
    }

    /// Live connections on this core.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Try to take a pre-auth slot for `ip` (per-core share of the per-IP budget + global cap).
    pub fn preauth_acquire(&self, ip: IpAddr) -> bool {
        let per_core = self
            .shared
            .opts
            .preauth_per_ip
            .div_ceil(self.shared.opts.workers.max(1))
            .max(1);
        let mut map = self.preauth_by_ip.borrow_mut();
        if map.get(&ip).is_some_and(|n| *n >= per_core) {
            return false;
        }
        let prev = self.shared.preauth_total.fetch_add(1, Ordering::AcqRel);
        if prev >= self.shared.opts.preauth_global {
            self.shared.preauth_total.fetch_sub(1, Ordering::AcqRel);
            // (No entry is created for a refused address: refusals must not grow the map.)
            return false;
        }
        *map.entry(ip).or_insert(0) += 1;
        true
    }

    /// Return a pre-auth slot.
    pub fn preauth_release(&self, ip: IpAddr) {
        let mut map = self.preauth_by_ip.borrow_mut();
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
            self.shared.preauth_total.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Publish an event gateway-wide: serialize once, fan out locally, relay once per core.
    pub fn publish(
        &self,
        event: &str,
        payload: &Value,
        state_version: Option<(u64, u64)>,
        scope: Option<&'static str>,
        droppable: bool,
    ) {
        self.publish_body(
            encode_event_body(event, payload, state_version),
            scope,
            droppable,
        );
    }

    /// [`Core::publish`] of an already-encoded event body (no `seq`).
    fn publish_body(&self, body: Vec<u8>, scope: Option<&'static str>, droppable: bool) {
        let b = Arc::new(Broadcast {
            body,
            scope,
            droppable,
        });
        self.fanout_local(&b);
        for to in 0..self.shared.mesh.cores() {
            if to == self.id {
                continue;
            }
            if !droppable {
                // A chat final, a lifecycle end, a shutdown: never lost, kept in order
                // behind anything already waiting for that core.
                self.send_ordered(to, MeshMsg::Broadcast(b.clone()));
                continue;
            }
            // Droppable: skipped for a core that is behind (like a slow socket), never
            // sent ahead of what waits in its backlog.
            let behind = self.mesh_backlog.borrow().is_waiting(to);
            if behind
                || self
                    .shared
                    .mesh
                    .send(self.id, to, MeshMsg::Broadcast(b.clone()))
                    .is_err()
            {
                self.relay_drops.set(self.relay_drops.get() + 1);
            }
        }
    }

    /// Deliver a broadcast to this core's authenticated operator sockets.
    pub fn fanout_local(&self, b: &Broadcast) {
        let mut slow = Vec::new();
        let need = b.scope.map(scopes::bit).unwrap_or(SCOPE_ANY);
        for (id, c) in self.conns.borrow().iter() {
            if c.scope_mask & need == 0 {
                continue;
            }
            if c.outbox.push_event(&b.body, b.droppable) == Push::Closed
                && (c.outbox.is_dead() || c.outbox.closed_as_slow())
            {
                slow.push(*id);
            }
        }
        for id in slow {
            self.remove_conn(id);
        }
    }

    /// Send an event to every authenticated socket on this core (each gets its own seq).
    pub fn for_each_authed(&self, mut f: impl FnMut(&ConnEntry)) {
        for c in self.conns.borrow().values() {
            if c.authority.is_some() {
                f(c);
            }
        }
    }

    /// Every connection (for shutdown).
    pub fn all_outboxes(&self) -> Vec<Rc<Outbox>> {
        self.conns
            .borrow()
            .values()
            .map(|c| c.outbox.clone())
            .collect()
    }

    /// Handle one message from another core.
    pub fn on_mesh(&self, msg: MeshMsg) {
        match msg {
            MeshMsg::Broadcast(b) => self.fanout_local(&b),
            MeshMsg::DeviceUpsert(d) => self.devices.borrow_mut().put((*d).clone()),
            // Pairings need the `Rc` (they answer from a task): see `on_mesh_rc`. Nothing
            // routes them here; answer rather than leave the requester waiting.
            MeshMsg::Pair(_, reply) => {
                reply.send(PairOutcome::Failed(
                    "pairing routed without its core".into(),
                ));
            }
            MeshMsg::PresenceJoin(k, v) => {
                self.presence_master.borrow_mut().insert(k, v);
                if k.0 == SYSTEM_EVENT_PRESENCE {
                    self.prune_system_presence(now_ms());
                    // An explicit `system-event`: each one is broadcast (it may carry text
                    // that a coalesced publish would hide).
                    self.publish_presence();
                } else {
                    self.presence_changed();
                }
            }
            MeshMsg::PresenceLeave(k) => {
                if self.presence_master.borrow_mut().remove(&k).is_some() {
                    self.presence_changed();
                }
            }
            MeshMsg::PresenceSnapshot(s) => *self.presence.borrow_mut() = s,
            MeshMsg::SessionDigest(from, d) => self.store_session_digest(from, d),
            MeshMsg::HealthVersion(v) => {
                self.health_version.set(self.health_version.get().max(v));
            }
            MeshMsg::RunSlotAcquire(reply) => self.run_slot_request(reply),
            MeshMsg::RunSlotRelease => self.run_slot_returned(),
            // Needs an `Rc<Core>` to spawn: handled by the worker loop (`on_mesh_rc`).
            MeshMsg::SessionOp(_, reply) => reply.send(crate::state::sessions::OpReply::NotHere),
            MeshMsg::Shutdown => {}
        }
    }

    /// Handle a mesh message that may need to spawn work on this core.
    pub fn on_mesh_rc(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::SessionOp(op, reply) => {
                let core = self.clone();
                monoio::spawn(async move {
                    let r = crate::state::sessions::exec(&core, *op).await;
                    reply.send(r);
                });
            }
            MeshMsg::Pair(job, reply) => self.pair_batch(vec![(job, reply)]),
            other => self.on_mesh(other),
        }
    }

    /// Send a session op to its owner core and wait for the answer.
    pub async fn session_op_remote(
        &self,
        owner: usize,
        op: crate::state::sessions::SessionOp,
    ) -> crate::state::sessions::OpReply {
        let slot = ReplySlot::new();
        if let Err(MeshMsg::SessionOp(..)) = self.shared.mesh.send(
            self.id,
            owner,
            MeshMsg::SessionOp(Box::new(op), slot.clone()),
        ) {
            return crate::state::sessions::OpReply::Value(Err(
                crate::protocol::error::ErrorShape::new(
                    crate::protocol::error::UNAVAILABLE,
                    "session owner core is busy",
                )
                .retry_after(100),
            ));
        }
        slot.wait().await
    }

    /// Core 0: apply a pairing and issue (or return) the token, without persisting.
    /// Returns the outcome and whether the registry changed materially.
    fn pair_apply(&self, job: &PairJob) -> (PairOutcome, bool) {
        let now = now_ms();
        let mut reg = self.devices.borrow_mut();
        let before = reg
            .get(&job.device_id)
            .map(|d| (d.roles.clone(), d.scopes.clone()));
        let req = PairingRequest {
            device_id: &job.device_id,
            public_key: &job.public_key,
            client_id: &job.client_id,
            client_mode: &job.client_mode,
            platform: job.platform.as_deref(),
            device_family: job.device_family.as_deref(),
            role: &job.role,
            scopes: &job.scopes,
        };
        let rec = reg.approve_silently(&req, now);
        if rec.public_key != job.public_key {
            return (
                PairOutcome::Failed("device id is bound to a different public key".into()),
                false,
            );
        }
        let changed_pairing = before.as_ref() != Some(&(rec.roles.clone(), rec.scopes.clone()));
        let granted = rec.scopes.clone();
        match reg.ensure_token(&job.device_id, &job.role, &granted, now) {
            Some((token, issued_at_ms, changed_token)) => (
                PairOutcome::Approved {
                    token,
                    issued_at_ms,
                },
                changed_pairing || changed_token,
            ),
            None => (
                PairOutcome::Failed("device vanished during pairing".into()),
                false,
            ),
        }
    }

    /// Whether `device_id`'s record in this core's registry is on disk (always true on the
    /// replicas, which only receive saved records; on core 0 false from the change until a
    /// save that carries it succeeds — after a failed save, until the next one).
    pub fn device_durable(&self, device_id: &str) -> bool {
        self.devices_commits.borrow().durability(device_id) == Durability::Durable
    }

    /// Core 0: start the next registry save if devices wait for one and none is on its
    /// way (group commit: one save in flight; pairings made meanwhile share the next one).
    /// The records are snapshotted now and replicated to the other cores only once the
    /// save is on disk, so no core can hand out a token a crash could take back.
    fn kick_device_save(self: &Rc<Self>) {
        let (gen, ids) = {
            let mut commits = self.devices_commits.borrow_mut();
            if !commits.should_start() {
                return;
            }
            // Every record not yet known on disk rides this save and is replicated after
            // it — including ones whose own save failed (the whole file is written, so they
            // land on disk now and the replicas must learn them, not keep an older token).
            let ids = commits.restage_not_durable();
            (commits.start(), ids)
        };
        let reg = self.devices.borrow();
        let records: Vec<Arc<PairedDevice>> = ids
            .iter()
            .filter_map(|id| reg.get(id))
            .map(|rec| Arc::new(rec.clone()))
            .collect();
        let queued = reg
            .save_job(&self.shared.config.paths.state_dir)
            .and_then(|job| self.sessions.store_async(vec![job]));
        drop(reg);
        match queued {
            Ok(Some(slot)) => {
                let core = self.clone();
                monoio::spawn(async move {
                    let r = slot.wait().await.map_err(|e| save_error(&e));
                    core.sessions.pump_store();
                    core.devices_save_finished(gen, &records, r);
                    core.kick_device_save();
                });
            }
            // No store thread: already written in place.
            Ok(None) => self.devices_save_finished(gen, &records, Ok(())),
            Err(e) => self.devices_save_finished(gen, &records, Err(save_error(&e))),
        }
    }

    /// Core 0: the outcome of save `gen` (carrying `records`) is known. On disk: its
    /// devices may hand out tokens and the replicas learn them. Either way the pairings
    /// parked on it (or on an earlier save) are answered.
    fn devices_save_finished(
        &self,
        gen: u64,
        records: &[Arc<PairedDevice>],
        r: Result<(), String>,
    ) {
        self.devices_commits.borrow_mut().finish(gen, r.clone());
        if r.is_ok() {
            for rec in records {
                self.send_ordered_to_others(|| MeshMsg::DeviceUpsert(rec.clone()));
            }
        }
        let due: Vec<_> = {
            let mut parked = self.devices_parked.borrow_mut();
            let (due, rest) = std::mem::take(&mut *parked)
                .into_iter()
                .partition(|(g, _, _)| *g <= gen);
            *parked = rest;
            due
        };
        reply_pairings(
            due.into_iter().map(|(_, o, reply)| (o, reply)).collect(),
            &r,
        );
    }

    /// Core 0: apply a batch of pairing jobs. A job that changed its device's record (or
    /// whose device's last save failed) stages the device for the next registry save; its
    /// answer, like that of a job whose device's save is still on its way, is parked until
    /// that save completes — from a task, so this core keeps serving while the disk works.
    /// A token is only ever handed out once its record is on disk.
    pub fn pair_batch(self: &Rc<Self>, jobs: Vec<(Box<PairJob>, Arc<ReplySlot<PairOutcome>>)>) {
        for (job, reply) in jobs {
            let (outcome, dirty) = self.pair_apply(&job);
            if !matches!(outcome, PairOutcome::Approved { .. }) {
                reply.send(outcome);
                continue;
            }
            let on_its_way = self.devices_commits.borrow().on_its_way(&job.device_id);
            let gen = match on_its_way {
                // Unchanged, and its latest save is still on its way: wait for that one.
                Some(g) if !dirty => g,
                _ if dirty || !self.device_durable(&job.device_id) => {
                    self.devices_commits.borrow_mut().stage(&job.device_id)
                }
                _ => {
                    reply.send(outcome);
                    continue;
                }
            };
            let mut parked = self.devices_parked.borrow_mut();
            // A requester that gave up (handshake timeout) dropped its end of the slot.
            parked.retain(|(_, _, r)| Arc::strong_count(r) > 1);
            parked.push((gen, outcome, reply));
        }
        self.kick_device_save();
    }

    /// Ask core 0 to pair (direct call when we are core 0).
    pub async fn pair(self: &Rc<Self>, job: PairJob) -> PairOutcome {
        let slot = ReplySlot::new();
        if self.id == 0 {
            self.pair_batch(vec![(Box::new(job), slot.clone())]);
        } else if self
            .shared
            .mesh
            .send(self.id, 0, MeshMsg::Pair(Box::new(job), slot.clone()))
            .is_err()
        {
            return PairOutcome::Failed("gateway busy".into());
        }
        // Bounded: a reply lost at shutdown must not pin the connection (and its pre-auth
        // slot) forever.
        let limit = std::time::Duration::from_millis(self.shared.opts.handshake_timeout_ms);
        match monoio::time::timeout(limit, slot.wait()).await {
            Ok(outcome) => outcome,
            Err(_) => PairOutcome::Failed("pairing timed out".into()),
        }
    }

    /// Apply a gateway-wide change on core 0: directly when this is core 0, else by message.
    fn to_owner(&self, msg: MeshMsg) {
        if self.id == 0 {
            self.on_mesh(msg);
        } else {
            self.send_ordered(0, msg);
        }
    }

    /// Wait for one of the gateway-wide `agents.defaults.maxConcurrent` run slots. Core 0
    /// counts them (one hop each way from other cores); waiters are served in arrival order.
    pub async fn acquire_run_slot(self: Rc<Self>) -> RunSlot {
        let reply = ReplySlot::new();
        if self.id == 0 {
            self.run_slot_request(reply.clone());
        } else {
            // A full mesh queue is back-pressure, not a reason to skip the cap.
            self.send_ordered(0, MeshMsg::RunSlotAcquire(reply.clone()));
        }
        reply.wait().await;
        RunSlot { core: self }
    }

    fn release_run_slot(self: &Rc<Self>) {
        if self.id == 0 {
            self.run_slot_returned();
        } else {
            // Never lost (the slot would leak); at shutdown the backlog is simply dropped.
            self.send_ordered(0, MeshMsg::RunSlotRelease);
        }
    }

    /// Core 0: grant a slot now or queue the request.
    fn run_slot_request(&self, reply: Arc<ReplySlot<()>>) {
        let cap = self.shared.config.max_concurrent.max(1);
        if self.run_slots_used.get() < cap {
            self.run_slots_used.set(self.run_slots_used.get() + 1);
            reply.send(());
        } else {
            self.run_slot_waiters.borrow_mut().push_back(reply);
        }
    }

    /// Core 0: a slot came back; hand it to the oldest waiter or free it.
    fn run_slot_returned(&self) {
        let next = self.run_slot_waiters.borrow_mut().pop_front();
        match next {
            Some(reply) => reply.send(()),
            None => self
                .run_slots_used
                .set(self.run_slots_used.get().saturating_sub(1)),
        }
    }

    /// A client joined presence (sent to core 0).
    pub fn presence_join(&self, conn: u64, entry: Value) {
        let key = (self.id, conn);
        self.to_owner(MeshMsg::PresenceJoin(key, entry));
    }

    /// A `system-event` presence row (keyed by instance/device/host), upserted on core 0.
    pub fn presence_event(&self, key: u64, entry: Value) {
        let key = (SYSTEM_EVENT_PRESENCE, key);
        self.to_owner(MeshMsg::PresenceJoin(key, entry));
    }

    /// Recompute this core's [`SessionDigest`]; if it changed, keep it and send it to every
    /// other core (from the ticker).
    pub fn refresh_session_digest(&self) {
        // Nothing changed since the last digest: no scan.
        let changes = self.sessions.changes();
        if self.digest_changes.get() == Some(changes) {
            return;
        }
        self.digest_changes.set(Some(changes));
        let d = self.sessions.digest();
        let same = self
            .session_digests
            .borrow()
            .get(self.id)
            .and_then(Option::as_ref)
            .is_some_and(|old| **old == d);
        if same {
            return;
        }
        let d = Arc::new(d);
        self.store_session_digest(self.id, d.clone());
        self.send_ordered_to_others(|| MeshMsg::SessionDigest(self.id, d.clone()));
    }

    fn store_session_digest(&self, from: usize, d: Arc<SessionDigest>) {
        let mut all = self.session_digests.borrow_mut();
        if all.len() <= from {
            all.resize(from + 1, None);
        }
        if let Some(slot) = all.get_mut(from) {
            *slot = Some(d);
        }
        // The cached health payload counts sessions.
        *self.health_json.borrow_mut() = None;
    }

    /// Sessions the other cores hold, from their replicated digests.
    pub fn sessions_elsewhere(&self) -> usize {
        self.session_digests
            .borrow()
            .iter()
            .enumerate()
            .filter(|(core, _)| *core != self.id)
            .filter_map(|(_, d)| d.as_ref())
            .map(|d| d.counts.values().sum::<usize>())
            .sum()
    }

    /// Every core's newest sessions and the gateway-wide count per agent.
    pub fn session_digest(&self) -> (Vec<SessionSummary>, BTreeMap<String, usize>) {
        let mut recent = Vec::new();
        let mut counts = BTreeMap::new();
        for d in self.session_digests.borrow().iter().flatten() {
            recent.extend(d.recent.iter().cloned());
            for (agent, n) in &d.counts {
                *counts.entry(agent.clone()).or_insert(0) += n;
            }
        }
        (recent, counts)
    }

    /// Core 0: forget `system-event` rows older than [`SYSTEM_PRESENCE_TTL_MS`] and all
    /// but the newest [`SYSTEM_PRESENCE_MAX`] (as the real gateway). Returns whether any
    /// went.
    pub fn prune_system_presence(&self, now: i64) -> bool {
        let mut master = self.presence_master.borrow_mut();
        let ts = |v: &Value| v.get("ts").and_then(Value::as_i64).unwrap_or(0);
        let before = master.len();
        master.retain(|k, v| k.0 != SYSTEM_EVENT_PRESENCE || now - ts(v) <= SYSTEM_PRESENCE_TTL_MS);
        let mut rows: Vec<((usize, u64), i64)> = master
            .iter()
            .filter(|(k, _)| k.0 == SYSTEM_EVENT_PRESENCE)
            .map(|(k, v)| (*k, ts(v)))
            .collect();
        if rows.len() > SYSTEM_PRESENCE_MAX {
            rows.sort_by_key(|(_, t)| *t);
            for (k, _) in &rows[..rows.len() - SYSTEM_PRESENCE_MAX] {
                master.remove(k);
            }
        }
        master.len() != before
    }

    /// Core 0, from the ticker: expired `system-event` rows leave the list.
    pub fn expire_system_presence(&self) {
        if self.prune_system_presence(now_ms()) {
            self.presence_changed();
        }
    }

    /// A client left presence.
    pub fn presence_leave(&self, conn: u64) {
        let key = (self.id, conn);
        self.to_owner(MeshMsg::PresenceLeave(key));
    }

    /// Core 0: a connection joined or left presence. Published at once unless the last publish was less
    /// than [`PRESENCE_MIN_INTERVAL`] ago; then the flusher publishes the latest list when the
    /// interval ends. Every publish carries the whole list, so a burst of N joins costs a few
    /// publishes instead of N (each O(N) to build and sent to every operator).
    fn presence_changed(&self) {
        let recent = self
            .presence_published_at
            .get()
            .is_some_and(|at| at.elapsed() < PRESENCE_MIN_INTERVAL);
        if recent || self.presence_dirty.get() {
            self.presence_dirty.set(true);
            if let Some(w) = self.presence_flusher.borrow_mut().take() {
                w.wake();
            }
        } else {
            self.publish_presence();
        }
    }

    /// Core 0: publish the health snapshot as a `health` event with the next
    /// `stateVersion.health`; every core's replica of the version follows (hello-ok
    /// snapshots carry it).
    pub fn publish_health(&self) {
        let version = self.health_version.get() + 1;
        self.health_version.set(version);
        self.send_ordered_to_others(|| MeshMsg::HealthVersion(version));
        *self.health_json.borrow_mut() = None;
        let payload = self.health_payload();
        let presence = self.presence.borrow().version;
        self.publish_body(
            encode_event_body_raw("health", &payload, Some((presence, version))),
            Some(scopes::READ),
            true,
        );
    }

    /// `Some(retry_after)` when `ip` used up its failed-auth allowance on this core. (The
    /// caller exempts direct local connections — not every loopback address: behind a
    /// proxy that forwards no address, every remote client arrives from loopback.)
    pub fn auth_locked(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let share = AUTH_FAIL_MAX.div_ceil(self.shared.mesh.cores().max(1) as u32);
        let map = self.auth_failures.borrow();
        let (start, n) = map.get(&ip)?;
        let left = AUTH_FAIL_WINDOW.saturating_sub(start.elapsed());
        (*n >= share && !left.is_zero()).then_some(left)
    }

    /// Count one failed shared-secret attempt from `ip` (see [`Self::auth_locked`]).
    pub fn auth_failed(&self, ip: IpAddr) {
        let mut map = self.auth_failures.borrow_mut();
        if map.len() >= AUTH_FAIL_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| start.elapsed() < AUTH_FAIL_WINDOW);
            if map.len() >= AUTH_FAIL_TRACKED {
                // Still full within one window (many source addresses): forget the oldest
                // address that is not locked out (else the oldest), so the map stays bounded
                // and a flood of new addresses cannot unlock the ones already locked.
                let share = AUTH_FAIL_MAX.div_ceil(self.shared.mesh.cores().max(1) as u32);
                let victim = map
                    .iter()
                    .min_by_key(|(_, (start, n))| (*n >= share, *start))
                    .map(|(ip, _)| *ip);
                if let Some(v) = victim {
                    map.remove(&v);
                }
            }
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= AUTH_FAIL_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Send a control message that must arrive, in order per destination: behind anything
    /// already waiting for that core, and into the backlog when its queue is full.
    /// [`Self::send_ordered`] one message (made by `msg`) to every other core.
    fn send_ordered_to_others(&self, msg: impl Fn() -> MeshMsg) {
        for to in (0..self.shared.mesh.cores()).filter(|to| *to != self.id) {
            self.send_ordered(to, msg());
        }
    }

    fn send_ordered(&self, to: usize, msg: MeshMsg) {
        let mut backlog = self.mesh_backlog.borrow_mut();
        let msg = if backlog.is_waiting(to) {
            msg
        } else {
            match self.shared.mesh.send(self.id, to, msg) {
                Ok(()) => return,
                Err(m) => m,
            }
        };
        match backlog.push(to, msg) {
            Ok(_) => {
                if let Some(w) = self.mesh_backlog_waker.borrow_mut().take() {
                    w.wake();
                }
            }
            Err(refused) => {
                // Core `to` has not drained 64 MiB of waiting messages: it is stalled, and
                // this core's memory is not its buffer. Its clients miss this (as a slow
                // consumer's would). Nothing refused here has a requester waiting: pairings
                // and session ops go by direct send, run-slot messages are exempt.
                let n = self.mesh_backlog_refused.get() + 1;
                self.mesh_backlog_refused.set(n);
                if n == 1 || n.is_power_of_two() {
                    tracing::warn!(
                        core = self.id,
                        to,
                        refused = n,
                        "mesh backlog over budget: core {to} is not draining; message dropped"
                    );
                }
                drop(refused);
            }
        }
    }

    /// Re-send the backlog every millisecond while it is not empty (each core runs one).
    pub async fn mesh_backlog_flusher(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.mesh_backlog.borrow().is_empty() {
                    *self.mesh_backlog_waker.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            if self.shared.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let mut backlog = self.mesh_backlog.borrow_mut();
            for to in 0..self.shared.mesh.cores() {
                // In order per destination; stops at the first refusal (queue full again).
                backlog.flush(to, |msg| self.shared.mesh.send(self.id, to, msg));
            }
        }
    }

    /// Core 0's task that publishes coalesced presence changes. It parks between changes and
    /// lives as long as the core's runtime.
    pub async fn presence_flusher(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.presence_dirty.get() {
                    std::task::Poll::Ready(())
                } else {
                    *self.presence_flusher.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
            .await;
            if let Some(at) = self.presence_published_at.get() {
                let wait = PRESENCE_MIN_INTERVAL.saturating_sub(at.elapsed());
                if !wait.is_zero() {
                    monoio::time::sleep(wait).await;
                }
            }
            if self.presence_dirty.get() {
                self.publish_presence();
            }
        }
    }

    fn build_presence(&self, version: u64) -> PresenceSnap {
        let mut entries = vec![crate::methods::gateway_presence(self)];
        entries.extend(self.presence_master.borrow().values().cloned());
        let json = serde_json::to_vec(&entries).unwrap_or_else(|_| b"[]".to_vec());
        PresenceSnap { version, json }
    }

    fn publish_presence(&self) {
        self.presence_dirty.set(false);
        self.presence_published_at.set(Some(Instant::now()));
        let version = self.presence.borrow().version + 1;
        let snap = Arc::new(self.build_presence(version));
        *self.presence.borrow_mut() = snap.clone();
        self.send_ordered_to_others(|| MeshMsg::PresenceSnapshot(snap.clone()));
        // The payload `{"presence":[…]}` reuses the snapshot's serialized list.
        let mut payload = Vec::with_capacity(snap.json.len() + 16);
        payload.extend_from_slice(br#"{"presence":"#);
        payload.extend_from_slice(&snap.json);
        payload.push(b'}');
        self.publish_body(
            encode_event_body_raw(
                "presence",
                &payload,
                Some((version, self.health_version.get())),
            ),
            // Presence rows carry client IPs, hosts and device ids: like `system-presence`
            // and hello-ok's snapshot, only sockets with operator.read see them.
            Some(scopes::READ),
            true,
        );
    }
}

/// A pairing answer held until registry save `.0` completes.
type ParkedPairing = (u64, PairOutcome, Arc<ReplySlot<PairOutcome>>);

fn save_error(e: &std::io::Error) -> String {
    tracing::error!(message = "Persisting paired devices failed.", error = %e);
    format!("cannot persist pairing: {e}")
}

/// Answer each pairing of a batch; an approval whose save failed becomes a failure.
fn reply_pairings(
    results: Vec<(PairOutcome, Arc<ReplySlot<PairOutcome>>)>,
    commit: &Result<(), String>,
) {
    for (outcome, reply) in results {
        reply.send(match (commit, outcome) {
            (Err(e), PairOutcome::Approved { .. }) => PairOutcome::Failed(e.clone()),
            (_, o) => o,
        });
    }
}
