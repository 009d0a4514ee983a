//! The parent side: spawn the children, drive the barriers, sample the gateway's memory,
//! run the fan-out publisher, and fold the children's results into one JSON object.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clawgate::transport::ws::codec::{encode_frame_masked, OpCode};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use monoio::task::JoinHandle;
use serde_json::{json, Value};

use crate::child::ph;
use crate::frames;
use crate::ipc::Children;
use crate::stats::{now_us, proc_mem, Errors, Hist, Rng};
use crate::ws::{self, ConnSpec, Drained, Reader, Target};

/// Settings every scenario needs on the parent side.
pub struct Common {
    /// Gateway.
    pub target: Target,
    /// Shared token.
    pub token: String,
    /// Children.
    pub procs: usize,
    /// Gateway pid for RSS.
    pub gateway_pid: Option<u32>,
    /// Arguments to pass to the children (after `--child-index i`).
    pub child_args: Vec<String>,
    /// Handshake timeout.
    pub timeout: Duration,
    /// Source addresses per child (for the report).
    pub addrs_per_proc: usize,
}

impl Common {
    fn rss(&self) -> Option<(u64, u64)> {
        self.gateway_pid.and_then(proc_mem)
    }
    fn rss_kb(&self) -> Value {
        self.rss().map(|m| json!(m.0)).unwrap_or(Value::Null)
    }
    fn hwm_kb(&self) -> Value {
        self.rss().map(|m| json!(m.1)).unwrap_or(Value::Null)
    }
    fn cpu(&self) -> Option<f64> {
        self.gateway_pid.and_then(crate::stats::proc_cpu_secs)
    }
    fn spawn(&self) -> anyhow::Result<Children> {
        eprintln!("[parent] spawning {} child process(es)", self.procs);
        Children::spawn(self.procs, &self.child_args)
    }
    fn base(&self, scenario: &str) -> Value {
        json!({"scenario": scenario, "url": format!("ws://{}{}", self.target.hostport, self.target.path),
               "procs": self.procs, "addrs_per_proc": self.addrs_per_proc, "gateway_pid": self.gateway_pid})
    }
}

fn results_ok(rs: Vec<Option<Value>>) -> (Vec<Value>, usize) {
    let missing = rs.iter().filter(|r| r.is_none()).count();
    (rs.into_iter().flatten().collect(), missing)
}

/// Largest `key` (a u64 field) over the children's results, 0 when none has it.
fn max_u64(rs: &[Value], key: &str) -> u64 {
    rs.iter().filter_map(|r| r[key].as_u64()).max().unwrap_or(0)
}

fn sum(rs: &[Value], path: &[&str]) -> u64 {
    rs.iter()
        .map(|r| {
            let mut v = r;
            for p in path {
                v = &v[*p];
            }
            v.as_u64().unwrap_or(0)
        })
        .sum()
}

fn merge_hist(rs: &[Value], path: &[&str]) -> Hist {
    let mut h = Hist::new();
    for r in rs {
        let mut v = r;
        for p in path {
            v = &v[*p];
        }
        h.merge(&Hist::from_json(v));
    }
    h
}

fn merge_errors(rs: &[Value], path: &[&str]) -> Errors {
    let mut e = Errors::default();
    for r in rs {
        let mut v = r;
        for p in path {
            v = &v[*p];
        }
        e.merge_json(v);
    }
    e
}

fn cpu_delta(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!(round2(b - a)),
        _ => Value::Null,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Fold the `setup` objects (from SYNC ready or RESULT) of all children.
fn setup_summary(rs: &[Value], key: Option<&str>) -> Value {
    let sel: Vec<Value> = rs
        .iter()
        .map(|r| {
            if let Some(k) = key {
                r[k].clone()
            } else {
                r.clone()
            }
        })
        .collect();
    let secs = sel
        .iter()
        .filter_map(|s| s["setup_secs"].as_f64())
        .fold(0.0, f64::max);
    json!({
        "connected": sum(&sel, &["connected"]), "failed": sum(&sel, &["failed"]),
        "errors": merge_errors(&sel, &["errors"]).to_json(), "retries": merge_errors(&sel, &["retries"]).to_json(),
        "setup_secs": round2(secs), "handshake_latency": merge_hist(&sel, &["handshake"]).summary_ms(),
    })
}

// ---------------------------------------------------------------------------------------

/// connect-storm parent.
pub async fn storm(
    c: &Common,
    mode: &str,
    reuse: bool,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let mut ch = c.spawn()?;
    ch.wait_sync("ready", Duration::from_secs(60)).await;
    let before = c.rss_kb();
    eprintln!("[parent] storm: {total} handshakes, {concurrency} in flight, mode {mode}");
    let cpu0 = c.cpu();
    ch.set_phase(1);
    let (rs, missing) = results_ok(ch.results(Duration::from_secs(3600)).await);
    let gw_cpu = cpu_delta(cpu0, c.cpu());
    let ok = sum(&rs, &["ok"]);
    let t0 = rs
        .iter()
        .filter_map(|r| r["t_start_us"].as_u64())
        .min()
        .unwrap_or(0);
    let t1 = max_u64(&rs, "t_end_us");
    let wall = (t1.saturating_sub(t0)) as f64 / 1e6;
    let errors = merge_errors(&rs, &["errors"]);
    let mut out = c.base("connect-storm");
    let identity = match (mode, reuse) {
        ("device", true) => "device: one reused identity (paired once, then known)",
        ("device", false) => "device: fresh random identity per connection (gateway persists a pairing per connection)",
        _ => "token only (no device block)",
    };
    let extra = json!({
        "mode": mode, "identity": identity, "total": total, "concurrency": concurrency,
        "ok": ok, "failed": errors.total(), "errors": errors.to_json(),
        "handshakes_per_sec": if wall > 0.0 { round2(ok as f64 / wall) } else { 0.0 },
        "wall_s": round2(wall), "latency": merge_hist(&rs, &["hist"]).summary_ms(),
        "close_ok": sum(&rs, &["close_ok"]), "close_errors": merge_errors(&rs, &["close_errors"]).to_json(),
        "gateway_cpu_s": gw_cpu, "loadgen_cpu_s": loadgen_cpu(&rs),
        "gateway_rss_before_kb": before, "gateway_rss_after_kb": c.rss_kb(), "gateway_hwm_kb": c.hwm_kb(),
        "loadgen_rss_kb_per_child": rs.iter().map(|r| r["loadgen_rss_kb"].clone()).collect::<Vec<_>>(),
        "children_missing": missing,
    });
    merge_into(&mut out, extra);
    Ok(out)
}

/// Total CPU seconds of the children (whole run, including setup).
fn loadgen_cpu(rs: &[Value]) -> f64 {
    round2(rs.iter().filter_map(|r| r["loadgen_cpu_s"].as_f64()).sum())
}

fn merge_into(out: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// hold-idle parent.
pub async fn hold(
    c: &Common,
    conns: usize,
    hold_secs: u64,
    settle_secs: u64,
) -> anyhow::Result<Value> {
    let before = c.rss();
    let mut ch = c.spawn()?;
    let ready = ch.wait_sync("ready", Duration::from_secs(3600)).await;
    let ready: Vec<Value> = ready.into_iter().flatten().collect();
    let connected = sum(&ready, &["connected"]);
    eprintln!("[parent] {connected} connected; settling {settle_secs}s");
    monoio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = c.rss();
    eprintln!("[parent] holding {hold_secs}s");
    monoio::time::sleep(Duration::from_secs(hold_secs)).await;
    let end = c.rss();
    ch.set_phase(1);
    let (rs, missing) = results_ok(ch.results(Duration::from_secs(120)).await);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => {
            json!(((a.0 as i64 - b.0 as i64) * 1024) / connected as i64)
        }
        _ => Value::Null,
    };
    let mut out = c.base("hold-idle");
    merge_into(
        &mut out,
        json!({
            "conns": conns, "hold_secs": hold_secs, "settle_secs": settle_secs,
            "setup": setup_summary(&ready, None),
            "rss_before_kb": before.map(|m| m.0), "rss_after_kb": after.map(|m| m.0), "rss_end_of_hold_kb": end.map(|m| m.0),
            "vmhwm_kb": end.map(|m| m.1), "bytes_per_conn": per_conn,
            "lost_during_hold": sum(&rs, &["lost_during_hold"]), "lost": merge_errors(&rs, &["lost"]).to_json(),
            "events_received": sum(&rs, &["events"]), "close_ok": sum(&rs, &["close_ok"]),
            "close_errors": merge_errors(&rs, &["close_errors"]).to_json(),
            "loadgen_rss_kb_per_child": rs.iter().map(|r| r["loadgen_rss_kb"].clone()).collect::<Vec<_>>(),
            "children_missing": missing,
        }),
    );
    Ok(out)
}

/// rpc options on the parent side.
pub struct RpcPlan<'a> {
    /// Connections.
    pub conns: usize,
    /// Window in seconds.
    pub secs: u64,
    /// Closed loop: requests in flight per connection.
    pub pipeline: usize,
    /// Method.
    pub method: &'a str,
    /// Open loop: offered requests/s in total (None = closed loop).
    pub rate: Option<f64>,
    /// Open loop: cap of outstanding requests per connection.
    pub max_inflight: usize,
    /// Open loop: schedule granularity (µs).
    pub tick_us: u64,
    /// Open loop: consecutive requests per connection.
    pub batch: usize,
}

/// rpc parent.
pub async fn rpc(c: &Common, p: RpcPlan<'_>) -> anyhow::Result<Value> {
    let secs = p.secs;
    let mut ch = c.spawn()?;
    let ready = ch.wait_sync("ready", Duration::from_secs(3600)).await;
    let ready: Vec<Value> = ready.into_iter().flatten().collect();
    let before = c.rss_kb();
    match p.rate {
        Some(r) => eprintln!(
            "[parent] rpc open loop: {} connections, {secs}s, {r} req/s offered, tick {} µs",
            sum(&ready, &["connected"]),
            p.tick_us
        ),
        None => eprintln!(
            "[parent] rpc: {} connections, {secs}s, pipeline {}",
            sum(&ready, &["connected"]),
            p.pipeline
        ),
    }
    let cpu0 = c.cpu();
    ch.set_phase(1);
    let (rs, missing) = results_ok(ch.results(Duration::from_secs(secs + 120)).await);
    let gw_cpu = cpu_delta(cpu0, c.cpu());
    let hist = merge_hist(&rs, &["hist"]);
    let in_window = sum(&rs, &["in_window"]);
    let mut out = c.base("rpc");
    merge_into(
        &mut out,
        json!({
            "conns": p.conns, "duration_secs": secs, "method": p.method,
            "mode": if p.rate.is_some() { "open-loop" } else { "closed-loop" },
            "setup": setup_summary(&ready, None),
            "requests_sent": sum(&rs, &["sent"]), "responses": sum(&rs, &["responses"]), "ok": sum(&rs, &["ok"]),
            "responses_in_window": in_window,
            "req_per_sec": round2(in_window as f64 / secs.max(1) as f64),
            "latency": hist.summary_ms(),
            "rpc_errors": merge_errors(&rs, &["rpc_errors"]).to_json(), "lost": merge_errors(&rs, &["lost"]).to_json(),
            "bad_frames": sum(&rs, &["bad_frames"]), "events_received": sum(&rs, &["events"]),
            "gateway_cpu_s": gw_cpu, "loadgen_cpu_s": loadgen_cpu(&rs),
            "gateway_rss_before_kb": before, "gateway_rss_after_kb": c.rss_kb(), "gateway_hwm_kb": c.hwm_kb(),
            "loadgen_rss_kb_per_child": rs.iter().map(|r| r["loadgen_rss_kb"].clone()).collect::<Vec<_>>(),
            "children_missing": missing,
        }),
    );
    match p.rate {
        None => merge_into(&mut out, json!({"pipeline": p.pipeline})),
        Some(rate) => {
            let max_behind_us = max_u64(&rs, "max_behind_us");
            let sent = sum(&rs, &["sent"]);
            let scheduled = sum(&rs, &["scheduled"]);
            let writes = sum(&rs, &["writes"]);
            merge_into(
                &mut out,
                json!({
                    "offered_rate": rate, "tick_us": p.tick_us, "max_inflight": p.max_inflight, "batch": p.batch,
                    "latency_from": "scheduled send time (tick grid), not the actual write",
                    "scheduled": scheduled,
                    "scheduled_per_sec": round2(scheduled as f64 / secs.max(1) as f64),
                    "sent_per_sec": round2(sent as f64 / secs.max(1) as f64),
                    "skipped_inflight_cap": sum(&rs, &["skipped_inflight_cap"]),
                    "skipped_dead_conn": sum(&rs, &["skipped_dead"]),
                    "unmatched_responses": sum(&rs, &["unmatched"]),
                    "outstanding_at_end": sum(&rs, &["outstanding_at_end"]),
                    "writes": writes,
                    "requests_per_write": if writes > 0 { round2(sent as f64 / writes as f64) } else { 0.0 },
                    "max_behind_schedule_ms": round2(max_behind_us as f64 / 1000.0),
                    "tick_lag": merge_hist(&rs, &["tick_lag"]).summary_ms(),
                }),
            );
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// fan-out publisher

#[derive(Default)]
struct PubSt {
    ok: Cell<u64>,
    errs: RefCell<Errors>,
    pongs: RefCell<Vec<u8>>,
    stop: Cell<bool>,
    dead: RefCell<Option<String>>,
    events: Cell<u64>,
}

/// The admin connection that calls `system-event`.
struct Publisher {
    w: OwnedWriteHalf<TcpStream>,
    out: Vec<u8>,
    rng: Rng,
    st: Rc<PubSt>,
    reader: Option<JoinHandle<()>>,
}

async fn pub_reader(mut r: OwnedReadHalf<TcpStream>, mut rd: Reader, st: Rc<PubSt>, mut rng: Rng) {
    while !st.stop.get() {
        match rd.fill_for(&mut r, Duration::from_millis(200)).await {
            Ok(false) => continue,
            Err(e) => {
                *st.dead.borrow_mut() = Some(e.kind());
                return;
            }
            Ok(true) => {}
        }
        let mut pongs = st.pongs.borrow_mut();
        let d = rd.drain(&mut rng, &mut pongs, &mut |t| match frames::parse(t) {
            Some(f) if f.ty == "res" => {
                if f.ok == Some(true) {
                    st.ok.set(st.ok.get() + 1);
                } else {
                    st.errs.borrow_mut().add(f.error_kind());
                }
            }
            Some(_) => st.events.set(st.events.get() + 1),
            None => st.errs.borrow_mut().add("bad_frame"),
        });
        match d {
            Ok(Drained::More) => {}
            Ok(Drained::Closed(code)) => {
                *st.dead.borrow_mut() = Some(format!("closed_{code}"));
                return;
            }
            Err(e) => {
                *st.dead.borrow_mut() = Some(e.kind());
                return;
            }
        }
    }
}

impl Publisher {
    async fn connect(c: &Common) -> Result<Publisher, String> {
        let mut rng = Rng::new(0x5055_424c);
        let auth = ConnSpec {
            token: c.token.clone(),
            scopes: vec!["operator.admin".into()],
            device: None,
            recv_buffer: None,
        };
        let (conn, _, _) = ws::connect(&c.target, None, &auth, c.timeout, &mut rng)
            .await
            .map_err(|e| e.kind())?;
        let ws::Conn { io, rd, out, rng } = conn;
        let (r, w) = io.into_split();
        let st = Rc::new(PubSt::default());
        let reader = monoio::spawn(pub_reader(
            r,
            rd,
            st.clone(),
            Rng::new(rng.clone().next_u64()),
        ));
        Ok(Publisher {
            w,
            out,
            rng,
            st,
            reader: Some(reader),
        })
    }

    /// Send `count` system-events numbered from `from`: `burst` of them back-to-back in
    /// one write per tick, `rate` ticks per second (absolute schedule); wait for the
    /// answers. Every event carries its own send timestamp.
    async fn run(
        &mut self,
        from: u64,
        count: u64,
        rate: f64,
        burst: u64,
        chat_sessions: Option<u64>,
    ) -> Value {
        let burst = burst.max(1);
        let ok0 = self.st.ok.get();
        let err0 = self.st.errs.borrow().total();
        let t0 = Instant::now();
        let (mut first, mut last, mut sent, mut ticks) = (0u64, 0u64, 0u64, 0u64);
        let mut write_error = None;
        let mut max_behind_ms = 0.0f64;
        let mut k = 0u64;
        while k < count {
            let due = t0 + Duration::from_secs_f64(ticks as f64 / rate.max(0.001));
            let now = Instant::now();
            if due > now {
                monoio::time::sleep(due - now).await;
            } else {
                max_behind_ms = max_behind_ms.max((now - due).as_secs_f64() * 1000.0);
            }
            {
                let mut p = self.st.pongs.borrow_mut();
                self.out.extend_from_slice(&p);
                p.clear();
            }
            let n = burst.min(count - k);
            let (mut first_ts, mut last_ts) = (0, 0);
            for b in 0..n {
                let i = from + k + b;
                let ts = now_us();
                if b == 0 {
                    first_ts = ts;
                }
                last_ts = ts;
                let req = match chat_sessions {
                    // runId = idempotencyKey, so every streamed event carries i and ts.
                    Some(n) => json!({"type": "req", "id": format!("p{i}"), "method": "chat.send",
                                      "params": {"sessionKey": format!("load-chat-{}", i % n.max(1)),
                                                 "message": format!("load run {i}"),
                                                 "idempotencyKey": format!("load-{i}-{ts}")}}),
                    None => json!({"type": "req", "id": format!("p{i}"), "method": "system-event",
                                   "params": {"text": format!("load {i} {ts}"), "instanceId": frames::PUBLISHER_INSTANCE}}),
                };
                let mask = self.rng.mask();
                encode_frame_masked(
                    &mut self.out,
                    OpCode::Text,
                    req.to_string().as_bytes(),
                    mask,
                );
            }
            if let Err(e) = ws::write_all_to(&mut self.w, &mut self.out).await {
                write_error = Some(e.kind());
                break;
            }
            if first == 0 {
                first = first_ts;
            }
            last = last_ts;
            sent += n;
            k += n;
            ticks += 1;
        }
        let send_secs = t0.elapsed().as_secs_f64();
        let until = Instant::now() + Duration::from_secs(30);
        while self.st.ok.get() - ok0 + (self.st.errs.borrow().total() - err0) < sent
            && Instant::now() < until
            && self.st.dead.borrow().is_none()
        {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        json!({
            "sent": sent, "ticks": ticks, "burst": burst, "first_send_us": first, "last_send_us": last,
            "achieved_rate": if send_secs > 0.0 { round2(sent as f64 / send_secs) } else { 0.0 },
            "achieved_tick_rate": if send_secs > 0.0 { round2(ticks as f64 / send_secs) } else { 0.0 },
            "max_behind_schedule_ms": round2(max_behind_ms),
            "responses_ok": self.st.ok.get() - ok0, "errors": self.st.errs.borrow().to_json(),
            "write_error": write_error, "connection_lost": self.st.dead.borrow().clone(),
        })
    }

    async fn finish(mut self) {
        self.st.stop.set(true);
        if let Some(h) = self.reader.take() {
            h.await;
        }
    }
}

/// RSS sampler (every 100 ms) for the peak during a run.
struct Sampler {
    peak: Rc<Cell<u64>>,
    stop: Rc<Cell<bool>>,
    h: JoinHandle<()>,
}

fn start_sampler(pid: Option<u32>) -> Option<Sampler> {
    let pid = pid?;
    let peak = Rc::new(Cell::new(0));
    let stop = Rc::new(Cell::new(false));
    let (p2, s2) = (peak.clone(), stop.clone());
    let h = monoio::spawn(async move {
        while !s2.get() {
            if let Some((rss, _)) = proc_mem(pid) {
                p2.set(p2.get().max(rss));
            }
            monoio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Some(Sampler { peak, stop, h })
}

impl Sampler {
    async fn finish(self) -> u64 {
        self.stop.set(true);
        self.h.await;
        self.peak.get()
    }
}

/// fanout / slow options on the parent side.
pub struct FanPlan {
    /// `fanout` or `slow`.
    pub scenario: &'static str,
    /// Subscribers.
    pub subscribers: usize,
    /// Events per run.
    pub events: u64,
    /// Publish rate (ticks/s; `burst` events per tick).
    pub rate: f64,
    /// Events per publisher tick, sent back-to-back in one write.
    pub burst: u64,
    /// Slow fraction.
    pub slow_fraction: f64,
    /// Run A (fanout / baseline).
    pub run_a: bool,
    /// Run B (slow consumers).
    pub run_b: bool,
    /// Wait after the last send for deliveries.
    pub grace: Duration,
    /// Wait after the slow ones were dropped before the last RSS sample.
    pub drop_wait: Duration,
    /// SO_RCVBUF of the slow subscribers (0 = kernel default), for the report.
    pub slow_rcvbuf: usize,
    /// Chat scenario: the publisher calls `chat.send` on this many rotating sessions
    /// instead of `system-event`.
    pub chat_sessions: Option<u64>,
}

fn run_stats(
    rs: &[Value],
    recv_key: &str,
    expected: u64,
    first_send: u64,
    last_key: &str,
    hist: &Hist,
) -> Value {
    let recv = sum(rs, &[recv_key]);
    let last = max_u64(rs, last_key);
    let span = last.saturating_sub(first_send) as f64 / 1e6;
    json!({
        "deliveries": recv, "expected": expected, "missed": expected as i64 - recv as i64,
        "deliveries_per_sec": if span > 0.0 { round2(recv as f64 / span) } else { 0.0 },
        "first_send_to_last_delivery_s": round2(span * 1000.0) / 1000.0,
        "latency": hist.summary_ms(),
    })
}

/// fanout / slow parent.
pub async fn fan(c: &Common, p: FanPlan) -> anyhow::Result<Value> {
    let rss_before_connect = c.rss();
    let mut ch = c.spawn()?;
    let ready = ch.wait_sync("ready", Duration::from_secs(3600)).await;
    let ready: Vec<Value> = ready.into_iter().flatten().collect();
    let connected = sum(&ready, &["setup", "connected"]);
    let n_slow = sum(&ready, &["slow"]);
    let n_fast = sum(&ready, &["fast"]);
    eprintln!("[parent] {connected} subscribers connected ({n_fast} fast, {n_slow} slow)");
    let mut publisher = match Publisher::connect(c).await {
        Ok(p) => p,
        Err(e) => {
            ch.set_phase(u32::MAX - 1);
            let _ = ch.results(Duration::from_secs(30)).await;
            anyhow::bail!("publisher connection failed: {e}");
        }
    };
    monoio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = c.rss();
    let mut pub_a = Value::Null;
    let mut pub_b = Value::Null;
    let mut complete_a = 0;
    let mut complete_b = 0;
    let mut cpu_a = Value::Null;
    let mut cpu_b = Value::Null;
    if p.run_a {
        ch.set_phase(ph::RUN_A);
        monoio::time::sleep(Duration::from_millis(100)).await;
        eprintln!(
            "[parent] run A: {} events, {} ticks/s x burst {}",
            p.events, p.rate, p.burst
        );
        let cpu0 = c.cpu();
        pub_a = publisher
            .run(0, p.events, p.rate, p.burst, p.chat_sessions)
            .await;
        complete_a = ch
            .wait_sync("a-complete", p.grace)
            .await
            .iter()
            .filter(|v| v.is_some())
            .count();
        cpu_a = cpu_delta(cpu0, c.cpu());
        ch.set_phase(ph::A_DONE);
        if p.run_b {
            ch.wait_sync("a-stopped", Duration::from_secs(10)).await;
        }
    }
    let mut rss_before_run = None;
    let mut rss_after_run = None;
    let mut peak = Value::Null;
    let mut rss_after_drop = None;
    let mut dropped: Vec<Value> = Vec::new();
    if p.run_b {
        rss_before_run = c.rss();
        let sampler = start_sampler(c.gateway_pid);
        ch.set_phase(ph::RUN_B);
        monoio::time::sleep(Duration::from_millis(100)).await;
        eprintln!(
            "[parent] run B (slow consumers stopped reading): {} events, {} ticks/s x burst {}",
            p.events, p.rate, p.burst
        );
        let cpu0 = c.cpu();
        pub_b = publisher
            .run(p.events, p.events, p.rate, p.burst, p.chat_sessions)
            .await;
        complete_b = ch
            .wait_sync("b-complete", p.grace)
            .await
            .iter()
            .filter(|v| v.is_some())
            .count();
        cpu_b = cpu_delta(cpu0, c.cpu());
        ch.set_phase(ph::B_DONE);
        rss_after_run = c.rss();
        if let Some(s) = sampler {
            peak = json!(s
                .finish()
                .await
                .max(rss_after_run.map(|m| m.0).unwrap_or(0)));
        }
        ch.set_phase(ph::DETECT);
        dropped = ch
            .wait_sync("slow-dropped", Duration::from_secs(90))
            .await
            .into_iter()
            .flatten()
            .collect();
        eprintln!(
            "[parent] slow subscribers checked and dropped; waiting {:?}",
            p.drop_wait
        );
        monoio::time::sleep(p.drop_wait).await;
        rss_after_drop = c.rss();
    }
    ch.set_phase(ph::END);
    let (rs, missing) = results_ok(ch.results(Duration::from_secs(120)).await);
    publisher.finish().await;

    let first_a = pub_a["first_send_us"].as_u64().unwrap_or(0);
    let first_b = pub_b["first_send_us"].as_u64().unwrap_or(0);
    let sent_a = pub_a["sent"].as_u64().unwrap_or(0);
    let sent_b = pub_b["sent"].as_u64().unwrap_or(0);
    let mut out = c.base(p.scenario);
    merge_into(
        &mut out,
        json!({
            "subscribers": p.subscribers, "events": p.events, "rate": p.rate, "burst": p.burst,
            "event_rate": p.rate * p.burst as f64,
            "setup": setup_summary(&ready, Some("setup")),
            "clock": "wall-clock µs since epoch (publisher and subscribers on the same host)",
            "gaps": sum(&rs, &["gaps"]), "gap_events": sum(&rs, &["gap_events"]),
            "seq_regressions": sum(&rs, &["seq_regressions"]), "duplicates": sum(&rs, &["duplicates"]),
            "bad_frames": sum(&rs, &["bad_frames"]), "other_events": sum(&rs, &["other_events"]),
            "subscribers_lost": merge_errors(&rs, &["lost"]).to_json(),
            "loadgen_rss_kb_per_child": rs.iter().map(|r| r["loadgen_rss_kb"].clone()).collect::<Vec<_>>(),
            "loadgen_cpu_s": loadgen_cpu(&rs),
            "children_missing": missing,
        }),
    );
    let hist_a = merge_hist(&rs, &["hist_a"]);
    let run_a = || {
        run_stats(
            &rs,
            "recv_a",
            connected * sent_a,
            first_a,
            "last_a_us",
            &hist_a,
        )
    };
    if p.scenario == "chat" {
        // Runs are the "events": delivered = watchers × runs terminal events; latency =
        // send → terminal event (the whole streamed run); plus every streamed event.
        let mut run = run_a();
        let streamed = sum(&rs, &["stream_events"]);
        let last_stream = max_u64(&rs, "last_stream_us");
        let span = last_stream.saturating_sub(first_a) as f64 / 1e6;
        let mut renamed = json!({
            "watchers": p.subscribers, "runs": p.events, "sessions": p.chat_sessions,
            "run_ends_delivered": run["deliveries"], "run_ends_expected": run["expected"],
            "run_ends_missed": run["missed"],
            "latency_send_to_run_end": run["latency"].clone(),
            "latency_send_to_first_event": merge_hist(&rs, &["hist_first"]).summary_ms(),
            "stream_events": streamed,
            "stream_events_per_sec": if span > 0.0 { round2(streamed as f64 / span) } else { 0.0 },
            "publisher": pub_a, "children_complete": complete_a, "gateway_cpu_s": cpu_a,
        });
        if let Some(o) = run.as_object_mut() {
            for k in [
                "deliveries",
                "expected",
                "missed",
                "deliveries_per_sec",
                "latency",
            ] {
                o.remove(k);
            }
        }
        merge_into(&mut renamed, run);
        merge_into(&mut out, renamed);
        merge_into(
            &mut out,
            json!({"gateway_rss_after_kb": c.rss_kb(), "gateway_hwm_kb": c.hwm_kb()}),
        );
        return Ok(out);
    }
    if p.scenario == "fanout" {
        let mut run = run_a();
        merge_into(
            &mut run,
            json!({"publisher": pub_a, "children_complete": complete_a, "gateway_cpu_s": cpu_a}),
        );
        merge_into(&mut out, run);
        merge_into(
            &mut out,
            json!({
                "gateway_rss_before_kb": rss_before_connect.map(|m| m.0),
                "gateway_rss_connected_kb": rss_connected.map(|m| m.0),
                "gateway_rss_after_kb": c.rss_kb(), "gateway_hwm_kb": c.hwm_kb(),
            }),
        );
        return Ok(out);
    }
    let hist_a_fast = merge_hist(&rs, &["hist_a_fast"]);
    let hist_b = merge_hist(&rs, &["hist_b"]);
    let closed = merge_errors(&rs, &["slow_closed"]);
    let alive = sum(&rs, &["slow_alive"]);
    let mut slow_run = run_stats(
        &rs,
        "recv_b",
        n_fast * sent_b,
        first_b,
        "last_b_us",
        &hist_b,
    );
    merge_into(
        &mut slow_run,
        json!({
            "fast_subscribers": n_fast, "slow_subscribers": n_slow, "gaps_fast": sum(&rs, &["gaps_b_fast"]),
            "slow_closed_by_gateway": closed.total(), "slow_close_kinds": closed.to_json(), "slow_still_open": alive,
            "slow_late_events_read_at_detect": sum(&rs, &["slow_late_events"]),
            "publisher": pub_b, "children_complete": complete_b, "gateway_cpu_s": cpu_b,
            "slow_dropped_reports": dropped.len(),
        }),
    );
    merge_into(
        &mut out,
        json!({"slow_fraction": p.slow_fraction, "slow_rcvbuf": p.slow_rcvbuf, "slow_run": slow_run}),
    );
    if p.run_a {
        let mut base = run_stats(
            &rs,
            "recv_a",
            connected * sent_a,
            first_a,
            "last_a_us",
            &hist_a,
        );
        merge_into(
            &mut base,
            json!({"latency_fast_subset": hist_a_fast.summary_ms(), "publisher": pub_a, "children_complete": complete_a, "gateway_cpu_s": cpu_a}),
        );
        let ratio = if hist_a_fast.quantile(0.99) > 0 {
            json!(round2(
                hist_b.quantile(0.99) as f64 / hist_a_fast.quantile(0.99) as f64
            ))
        } else {
            Value::Null
        };
        let ratio50 = if hist_a_fast.quantile(0.5) > 0 {
            json!(round2(
                hist_b.quantile(0.5) as f64 / hist_a_fast.quantile(0.5) as f64
            ))
        } else {
            Value::Null
        };
        merge_into(
            &mut out,
            json!({"baseline": base, "p99_ratio_slow_over_baseline": ratio, "p50_ratio_slow_over_baseline": ratio50}),
        );
    }
    merge_into(
        &mut out,
        json!({"gateway_rss_kb": {
            "before_connect": rss_before_connect.map(|m| m.0), "connected": rss_connected.map(|m| m.0),
            "before_slow_run": rss_before_run.map(|m| m.0), "peak_during_slow_run": peak,
            "after_slow_run": rss_after_run.map(|m| m.0),
            "after_slow_dropped_plus_wait": rss_after_drop.map(|m| m.0),
            "drop_wait_secs": p.drop_wait.as_secs(), "vmhwm": c.hwm_kb(),
        }}),
    );
    Ok(out)
}
