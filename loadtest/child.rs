//! The child side of every scenario: open this child's share of the connections from its
//! own source addresses, run the per-connection bodies, meet the parent at the barriers and
//! print one `RESULT` line.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::task::JoinHandle;
use serde_json::{json, Value};

use crate::frames;
use crate::ipc::{self, phase, wait_phase};
use crate::stats::{now_us, self_rss_kb, share, Errors, Hist, Rng};
use crate::ws::{self, Conn, ConnSpec, Hello, LoadError, Target};

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
    for w in 0..conc {
        let (st, ctx, o) = (st.clone(), ctx.clone(), o.clone());
        hs.push(monoio::spawn(async move {
            let mut rng = Rng::new((ctx.index as u64) << 32 | w as u64);
            loop {
                let k = st.next.get();
                if k >= n {
                    break;
                }
                st.next.set(k + 1);
                let mut auth = ctx.token_auth(&["operator.read"]);
                if o.device {
                    auth.device = Some(if o.reuse_identity {
                        reused_seed()
                    } else {
                        let mut s = [0u8; 32];
                        let _ = getrandom::getrandom(&mut s);
                        s
                    });
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
}

/// rpc child: phase 1 = go.
pub async fn rpc(ctx: Rc<Ctx>, o: RpcOpts) {
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
    let method = Rc::new(o.method.clone());
    let spec = ctx.token_auth(&["operator.read"]);
    let setup = establish(&ctx, n, move |_| spec.clone(), move |_k, mut c, _h| {
        let st = st2.clone();
        let method = method.clone();
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
                        let Some(f) = frames::parse(t) else {
                            st.bad_frames.set(st.bad_frames.get() + 1);
                            return;
                        };
                        if f.ty != "res" {
                            st.events.set(st.events.get() + 1);
                            return;
                        }
                        let Some(id) = f.id.as_deref().and_then(|s| s.parse::<u64>().ok()) else { return };
                        let Some(pos) = inflight.iter().position(|(i, _)| *i == id) else { return };
                        let (_, sent) = inflight.swap_remove(pos);
                        let at = Instant::now();
                        st.hist.borrow_mut().record(at.duration_since(sent).as_micros() as u64);
                        if at <= deadline {
                            st.in_window.set(st.in_window.get() + 1);
                        }
                        if f.ok == Some(true) {
                            st.ok.set(st.ok.get() + 1);
                        } else {
                            st.rpc_errors.borrow_mut().add(f.error_kind());
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
}

impl SubView {
    fn on_text(&mut self, st: &FanSt, t: &[u8]) {
        let Some(f) = frames::parse(t) else {
            st.bad_frames.set(st.bad_frames.get() + 1);
            return;
        };
        if let Some(s) = f.seq {
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
        let Some((i, ts)) = f.publisher_mark() else {
            if f.ty == "event" {
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

async fn subscriber(st: Rc<FanSt>, o: Rc<FanOpts>, k: usize, mut c: Conn, hello: Hello) {
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
    while phase() < ph::END {
        if let Err(e) = c
            .pump_for(Duration::from_millis(500), &mut |t| v.on_text(&st, t))
            .await
        {
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
            subscriber(st, o, k, c, h)
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
    }));
}
