//! Durable session store: a sharded index of sessions plus one append-only transcript per
//! session.
//!
//! # Ownership (no locks)
//!
//! The gateway runs `workers` cores. Each canonical session key is owned by core
//! [`shard_of`]`(key, workers)` (FNV-1a 64 of the key, modulo `workers`), and only that
//! core's [`SessionShard`] ever reads or writes the session's index row and transcript.
//! Requests for a key are routed to its owner over the core mesh; the shard itself is a
//! plain `!Sync` value doing `std::fs` I/O on its core's thread: appends (one `write(2)`
//! into the page cache) and reads. Once [`SessionShard::start_io_thread`] has run (the
//! gateway does so at start-up), every fsync and atomic index rewrite goes to the core's
//! store thread ([`super::io_thread`]) instead: periodic flushes in the background, index
//! writes a reply depends on staged and group-committed (see "Durability" below). Keys
//! handed to a shard must be canonical ([`canonical_key`]) and owned by it; anything else
//! is refused with `InvalidInput`.
//!
//! # On-disk layout
//!
//! ```text
//! <state_dir>/sessions/index-<core>-of-<workers>.json          0600, {"version":1,"entries":[SessionEntry…]}
//! <state_dir>/agents/<agentId>/sessions/<sessionId>.jsonl       0600, one TranscriptMessage per line
//! <state_dir>/agents/<agentId>/sessions/<sessionId>.reset.<ms>.jsonl    transcript before a reset
//! <state_dir>/agents/<agentId>/sessions/<sessionId>.deleted.<ms>.jsonl  transcript of a pruned session
//! ```
//!
//! Directories are created 0700. Index shards are only ever replaced whole through
//! [`write_atomic`] (temp + fsync + rename + dir fsync), so a reader sees an old or a new
//! shard, never a torn one. [`SessionShard::repartition`] runs once at startup, before the
//! workers, and rewrites every shard for the current worker count (see its docs for crash
//! safety). The transcript is the source of truth for messages; the index row caches
//! count/preview/run state and records the transcript length it reflects, so a row that
//! lags its transcript after a crash is rebuilt from the transcript on [`SessionShard::load`].
//!
//! # Durability and what the owner core must call
//!
//! * [`SessionShard::append`] writes the whole line with one `write(2)` before returning:
//!   once it returns `Ok`, the message survives the process being killed (`kill -9`, panic,
//!   OOM), whatever the fsync policy.
//! * Power loss / kernel crash depends on [`FsyncPolicy`]:
//!   - [`FsyncPolicy::Always`]: every append is `fdatasync`ed (and a new transcript's
//!     directory fsynced) before `append` returns; nothing acknowledged is lost.
//!   - [`FsyncPolicy::Batched`] (default): transcripts are fsynced by
//!     [`SessionShard::flush`]. Messages appended since the last `flush` can be lost on
//!     power loss (the window is the caller's flush period); a torn or NUL-padded tail line
//!     left by power loss is skipped on read, never an error, and later appends start on a
//!     fresh line.
//! * Index rows: creating a session ([`SessionShard::ensure`], or `append`/`patch`/`reset`
//!   on a new key), `patch`, `reset`, `delete` and `maintain` change rows the index must
//!   carry before anyone is told. Without a store thread they rewrite the shard index
//!   before returning. With one they only *stage* the change: the owner core reads
//!   [`SessionShard::durability`] of the key, starts the write with
//!   [`SessionShard::start_index_write`] (one in flight per shard; changes staged meanwhile
//!   ride the next one — group commit), awaits its slot, reports it with
//!   [`SessionShard::index_write_done`], and only then answers. The core keeps serving
//!   while the disk works. Work that may only follow a durable index (renaming a reset
//!   session's old transcript, deleting one) waits for that write too, so a crash never
//!   leaves an index row pointing at a file that is gone. The per-message row updates of `append`/`update` (count, preview,
//!   `updatedAt`, run state) are written at most every [`StoreOptions::index_flush_ms`]
//!   (on the next append after the interval) or by `flush`; after a crash they are
//!   recovered from the transcript at load.
//!
//! **The owner core must call [`SessionShard::flush`] periodically** (every
//! `index_flush_ms`, e.g. 1 s; cheap when nothing is pending) **and on shutdown**. It fsyncs
//! transcripts appended since the last call (Batched), fsyncs new directories, writes a
//! dirty index and closes cached transcript handles. Dropping a shard flushes best-effort.
//! Session maintenance ([`SessionShard::maintain`]) is also the caller's to schedule.

mod keys;
mod model;
mod transcript;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use keys::{
    agent_of, canonical_key, fnv1a64, is_canonical, rest_of, shard_of, valid_agent_id, MAIN,
    MAX_AGENT_ID_CHARS, MAX_KEY_CHARS,
};
pub use model::{
    preview_of, SessionEntry, TranscriptMessage, MAX_LABEL_CHARS, MAX_MODEL_CHARS, PREVIEW_CHARS,
    THINKING_LEVELS,
};

use super::atomic::write_atomic;
use super::commit::Generations;
use super::io_thread::{run_inline, Failure, Job, StoreIo};
use crate::auth::token::uuid_v4;

/// Current index shard format version.
pub const INDEX_VERSION: u32 = 1;
/// Mode of index shard files.
pub const INDEX_MODE: u32 = 0o600;
/// Transcript handles kept open between flushes before `append` flushes early.
const MAX_OPEN_TRANSCRIPTS: usize = 256;
/// Longest session id accepted from disk (ours are 36-char UUIDs).
const MAX_SESSION_ID_CHARS: usize = 128;

/// When transcript appends reach stable storage. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` every append before it returns.
    Always,
    /// fsync in [`SessionShard::flush`], which the owner core calls periodically.
    #[default]
    Batched,
}

/// Tuning of a [`SessionShard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Transcript fsync policy.
    pub fsync: FsyncPolicy,
    /// Minimum interval between index rewrites caused by appends (ms). `0` rewrites the
    /// index on every append.
    pub index_flush_ms: i64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Batched,
            index_flush_ms: 1000,
        }
    }
}

/// Why `sessions.patch` failed.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch is malformed (unknown field, bad type, label too long, …): the message
    /// is fit for an `INVALID_REQUEST` error. Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// Persisting failed (or the key is not owned by this shard). Nothing was changed.
    /// (With the store thread a staged change's write can fail later, through
    /// [`Self::durability`]: then the change stays in memory and a later index write may
    /// still carry it — the caller reports "may or may not be applied".)
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    #[serde(default)]
    entries: Vec<SessionEntry>,
}

/// The session store of one core: the index rows of the sessions it owns and their
/// transcripts. See the module docs for ownership, layout and durability.
#[derive(Debug)]
pub struct SessionShard {
    state_dir: PathBuf,
    core: usize,
    workers: usize,
    opts: StoreOptions,
    entries: BTreeMap<String, SessionEntry>,
    /// Rows found in this shard's file that it cannot serve (not owned by this core, or
    /// invalid). Written back unchanged so nothing is lost; the next repartition moves
    /// valid ones to their owner.
    carried: Vec<SessionEntry>,
    index_dirty: bool,
    last_index_write_ms: i64,
    /// Latest `now_ms` seen, for operations that take no clock.
    last_now_ms: i64,
    /// Transcripts appended since the last flush.
    open: HashMap<PathBuf, transcript::Open>,
    /// Directories whose entries changed since the last flush (Batched policy).
    dirs_to_sync: BTreeSet<PathBuf>,
    /// The core's durable-write thread, once started ([`Self::start_io_thread`]): flushes
    /// go there in the background and index writes wait on it instead of blocking in place.
    io: Option<StoreIo>,
    /// Staged row changes and the index writes that carry them (with the store thread).
    commits: Commits,
    /// Bumped by every change to a row (readers such as the sessions digest skip work
    /// when it has not moved).
    changes: u64,
}

pub use super::commit::Durability;

/// What [`SessionShard::start_index_write`] did.
pub enum IndexWrite {
    /// Nothing waits for a write, or one is in flight (its completion starts the next).
    Idle,
    /// It ran (or failed) in place: [`SessionShard::durability`] has changed.
    Finished,
    /// Queued as generation `.0`: await the slot, then report it through
    /// [`SessionShard::index_write_done`].
    Queued(
        u64,
        std::sync::Arc<crate::runtime::reply::ReplySlot<io::Result<()>>>,
    ),
}

/// A follow-up that may only happen once the index no longer points at a file.
#[derive(Debug)]
enum AfterIndex {
    /// Rename a transcript that is no longer current (`<sid>.<what>.<ms>.jsonl`).
    Retire {
        path: PathBuf,
        session_id: String,
        what: &'static str,
        now_ms: i64,
    },
}

/// Group commit of staged rows (generation `n` is the n-th index write a reply waits for)
/// and what runs after them.
#[derive(Debug, Default)]
struct Commits {
    gens: Generations,
    /// Follow-ups, each after its generation succeeded.
    after: Vec<(u64, AfterIndex)>,
}

/// `<state_dir>/sessions`.
pub fn index_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sessions")
}

/// `<state_dir>/sessions/index-<core>-of-<workers>.json`.
pub fn index_path(state_dir: &Path, core: usize, workers: usize) -> PathBuf {
    index_dir(state_dir).join(format!("index-{core}-of-{}.json", workers.max(1)))
}

/// `<state_dir>/agents/<agentId>/sessions/<sessionId>.jsonl`.
pub fn transcript_path(state_dir: &Path, agent_id: &str, session_id: &str) -> PathBuf {
    state_dir
        .join("agents")
        .join(agent_id)
        .join("sessions")
        .join(format!("{session_id}.jsonl"))
}

/// Parse `index-<core>-of-<workers>.json`.
fn parse_index_name(name: &str) -> Option<(usize, usize)> {
    let mid = name.strip_prefix("index-")?.strip_suffix(".json")?;
    let (core, workers) = mid.split_once("-of-")?;
    Some((core.parse().ok()?, workers.parse().ok()?))
}

fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A row this store can serve: canonical key, matching safe agent id, safe session id.
fn servable(e: &SessionEntry) -> bool {
    is_canonical(&e.key) && e.agent_id == agent_of(&e.key) && valid_session_id(&e.session_id)
}

/// Keep the newer of two rows for one key (ties keep the one already there).
fn merge_newest(map: &mut BTreeMap<String, SessionEntry>, e: SessionEntry) {
    match map.get(&e.key) {
        Some(old) if old.updated_at_ms >= e.updated_at_ms => {}
        _ => {
            map.insert(e.key.clone(), e);
        }
    }
}

fn read_index(path: &Path) -> io::Result<Vec<SessionEntry>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let file: IndexFile = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("session index {}: {e}", path.display()),
        )
    })?;
    if file.version != INDEX_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "session index {}: unsupported version {}",
                path.display(),
                file.version
            ),
        ));
    }
    Ok(file.entries)
}

fn encode_index(entries: Vec<SessionEntry>) -> io::Result<Vec<u8>> {
    serde_json::to_vec(&IndexFile {
        version: INDEX_VERSION,
        entries,
    })
    .map_err(io::Error::other)
}

fn write_index_file(path: &Path, entries: Vec<SessionEntry>) -> io::Result<()> {
    write_atomic(path, &encode_index(entries)?, INDEX_MODE)
}

fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(transcript::DIR_MODE)
        .create(dir)
}

fn not_owned(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl SessionShard {
    /// Called once at startup, before any worker runs: merges every index shard in
    /// `<state_dir>/sessions` (written under any previous worker count, including leftovers
    /// of an interrupted repartition; duplicate keys keep the newest `updatedAtMs`) and
    /// rewrites them as `index-<c>-of-<workers>.json` for every core `c`, each row on its
    /// owner shard. Only then are the other shard files (and stray temp files) deleted.
    ///
    /// Crash-safe: every new shard is durably written (atomic replace) before any old file
    /// is removed, and a rerun merges whatever mix of old and new files it finds, so a kill
    /// at any point loses no row. An unreadable shard aborts with an error before anything
    /// is written or deleted.
    pub fn repartition(state_dir: &Path, workers: usize) -> io::Result<()> {
        let workers = workers.max(1);
        let dir = index_dir(state_dir);
        create_dir(&dir)?;
        let mut shards = Vec::new();
        let mut temps = Vec::new();
        for ent in fs::read_dir(&dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse_index_name(name).is_some() {
                shards.push(ent.path());
            } else if name.starts_with("index-") && name.contains(".json.tmp.") {
                temps.push(ent.path());
            }
        }
        shards.sort();
        let mut merged = BTreeMap::new();
        for path in &shards {
            for e in read_index(path)? {
                merge_newest(&mut merged, e);
            }
        }
        let mut parts: Vec<Vec<SessionEntry>> = vec![Vec::new(); workers];
        for (key, e) in merged {
            if let Some(part) = parts.get_mut(shard_of(&key, workers)) {
                part.push(e);
            }
        }
        let mut keep = BTreeSet::new();
        for (core, part) in parts.into_iter().enumerate() {
            let path = index_path(state_dir, core, workers);
            write_index_file(&path, part)?;
            keep.insert(path);
        }
        for path in shards.iter().filter(|p| !keep.contains(*p)).chain(&temps) {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        transcript::sync_dir(&dir)
    }

    /// Load core `core`'s shard (of `workers`) with default [`StoreOptions`].
    pub fn load(state_dir: &Path, core: usize, workers: usize) -> io::Result<Self> {
        Self::load_with(state_dir, core, workers, StoreOptions::default())
    }

    /// Load core `core`'s shard (of `workers`): reads `index-<core>-of-<workers>.json`
    /// (missing = empty), keeps the newest row per key, and rebuilds rows whose recorded
    /// transcript length differs from the file on disk (a crash between append and index
    /// flush) from their transcript. [`Self::repartition`] must have run for `workers`.
    pub fn load_with(
        state_dir: &Path,
        core: usize,
        workers: usize,
        opts: StoreOptions,
    ) -> io::Result<Self> {
        let workers = workers.max(1);
        if core >= workers {
            return Err(not_owned(format!(
                "core {core} out of range for {workers} workers"
            )));
        }
        let mut shard = Self {
            state_dir: state_dir.to_path_buf(),
            core,
            workers,
            opts,
            entries: BTreeMap::new(),
            carried: Vec::new(),
            index_dirty: false,
            changes: 0,
            last_index_write_ms: 0,
            last_now_ms: 0,
            open: HashMap::new(),
            dirs_to_sync: BTreeSet::new(),
            io: None,
            commits: Commits::default(),
        };
        let mut carried = BTreeMap::new();
        for e in read_index(&shard.index_path())? {
            if servable(&e) && shard_of(&e.key, workers) == core {
                merge_newest(&mut shard.entries, e);
            } else {
                tracing::warn!(key = %e.key, core, workers, "session index row not servable by this shard; kept on disk");
                merge_newest(&mut carried, e);
            }
        }
        shard.carried = carried.into_values().collect();
        let mut repaired = 0usize;
        for e in shard.entries.values_mut() {
            shard.last_now_ms = shard.last_now_ms.max(e.updated_at_ms);
            let path = transcript_path(state_dir, &e.agent_id, &e.session_id);
            // One unreadable transcript (EACCES, EIO, a directory in its place) must not keep
            // the gateway from serving every other session: its row is kept as indexed.
            let on_disk = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
                Err(err) => {
                    tracing::error!(key = %e.key, path = %path.display(), error = %err, "transcript unreadable; row kept as indexed");
                    continue;
                }
            };
            if on_disk != e.transcript_bytes {
                let (msgs, len) = match transcript::read_all(&path) {
                    Ok(read) => read,
                    Err(err) => {
                        tracing::error!(key = %e.key, path = %path.display(), error = %err, "transcript unreadable; row kept as indexed");
                        continue;
                    }
                };
                e.message_count = 0;
                e.last_message_preview = None;
                for m in &msgs {
                    e.absorb(m, m.ts);
                }
                e.transcript_bytes = len;
                repaired += 1;
            }
            shard.last_now_ms = shard.last_now_ms.max(e.updated_at_ms);
        }
        if repaired > 0 {
            tracing::info!(core, repaired, "rebuilt session rows from transcripts");
            shard.index_dirty = true;
            shard.write_index()?;
        }
        Ok(shard)
    }

    /// This shard's core.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Worker count the shard was loaded for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The options in effect.
    pub fn options(&self) -> StoreOptions {
        self.opts
    }

    /// Change fsync policy / index interval (takes effect on the next append).
    pub fn set_options(&mut self, opts: StoreOptions) {
        self.opts = opts;
    }

    /// This shard's index file.
    pub fn index_path(&self) -> PathBuf {
        index_path(&self.state_dir, self.core, self.workers)
    }

    /// Transcript file of `key`'s current session, if the session exists.
    pub fn transcript_path(&self, key: &str) -> Option<PathBuf> {
        self.entries
            .get(key)
            .map(|e| transcript_path(&self.state_dir, &e.agent_id, &e.session_id))
    }

    /// Whether this shard owns canonical `key`.
    pub fn owns(&self, key: &str) -> bool {
        shard_of(key, self.workers) == self.core
    }

    /// The session `key` (canonical), if it exists.
    pub fn get(&self, key: &str) -> Option<&SessionEntry> {
        self.entries.get(key)
    }

    /// Every session of this shard, ordered by key.
    pub fn list(&self) -> impl Iterator<Item = &SessionEntry> {
        self.entries.values()
    }

    /// A counter that moves whenever any row changes.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Number of sessions in this shard.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The shard has no sessions.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Something awaits [`Self::flush`] (unsynced appends, new directories, index rows).
    pub fn needs_flush(&self) -> bool {
        self.index_dirty || self.open.values().any(|o| o.unsynced) || !self.dirs_to_sync.is_empty()
    }

    fn check_key(&self, key: &str) -> io::Result<()> {
        if !is_canonical(key) {
            return Err(not_owned(format!("not a canonical session key: {key:?}")));
        }
        if !self.owns(key) {
            return Err(not_owned(format!(
                "session key {key:?} belongs to core {}, not {}",
                shard_of(key, self.workers),
                self.core
            )));
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64) {
        self.last_now_ms = self.last_now_ms.max(now_ms);
    }

    fn entry(&self, key: &str) -> io::Result<&SessionEntry> {
        self.entries
            .get(key)
            .ok_or_else(|| io::Error::other(format!("session {key:?} vanished")))
    }

    /// Rewrite this shard's index now (atomic); returns once it is durable. With the I/O
    /// thread the write queues behind earlier background work (so it cannot be overtaken
    /// by an older index) and this waits for it.
    fn write_index(&mut self) -> io::Result<()> {
        let jobs = vec![Job::WriteAtomic {
            path: self.index_path(),
            bytes: self.index_bytes()?,
            mode: INDEX_MODE,
        }];
        match &self.io {
            Some(io) => io.run_blocking(jobs)?,
            None => run_inline(jobs)?,
        }
        self.index_dirty = false;
        self.last_index_write_ms = self.last_now_ms;
        Ok(())
    }

    fn index_bytes(&self) -> io::Result<Vec<u8>> {
        let mut rows: Vec<SessionEntry> = self.entries.values().cloned().collect();
        rows.extend(self.carried.iter().cloned());
        encode_index(rows)
    }

    /// Move fsyncs and index rewrites to a thread of their own (named after the core), so
    /// a slow disk stalls that thread instead of this core's event loop. From then on
    /// [`Self::flush`] only queues work; failures are picked up (and retried) by the next
    /// flush. Row changes that used to be written before a method returned are staged
    /// instead ([`Self::durability`], [`Self::start_index_write`]): the caller waits for
    /// them before it answers.
    pub fn start_io_thread(&mut self) -> io::Result<()> {
        self.start_io_thread_with(std::time::Duration::ZERO)
    }

    /// [`Self::start_io_thread`], every batch delayed by `delay` (tests: a slow disk).
    pub fn start_io_thread_with(&mut self, delay: std::time::Duration) -> io::Result<()> {
        if self.io.is_none() {
            self.io = Some(StoreIo::start_with_delay(
                format!("clawgate-store-{}", self.core),
                delay,
            )?);
        }
        Ok(())
    }

    /// The core's store thread, once started (other durable writes of this core, such as
    /// core 0's device registry, queue on it too).
    pub fn io(&self) -> Option<&StoreIo> {
        self.io.as_ref()
    }

    /// Re-queue what failed in background batches.
    fn absorb_io_failures(&mut self) {
        let Some(io) = &self.io else { return };
        for f in io.take_failures() {
            match f {
                Failure::Write(_) => self.index_dirty = true,
                Failure::Dirs(d) => self.dirs_to_sync.extend(d),
            }
        }
    }

    /// Close every cached transcript handle, returning those with unsynced writes.
    fn take_unsynced(&mut self) -> Vec<(PathBuf, std::fs::File)> {
        std::mem::take(&mut self.open)
            .into_iter()
            .filter(|(_, o)| o.unsynced)
            .map(|(p, o)| (p, o.file))
            .collect()
    }

    /// The background flush batch: transcript fsyncs, directory fsyncs, the index.
    fn flush_jobs(&mut self) -> io::Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let files = self.take_unsynced();
        if !files.is_empty() {
            jobs.push(Job::SyncFiles(files));
        }
        if !self.dirs_to_sync.is_empty() {
            let dirs = std::mem::take(&mut self.dirs_to_sync);
            jobs.push(Job::SyncDirs(dirs.into_iter().collect()));
        }
        if self.index_dirty {
            jobs.push(Job::WriteAtomic {
                path: self.index_path(),
                bytes: self.index_bytes()?,
                mode: INDEX_MODE,
            });
            self.index_dirty = false;
            self.last_index_write_ms = self.last_now_ms;
        }
        Ok(jobs)
    }

    /// Insert/replace a row and persist it: in place (on failure the previous row is
    /// restored), or staged for the owner's next index write (see the module docs).
    fn commit(&mut self, next: SessionEntry, after: Vec<AfterIndex>) -> io::Result<()> {
        let key = next.key.clone();
        self.changes += 1;
        let prev = self.entries.insert(key.clone(), next);
        self.persist_change(&key, prev, after)
    }

    /// `key`'s row changed (its previous value is `prev`): stage it behind the next index
    /// write, or, without a store thread, write the index now (restoring `prev` on failure)
    /// and run `after`.
    fn persist_change(
        &mut self,
        key: &str,
        prev: Option<SessionEntry>,
        after: Vec<AfterIndex>,
    ) -> io::Result<()> {
        if self.io.is_some() {
            let gen = self.commits.gens.stage(key);
            self.commits
                .after
                .extend(after.into_iter().map(|a| (gen, a)));
            self.index_dirty = true;
            return Ok(());
        }
        if let Err(e) = self.write_index() {
            match prev {
                Some(p) => self.entries.insert(key.to_string(), p),
                None => self.entries.remove(key),
            };
            return Err(e);
        }
        for a in after {
            self.run_after(a);
        }
        Ok(())
    }

    fn run_after(&mut self, a: AfterIndex) {
        match a {
            AfterIndex::Retire {
                path,
                session_id,
                what,
                now_ms,
            } => self.retire_transcript(&path, &session_id, what, now_ms),
        }
    }

    /// Whether `key`'s latest change is in the on-disk index. Always
    /// [`Durability::Durable`] without a store thread (changes are written in place).
    pub fn durability(&self, key: &str) -> Durability {
        self.commits.gens.durability(key)
    }

    /// A key whose write failed is staged again, for the next write.
    fn restage_failed(&mut self, key: &str) {
        if let Durability::Failed(_) = self.durability(key) {
            let c = &mut self.commits;
            let gen = c.gens.stage(key);
            for (g, _) in &mut c.after {
                if c.gens.failed(*g) {
                    *g = gen;
                }
            }
        }
    }

    /// Start the index write that carries the staged changes, unless one is already in
    /// flight (its completion starts the next) or nothing waits for one.
    pub fn start_index_write(&mut self) -> IndexWrite {
        if !self.commits.gens.should_start() {
            return IndexWrite::Idle;
        }
        let gen = self.commits.gens.start();
        let bytes = match self.index_bytes() {
            Ok(b) => b,
            Err(e) => {
                self.index_write_done(gen, Err(e));
                return IndexWrite::Finished;
            }
        };
        self.index_dirty = false;
        self.last_index_write_ms = self.last_now_ms;
        let jobs = vec![Job::WriteAtomic {
            path: self.index_path(),
            bytes,
            mode: INDEX_MODE,
        }];
        let Some(io) = &self.io else {
            let r = run_inline(jobs);
            self.index_write_done(gen, r);
            return IndexWrite::Finished;
        };
        match io.run_async(jobs) {
            Ok(slot) => IndexWrite::Queued(gen, slot),
            Err(e) => {
                self.index_write_done(gen, Err(e));
                IndexWrite::Finished
            }
        }
    }

    /// The outcome of index write `gen` (from [`Self::start_index_write`]).
    pub fn index_write_done(&mut self, gen: u64, outcome: io::Result<()>) {
        match outcome {
            Ok(()) => {
                self.commits.gens.finish(gen, Ok(()));
                self.run_due_after();
            }
            Err(e) => {
                tracing::error!(core = self.core, error = %e, "session index write failed");
                self.commits
                    .gens
                    .finish(gen, Err(format!("session index write failed: {e}")));
                // The rows stay in memory; the periodic flush retries the index.
                self.index_dirty = true;
            }
        }
    }

    /// Run the follow-ups whose index write is on disk.
    fn run_due_after(&mut self) {
        let ok = self.commits.gens.ok();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.commits.after)
            .into_iter()
            .partition(|(g, _)| *g <= ok);
        self.commits.after = later;
        for (_, a) in due {
            self.run_after(a);
        }
    }

    /// Everything staged is on disk (a blocking flush wrote the index after it).
    fn all_staged_durable(&mut self) {
        self.commits.gens.all_durable();
        self.run_due_after();
    }

    /// Get or create the session `key` (canonical, owned by this core). A new session gets
    /// a fresh UUID v4 `sessionId` and is in the on-disk index before this returns (staged,
    /// with the store thread).
    pub fn ensure(&mut self, key: &str, now_ms: i64) -> io::Result<&SessionEntry> {
        self.check_key(key)?;
        self.tick(now_ms);
        if self.entries.contains_key(key) {
            self.restage_failed(key);
        } else {
            let e = SessionEntry::new(key, agent_of(key), uuid_v4(), now_ms);
            self.commit(e, Vec::new())?;
        }
        self.entry(key)
    }

    /// Apply `sessions.patch` fields to `key` (creating the session if needed): `label`
    /// (trimmed, 1..=100 chars), `model`, `thinkingLevel` (one of [`THINKING_LEVELS`]),
    /// `fastMode`, `pinned`, `archived`; `null` clears. `key`/`agentId`/`sessionKey` are
    /// ignored (they address the session); any other field is [`PatchError::Invalid`].
    /// Validation happens before anything changes; a changed row is persisted before this
    /// returns (staged, with the store thread).
    pub fn patch(
        &mut self,
        key: &str,
        patch: &Value,
        now_ms: i64,
    ) -> Result<&SessionEntry, PatchError> {
        self.check_key(key)?;
        self.tick(now_ms);
        let existing = self.entries.get(key).cloned();
        let mut next = existing
            .clone()
            .unwrap_or_else(|| SessionEntry::new(key, agent_of(key), uuid_v4(), now_ms));
        let was_archived = next.archived;
        let mut changed = next.apply_patch(patch).map_err(PatchError::Invalid)?;
        // As the real gateway: archiving unpins, and an archived session cannot be pinned.
        if next.archived && next.pinned {
            if was_archived && patch.get("pinned") == Some(&serde_json::Value::Bool(true)) {
                return Err(PatchError::Invalid(
                    "Cannot pin an archived session.".to_string(),
                ));
            }
            next.pinned = false;
        }
        // When and why it was archived, as the real gateway records (the CLI's `sessions
        // archive` checks `entry.archivedAt`).
        if next.archived && !next.settings.contains_key("archivedAt") {
            next.settings
                .insert("archivedAt".into(), serde_json::json!(now_ms));
            next.settings
                .insert("archiveReason".into(), serde_json::json!("manual"));
            changed = true;
        } else if !next.archived {
            changed |= next.settings.remove("archivedAt").is_some();
            changed |= next.settings.remove("archiveReason").is_some();
        }
        if existing.is_none() || changed {
            next.updated_at_ms = next.updated_at_ms.max(now_ms);
            self.commit(next, Vec::new())?;
        } else {
            self.restage_failed(key);
        }
        Ok(self.entry(key)?)
    }

    /// Change a session's row through `f` (run state, tokens, display name, …), creating
    /// the session if needed. Identity fields (`key`, `sessionId`, `agentId`, `createdAtMs`,
    /// `messageCount`, `transcriptBytes`) cannot be changed this way. The row is persisted
    /// like an append's: within `index_flush_ms` or at the next `flush`.
    pub fn update(
        &mut self,
        key: &str,
        now_ms: i64,
        f: impl FnOnce(&mut SessionEntry),
    ) -> io::Result<&SessionEntry> {
        self.ensure(key, now_ms)?;
        self.changes += 1;
        if let Some(e) = self.entries.get_mut(key) {
            let mut next = e.clone();
            f(&mut next);
            next.key.clone_from(&e.key);
            next.session_id.clone_from(&e.session_id);
            next.agent_id.clone_from(&e.agent_id);
            next.created_at_ms = e.created_at_ms;
            next.message_count = e.message_count;
            next.transcript_bytes = e.transcript_bytes;
            next.updated_at_ms = next.updated_at_ms.max(e.updated_at_ms).max(now_ms);
            *e = next;
            self.index_dirty = true;
        }
        self.maybe_write_index(now_ms);
        self.entry(key)
    }

    fn maybe_write_index(&mut self, now_ms: i64) {
        if self.io.is_some() {
            // The periodic flush (≤ 1 s) writes rows in the background; writing here would
            // make an append wait for the disk.
            return;
        }
        if self.index_dirty
            && now_ms.saturating_sub(self.last_index_write_ms) >= self.opts.index_flush_ms
        {
            if let Err(e) = self.write_index() {
                // Rows are recoverable from transcripts; retried by the next flush.
                tracing::warn!(core = self.core, error = %e, "session index write failed");
            }
        }
    }

    /// Append `msg` to `key`'s transcript (creating the session, and persisting it in the
    /// index, if needed) and fold it into the row (count, preview, `updatedAt`, run state).
    ///
    /// When this returns `Ok` the line has been written with one `write(2)`: it survives
    /// a process kill. With [`FsyncPolicy::Always`] it has also been fsynced; with
    /// [`FsyncPolicy::Batched`] it reaches stable storage at the next [`Self::flush`]. On
    /// `Err` the message may or may not be in the transcript (a torn line is skipped by
    /// readers). The row is written to the index at most every `index_flush_ms` (an index
    /// write failure here is only logged: the line is safe and the row is rebuilt from the
    /// transcript at load; `flush` reports it).
    pub fn append(&mut self, key: &str, msg: &TranscriptMessage, now_ms: i64) -> io::Result<()> {
        self.ensure(key, now_ms)?;
        let path = self
            .transcript_path(key)
            .ok_or_else(|| io::Error::other("session vanished"))?;
        if !self.open.contains_key(&path) && self.open.len() >= MAX_OPEN_TRANSCRIPTS {
            self.sync_transcripts()?;
        }
        let open = match self.open.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut dirs = Vec::new();
                let opened = transcript::open_append(&path, &mut dirs)?;
                match self.opts.fsync {
                    FsyncPolicy::Always => {
                        if let Err(e) = dirs.iter().try_for_each(|d| transcript::sync_dir(d)) {
                            // Not retried by reopening (the file now exists): leave it to flush.
                            self.dirs_to_sync.extend(dirs);
                            return Err(e);
                        }
                    }
                    FsyncPolicy::Batched => self.dirs_to_sync.extend(dirs),
                }
                v.insert(opened)
            }
        };
        if let Err(e) = transcript::append_line(open, msg) {
            self.open.remove(&path);
            return Err(e);
        }
        let len = open.len;
        if self.opts.fsync == FsyncPolicy::Always {
            if let Err(e) = open.file.sync_data() {
                self.open.remove(&path);
                return Err(e);
            }
            open.unsynced = false;
        }
        self.changes += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.absorb(msg, now_ms);
            e.transcript_bytes = len;
        }
        self.index_dirty = true;
        self.maybe_write_index(now_ms);
        Ok(())
    }

    /// The last `limit` messages of `key`'s current transcript, oldest first (empty for an
    /// unknown session). Undecodable lines (a torn tail after a crash) are skipped.
    pub fn history(&self, key: &str, limit: usize) -> io::Result<Vec<TranscriptMessage>> {
        match self.transcript_path(key) {
            Some(path) => transcript::read_tail(&path, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Start a new transcript for `key`: new `sessionId`, empty history, run state and
    /// token counts cleared; label/model/thinkingLevel/fastMode/pinned/archived and
    /// `createdAtMs` kept. The old transcript stays on disk, renamed
    /// `<oldSessionId>.reset.<now_ms>.jsonl`. The new row is persisted (with the store thread:
    /// its staged write is on disk) before the rename,
    /// so a crash in between only leaves the old transcript under its original name. An
    /// unknown key is created instead.
    pub fn reset(&mut self, key: &str, now_ms: i64) -> io::Result<&SessionEntry> {
        self.check_key(key)?;
        self.tick(now_ms);
        let Some(old) = self.entries.get(key).cloned() else {
            return self.ensure(key, now_ms);
        };
        let old_path = transcript_path(&self.state_dir, &old.agent_id, &old.session_id);
        self.close_transcript(&old_path)?;
        let mut next = SessionEntry::new(key, &old.agent_id, uuid_v4(), now_ms);
        next.created_at_ms = old.created_at_ms;
        next.updated_at_ms = old.updated_at_ms.max(now_ms);
        next.label = old.label.clone();
        next.model = old.model.clone();
        next.thinking_level = old.thinking_level.clone();
        next.fast_mode = old.fast_mode;
        next.pinned = old.pinned;
        next.archived = old.archived;
        next.display_name = old.display_name.clone();
        next.settings = old.settings.clone();
        // The fresh session's clock starts now (as the real gateway's reset entry): carrying
        // the old interaction time would let an idle policy reset it again at once.
        next.last_interaction_at_ms = Some(now_ms);
        // The old transcript keeps its name until no durable index row points at it.
        let retire = AfterIndex::Retire {
            path: old_path,
            session_id: old.session_id.clone(),
            what: "reset",
            now_ms,
        };
        self.commit(next, vec![retire])?;
        self.entry(key)
    }

    /// Remove `key`'s row (persisted before returning; staged with the store thread, the
    /// rename waiting for it). With `archive` (the real gateway's `deleteTranscript`,
    /// default true) its transcript is kept renamed `<sessionId>.deleted.<now_ms>.jsonl`,
    /// as the real gateway archives it; without, it stays where it is. Returns `None` if
    /// the session did not exist, else the archived path (if there was a transcript).
    pub fn delete(
        &mut self,
        key: &str,
        archive: bool,
        now_ms: i64,
    ) -> io::Result<Option<Option<PathBuf>>> {
        self.check_key(key)?;
        self.changes += 1;
        let Some(old) = self.entries.remove(key) else {
            return Ok(None);
        };
        let path = transcript_path(&self.state_dir, &old.agent_id, &old.session_id);
        let archived = (archive && path.exists())
            .then(|| path.with_file_name(format!("{}.deleted.{now_ms}.jsonl", old.session_id)));
        let after = if archived.is_some() {
            if let Err(e) = self.close_transcript(&path) {
                tracing::warn!(key, error = %e, "transcript sync before delete failed");
            }
            vec![AfterIndex::Retire {
                path: path.clone(),
                session_id: old.session_id.clone(),
                what: "deleted",
                now_ms,
            }]
        } else {
            Vec::new()
        };
        self.persist_change(key, Some(old), after)?;
        self.open.remove(&path);
        Ok(Some(archived))
    }

    /// Session maintenance: drop rows idle (by `updatedAtMs`) for longer than
    /// `prune_after_ms`, then, if more than `max_entries` remain, the least recently
    /// updated ones. Both limits apply to this shard (divide a global cap by the worker
    /// count). Dropped sessions' transcripts are kept, renamed
    /// `<sessionId>.deleted.<now_ms>.jsonl`. Returns how many rows were removed; the index
    /// is persisted before returning when any were (staged with the store thread; the
    /// renames wait for it). Rows for which `busy` is true (a run queued or running) are
    /// never pruned and do not count against the cap.
    pub fn maintain(
        &mut self,
        now_ms: i64,
        prune_after_ms: Option<i64>,
        max_entries: Option<usize>,
        busy: &dyn Fn(&str) -> bool,
    ) -> io::Result<usize> {
        self.tick(now_ms);
        let mut victims: BTreeSet<String> = BTreeSet::new();
        if let Some(idle) = prune_after_ms {
            victims.extend(
                self.entries
                    .values()
                    .filter(|e| now_ms.saturating_sub(e.updated_at_ms) > idle && !busy(&e.key))
                    .map(|e| e.key.clone()),
            );
        }
        if let Some(max) = max_entries {
            let mut rest: Vec<&SessionEntry> = self
                .entries
                .values()
                .filter(|e| !victims.contains(&e.key) && !busy(&e.key))
                .collect();
            if rest.len() > max {
                rest.sort_by(|a, b| (a.updated_at_ms, &a.key).cmp(&(b.updated_at_ms, &b.key)));
                let extra = rest.len() - max;
                let oldest: Vec<String> = rest.iter().take(extra).map(|e| e.key.clone()).collect();
                victims.extend(oldest);
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let removed: Vec<SessionEntry> = victims
            .iter()
            .filter_map(|k| {
                self.changes += 1;
                self.entries.remove(k)
            })
            .collect();
        if self.io.is_some() {
            for r in &removed {
                let path = transcript_path(&self.state_dir, &r.agent_id, &r.session_id);
                if let Err(e) = self.close_transcript(&path) {
                    tracing::warn!(key = %r.key, error = %e, "transcript sync before prune failed");
                }
                let retire = AfterIndex::Retire {
                    path,
                    session_id: r.session_id.clone(),
                    what: "deleted",
                    now_ms,
                };
                self.persist_change(&r.key, None, vec![retire])?;
            }
            return Ok(removed.len());
        }
        if let Err(e) = self.write_index() {
            for r in removed {
                self.changes += 1;
                self.entries.insert(r.key.clone(), r);
            }
            return Err(e);
        }
        for r in &removed {
            let path = transcript_path(&self.state_dir, &r.agent_id, &r.session_id);
            if let Err(e) = self.close_transcript(&path) {
                tracing::warn!(key = %r.key, error = %e, "transcript sync before prune failed");
            }
            self.retire_transcript(&path, &r.session_id, "deleted", now_ms);
        }
        Ok(removed.len())
    }

    /// fsync transcripts appended since the last call (all policies: cheap when already
    /// synced), fsync directories that gained entries, rewrite the index if rows changed,
    /// and close cached transcript handles. Call periodically (≈ `index_flush_ms`) and on
    /// shutdown. Every step is attempted; the first error is returned.
    ///
    /// With the I/O thread ([`Self::start_io_thread`]) this only queues the work and returns
    /// (skipping the round while the previous flush batch is still running, so a slow disk
    /// gets bigger batches rather than a growing queue). Failed index writes and directory
    /// fsyncs are retried by a later flush; a failed transcript fsync is logged, not retried
    /// (see [`super::io_thread::Job::SyncFiles`]).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.io.is_some() {
            self.absorb_io_failures();
            if let Some(io) = &self.io {
                io.pump();
            }
            if self.io.as_ref().is_some_and(StoreIo::is_busy) {
                return Ok(());
            }
            let jobs = self.flush_jobs()?;
            if let Some(io) = &self.io {
                io.submit_flush(jobs)?;
            }
            return Ok(());
        }
        let mut first: Option<io::Error> = None;
        if let Err(e) = self.sync_transcripts() {
            first.get_or_insert(e);
        }
        for dir in std::mem::take(&mut self.dirs_to_sync) {
            match transcript::sync_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.dirs_to_sync.insert(dir);
                    first.get_or_insert(e);
                }
            }
        }
        if self.index_dirty {
            if let Err(e) = self.write_index() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Flush everything pending and wait until it is on disk (shutdown). Without the I/O
    /// thread this is [`Self::flush`]. A background write that was still queued and failed
    /// is only known once the thread's queue has drained, so a second round retries it.
    pub fn flush_blocking(&mut self) {
        if self.io.is_none() {
            if let Err(e) = self.flush() {
                tracing::warn!(core = self.core, error = %e, "session store flush failed");
            }
            return;
        }
        for _ in 0..2 {
            self.absorb_io_failures();
            let staged = self.commits.gens.any_staged() || !self.commits.after.is_empty();
            // A staged change whose write is still in flight is rewritten here: that write's
            // outcome would only reach a task that no longer runs.
            self.index_dirty |= staged;
            let jobs = match self.flush_jobs() {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(core = self.core, error = %e, "session index serialization failed");
                    Vec::new()
                }
            };
            let writes_index = jobs.iter().any(|j| matches!(j, Job::WriteAtomic { .. }));
            let r = match &self.io {
                Some(io) => io.run_blocking(jobs),
                None => Ok(()),
            };
            match r {
                Ok(()) if writes_index => self.all_staged_durable(),
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(core = self.core, error = %e, "session store flush failed");
                }
            }
        }
    }

    /// fsync and close every cached transcript handle. Handles that fail to sync stay
    /// cached (and unsynced) for the next attempt.
    fn sync_transcripts(&mut self) -> io::Result<()> {
        if self.io.is_some() {
            let files = self.take_unsynced();
            return match &self.io {
                Some(io) if !files.is_empty() => io.submit(vec![Job::SyncFiles(files)]),
                _ => Ok(()),
            };
        }
        let mut first = None;
        for (path, open) in std::mem::take(&mut self.open) {
            if open.unsynced {
                if let Err(e) = open.file.sync_data() {
                    first.get_or_insert(e);
                    self.open.insert(path, open);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// fsync (if needed) and close one cached transcript handle.
    fn close_transcript(&mut self, path: &Path) -> io::Result<()> {
        if let Some(open) = self.open.remove(path) {
            if open.unsynced {
                match &self.io {
                    // The handle keeps the inode: a rename that follows on this core does
                    // not change what gets synced.
                    Some(io) => {
                        io.submit(vec![Job::SyncFiles(vec![(path.to_path_buf(), open.file)])])?
                    }
                    None => open.file.sync_data()?,
                }
            }
        }
        Ok(())
    }

    fn note_dir_change(&mut self, file: &Path) {
        let Some(dir) = file.parent() else { return };
        match self.opts.fsync {
            FsyncPolicy::Always => {
                if let Err(e) = transcript::sync_dir(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "directory fsync failed");
                    self.dirs_to_sync.insert(dir.to_path_buf());
                }
            }
            FsyncPolicy::Batched => {
                self.dirs_to_sync.insert(dir.to_path_buf());
            }
        }
    }

    /// Rename a transcript that is no longer current to `<sid>.<what>.<ms>.jsonl`. Best
    /// effort: on failure it simply stays under its old (no longer referenced) name.
    fn retire_transcript(&mut self, path: &Path, session_id: &str, what: &str, now_ms: i64) {
        let to = path.with_file_name(format!("{session_id}.{what}.{now_ms}.jsonl"));
        match fs::rename(path, &to) {
            Ok(()) => self.note_dir_change(&to),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(from = %path.display(), error = %e, "could not rename old transcript");
            }
        }
    }
}

impl Drop for SessionShard {
    fn drop(&mut self) {
        if self.io.is_some() {
            self.flush_blocking();
            // Joins the thread once its queue is empty.
            self.io = None;
            return;
        }
        if self.needs_flush() {
            if let Err(e) = self.flush() {
                tracing::warn!(core = self.core, error = %e, "session store flush on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{random_bytes, to_hex};
    use serde_json::json;

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "clawgate-sessions-{tag}-{}-{}",
            std::process::id(),
            to_hex(&random_bytes::<6>())
        ))
    }

    fn msg(id: &str, role: &str, text: &str, ts: i64) -> TranscriptMessage {
        TranscriptMessage {
            id: id.into(),
            role: role.into(),
            text: text.into(),
            ts,
            run_id: None,
            stop_reason: None,
            error: None,
            usage: None,
        }
    }

    fn shard(dir: &Path) -> SessionShard {
        SessionShard::repartition(dir, 1).unwrap();
        SessionShard::load(dir, 0, 1).unwrap()
    }

    #[test]
    fn with_the_io_thread_new_rows_are_staged_then_durable_and_the_rest_after_flush() {
        let dir = tmp("io-thread");
        let mut s = shard(&dir);
        s.start_io_thread().unwrap();
        let key = "agent:main:main";
        s.ensure(key, 1_000).unwrap();
        // A new session's row is staged, not yet on disk: the owner starts the write.
        assert_eq!(s.durability(key), Durability::Pending);
        assert!(read_index(&s.index_path()).unwrap().is_empty());
        commit_now(&mut s);
        assert_eq!(s.durability(key), Durability::Durable);
        let on_disk = read_index(&s.index_path()).unwrap();
        assert_eq!(on_disk.len(), 1);
        for i in 0..20 {
            s.append(
                key,
                &msg(&format!("m{i}"), "user", &format!("hello {i}"), 2_000 + i),
                2_000 + i,
            )
            .unwrap();
        }
        // Appends are readable at once; the periodic flush only queues the fsyncs and the
        // row update, and the final flush on drop waits for them.
        assert_eq!(s.history(key, 100).unwrap().len(), 20);
        s.flush().unwrap();
        s.patch(key, &json!({"label": "io"}), 3_000).unwrap();
        drop(s);
        let s = SessionShard::load(&dir, 0, 1).unwrap();
        let e = s.get(key).unwrap();
        assert_eq!(e.message_count, 20);
        assert_eq!(e.label.as_deref(), Some("io"));
        assert_eq!(s.history(key, 100).unwrap().len(), 20);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// What the owner core does: start the staged write, await it, report it.
    fn commit_now(s: &mut SessionShard) -> bool {
        let IndexWrite::Queued(gen, slot) = s.start_index_write() else {
            return false;
        };
        let outcome = block_on(slot.wait());
        s.index_write_done(gen, outcome);
        true
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn staged_changes_share_one_write_and_follow_ups_wait_for_it() {
        let dir = tmp("group");
        let mut s = shard(&dir);
        s.start_io_thread_with(std::time::Duration::from_millis(50))
            .unwrap();
        let (a, b) = ("agent:main:a", "agent:main:b");
        s.append(a, &msg("1", "user", "one", 1_000), 1_000).unwrap();
        let IndexWrite::Queued(gen, slot) = s.start_index_write() else {
            panic!("nothing queued")
        };
        // A write is in flight: nothing else starts; `b` waits for the next one.
        s.ensure(b, 1_001).unwrap();
        assert!(matches!(s.start_index_write(), IndexWrite::Idle));
        let old = s.get(a).unwrap().session_id.clone();
        let old_path = s.transcript_path(a).unwrap();
        s.reset(a, 1_002).unwrap();
        // The old transcript keeps its name until an index without it is on disk.
        assert!(old_path.exists());
        let outcome = block_on(slot.wait());
        s.index_write_done(gen, outcome);
        assert_eq!(s.durability(b), Durability::Pending);
        assert_eq!(s.durability(a), Durability::Pending);
        assert!(old_path.exists());
        assert!(commit_now(&mut s), "one more write carries both");
        assert_eq!(s.durability(a), Durability::Durable);
        assert_eq!(s.durability(b), Durability::Durable);
        assert!(!old_path.exists(), "retired after the index moved on");
        let retired = fs::read_dir(old_path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with(&format!("{old}.reset."))
            });
        assert!(retired);
        // Delete: the row leaves the index before the transcript is archived.
        let b_path = transcript_path(&dir, "main", &s.get(b).unwrap().session_id);
        s.append(b, &msg("2", "user", "two", 1_003), 1_003).unwrap();
        let archived = s.delete(b, true, 1_004).unwrap().unwrap().unwrap();
        assert!(b_path.exists());
        assert!(!archived.exists());
        assert!(commit_now(&mut s));
        assert!(!b_path.exists());
        assert!(archived.exists());
        let on_disk: Vec<String> = read_index(&s.index_path())
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(on_disk, vec![a.to_string()]);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_index_write_fails_its_waiters_and_a_retry_writes_again() {
        let dir = tmp("fail");
        let mut s = shard(&dir);
        s.start_io_thread().unwrap();
        let key = "agent:main:main";
        s.ensure(key, 1_000).unwrap();
        // Make the atomic replace fail: the index path is a non-empty directory.
        let index = s.index_path();
        fs::remove_file(&index).unwrap();
        fs::create_dir_all(index.join("blocker")).unwrap();
        assert!(commit_now(&mut s));
        assert!(matches!(s.durability(key), Durability::Failed(_)));
        // Nothing new is started by itself…
        assert!(matches!(s.start_index_write(), IndexWrite::Idle));
        fs::remove_dir_all(&index).unwrap();
        // …until the key is touched again (a retried send).
        s.ensure(key, 1_001).unwrap();
        assert_eq!(s.durability(key), Durability::Pending);
        assert!(commit_now(&mut s));
        assert_eq!(s.durability(key), Durability::Durable);
        assert_eq!(read_index(&index).unwrap().len(), 1);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shutdown_flush_makes_staged_rows_durable_and_runs_follow_ups() {
        let dir = tmp("staged-drop");
        let mut s = shard(&dir);
        s.start_io_thread().unwrap();
        let key = "agent:main:main";
        s.append(key, &msg("1", "user", "one", 1_000), 1_000)
            .unwrap();
        commit_now(&mut s);
        let old_path = s.transcript_path(key).unwrap();
        s.reset(key, 2_000).unwrap();
        s.ensure("agent:main:other", 2_001).unwrap();
        s.flush_blocking();
        assert_eq!(s.durability("agent:main:other"), Durability::Durable);
        assert!(!old_path.exists());
        drop(s);
        let s = SessionShard::load(&dir, 0, 1).unwrap();
        assert_eq!(s.len(), 2);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ensure_persists_new_sessions_immediately() {
        let d = tmp("ensure");
        let mut s = shard(&d);
        s.set_options(StoreOptions {
            fsync: FsyncPolicy::Batched,
            index_flush_ms: i64::MAX,
        });
        let sid = s.ensure("agent:dev:main", 10).unwrap().session_id.clone();
        assert_eq!(sid.len(), 36);
        assert_eq!(s.ensure("agent:dev:main", 20).unwrap().session_id, sid);
        // Visible on disk without a flush.
        let other = SessionShard::load(&d, 0, 1).unwrap();
        assert_eq!(other.get("agent:dev:main").unwrap().session_id, sid);
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(s.index_path()).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o600);
        assert!(
            s.ensure("main", 1).is_err(),
            "short keys are the caller's to canonicalize"
        );
        drop(other);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keys_of_other_cores_are_refused() {
        let d = tmp("owner");
        SessionShard::repartition(&d, 3).unwrap();
        let mut s = SessionShard::load(&d, 0, 3).unwrap();
        let foreign = (0..)
            .map(|i| format!("agent:dev:k{i}"))
            .find(|k| shard_of(k, 3) != 0)
            .unwrap();
        assert!(s.ensure(&foreign, 1).is_err());
        assert!(matches!(
            s.patch(&foreign, &json!({}), 1),
            Err(PatchError::Io(_))
        ));
        assert!(SessionShard::load(&d, 3, 3).is_err());
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn patch_validates_and_persists() {
        let d = tmp("patch");
        let mut s = shard(&d);
        let e = s
            .patch("agent:dev:main", &json!({"key":"main","label":"spec"}), 100)
            .unwrap();
        assert_eq!(e.label.as_deref(), Some("spec"));
        assert_eq!(e.updated_at_ms, 100);
        let long = "x".repeat(MAX_LABEL_CHARS + 1);
        for bad in [
            json!({"label": long}),
            json!({"nope": true}),
            json!({"model": 1}),
        ] {
            let r = s.patch("agent:dev:main", &bad, 200);
            assert!(
                matches!(&r, Err(PatchError::Invalid(m)) if !m.is_empty()),
                "{bad}: {r:?}"
            );
        }
        // A rejected patch on an unknown key creates nothing.
        assert!(s.patch("agent:dev:other", &json!({"bad":1}), 300).is_err());
        assert!(s.get("agent:dev:other").is_none());
        s.patch(
            "agent:dev:main",
            &json!({"model":"openai/x","thinkingLevel":"low"}),
            400,
        )
        .unwrap();
        let reloaded = SessionShard::load(&d, 0, 1).unwrap();
        let e = reloaded.get("agent:dev:main").unwrap();
        assert_eq!(e.label.as_deref(), Some("spec"));
        assert_eq!(e.model.as_deref(), Some("openai/x"));
        assert_eq!(e.thinking_level.as_deref(), Some("low"));
        assert_eq!(e.updated_at_ms, 400);
        assert_eq!(reloaded.len(), 1);
        drop((s, reloaded));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_line_is_skipped_and_row_repaired_at_load() {
        let d = tmp("torn");
        let mut s = shard(&d);
        s.set_options(StoreOptions {
            fsync: FsyncPolicy::Batched,
            index_flush_ms: i64::MAX,
        });
        let key = "agent:dev:main";
        for i in 0..5 {
            s.append(
                key,
                &msg(&format!("m{i}"), "user", &format!("hello {i}"), i),
                1000 + i,
            )
            .unwrap();
        }
        let path = s.transcript_path(key).unwrap();
        // Crash: no flush, no drop (index still says 0 messages), then a torn tail.
        std::mem::forget(s);
        {
            use std::io::Write as _;
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(br#"{"id":"m5","role":"us"#).unwrap();
        }
        let mut s = SessionShard::load(&d, 0, 1).unwrap();
        let e = s.get(key).unwrap();
        assert_eq!(e.message_count, 5);
        assert_eq!(e.last_message_preview.as_deref(), Some("hello 4"));
        let ids: Vec<String> = s
            .history(key, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
        s.append(key, &msg("m6", "assistant", "after", 7), 2000)
            .unwrap();
        let ids: Vec<String> = s
            .history(key, 2)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["m4", "m6"]);
        s.flush().unwrap();
        assert!(!s.needs_flush());
        drop(s);
        let s = SessionShard::load(&d, 0, 1).unwrap();
        assert_eq!(s.get(key).unwrap().message_count, 6);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn always_policy_and_update() {
        let d = tmp("always");
        SessionShard::repartition(&d, 1).unwrap();
        let mut s = SessionShard::load_with(
            &d,
            0,
            1,
            StoreOptions {
                fsync: FsyncPolicy::Always,
                index_flush_ms: 0,
            },
        )
        .unwrap();
        let key = "agent:dev:main";
        s.append(key, &msg("a", "user", "hi", 1), 10).unwrap();
        assert!(
            !s.needs_flush(),
            "index_flush_ms 0 writes the index on append"
        );
        let e = s
            .update(key, 20, |e| {
                e.last_run_status = Some("running".into());
                e.session_id = "hijack".into();
                e.message_count = 99;
            })
            .unwrap();
        assert_eq!(e.last_run_status.as_deref(), Some("running"));
        assert_ne!(e.session_id, "hijack");
        assert_eq!(e.message_count, 1);
        assert_eq!(e.updated_at_ms, 20);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unreadable_transcript_does_not_stop_the_shard_from_loading() {
        let d = tmp("unreadable");
        let mut s = shard(&d);
        s.append("agent:dev:ok", &msg("m", "user", "x", 1), 1)
            .unwrap();
        s.append("agent:dev:bad", &msg("m", "user", "x", 1), 1)
            .unwrap();
        s.flush_blocking();
        let bad = s.transcript_path("agent:dev:bad").unwrap();
        drop(s);
        // A directory where the transcript was, bigger than the index says: read fails.
        fs::remove_file(&bad).unwrap();
        fs::create_dir_all(bad.join("x")).unwrap();
        let reloaded = SessionShard::load(&d, 0, 1).unwrap();
        assert_eq!(reloaded.len(), 2);
        assert_eq!(reloaded.get("agent:dev:ok").unwrap().message_count, 1);
        drop(reloaded);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn maintenance_prunes_idle_then_caps() {
        let d = tmp("maint");
        let mut s = shard(&d);
        for i in 0..6i64 {
            let key = format!("agent:dev:s{i}");
            s.append(&key, &msg("m", "user", "x", i), i * 100).unwrap();
        }
        let old_path = s.transcript_path("agent:dev:s0").unwrap();
        let old_sid = s.get("agent:dev:s0").unwrap().session_id.clone();
        let idle = |_: &str| false;
        assert_eq!(s.maintain(1000, None, None, &idle).unwrap(), 0);
        // Idle > 650 ms at t=1000: s0 (0), s1 (100), s2 (200), s3 (300); s1 has a run.
        let s1_busy = |k: &str| k == "agent:dev:s1";
        assert_eq!(s.maintain(1000, Some(650), None, &s1_busy).unwrap(), 3);
        let keys: Vec<&str> = s.list().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["agent:dev:s1", "agent:dev:s4", "agent:dev:s5"]);
        // The busy row is outside the cap too: s4 and s5 are both kept under a cap of 2.
        assert_eq!(s.maintain(1000, None, Some(2), &s1_busy).unwrap(), 0);
        assert_eq!(s.maintain(1000, Some(650), None, &idle).unwrap(), 1);
        assert!(!old_path.exists());
        assert!(old_path
            .with_file_name(format!("{old_sid}.deleted.1000.jsonl"))
            .exists());
        s.append("agent:dev:s6", &msg("m", "user", "x", 1), 1100)
            .unwrap();
        assert_eq!(s.maintain(1200, None, Some(1), &idle).unwrap(), 2);
        let keys: Vec<&str> = s.list().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["agent:dev:s6"]);
        let reloaded = SessionShard::load(&d, 0, 1).unwrap();
        assert_eq!(reloaded.len(), 1);
        drop((s, reloaded));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn delete_with_and_without_transcript() {
        let d = tmp("delete");
        let mut s = shard(&d);
        s.append("agent:dev:a", &msg("m", "user", "x", 1), 1)
            .unwrap();
        s.append("agent:dev:b", &msg("m", "user", "x", 1), 1)
            .unwrap();
        let pa = s.transcript_path("agent:dev:a").unwrap();
        let pb = s.transcript_path("agent:dev:b").unwrap();
        assert_eq!(s.delete("agent:dev:a", false, 5).unwrap(), Some(None));
        let archived = s.delete("agent:dev:b", true, 5).unwrap().unwrap().unwrap();
        assert_eq!(s.delete("agent:dev:b", true, 6).unwrap(), None);
        assert!(pa.exists(), "kept in place without deleteTranscript");
        assert!(!pb.exists());
        assert!(archived.exists(), "archived, not destroyed");
        assert!(archived.to_string_lossy().ends_with(".deleted.5.jsonl"));
        let reloaded = SessionShard::load(&d, 0, 1).unwrap();
        assert!(reloaded.is_empty());
        drop((s, reloaded));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_or_unknown_index_is_an_error_not_data_loss() {
        let d = tmp("corrupt");
        let p = index_path(&d, 0, 1);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"{not json").unwrap();
        assert!(SessionShard::load(&d, 0, 1).is_err());
        assert!(SessionShard::repartition(&d, 2).is_err());
        assert!(p.exists(), "nothing deleted after a failed repartition");
        fs::write(&p, br#"{"version":9,"entries":[]}"#).unwrap();
        assert!(SessionShard::load(&d, 0, 1).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unservable_rows_are_carried_not_dropped() {
        let d = tmp("carry");
        let p = index_path(&d, 0, 1);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(
            &p,
            serde_json::to_vec(&json!({"version":1,"entries":[
                {"key":"agent:dev:ok","sessionId":"s1","agentId":"dev","createdAtMs":1,"updatedAtMs":1},
                {"key":"agent:dev:evil","sessionId":"../../etc","agentId":"dev","createdAtMs":1,"updatedAtMs":1}
            ]}))
            .unwrap(),
        )
        .unwrap();
        let mut s = SessionShard::load(&d, 0, 1).unwrap();
        assert_eq!(s.len(), 1);
        s.ensure("agent:dev:new", 5).unwrap();
        let raw = fs::read_to_string(&p).unwrap();
        assert!(
            raw.contains("../../etc"),
            "unservable row written back: {raw}"
        );
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn index_name_parsing() {
        assert_eq!(parse_index_name("index-0-of-1.json"), Some((0, 1)));
        assert_eq!(parse_index_name("index-12-of-16.json"), Some((12, 16)));
        assert_eq!(parse_index_name("index-0-of-1.json.tmp.1.ab"), None);
        assert_eq!(parse_index_name("index-x-of-1.json"), None);
        assert_eq!(parse_index_name("sessions.json"), None);
    }
}
