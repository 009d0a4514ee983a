//! The child side of every scenario: open this child's share of the connections from its
//! own source addresses, run the per-connection bodies, meet the parent at the barriers and
//! print one `RESULT` line.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use clawgate::transport::ws::codec::{encode_frame_masked, OpCode};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use monoio::io::{CancelHandle, Canceller};
use monoio::task::JoinHandle;
use serde_json::{json, Value};

use crate::frames;
use crate::ipc::{self, phase, wait_phase};
use crate::stats::{now_us, self_rss_kb, share, Errors, Hist, Rng};
use crate::ws::{self, Conn, ConnSpec, Drained, Hello, LoadError, Reader, Target};

/// Phases shared by the fan-out scenarios (parent → child).
pub mod ph {
    /// Start / main fan-out run / slow baseline.
    pub const RUN_A: u32 = 1;
    /// Run A is over (publisher finished and grace elapsed).
    pub const A_DONE: u32 = 2;
    /// Slow-consumer run.
    pub const RUN_B: u32 = 3;
    /// Run B is over.
    pub const B_DONE: u32 = 4;
    /// Slow subscribers read again to see whether the gateway closed them, then drop.
    pub const DETECT: u32 = 5;
    /// Everyone closes.
    pub const END: u32 = 6;
}

/// Everything a child needs.
pub struct Ctx {
    /// Gateway.
    pub target: Target,
    /// Shared token.
    pub token: String,
    /// This child's index.
    pub index: usize,
    /// Number of children.
    pub procs: usize,
    /// Source addresses (round-robin per connection); empty = kernel's choice.
    pub srcs: Vec<IpAddr>,
    /// Handshakes in flight while setting up long-lived connections.
    pub setup_concurrency: usize,
    /// Per-connection handshake timeout.
    pub timeout: Duration,
    /// Attempts per long-lived connection (503 / timeout / reset are retried).
    pub setup_attempts: u32,
}

impl Ctx {
    fn src(&self, k: usize) -> Option<IpAddr> {
        if self.srcs.is_empty() {
            None
        } else {
            self.srcs.get(k % self.srcs.len()).copied()
        }
    }
    fn token_auth(&self, scopes: &[&str]) -> ConnSpec {
        ConnSpec {
            token: self.token.clone(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            device: None,
            recv_buffer: None,
        }
    }
    fn tag(&self) -> String {
        format!("[child {}]", self.index)
    }
}

/// Outcome of establishing the long-lived connections.
struct Setup {
    connected: usize,
    failed: usize,
    errors: Errors,
    retries: Errors,
    handles: Vec<JoinHandle<()>>,
    secs: f64,
    hist: Hist,
}

impl Setup {
    fn json(&self) -> Value {
        json!({"connected": self.connected, "failed": self.failed, "errors": self.errors.to_json(),
               "retries": self.retries.to_json(), "setup_secs": self.secs, "handshake": self.hist.to_json()})
    }
}

fn retryable(e: &LoadError) -> bool {
    matches!(
        e,
        LoadError::Http(503) | LoadError::Timeout(_) | LoadError::Eof | LoadError::BadHttp
    ) || matches!(e, LoadError::Io(_, io) if matches!(io.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNREFUSED)))
}

/// Open `n` authenticated connections with `ctx.setup_concurrency` handshakes in flight;
/// each one is handed to `body(k, conn, hello)` in its own task right away (so it answers
/// pings while the rest are still being set up).
async fn establish<S, F, Fut>(ctx: &Rc<Ctx>, n: usize, spec: S, body: F) -> Setup
where
    S: Fn(usize) -> ConnSpec + 'static,
    F: Fn(usize, Conn, Hello) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    struct Shared {
        next: Cell<usize>,
        connected: Cell<usize>,
        failed: Cell<usize>,
        errors: RefCell<Errors>,
        retries: RefCell<Errors>,
        handles: RefCell<Vec<JoinHandle<()>>>,
        hist: RefCell<Hist>,
    }
    let start = Instant::now();
    let sh = Rc::new(Shared {
        next: Cell::new(0),
        connected: Cell::new(0),
        failed: Cell::new(0),
        errors: RefCell::default(),
        retries: RefCell::default(),
        handles: RefCell::new(Vec::with_capacity(n)),
        hist: RefCell::default(),
    });
    let body = Rc::new(body);
    let spec = Rc::new(spec);
    let workers = ctx.setup_concurrency.clamp(1, n.max(1));
    let mut ws_handles = Vec::new();
    for w in 0..workers {
        let (sh, body, spec, ctx) = (sh.clone(), body.clone(), spec.clone(), ctx.clone());
        ws_handles.push(monoio::spawn(async move {
            let mut rng = Rng::new((ctx.index as u64) << 32 | w as u64);
            loop {
                let k = sh.next.get();
                if k >= n {
                    break;
                }
                sh.next.set(k + 1);
                let auth = spec(k);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match ws::connect(
                        &ctx.target,
                        ctx.src(k + attempt as usize - 1),
                        &auth,
                        ctx.timeout,
                        &mut rng,
                    )
                    .await
                    {
                        Ok((c, hello, took)) => {
                            sh.hist.borrow_mut().record(took.as_micros() as u64);
                            let c_ok = sh.connected.get() + 1;
                            sh.connected.set(c_ok);
                            if c_ok % 1000 == 0 {
                                eprintln!("{} connected {c_ok}/{n}", ctx.tag());
                            }
                            let h = monoio::spawn(body(k, c, hello));
                            sh.handles.borrow_mut().push(h);
                            break;
                        }
                        Err(e) if attempt < ctx.setup_attempts && retryable(&e) => {
                            sh.retries.borrow_mut().add(e.kind());
                            let back = Duration::from_millis(
                                (10 * u64::from(attempt)).min(500) + rng.next_u64() % 20,
                            );
                            monoio::time::sleep(back).await;
                        }
                        Err(e) => {
                            sh.failed.set(sh.failed.get() + 1);
                            sh.errors.borrow_mut().add(e.kind());
                            break;
                        }
                    }
                }
            }
        }));
    }
    for h in ws_handles {
        h.await;
    }
    let handles = std::mem::take(&mut *sh.handles.borrow_mut());
    let out = Setup {
        connected: sh.connected.get(),
        failed: sh.failed.get(),
        errors: sh.errors.borrow().clone(),
        retries: sh.retries.borrow().clone(),
        handles,
        secs: start.elapsed().as_secs_f64(),
        hist: sh.hist.borrow().clone(),
    };
    eprintln!(
        "{} setup: {} connected, {} failed in {:.1}s",
        ctx.tag(),
        out.connected,
        out.failed,
        out.secs
    );
    out
}

async fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        h.await;
    }
}

// ---------------------------------------------------------------------------------------
// connect-storm

/// Storm options.
pub struct StormOpts {
    /// Total handshakes (all children).
    pub total: usize,
    /// Handshakes in flight (all children).
    pub concurrency: usize,
    /// Sign a device identity.
    pub device: bool,
    /// One fixed identity instead of a fresh one per connection.
    pub reuse_identity: bool,
}

/// The seed used by `--reuse-identity` (the same in every child and run).
pub fn reused_seed() -> [u8; 32] {
    clawgate::auth::token::sha256(b"clawgate-load reused device identity v1")
}

/// connect-storm child.
pub async fn storm(ctx: Rc<Ctx>, o: StormOpts) {
    let n = share(o.total, ctx.procs, ctx.index);
    let conc = share(o.concurrency, ctx.procs, ctx.index).max(1);
    ipc::sync("ready", &json!({"n": n, "concurrency": conc}));
    wait_phase(1).await;
    struct St {
        next: Cell<usize>,
        ok: Cell<u64>,
        close_ok: Cell<u64>,
        finished: Cell<usize>,
        hist: RefCell<Hist>,
        errors: RefCell<Errors>,
        close_errors: RefCell<Errors>,
    }
    let st = Rc::new(St {
        next: Cell::new(0),
        ok: Cell::new(0),
        close_ok: Cell::new(0),
        finished: Cell::new(0),
        hist: RefCell::default(),
        errors: RefCell::default(),
        close_errors: RefCell::default(),
    });
    let t_start = now_us();
    let started = Instant::now();
    let mut hs = Vec::new();
    let o = Rc::new(o);
    let reused =
        (o.device && o.reuse_identity).then(|| ws::DeviceIdentity::from_seed(&reused_seed()));
    for w in 0..conc {
        let (st, ctx, o) = (st.clone(), ctx.clone(), o.clone());
        let reused = reused.clone();
        hs.push(monoio::spawn(async move {
            let mut rng = Rng::new((ctx.index as u64) << 32 | w as u64);
            // One spec per worker; the reused identity is derived once per child.
            let mut auth = ctx.token_auth(&["operator.read"]);
            auth.device = reused;
            loop {
                let k = st.next.get();
                if k >= n {
                    break;
                }
                st.next.set(k + 1);
                if o.device && !o.reuse_identity {
                    let mut s = [0u8; 32];
                    let _ = getrandom::getrandom(&mut s);
                    auth.device = Some(ws::DeviceIdentity::from_seed(&s));
                }
                match ws::connect(&ctx.target, ctx.src(k), &auth, ctx.timeout, &mut rng).await {
                    Ok((c, _, took)) => {
                        st.ok.set(st.ok.get() + 1);
                        st.hist.borrow_mut().record(took.as_micros() as u64);
                        match c.close(Duration::from_secs(2)).await {
                            Ok(true) => st.close_ok.set(st.close_ok.get() + 1),
                            Ok(false) => st.close_errors.borrow_mut().add("close_timeout"),
                            Err(e) => st.close_errors.borrow_mut().add(e.kind()),
                        }
                    }
                    Err(e) => st.errors.borrow_mut().add(e.kind()),
                }
                let done = st.finished.get() + 1;
                st.finished.set(done);
                if done % 2000 == 0 {
                    eprintln!("{} storm {done}/{n}", ctx.tag());
                }
            }
        }));
    }
    join_all(hs).await;
    let elapsed = started.elapsed().as_secs_f64();
    let t_end = now_us();
    ipc::result(&json!({
        "n": n, "ok": st.ok.get(), "close_ok": st.close_ok.get(), "errors": st.errors.borrow().to_json(),
        "close_errors": st.close_errors.borrow().to_json(), "hist": st.hist.borrow().to_json(),
        "t_start_us": t_start, "t_end_us": t_end, "elapsed_s": elapsed, "loadgen_rss_kb": self_rss_kb(), "loadgen_cpu_s": crate::stats::self_cpu_secs(),
    }));
}

// ---------------------------------------------------------------------------------------
// hold-idle

/// hold-idle child: phase 1 = close.
pub async fn hold(ctx: Rc<Ctx>, conns: usize) {
    let n = share(conns, ctx.procs, ctx.index);
    #[derive(Default)]
    struct St {
        events: Cell<u64>,
        lost: RefCell<Errors>,
        close_ok: Cell<u64>,
        close_err: RefCell<Errors>,
    }
    let st = Rc::new(St::default());
    let st2 = st.clone();
    let spec = ctx.token_auth(&["operator.read"]);
    let setup = establish(
        &ctx,
        n,
        move |_| spec.clone(),
        move |_k, mut c, _h| {
            let st = st2.clone();
            async move {
                while phase() < 1 {
                    let r = c
                        .pump_for(Duration::from_secs(1), &mut |_| {
                            st.events.set(st.events.get() + 1)
                        })
                        .await;
                    if let Err(e) = r {
                        st.lost.borrow_mut().add(e.kind());
                        return;
                    }
                }
                match c.close(Duration::from_secs(3)).await {
                    Ok(true) => st.close_ok.set(st.close_ok.get() + 1),
                    Ok(false) => st.close_err.borrow_mut().add("close_timeout"),
                    Err(e) => st.close_err.borrow_mut().add(e.kind()),
                }
            }
        },
    )
    .await;
    let mut ready = setup.json();
    ready["loadgen_rss_kb"] = json!(self_rss_kb());
    ipc::sync("ready", &ready);
    wait_phase(1).await;
    let lost_before_close = st.lost.borrow().total();
    let rss = self_rss_kb();
    let mut setup = setup;
    join_all(std::mem::take(&mut setup.handles)).await;
    ipc::result(&json!({
        "setup": setup.json(), "events": st.events.get(), "lost_during_hold": lost_before_close,
        "lost": st.lost.borrow().to_json(), "close_ok": st.close_ok.get(), "close_errors": st.close_err.borrow().to_json(),
        "loadgen_rss_kb": rss, "loadgen_cpu_s": crate::stats::self_cpu_secs(),
    }));
}

// ---------------------------------------------------------------------------------------
// rpc

/// `--method a,b,c`: the methods a connection rotates through (an RPC mix); `health` when
/// the list is empty.
fn method_mix(spec: &str) -> Vec<String> {
    let v: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        vec!["health".into()]
    } else {
        v
    }
}

/// rpc options.
pub struct RpcOpts {
    /// Connections (all children).
    pub conns: usize,
    /// Run length.
    pub duration: Duration,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Method name.
    pub method: String,
    /// Open loop: total requests/s over all children (None = closed loop).
    pub rate: Option<f64>,
    /// Open loop: most requests outstanding per connection (more are skipped and counted).
    pub max_inflight: usize,
    /// Open loop: schedule granularity.
    pub tick: Duration,
    /// Open loop: consecutive requests given to the same connection before moving on.
    pub batch: usize,
}

/// rpc child: phase 1 = go.
pub async fn rpc(ctx: Rc<Ctx>, o: RpcOpts) {
    if o.rate.is_some() {
        return rpc_open(ctx, o).await;
    }
    let n = share(o.conns, ctx.procs, ctx.index);
    #[derive(Default)]
    struct St {
        deadline: Cell<Option<Instant>>,
        hist: RefCell<Hist>,
        ok: Cell<u64>,
        in_window: Cell<u64>,
        sent: Cell<u64>,
        rpc_errors: RefCell<Errors>,
        lost: RefCell<Errors>,
        bad_frames: Cell<u64>,
        events: Cell<u64>,
    }
    let st = Rc::new(St::default());
    let st2 = st.clone();
    let k_pipe = o.pipeline.max(1);
    let methods = Rc::new(method_mix(&o.method));
    let spec = ctx.token_auth(&["operator.read"]);
    let setup = establish(&ctx, n, move |_| spec.clone(), move |_k, mut c, _h| {
        let st = st2.clone();
        let methods = methods.clone();
        async move {
            // Wait for the start while answering pings.
            let deadline = loop {
                if let Some(d) = st.deadline.get() {
                    break d;
                }
                if phase() == ipc::PHASE_ABORT {
                    return;
                }
                if let Err(e) = c.pump_for(Duration::from_millis(20), &mut |_| {}).await {
                    st.lost.borrow_mut().add(e.kind());
                    return;
                }
            };
            let mut inflight: Vec<(u64, Instant)> = Vec::with_capacity(k_pipe);
            let mut next_id = 1u64;
            let drain_until = deadline + Duration::from_secs(10);
            loop {
                let now = Instant::now();
                if now < deadline {
                    while inflight.len() < k_pipe {
                        let method = &methods[next_id as usize % methods.len()];
                        let req = format!(r#"{{"type":"req","id":"{next_id}","method":"{method}","params":{{}}}}"#);
                        c.queue_text(req.as_bytes());
                        inflight.push((next_id, Instant::now()));
                        next_id += 1;
                        st.sent.set(st.sent.get() + 1);
                    }
                    if let Err(e) = c.flush().await {
                        st.lost.borrow_mut().add(e.kind());
                        return;
                    }
                } else if inflight.is_empty() || now >= drain_until {
                    break;
                }
                let wait = if now < deadline { deadline + Duration::from_secs(10) - now } else { drain_until - now };
                let r = c
                    .pump_for(wait, &mut |t| {
                        let Some((id, ok)) = classify_res(t, &st.bad_frames, &st.events) else { return };
                        let Some(pos) = inflight.iter().position(|(i, _)| *i == id) else { return };
                        let (_, sent) = inflight.swap_remove(pos);
                        let at = Instant::now();
                        st.hist.borrow_mut().record(at.duration_since(sent).as_micros() as u64);
                        if at <= deadline {
                            st.in_window.set(st.in_window.get() + 1);
                        }
                        if ok {
                            st.ok.set(st.ok.get() + 1);
                        } else {
                            st.rpc_errors.borrow_mut().add(error_kind_of(t));
                        }
                    })
                    .await;
                match r {
                    Ok(true) => {}
                    Ok(false) => {
                        st.lost.borrow_mut().add("response_timeout");
                        return;
                    }
                    Err(e) => {
                        st.lost.borrow_mut().add(e.kind());
                        return;
                    }
                }
            }
            let _ = c.close(Duration::from_secs(1)).await;
        }
    })
    .await;
    ipc::sync("ready", &setup.json());
    wait_phase(1).await;
    let t_start = now_us();
    let start = Instant::now();
    st.deadline.set(Some(start + o.duration));
    let mut setup = setup;
    join_all(std::mem::take(&mut setup.handles)).await;
    let t_end = now_us();
    ipc::result(&json!({
        "setup": setup.json(), "sent": st.sent.get(), "responses": st.hist.borrow().n, "ok": st.ok.get(),
        "in_window": st.in_window.get(), "rpc_errors": st.rpc_errors.borrow().to_json(), "lost": st.lost.borrow().to_json(),
        "bad_frames": st.bad_frames.get(), "events": st.events.get(), "hist": st.hist.borrow().to_json(),
        "duration_s": o.duration.as_secs_f64(), "t_start_us": t_start, "t_end_us": t_end, "loadgen_rss_kb": self_rss_kb(), "loadgen_cpu_s": crate::stats::self_cpu_secs(),
    }));
}

/// A response's numeric id and ok flag: the byte-scan fast path, else serde. Frames that
/// are not JSON count in `bad`, non-responses in `events`; `None` = nothing to match.
fn classify_res(t: &[u8], bad: &Cell<u64>, events: &Cell<u64>) -> Option<(u64, bool)> {
    if let Some(r) = frames::fast_res(t) {
        return Some(r);
    }
    let Some(f) = frames::parse(t) else {
        bad.set(bad.get() + 1);
        return None;
    };
    if f.ty != "res" {
        events.set(events.get() + 1);
        return None;
    }
    let id = f.id.as_deref().and_then(|s| s.parse::<u64>().ok())?;
    Some((id, f.ok == Some(true)))
}

/// Error kind of a failed response (rare: full parse).
fn error_kind_of(t: &[u8]) -> String {
    frames::parse(t)
        .map(|f| f.error_kind())
        .unwrap_or_else(|| "rpc_error".into())
}

/// Append the decimal digits of `v`.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// Yield to the other tasks once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// One open-loop connection, shared by the ticker (queues requests), its writer task
/// (writes whatever is queued in one write) and its reader (matches responses).
struct OlConn {
    out: RefCell<Vec<u8>>,
    writer: RefCell<Option<Waker>>,
    closing: Cell<bool>,
    dead: Cell<bool>,
    /// `(id, scheduled_us)` at `id % max_inflight`; id 0 = free.
    slots: RefCell<Vec<(u64, u64)>>,
    next_id: Cell<u64>,
    rng: RefCell<Rng>,
}

impl OlConn {
    fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Open-loop child state.
struct OlSt {
    /// Origin of the child's monotonic µs clock.
    base: Instant,
    /// End of the sending window (monotonic µs; `u64::MAX` before the start).
    deadline_us: Cell<u64>,
    conns: RefCell<Vec<Rc<OlConn>>>,
    hist: RefCell<Hist>,
    tick_lag: RefCell<Hist>,
    scheduled: Cell<u64>,
    sent: Cell<u64>,
    skipped_cap: Cell<u64>,
    skipped_dead: Cell<u64>,
    outstanding: Cell<u64>,
    ok: Cell<u64>,
    in_window: Cell<u64>,
    unmatched: Cell<u64>,
    rpc_errors: RefCell<Errors>,
    lost: RefCell<Errors>,
    bad_frames: Cell<u64>,
    events: Cell<u64>,
    writes: Cell<u64>,
}

impl OlSt {
    fn mono_us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64
    }

    fn on_text(&self, oc: &OlConn, t: &[u8]) {
        let Some((id, ok)) = classify_res(t, &self.bad_frames, &self.events) else {
            return;
        };
        let mut slots = oc.slots.borrow_mut();
        let cap = slots.len() as u64;
        let Some(slot) = slots.get_mut((id % cap.max(1)) as usize) else {
            return;
        };
        if slot.0 != id || id == 0 {
            self.unmatched.set(self.unmatched.get() + 1);
            return;
        }
        let due = slot.1;
        *slot = (0, 0);
        drop(slots);
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        let now = self.mono_us(Instant::now());
        self.hist.borrow_mut().record(now.saturating_sub(due));
        if now <= self.deadline_us.get() {
            self.in_window.set(self.in_window.get() + 1);
        }
        if ok {
            self.ok.set(self.ok.get() + 1);
        } else {
            self.rpc_errors.borrow_mut().add(error_kind_of(t));
        }
    }

    /// Queue one request scheduled at `due_us` on `oc` (skipped if the connection is dead
    /// or `max_inflight` requests are outstanding on it).
    fn dispatch(&self, oc: &OlConn, due_us: u64, head: &[u8], tail: &[u8], req: &mut Vec<u8>) {
        self.scheduled.set(self.scheduled.get() + 1);
        if oc.dead.get() || oc.closing.get() {
            self.skipped_dead.set(self.skipped_dead.get() + 1);
            return;
        }
        let id = oc.next_id.get();
        {
            let mut slots = oc.slots.borrow_mut();
            let cap = slots.len() as u64;
            let Some(slot) = slots.get_mut((id % cap.max(1)) as usize) else {
                return;
            };
            if slot.0 != 0 {
                self.skipped_cap.set(self.skipped_cap.get() + 1);
                return;
            }
            *slot = (id, due_us);
        }
        oc.next_id.set(id + 1);
        self.outstanding.set(self.outstanding.get() + 1);
        self.sent.set(self.sent.get() + 1);
        req.clear();
        req.extend_from_slice(head);
        push_u64(req, id);
        req.extend_from_slice(tail);
        let mask = oc.rng.borrow_mut().mask();
        encode_frame_masked(&mut oc.out.borrow_mut(), OpCode::Text, req, mask);
        oc.wake_writer();
    }
}

/// Writer of one open-loop connection: everything queued since the last write goes out in
/// one write (requests due in the same tick, pongs); on `closing` a close(1000) follows.
async fn ol_writer(mut w: OwnedWriteHalf<TcpStream>, oc: Rc<OlConn>, st: Rc<OlSt>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        std::future::poll_fn(|cx| {
            if oc.dead.get() || oc.closing.get() || !oc.out.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *oc.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if oc.dead.get() {
            return;
        }
        std::mem::swap(&mut *oc.out.borrow_mut(), &mut buf);
        let last = buf.is_empty() && oc.closing.get();
        if last {
            let mask = oc.rng.borrow_mut().mask();
            encode_frame_masked(&mut buf, OpCode::Close, &1000u16.to_be_bytes(), mask);
        }
        if let Err(e) = ws::write_all_to(&mut w, &mut buf).await {
            st.lost.borrow_mut().add(e.kind());
            oc.dead.set(true);
            return;
        }
        st.writes.set(st.writes.get() + 1);
        if last {
            return;
        }
    }
}

/// Reader of one open-loop connection (no timer: it ends when the gateway answers our
/// close, or the connection fails).
async fn ol_reader(
    mut r: OwnedReadHalf<TcpStream>,
    mut rd: Reader,
    oc: &OlConn,
    st: &OlSt,
    mut rng: Rng,
) {
    let mut pongs = Vec::new();
    loop {
        if let Err(e) = rd.fill(&mut r).await {
            if !oc.closing.get() {
                st.lost.borrow_mut().add(e.kind());
            }
            return;
        }
        let d = rd.drain(&mut rng, &mut pongs, &mut |t| st.on_text(oc, t));
        if !pongs.is_empty() {
            oc.out.borrow_mut().extend_from_slice(&pongs);
            pongs.clear();
            oc.wake_writer();
        }
        match d {
            Ok(Drained::More) => {}
            Ok(Drained::Closed(code)) => {
                if !oc.closing.get() {
                    st.lost.borrow_mut().add(format!("closed_{code}"));
                }
                return;
            }
            Err(e) => {
                st.lost.borrow_mut().add(e.kind());
                return;
            }
        }
    }
}

/// Precise wake-ups for the ticker: monoio's timer has 1 ms granularity and rounds up, so a
/// helper thread sleeps to each tick boundary (nanosleep, ~50–100 µs slack) and wakes the
/// ticker task across threads (monoio `sync` feature).
struct TickSrc {
    waker: atomic_waker::AtomicWaker,
    stop: std::sync::atomic::AtomicBool,
}

fn start_tick_thread(start: Instant, tick: Duration) -> std::sync::Arc<TickSrc> {
    use std::sync::atomic::Ordering;
    let src = std::sync::Arc::new(TickSrc {
        waker: atomic_waker::AtomicWaker::new(),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let s2 = src.clone();
    let tick_ns = tick.as_nanos().max(1);
    let spawned = std::thread::Builder::new()
        .name("ticker".into())
        .spawn(move || {
            while !s2.stop.load(Ordering::Acquire) {
                let now = Instant::now();
                let next = if now < start {
                    start
                } else {
                    let j = (now - start).as_nanos() / tick_ns + 1;
                    start + Duration::from_nanos((j * tick_ns) as u64)
                };
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                s2.waker.wake();
            }
        });
    if spawned.is_err() {
        eprintln!("ticker thread could not start; falling back to the runtime timer");
    }
    src
}

/// Wait until `at` (woken by the tick thread; a 2 ms runtime timer backs it up).
async fn wait_until_instant(src: &TickSrc, at: Instant) {
    loop {
        let ready = std::future::poll_fn(|cx| {
            src.waker.register(cx.waker());
            if Instant::now() >= at {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        });
        match monoio::time::timeout(Duration::from_millis(2), ready).await {
            Ok(_) => return,
            Err(_) if Instant::now() >= at => return,
            Err(_) => {}
        }
    }
}

/// Open-loop rpc child: requests are scheduled on a grid of `tick` periods at this child's
/// share of the rate and dispatched round-robin over its connections without waiting for
/// answers; latency is measured from each request's scheduled time.
async fn rpc_open(ctx: Rc<Ctx>, o: RpcOpts) {
    let n = share(o.conns, ctx.procs, ctx.index);
    let cap = o.max_inflight.max(1);
    let st = Rc::new(OlSt {
        base: Instant::now(),
        deadline_us: Cell::new(u64::MAX),
        conns: RefCell::default(),
        hist: RefCell::default(),
        tick_lag: RefCell::default(),
        scheduled: Cell::new(0),
        sent: Cell::new(0),
        skipped_cap: Cell::new(0),
        skipped_dead: Cell::new(0),
        outstanding: Cell::new(0),
        ok: Cell::new(0),
        in_window: Cell::new(0),
        unmatched: Cell::new(0),
        rpc_errors: RefCell::default(),
        lost: RefCell::default(),
        bad_frames: Cell::new(0),
        events: Cell::new(0),
        writes: Cell::new(0),
    });
    let st2 = st.clone();
    let spec = ctx.token_auth(&["operator.read"]);
    let setup = establish(
        &ctx,
        n,
        move |_| spec.clone(),
        move |_k, c, _h| {
            let st = st2.clone();
            async move {
                let Conn { io, rd, out, rng } = c;
                let mut rng = rng;
                let oc = Rc::new(OlConn {
                    out: RefCell::new(out),
                    writer: RefCell::new(None),
                    closing: Cell::new(false),
                    dead: Cell::new(false),
                    slots: RefCell::new(vec![(0, 0); cap]),
                    next_id: Cell::new(1),
                    rng: RefCell::new(Rng::new(rng.next_u64())),
                });
                st.conns.borrow_mut().push(oc.clone());
                let (r, w) = io.into_split();
                let writer = monoio::spawn(ol_writer(w, oc.clone(), st.clone()));
                ol_reader(r, rd, &oc, &st, rng).await;
                oc.dead.set(true);
                oc.wake_writer();
                writer.await;
            }
        },
    )
    .await;
    ipc::sync("ready", &setup.json());
    wait_phase(1).await;

    let rate_child = o.rate.unwrap_or(0.0).max(0.0) * n as f64 / o.conns.max(1) as f64;
    let tick = o.tick.max(Duration::from_micros(50));
    let per_tick = rate_child * tick.as_secs_f64();
    // Children interleave their ticks.
    let offset = tick.mul_f64(ctx.index as f64 / ctx.procs.max(1) as f64);
    let start = Instant::now() + Duration::from_millis(1) + offset;
    let deadline = start + o.duration;
    st.deadline_us.set(st.mono_us(deadline));
    let t_start = now_us();
    let src = start_tick_thread(start, tick);
    let conns: Vec<Rc<OlConn>> = st.conns.borrow().clone();
    let head = br#"{"type":"req","id":""#.to_vec();
    // One request tail per method of the mix, used in rotation.
    let tails: Vec<Vec<u8>> = method_mix(&o.method)
        .iter()
        .map(|m| {
            let m = serde_json::to_string(m).unwrap_or_else(|_| "\"health\"".into());
            format!(r#"","method":{m},"params":{{}}}}"#).into_bytes()
        })
        .collect();
    let mut req = Vec::with_capacity(head.len() + 64);
    let mut nth: usize = 0;
    let mut max_behind = Duration::ZERO;
    let batch = o.batch.max(1);
    let mut rr = 0usize;
    let mut in_batch = 0usize;
    let mut j: u64 = 0;
    let mut cum_prev: u64 = 0;
    if !conns.is_empty() && per_tick > 0.0 {
        loop {
            let due = start + tick * j as u32;
            if due >= deadline {
                break;
            }
            let now = Instant::now();
            if due > now {
                wait_until_instant(&src, due).await;
                continue;
            }
            // Process every tick that is due by now, each with its own scheduled time.
            let mut due_j = due;
            while due_j <= now && due_j < deadline {
                let lag = now - due_j;
                max_behind = max_behind.max(lag);
                st.tick_lag.borrow_mut().record(lag.as_micros() as u64);
                let cum = ((j + 1) as f64 * per_tick).floor() as u64;
                let due_us = st.mono_us(due_j);
                for _ in cum_prev..cum {
                    if let (Some(oc), Some(tail)) = (conns.get(rr), tails.get(nth % tails.len())) {
                        st.dispatch(oc, due_us, &head, tail, &mut req);
                    }
                    nth = nth.wrapping_add(1);
                    in_batch += 1;
                    if in_batch >= batch {
                        in_batch = 0;
                        rr = (rr + 1) % conns.len();
                    }
                }
                cum_prev = cum;
                j += 1;
                due_j = start + tick * j as u32;
            }
            // Let the writers run before the next tick even when behind schedule.
            yield_once().await;
        }
    }
    src.stop.store(true, std::sync::atomic::Ordering::Release);
    // Drain: wait for the outstanding answers (≤ 10 s), then close every connection.
    let s = st.clone();
    wait_until(move || s.outstanding.get() == 0, Duration::from_secs(10)).await;
    let outstanding_at_end = st.outstanding.get();
    for oc in &conns {
        oc.closing.set(true);
        oc.wake_writer();
    }
    drop(conns);
    let t_end = now_us();
    let mut setup = setup;
    let handles = std::mem::take(&mut setup.handles);
    if monoio::time::timeout(Duration::from_secs(5), join_all(handles))
        .await
        .is_err()
    {
        eprintln!(
            "{} some connections did not answer the close within 5 s",
            ctx.tag()
        );
    }
    ipc::result(&json!({
        "setup": setup.json(), "mode": "open", "conns": n, "rate": rate_child, "batch": batch,
        "scheduled": st.scheduled.get(), "sent": st.sent.get(), "writes": st.writes.get(),
        "skipped_inflight_cap": st.skipped_cap.get(), "skipped_dead": st.skipped_dead.get(),
        "responses": st.hist.borrow().n, "ok": st.ok.get(), "in_window": st.in_window.get(),
        "unmatched": st.unmatched.get(), "outstanding_at_end": outstanding_at_end,
        "rpc_errors": st.rpc_errors.borrow().to_json(), "lost": st.lost.borrow().to_json(),
        "bad_frames": st.bad_frames.get(), "events": st.events.get(), "hist": st.hist.borrow().to_json(),
        "tick_lag": st.tick_lag.borrow().to_json(), "max_behind_us": max_behind.as_micros() as u64,
        "duration_s": o.duration.as_secs_f64(), "t_start_us": t_start, "t_end_us": t_end,
        "loadgen_rss_kb": self_rss_kb(), "loadgen_cpu_s": crate::stats::self_cpu_secs(),
    }));
}

// ---------------------------------------------------------------------------------------
// fanout / slow

/// fan-out options (fanout = no slow subscribers, run A only).
pub struct FanOpts {
    /// Subscribers (all children).
    pub subscribers: usize,
    /// Events per run.
    pub events: u64,
    /// Fraction of subscribers that stop reading (slow scenario).
    pub slow_fraction: f64,
    /// Run A (fanout, or the baseline of slow).
    pub run_a: bool,
    /// Run B (slow-consumer run).
    pub run_b: bool,
    /// SO_RCVBUF of the slow subscribers (None = kernel default / autotuning).
    pub slow_rcvbuf: Option<usize>,
    /// Chat scenario: the "events" are agent runs (`chat.send`), a subscriber is a watcher
    /// of every run's `chat` stream, and a run counts as delivered at its terminal event.
    pub chat: bool,
}

#[derive(Default)]
struct FanSt {
    recv_a: Cell<u64>,
    recv_a_fast: Cell<u64>,
    recv_b: Cell<u64>,
    first_a: Cell<u64>,
    last_a: Cell<u64>,
    first_b: Cell<u64>,
    last_b: Cell<u64>,
    hist_a: RefCell<Hist>,
    hist_a_fast: RefCell<Hist>,
    hist_b: RefCell<Hist>,
    gaps: Cell<u64>,
    gap_events: Cell<u64>,
    gaps_b_fast: Cell<u64>,
    seq_regressions: Cell<u64>,
    duplicates: Cell<u64>,
    bad_frames: Cell<u64>,
    other_events: Cell<u64>,
    done_a: Cell<usize>,
    done_b: Cell<usize>,
    dead: Cell<usize>,
    dead_fast: Cell<usize>,
    slow_stopped: Cell<usize>,
    slow_done: Cell<usize>,
    slow_closed: RefCell<Errors>,
    slow_alive: Cell<u64>,
    slow_late_events: Cell<u64>,
    lost: RefCell<Errors>,
    n_slow: Cell<usize>,
    n_fast: Cell<usize>,
    /// Recent presence bodies and their fast-path results (`None` = serde fallback).
    memo: RefCell<BodyMemo>,
    /// Chat scenario: every `chat` event of a load run received (deltas and terminals).
    stream_events: Cell<u64>,
    last_stream_us: Cell<u64>,
    /// Chat scenario: send → first `chat` event of the run, per watcher.
    hist_first: RefCell<Hist>,
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    if a == 0 {
        b
    } else {
        a.min(b)
    }
}

/// Per-subscriber bookkeeping applied to each text frame.
struct SubView {
    slow: bool,
    e: u64,
    last_seq: u64,
    got_a: u64,
    got_b: u64,
    seen: Vec<u64>, // bitset of received indices (duplicate detection)
    /// In the detect phase nothing is recorded.
    detecting: bool,
    /// Chat scenario (see [`FanOpts::chat`]).
    chat: bool,
    /// Chat scenario: bitset of runs whose first event was seen.
    started: Vec<u64>,
}

/// The last few broadcast bodies this child received and what scanning them gave. Every
/// subscriber gets the same bodies in the same order, so with bursts (body 1..k to one
/// socket, then 1..k to the next) a one-entry memo would miss every time; lookups start at
/// the last hit, where the next body usually is.
#[derive(Default)]
pub(crate) struct BodyMemo {
    entries: Vec<(Vec<u8>, Option<frames::Mark>)>,
    last: usize,
    evict: usize,
}

impl BodyMemo {
    const CAP: usize = 64;

    fn get(&mut self, body: &[u8]) -> Option<Option<frames::Mark>> {
        let n = self.entries.len();
        for k in 0..n {
            let i = (self.last + k) % n;
            if let Some((b, m)) = self.entries.get(i) {
                // Bodies of different events share a long prefix and differ near the end
                // (the row's mark, `stateVersion`): reject on the tail before a full compare.
                let tail = b.len().saturating_sub(48);
                if b.len() == body.len()
                    && b.get(tail..) == body.get(tail..)
                    && b.as_slice() == body
                {
                    self.last = i;
                    return Some(*m);
                }
            }
        }
        None
    }

    fn put(&mut self, body: &[u8], mark: Option<frames::Mark>) {
        if self.entries.len() < Self::CAP {
            self.entries.push((body.to_vec(), mark));
            self.last = self.entries.len() - 1;
        } else if let Some(e) = self.entries.get_mut(self.evict) {
            e.0.clear();
            e.0.extend_from_slice(body);
            e.1 = mark;
            self.last = self.evict;
            self.evict = (self.evict + 1) % Self::CAP;
        }
    }
}

impl SubView {
    /// One text frame: presence events take the byte-scan fast path; everything else (and
    /// any presence frame the fast path does not recognise) goes through serde.
    fn on_text(&mut self, st: &FanSt, t: &[u8]) {
        if self.chat {
            self.on_chat_text(st, t);
            return;
        }
        if let Some((body, seq)) = frames::split_presence(t) {
            // Every subscriber of this child receives the same broadcast body: scan it
            // once and reuse the result while the bytes are identical.
            let mut memo = st.memo.borrow_mut();
            let mark = match memo.get(body) {
                Some(m) => m,
                None => {
                    let m = frames::presence_body_mark(body);
                    memo.put(body, m);
                    m
                }
            };
            drop(memo);
            if let Some(mark) = mark {
                self.on_event(st, Some(seq), mark, true);
                return;
            }
        }
        let Some(f) = frames::parse(t) else {
            st.bad_frames.set(st.bad_frames.get() + 1);
            return;
        };
        self.on_event(st, f.seq, f.publisher_mark(), f.ty == "event");
    }

    /// Chat scenario: every event of a load run is a streamed delivery; the run's terminal
    /// event is its "delivery" for the completeness/latency bookkeeping of run A.
    fn on_chat_text(&mut self, st: &FanSt, t: &[u8]) {
        let Some(f) = frames::parse(t) else {
            st.bad_frames.set(st.bad_frames.get() + 1);
            return;
        };
        let Some((i, ts, terminal)) = f.chat_mark() else {
            self.on_event(st, f.seq, None, f.ty == "event");
            return;
        };
        let now = now_us();
        st.stream_events.set(st.stream_events.get() + 1);
        st.last_stream_us.set(st.last_stream_us.get().max(now));
        let (w, b) = ((i / 64) as usize, i % 64);
        if let Some(word) = self.started.get_mut(w) {
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                st.hist_first.borrow_mut().record(now.saturating_sub(ts));
            }
        }
        // Deltas only advance seq; the terminal event counts as the run's delivery.
        self.on_event(st, f.seq, terminal.then_some((i, ts)), false);
    }

    fn on_event(&mut self, st: &FanSt, seq: Option<u64>, mark: Option<(u64, u64)>, is_event: bool) {
        if let Some(s) = seq {
            if s > self.last_seq + 1 {
                st.gaps.set(st.gaps.get() + (s - self.last_seq - 1));
                st.gap_events.set(st.gap_events.get() + 1);
                if !self.slow && phase() >= ph::RUN_B {
                    st.gaps_b_fast
                        .set(st.gaps_b_fast.get() + (s - self.last_seq - 1));
                }
            } else if s <= self.last_seq {
                st.seq_regressions.set(st.seq_regressions.get() + 1);
            }
            self.last_seq = self.last_seq.max(s);
        }
        let Some((i, ts)) = mark else {
            if is_event {
                st.other_events.set(st.other_events.get() + 1);
            }
            return;
        };
        if self.detecting {
            st.slow_late_events.set(st.slow_late_events.get() + 1);
            return;
        }
        let (w, b) = ((i / 64) as usize, i % 64);
        if let Some(word) = self.seen.get_mut(w) {
            if *word & (1 << b) != 0 {
                st.duplicates.set(st.duplicates.get() + 1);
                return;
            }
            *word |= 1 << b;
        }
        let now = now_us();
        let lat = now.saturating_sub(ts);
        if i < self.e {
            self.got_a += 1;
            st.recv_a.set(st.recv_a.get() + 1);
            st.hist_a.borrow_mut().record(lat);
            if !self.slow {
                st.recv_a_fast.set(st.recv_a_fast.get() + 1);
                st.hist_a_fast.borrow_mut().record(lat);
            }
            st.first_a.set(min_nonzero(st.first_a.get(), now));
            st.last_a.set(st.last_a.get().max(now));
            if self.got_a == self.e {
                st.done_a.set(st.done_a.get() + 1);
            }
        } else if !self.slow {
            self.got_b += 1;
            st.recv_b.set(st.recv_b.get() + 1);
            st.hist_b.borrow_mut().record(lat);
            st.first_b.set(min_nonzero(st.first_b.get(), now));
            st.last_b.set(st.last_b.get().max(now));
            if self.got_b == self.e {
                st.done_b.set(st.done_b.get() + 1);
            }
        }
    }
}

fn is_slow(k: usize, frac: f64) -> bool {
    if frac <= 0.0 {
        return false;
    }
    ((k + 1) as f64 * frac).floor() > (k as f64 * frac).floor()
}

async fn subscriber(
    st: Rc<FanSt>,
    o: Rc<FanOpts>,
    k: usize,
    mut c: Conn,
    hello: Hello,
    cancel: CancelHandle,
) {
    let slow = is_slow(k, o.slow_fraction);
    let words = ((2 * o.events).div_ceil(64)) as usize;
    let mut v = SubView {
        slow,
        e: o.events,
        last_seq: hello.seq,
        got_a: 0,
        got_b: 0,
        seen: vec![0; words],
        detecting: false,
        chat: o.chat,
        started: if o.chat { vec![0; words] } else { Vec::new() },
    };
    if slow {
        // Read through run A (baseline) only, then stop reading entirely.
        if o.run_a {
            while v.got_a < o.events && phase() < ph::A_DONE {
                if let Err(e) = c
                    .pump_for(Duration::from_millis(500), &mut |t| v.on_text(&st, t))
                    .await
                {
                    st.lost.borrow_mut().add(format!("slow_a_{}", e.kind()));
                    st.dead.set(st.dead.get() + 1);
                    st.slow_stopped.set(st.slow_stopped.get() + 1);
                    st.slow_done.set(st.slow_done.get() + 1);
                    return;
                }
            }
        }
        st.slow_stopped.set(st.slow_stopped.get() + 1);
        wait_phase(ph::DETECT).await;
        // Detect: drain what is buffered; a close frame / EOF / reset means the gateway
        // dropped us, silence for 1 s means we are still connected.
        v.detecting = true;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if Instant::now() >= until {
                st.slow_alive.set(st.slow_alive.get() + 1);
                break;
            }
            match c
                .pump_for(Duration::from_secs(1), &mut |t| v.on_text(&st, t))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    st.slow_alive.set(st.slow_alive.get() + 1);
                    break;
                }
                Err(e) if e.is_peer_close() => {
                    st.slow_closed.borrow_mut().add(e.kind());
                    break;
                }
                Err(e) => {
                    st.slow_closed
                        .borrow_mut()
                        .add(format!("other_{}", e.kind()));
                    break;
                }
            }
        }
        drop(c);
        st.slow_done.set(st.slow_done.get() + 1);
        return;
    }
    // Reads without a timer: the child cancels them all at END through `cancel` (a read
    // that is already complete still delivers its bytes; see `Reader::fill_cancelable`).
    while phase() < ph::END {
        if let Err(e) = c.pump_cancelable(&cancel, &mut |t| v.on_text(&st, t)).await {
            st.lost.borrow_mut().add(e.kind());
            st.dead.set(st.dead.get() + 1);
            st.dead_fast.set(st.dead_fast.get() + 1);
            return;
        }
    }
    let _ = c.close(Duration::from_secs(2)).await;
}

async fn wait_until(mut cond: impl FnMut() -> bool, max: Duration) -> bool {
    let until = Instant::now() + max;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until || phase() == ipc::PHASE_ABORT {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// fanout / slow child.
pub async fn fan(ctx: Rc<Ctx>, o: FanOpts) {
    let n = share(o.subscribers, ctx.procs, ctx.index);
    let st = Rc::new(FanSt::default());
    let o = Rc::new(o);
    let (st2, o2) = (st.clone(), o.clone());
    let spec = ctx.token_auth(&["operator.read"]);
    let (frac, slow_rcvbuf) = (o.slow_fraction, o.slow_rcvbuf);
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    let setup = establish(
        &ctx,
        n,
        move |k| {
            let mut s = spec.clone();
            if is_slow(k, frac) {
                s.recv_buffer = slow_rcvbuf;
            }
            s
        },
        move |k, c, h| {
            let (st, o) = (st2.clone(), o2.clone());
            if is_slow(k, o.slow_fraction) {
                st.n_slow.set(st.n_slow.get() + 1);
            } else {
                st.n_fast.set(st.n_fast.get() + 1);
            }
            subscriber(st, o, k, c, h, cancel.clone())
        },
    )
    .await;
    let rss_ready = self_rss_kb();
    ipc::sync(
        "ready",
        &json!({"setup": setup.json(), "slow": st.n_slow.get(), "fast": st.n_fast.get(), "loadgen_rss_kb": rss_ready}),
    );
    let connected = setup.connected;
    if o.run_a {
        wait_phase(ph::RUN_A).await;
        let s = st.clone();
        if wait_until(
            move || s.done_a.get() + s.dead.get() >= connected || phase() >= ph::A_DONE,
            Duration::from_secs(3600),
        )
        .await
        {
            ipc::sync("a-complete", &json!({"recv": st.recv_a.get()}));
        }
        wait_phase(ph::A_DONE).await;
        if o.run_b {
            let s = st.clone();
            wait_until(
                move || s.slow_stopped.get() >= s.n_slow.get(),
                Duration::from_secs(5),
            )
            .await;
            ipc::sync("a-stopped", &json!({"slow_stopped": st.slow_stopped.get()}));
        }
    }
    if o.run_b {
        wait_phase(ph::RUN_B).await;
        let s = st.clone();
        if wait_until(
            move || s.done_b.get() + s.dead_fast.get() >= s.n_fast.get() || phase() >= ph::B_DONE,
            Duration::from_secs(3600),
        )
        .await
        {
            ipc::sync("b-complete", &json!({"recv": st.recv_b.get()}));
        }
        wait_phase(ph::DETECT).await;
        let s = st.clone();
        wait_until(
            move || s.slow_done.get() >= s.n_slow.get(),
            Duration::from_secs(60),
        )
        .await;
        ipc::sync(
            "slow-dropped",
            &json!({"closed": st.slow_closed.borrow().to_json(), "alive": st.slow_alive.get()}),
        );
    }
    wait_phase(ph::END).await;
    // Wake every subscriber blocked in a timer-less read.
    let _ = canceller.cancel();
    let rss = self_rss_kb();
    let mut setup = setup;
    join_all(std::mem::take(&mut setup.handles)).await;
    ipc::result(&json!({
        "setup": setup.json(), "fast": st.n_fast.get(), "slow": st.n_slow.get(),
        "recv_a": st.recv_a.get(), "recv_a_fast": st.recv_a_fast.get(), "recv_b": st.recv_b.get(),
        "first_a_us": st.first_a.get(), "last_a_us": st.last_a.get(), "first_b_us": st.first_b.get(), "last_b_us": st.last_b.get(),
        "hist_a": st.hist_a.borrow().to_json(), "hist_a_fast": st.hist_a_fast.borrow().to_json(), "hist_b": st.hist_b.borrow().to_json(),
        "gaps": st.gaps.get(), "gap_events": st.gap_events.get(), "gaps_b_fast": st.gaps_b_fast.get(),
        "seq_regressions": st.seq_regressions.get(), "duplicates": st.duplicates.get(), "bad_frames": st.bad_frames.get(),
        "other_events": st.other_events.get(), "lost": st.lost.borrow().to_json(),
        "slow_closed": st.slow_closed.borrow().to_json(), "slow_alive": st.slow_alive.get(), "slow_late_events": st.slow_late_events.get(),
        "loadgen_rss_kb": rss, "loadgen_cpu_s": crate::stats::self_cpu_secs(),
        "stream_events": st.stream_events.get(), "last_stream_us": st.last_stream_us.get(),
        "hist_first": st.hist_first.borrow().to_json(),
    }));
}
