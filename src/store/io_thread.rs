//! A core's durable-write thread: fsyncs and atomic file replacements run here, in FIFO
//! order, so a slow disk stalls this thread instead of the core's event loop (and every
//! socket on it).
//!
//! Owns: the thread and its bounded job queue. Jobs carry everything they need (file
//! handles, paths, serialized bytes): the thread never sees the core's state, and the core
//! never blocks on it except where a caller must know the write is durable before it
//! answers ([`StoreIo::run_blocking`]). Must not touch: sockets, session maps.
//!
//! Ordering: one thread, one queue, so jobs finish in submission order. A background batch
//! and a later blocking write of the same file can therefore never land out of order (an
//! older index can never replace a newer one).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::atomic::{sync_dir, write_atomic};
use crate::runtime::reply::ReplySlot;

/// Batches that may wait in the queue. Past it, batches wait in the submitting core's
/// overflow (in order, re-offered on every send and [`StoreIo::pump`]) so the core keeps
/// serving; past [`MAX_OVERFLOW`] more the submitter waits for one queue slot (backpressure
/// from a disk that cannot keep up, bounding the memory and file handles held).
const QUEUE_SLOTS: usize = 16;
/// Batches that may wait in a core's overflow before submitting blocks.
const MAX_OVERFLOW: usize = 256;

/// One durable-write step.
#[derive(Debug)]
pub enum Job {
    /// fsync (`fdatasync`) each handle, then close it.
    SyncFiles(Vec<(PathBuf, File)>),
    /// fsync each directory (new or renamed entries).
    SyncDirs(Vec<PathBuf>),
    /// Replace `path` atomically with `bytes` (temp + fsync + rename + dir fsync).
    WriteAtomic {
        /// Destination.
        path: PathBuf,
        /// Whole new content.
        bytes: Vec<u8>,
        /// File mode.
        mode: u32,
    },
}

/// What failed in a background batch, for the owner to retry.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// An index write: the owner marks its index dirty again.
    Write(PathBuf),
    /// Directory fsyncs to retry.
    Dirs(Vec<PathBuf>),
}

struct Batch {
    jobs: Vec<Job>,
    /// A periodic flush batch (counted by [`StoreIo::is_busy`]).
    flush: bool,
    reply: Reply,
}

/// Where a batch's outcome (the first error, or `Ok`) goes.
enum Reply {
    /// Background: failures are reported through [`StoreIo::take_failures`].
    None,
    /// A thread blocked in [`StoreIo::run_blocking`].
    Blocking(SyncSender<io::Result<()>>),
    /// A task awaiting [`StoreIo::run_async`]'s slot (woken across threads, no lock).
    Slot(Arc<ReplySlot<io::Result<()>>>),
}

/// Handle to a core's durable-write thread. Dropping it lets queued work finish, then
/// joins the thread.
#[derive(Debug)]
pub struct StoreIo {
    tx: Option<SyncSender<Batch>>,
    /// Batches the full queue could not take yet, oldest first (this core only).
    overflow: RefCell<VecDeque<Batch>>,
    failures: Receiver<Failure>,
    /// Flush batches queued or running.
    pending: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl StoreIo {
    /// Start the thread (named `name`).
    pub fn start(name: String) -> io::Result<Self> {
        Self::start_with_delay(name, std::time::Duration::ZERO)
    }

    /// [`Self::start`], every batch delayed by `delay` first (tests: a slow disk).
    pub fn start_with_delay(name: String, delay: std::time::Duration) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Batch>(QUEUE_SLOTS);
        let (fail_tx, failures) = sync_channel::<Failure>(1024);
        let pending = Arc::new(AtomicUsize::new(0));
        let count = pending.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&rx, &fail_tx, &count, delay))?;
        Ok(Self {
            tx: Some(tx),
            overflow: RefCell::new(VecDeque::new()),
            failures,
            pending,
            thread: Some(thread),
        })
    }

    /// Queue `jobs` without waiting. Failures come back through [`Self::take_failures`].
    pub fn submit(&self, jobs: Vec<Job>) -> io::Result<()> {
        self.submit_batch(jobs, false)
    }

    /// Queue the periodic flush's batch: like [`Self::submit`], and [`Self::is_busy`] until
    /// it has run.
    pub fn submit_flush(&self, jobs: Vec<Job>) -> io::Result<()> {
        self.submit_batch(jobs, true)
    }

    fn submit_batch(&self, jobs: Vec<Job>, flush: bool) -> io::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        if flush {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        let sent = self.send(Batch {
            jobs,
            flush,
            reply: Reply::None,
        });
        if sent.is_err() && flush {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Queue `jobs` behind everything already queued and wait for them: the caller answers
    /// only once the write is durable. Returns the first error.
    pub fn run_blocking(&self, jobs: Vec<Job>) -> io::Result<()> {
        let (reply, done) = sync_channel(1);
        self.send(Batch {
            jobs,
            flush: false,
            reply: Reply::Blocking(reply),
        })?;
        done.recv()
            .map_err(|_| io::Error::other("session store I/O thread stopped"))?
    }

    /// Queue `jobs` behind everything already queued without blocking; await the returned
    /// slot for the outcome. The event loop keeps serving while the disk works.
    pub fn run_async(&self, jobs: Vec<Job>) -> io::Result<Arc<ReplySlot<io::Result<()>>>> {
        let slot = ReplySlot::new();
        self.send(Batch {
            jobs,
            flush: false,
            reply: Reply::Slot(slot.clone()),
        })?;
        Ok(slot)
    }

    /// The last flush batch is still queued or running (the periodic flush skips a round
    /// instead of piling batches onto a slow disk). Other background batches do not count:
    /// they must never hold flushes off.
    pub fn is_busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// Failures of background batches since the last call.
    pub fn take_failures(&self) -> Vec<Failure> {
        let mut out = Vec::new();
        loop {
            match self.failures.try_recv() {
                Ok(f) => out.push(f),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Queue `batch` behind everything submitted before it. Never blocks the core unless
    /// the caller waits for the outcome anyway ([`Self::run_blocking`]) or the overflow is
    /// full.
    fn send(&self, batch: Batch) -> io::Result<()> {
        let stopped = || io::Error::other("session store I/O thread stopped");
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        let mut overflow = self.overflow.borrow_mut();
        if matches!(batch.reply, Reply::Blocking(_)) {
            // The caller waits for the disk anyway: everything older first, then this.
            overflow.push_back(batch);
            return hand_over_all(tx, &mut overflow).map_err(|()| stopped());
        }
        // Older batches first: submission order is the contract.
        offer(tx, &mut overflow).map_err(|()| stopped())?;
        if overflow.is_empty() {
            match tx.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(b)) => overflow.push_back(b),
                Err(TrySendError::Disconnected(_)) => return Err(stopped()),
            }
        } else {
            overflow.push_back(batch);
        }
        // Past the cap, wait for the disk to take the oldest batch (one slot), not for the
        // whole overflow to drain: the core stalls for one batch's time at most.
        if overflow.len() > MAX_OVERFLOW {
            if let Some(b) = overflow.pop_front() {
                tx.send(b).map_err(|_| stopped())?;
            }
        }
        Ok(())
    }

    /// Offer the overflow to the thread again (the owner's ticker calls this).
    pub fn pump(&self) {
        if let Some(tx) = &self.tx {
            // A stopped thread: the owner sees the error on its next send.
            let _ = offer(tx, &mut self.overflow.borrow_mut());
        }
    }

    /// Batches waiting in this core's overflow.
    pub fn overflowed(&self) -> usize {
        self.overflow.borrow().len()
    }
}

impl Drop for StoreIo {
    fn drop(&mut self) {
        // What waits in the overflow goes first (blocking: shutdown may wait for the disk).
        if let Some(tx) = &self.tx {
            let _ = hand_over_all(tx, self.overflow.get_mut());
        }
        // Closing the queue ends the thread after it has finished what was queued.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hand every overflow batch to the thread, oldest first, waiting for queue room.
/// `Err` when the thread is gone.
fn hand_over_all(tx: &SyncSender<Batch>, overflow: &mut VecDeque<Batch>) -> Result<(), ()> {
    for b in overflow.drain(..) {
        tx.send(b).map_err(|_| ())?;
    }
    Ok(())
}

/// Hand the overflow's batches to the thread, oldest first, until its queue is full.
/// `Err` when the thread is gone.
fn offer(tx: &SyncSender<Batch>, overflow: &mut VecDeque<Batch>) -> Result<(), ()> {
    while let Some(b) = overflow.pop_front() {
        match tx.try_send(b) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) => {
                overflow.push_front(b);
                return Ok(());
            }
            Err(TrySendError::Disconnected(_)) => return Err(()),
        }
    }
    Ok(())
}

fn run(
    rx: &Receiver<Batch>,
    failures: &SyncSender<Failure>,
    pending: &AtomicUsize,
    delay: std::time::Duration,
) {
    while let Ok(batch) = rx.recv() {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let background = matches!(batch.reply, Reply::None);
        let mut first: Option<io::Error> = None;
        for job in batch.jobs {
            // A panic must not kill the thread (every later write would fail and `pending`
            // would never drop): it is this job's error.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(job)))
                .unwrap_or_else(|_| Err((io::Error::other("session store job panicked"), None)));
            if let Err((e, failure)) = outcome {
                if background {
                    tracing::error!(message = "Session store write failed.", error = %e);
                    if let Some(f) = failure {
                        // Full only if the owner stopped draining; the next flush redoes
                        // the index anyway when rows change again.
                        let _ = failures.try_send(f);
                    }
                }
                first.get_or_insert(e);
            }
        }
        match batch.reply {
            Reply::Blocking(reply) => {
                let _ = reply.send(first.map_or(Ok(()), Err));
            }
            Reply::Slot(slot) => slot.send(first.map_or(Ok(()), Err)),
            Reply::None if batch.flush => {
                pending.fetch_sub(1, Ordering::AcqRel);
            }
            Reply::None => {}
        }
    }
}

/// Run `jobs` here, on the calling thread (no store thread: start-up, tests, tools).
/// Returns the first error; every job is attempted.
pub fn run_inline(jobs: Vec<Job>) -> io::Result<()> {
    let mut first = None;
    for job in jobs {
        if let Err((e, _)) = execute(job) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

type JobError = (io::Error, Option<Failure>);

fn execute(job: Job) -> Result<(), JobError> {
    match job {
        Job::SyncFiles(files) => {
            // Not retried on failure: after a failed fsync Linux may already have dropped
            // the dirty pages and a second fsync would report success for lost data. The
            // error is logged (and returned to a blocking caller).
            let mut first = None;
            for (path, file) in files {
                if let Err(e) = file.sync_data() {
                    tracing::error!(message = "Transcript fsync failed.", path = %path.display(), error = %e);
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), |e| Err((e, None)))
        }
        Job::SyncDirs(dirs) => {
            let mut failed = Vec::new();
            let mut first = None;
            for dir in dirs {
                match sync_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        failed.push(dir);
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                None => Ok(()),
                Some(e) => Err((e, Some(Failure::Dirs(failed)))),
            }
        }
        Job::WriteAtomic { path, bytes, mode } => {
            write_atomic(&path, &bytes, mode).map_err(|e| (e, Some(Failure::Write(path))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{random_bytes, to_hex};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "clawgate-io-{tag}-{}-{}",
            std::process::id(),
            to_hex(&random_bytes::<6>())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn jobs_run_in_submission_order_and_blocking_waits_for_earlier_ones() {
        let dir = tmp("order");
        let io = StoreIo::start("test-io".into()).unwrap();
        let path = dir.join("index.json");
        for i in 0..50 {
            io.submit(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: format!("{i}").into_bytes(),
                mode: 0o600,
            }])
            .unwrap();
        }
        io.run_blocking(vec![Job::WriteAtomic {
            path: path.clone(),
            bytes: b"last".to_vec(),
            mode: 0o600,
        }])
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"last");
        drop(io);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn background_failures_are_reported_and_blocking_ones_returned() {
        let dir = tmp("fail");
        let io = StoreIo::start("test-io".into()).unwrap();
        // The parent is a regular file: no directory can be created there.
        std::fs::write(dir.join("a-file"), b"").unwrap();
        let bad = dir.join("a-file").join("index.json");
        io.submit(vec![Job::WriteAtomic {
            path: bad.clone(),
            bytes: b"x".to_vec(),
            mode: 0o600,
        }])
        .unwrap();
        // The blocking batch runs after the failed background one.
        assert!(io
            .run_blocking(vec![Job::WriteAtomic {
                path: bad.clone(),
                bytes: b"x".to_vec(),
                mode: 0o600,
            }])
            .is_err());
        assert_eq!(io.take_failures(), vec![Failure::Write(bad)]);
        assert!(!io.is_busy());
        drop(io);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn run_async_reports_through_its_slot_in_order() {
        let dir = tmp("async");
        let io = StoreIo::start("test-io".into()).unwrap();
        let path = dir.join("paired.json");
        let first = io
            .run_async(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: b"1".to_vec(),
                mode: 0o600,
            }])
            .unwrap();
        std::fs::write(dir.join("a-file"), b"").unwrap();
        let failing = io
            .run_async(vec![Job::WriteAtomic {
                path: dir.join("a-file").join("x"),
                bytes: b"x".to_vec(),
                mode: 0o600,
            }])
            .unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(first.wait().await.is_ok());
            assert!(failing.wait().await.is_err());
        });
        assert_eq!(std::fs::read(&path).unwrap(), b"1");
        // A slot's failure is the awaiting caller's to handle, not a background retry.
        assert!(io.take_failures().is_empty());
        drop(io);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_queue_overflows_in_order_instead_of_blocking_the_core() {
        let dir = tmp("overflow");
        let io = StoreIo::start_with_delay("test-io".into(), std::time::Duration::from_millis(20))
            .unwrap();
        let path = dir.join("order.json");
        for i in 0..(QUEUE_SLOTS + 20) {
            io.submit(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: i.to_string().into_bytes(),
                mode: 0o600,
            }])
            .unwrap();
        }
        // The submitter did not wait for the disk: the surplus sits in the overflow.
        assert!(io.overflowed() > 0);
        // An async write queued now lands after all of them.
        let last = io
            .run_async(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: b"last".to_vec(),
                mode: 0o600,
            }])
            .unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            // The owner's ticker pumps the overflow.
            let pump = async {
                loop {
                    io.pump();
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            monoio::select! {
                r = last.wait() => assert!(r.is_ok()),
                () = pump => {}
            }
        });
        assert_eq!(io.overflowed(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"last");
        // A blocking write drains any overflow first, then runs.
        for i in 0..(QUEUE_SLOTS + 5) {
            io.submit(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: i.to_string().into_bytes(),
                mode: 0o600,
            }])
            .unwrap();
        }
        io.run_blocking(vec![Job::WriteAtomic {
            path: path.clone(),
            bytes: b"final".to_vec(),
            mode: 0o600,
        }])
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"final");
        drop(io);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn past_the_overflow_cap_a_submit_waits_for_one_slot_not_the_whole_backlog() {
        let dir = tmp("overflow-cap");
        let io = StoreIo::start_with_delay("test-io".into(), std::time::Duration::from_millis(1))
            .unwrap();
        let path = dir.join("cap.json");
        for i in 0..(QUEUE_SLOTS + MAX_OVERFLOW + 40) {
            io.submit(vec![Job::WriteAtomic {
                path: path.clone(),
                bytes: i.to_string().into_bytes(),
                mode: 0o600,
            }])
            .unwrap();
            assert!(
                io.overflowed() <= MAX_OVERFLOW,
                "overflow grew past its cap"
            );
        }
        // Past the cap the overflow stays full: only one slot was waited for each time.
        assert!(
            io.overflowed() >= MAX_OVERFLOW - QUEUE_SLOTS,
            "{}",
            io.overflowed()
        );
        io.run_blocking(Vec::new()).unwrap();
        assert_eq!(io.overflowed(), 0);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            (QUEUE_SLOTS + MAX_OVERFLOW + 39).to_string().into_bytes()
        );
        drop(io);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dropping_the_handle_finishes_queued_work() {
        let dir = tmp("drop");
        let io = StoreIo::start("test-io".into()).unwrap();
        let f = std::fs::File::create(dir.join("t.jsonl")).unwrap();
        let path = dir.join("done.json");
        io.submit(vec![
            Job::SyncFiles(vec![(dir.join("t.jsonl"), f)]),
            Job::SyncDirs(vec![dir.clone()]),
            Job::WriteAtomic {
                path: path.clone(),
                bytes: b"{}".to_vec(),
                mode: 0o600,
            },
        ])
        .unwrap();
        drop(io);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
