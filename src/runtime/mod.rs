//! Runtime: worker threads (one monoio runtime per core, pinned), per-core `SO_REUSEPORT`
//! listeners, the core mesh, per-core periodic tasks, and shutdown.
//!
//! Owns: thread spawn, driver choice (io_uring, falling back to epoll), accept loops.
//! Must not touch: protocol semantics (connections are handed to `transport::conn`).

pub mod backlog;
pub mod core;
pub mod mesh;
pub mod reply;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use self::core::{Core, MeshMsg, Shared};
use crate::store::devices::DeviceRegistry;

/// Let the core run its other ready tasks once before going on (Node's `setImmediate`
/// between units of a long request), so one request's loop cannot starve the others.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Which I/O driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring (default when the kernel allows it).
    Uring,
    /// epoll (fallback, or forced with `--driver legacy`).
    Legacy,
}

/// Pick the driver: io_uring when available unless `forced`.
pub fn choose_driver(forced: Option<Driver>) -> Driver {
    match forced {
        Some(d) => d,
        None if monoio::utils::detect_uring() => Driver::Uring,
        None => {
            tracing::warn!(message = "io_uring unavailable; using the epoll driver.");
            Driver::Legacy
        }
    }
}

/// Bind `workers` listeners on one address with SO_REUSEPORT; port 0 resolves once (the
/// first bind) and the others join that port.
pub fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nodelay(true)?;
        sock.bind(&addr.into())
            .with_context(|| format!("cannot bind {addr}"))?;
        sock.listen(4096)?;
        sock.set_nonblocking(true)?;
        let l: std::net::TcpListener = sock.into();
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        out.push(l);
    }
    Ok((out, addr))
}

/// A running gateway: join it to wait for shutdown.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Begin graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        for to in 0..self.shared.mesh.cores() {
            // Sent "from" the destination's own slot so it never competes with core traffic.
            let _ = self.shared.mesh.send(to, to, MeshMsg::Shutdown);
        }
    }
    /// Wait for every worker to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Start the workers. Returns once every listener is bound (readiness follows shortly).
pub fn start(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    driver: Driver,
) -> anyhow::Result<Running> {
    let devices = DeviceRegistry::load(&shared.config.paths.state_dir).with_context(|| {
        format!(
            "cannot load paired devices from {}",
            shared.config.paths.state_dir.display()
        )
    })?;
    crate::store::sessions::SessionShard::repartition(
        &shared.config.paths.state_dir,
        shared.opts.workers,
    )
    .with_context(|| {
        format!(
            "cannot prepare the session store in {}",
            shared.config.paths.state_dir.display()
        )
    })?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut threads = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let devices = devices.clone();
        let t = std::thread::Builder::new()
            .name(format!("clawgate-core-{id}"))
            .spawn(move || {
                if shared.opts.workers <= cpus {
                    let _ = monoio::utils::bind_to_cpu_set([id % cpus]);
                }
                let result = match driver {
                    Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .enable_timer()
                        .with_entries(1024)
                        .build()
                        .map(|mut rt| rt.block_on(worker(id, shared.clone(), l, devices))),
                    Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(worker(id, shared.clone(), l, devices))),
                };
                if let Err(e) = result {
                    tracing::error!(message = "Worker runtime failed to start.", core = id, error = %e);
                    shared.shutting_down.store(true, Ordering::Release);
                }
            })
            .context("cannot spawn worker thread")?;
        threads.push(t);
    }
    Ok(Running {
        addr,
        shared,
        threads,
    })
}

async fn worker(id: usize, shared: Arc<Shared>, l: std::net::TcpListener, devices: DeviceRegistry) {
    let listener = match monoio::net::TcpListener::from_std(l) {
        Ok(l) => Rc::new(l),
        Err(e) => {
            tracing::error!(message = "Listener hand-off failed.", core = id, error = %e);
            shared.shutting_down.store(true, Ordering::Release);
            return;
        }
    };
    let shard = match crate::store::sessions::SessionShard::load(
        &shared.config.paths.state_dir,
        id,
        shared.opts.workers,
    )
    .and_then(|mut s| {
        // fsyncs off the event loop: a slow disk must not stall this core's sockets.
        s.start_io_thread_with(Duration::from_millis(shared.opts.store_delay_ms))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(message = "Cannot load this core's session shard.", core = id, error = %e);
            shared.shutting_down.store(true, Ordering::Release);
            return;
        }
    };
    let policy = crate::state::policy::SessionPolicy::from_config(&shared.config.parsed);
    if id == 0 {
        for w in &policy.warnings {
            tracing::warn!(message = "session config", warning = %w);
        }
    }
    let sessions = crate::state::sessions::SessionOwner::new(shard, policy);
    let core = Rc::new(Core::new(id, shared.clone(), devices, sessions));
    let stop = Rc::new(std::cell::Cell::new(false));

    monoio::spawn(ticker(core.clone(), stop.clone()));
    monoio::spawn(core.clone().mesh_backlog_flusher());
    if id == 0 {
        monoio::spawn(core.clone().presence_flusher());
    }
    let accept = monoio::spawn(accept_loop(core.clone(), listener, stop.clone()));
    shared.accepting.fetch_add(1, Ordering::AcqRel);

    // The mesh drain doubles as this core's main loop: it ends on Shutdown.
    let mut batch = Vec::new();
    'outer: loop {
        shared.mesh.recv_batch(id, &mut batch).await;
        // Pairings in one batch share a single fsync'd save (group commit).
        let mut pairs = Vec::new();
        let mut stop_now = false;
        for m in batch.drain(..) {
            match m {
                MeshMsg::Shutdown => stop_now = true,
                MeshMsg::Pair(job, reply) => pairs.push((job, reply)),
                other => core.on_mesh_rc(other),
            }
        }
        if !pairs.is_empty() {
            core.pair_batch(pairs);
        }
        if stop_now {
            break 'outer;
        }
    }
    shared.accepting.fetch_sub(1, Ordering::AcqRel);
    stop.set(true);
    drop(accept);
    let bye = crate::protocol::frames::encode_event_body(
        "shutdown",
        &serde_json::json!({"reason": "gateway shutting down"}),
        None,
    );
    core.for_each_authed(|c| {
        let _ = c.outbox.push_event(&bye, false);
    });
    for ob in core.all_outboxes() {
        ob.close(1001, "gateway shutting down");
    }
    // Give writers a moment to flush the close frames, then leave.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while core.conn_count() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything this core's store holds reaches the disk before the process exits (not
    // left to the shard's drop, which waits for the last task holding the core).
    core.sessions.flush_blocking();
}

async fn accept_loop(
    core: Rc<Core>,
    listener: Rc<monoio::net::TcpListener>,
    stop: Rc<std::cell::Cell<bool>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if stop.get() {
                    break;
                }
                // Linux: accepted sockets inherit TCP_NODELAY from the listener (set in
                // `bind_listeners`), so no per-connection setsockopt.
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                monoio::spawn(crate::transport::conn::serve(core.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(message = "Accept failed.", core = core.id, error = %e);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How often each core recomputes its sessions digest (`health`/`status` counts lag the
/// store by at most this, plus the ticker's own period).
const SESSION_DIGEST_EVERY: Duration = Duration::from_secs(2);

async fn ticker(core: Rc<Core>, stop: Rc<std::cell::Cell<bool>>) {
    let every = Duration::from_millis(core.shared.opts.tick_interval_ms.max(10));
    // Ping checks run more often than ticks so a dead peer is found within the pong window.
    // Also the session store's flush cadence (batched fsync window ≤ 1 s).
    let check = every
        .min(
            Duration::from_millis(core.shared.opts.pong_timeout_ms.max(10) / 2)
                .max(Duration::from_millis(10)),
        )
        .min(Duration::from_secs(1));
    let mut last_tick = std::time::Instant::now();
    let mut last_maintenance = std::time::Instant::now();
    let mut last_health = std::time::Instant::now();
    let mut last_digest: Option<std::time::Instant> = None;
    let mut last_presence_expiry = std::time::Instant::now();
    let health_every = Duration::from_millis(core.shared.opts.health_interval_ms.max(10));
    loop {
        monoio::time::sleep(check).await;
        if stop.get() {
            return;
        }
        core.sessions.flush();
        if last_digest.is_none_or(|at| at.elapsed() >= SESSION_DIGEST_EVERY) {
            last_digest = Some(std::time::Instant::now());
            core.refresh_session_digest();
        }
        if core.id == 0 && last_health.elapsed() >= health_every {
            last_health = std::time::Instant::now();
            core.publish_health();
        }
        if core.id == 0 && last_presence_expiry.elapsed() >= Duration::from_secs(10) {
            last_presence_expiry = std::time::Instant::now();
            core.expire_system_presence();
        }
        if last_maintenance.elapsed() >= Duration::from_secs(60) {
            last_maintenance = std::time::Instant::now();
            core.sessions
                .maintain(core::now_ms(), core.sessions_elsewhere());
            crate::state::sessions::kick_index(&core);
        }
        let now = core.shared.uptime_ms();
        let pong_window = i64::try_from(core.shared.opts.pong_timeout_ms).unwrap_or(i64::MAX);
        let tick_due = last_tick.elapsed() >= every;
        let tick_body = tick_due.then(|| {
            crate::protocol::frames::encode_event_body(
                "tick",
                &serde_json::json!({ "ts": core::now_ms() }),
                None,
            )
        });
        if tick_due {
            last_tick = std::time::Instant::now();
        }
        core.for_each_authed(|c| {
            let sent = c.ping_sent_ms.get();
            if sent > 0 && c.last_seen_ms.get() < sent && now - sent > pong_window {
                // First the 1011 close frame (a live-but-slow peer learns why); a peer that
                // is still here at the next check is cut off (its reader may never wake).
                if c.outbox.is_closed() {
                    c.outbox.kill();
                } else {
                    c.outbox.close(1011, "keepalive timeout");
                }
                return;
            }
            if let Some(body) = &tick_body {
                let _ = c.outbox.push_event(body, true);
                if sent == 0 || c.last_seen_ms.get() >= sent {
                    c.ping_sent_ms.set(now.max(1));
                    let _ = c
                        .outbox
                        .push_frame(crate::transport::ws::codec::OpCode::Ping, b"");
                }
            }
        });
    }
}
