//! `clawgate-floor`: the raw loopback floor that clawgate's load figures are read against.
//!
//! It runs the same socket traffic as two `clawgate-load` scenarios with no gateway at all —
//! plain monoio tasks writing and reading bytes, no WebSocket, no JSON, no auth — so the
//! difference between a `clawgate-load` figure and this one is what clawgate itself costs:
//!
//! - `fanout`: N connections; each event is one `--frame-bytes` record written to every
//!   connection by that connection's own task (events queued while a write is in flight
//!   leave together in the next write, exactly like clawgate's outbox). The receiver checks
//!   every record and measures send → receive latency.
//! - `handshake`: accept, then the byte pattern of a token handshake (upgrade request → 101 +
//!   challenge, connect → hello-ok, close → close echo, FIN), `--concurrency` in flight.
//!
//! The parent process is the server; it re-executes itself once as the client (`--client-cpu`
//! pins it, `--server-cpu` pins the server), so the two sides' CPU seconds are measured
//! separately, as `clawgate-load` does for the gateway. One JSON line on stdout.
//! Owns nothing of the gateway and must not link it: it is a baseline, not a test.

#[allow(dead_code)]
mod stats;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::BufRead;
use std::pin::Pin;
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use serde_json::json;

use stats::Hist;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "clawgate-floor",
    about = "Raw loopback floor (no gateway) for the fanout and handshake load scenarios"
)]
struct Cli {
    /// CPU for the server side (the parent process).
    #[arg(long, global = true)]
    server_cpu: Option<usize>,
    /// CPU for the client side (the child process).
    #[arg(long, global = true)]
    client_cpu: Option<usize>,
    /// Internal: run as the client of PORT.
    #[arg(long, global = true, hide = true)]
    client_of: Option<u16>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// One record per event to every connection; events queued during a write coalesce.
    Fanout {
        /// Receiving connections (each side is one process: keep it under ~19.9k here).
        #[arg(long, default_value_t = 10000)]
        conns: usize,
        /// Events in total.
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Ticks per second (each tick publishes `--burst` events).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Events per tick.
        #[arg(long, default_value_t = 1)]
        burst: u64,
        /// Bytes per record (a clawgate `presence` event frame is ~220 bytes).
        #[arg(long, default_value_t = 220)]
        frame_bytes: usize,
    },
    /// Accept/read/write/close with the byte sizes of a clawgate token handshake.
    Handshake {
        /// Handshakes in total.
        #[arg(long, default_value_t = 20000)]
        total: usize,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

/// Byte sizes of one token handshake as `clawgate-load` and clawgate exchange it.
const UPGRADE_REQUEST: usize = 200;
const UPGRADE_REPLY: usize = 297;
const CONNECT_FRAME: usize = 380;
const HELLO_OK: usize = 1961;
const CLOSE_FRAME: usize = 8;
const CLOSE_ECHO: usize = 4;

fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu {
        let _ = monoio::utils::bind_to_cpu_set([c]);
    }
}

fn block_on<T>(fut: impl Future<Output = T>) -> std::io::Result<T> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .build()?;
    Ok(rt.block_on(fut))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.client_of {
        Some(port) => {
            pin(cli.client_cpu);
            block_on(client(cli.cmd.clone(), port)).map(|v| v.to_string())
        }
        None => {
            pin(cli.server_cpu);
            block_on(server(cli.clone()))
                .and_then(|r| r)
                .map(|v| v.to_string())
        }
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clawgate-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- server side ------------------------------------------------------------------------

/// Events published so far and their send times; connection tasks wait on it.
#[derive(Default)]
struct Bell {
    published: Cell<u64>,
    sent_at_us: RefCell<Vec<u64>>,
    waiters: RefCell<Vec<Waker>>,
}

impl Bell {
    fn publish(&self, n: u64) {
        let now = stats::now_us();
        self.sent_at_us
            .borrow_mut()
            .extend(std::iter::repeat_n(now, n as usize));
        self.published.set(self.published.get() + n);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Resolves when more than `seen` events are published.
struct Next<'a> {
    bell: &'a Bell,
    seen: u64,
}

impl Future for Next<'_> {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let p = self.bell.published.get();
        if p > self.seen {
            Poll::Ready(p)
        } else {
            self.bell.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }
    }
}

async fn server(cli: Cli) -> std::io::Result<serde_json::Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--client-of".into());
    args.push(port.to_string());
    let mut child = Command::new(exe)
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut side = match cli.cmd {
        Cmd::Fanout {
            conns,
            events,
            rate,
            burst,
            frame_bytes,
        } => {
            let mut socks = Vec::with_capacity(conns);
            while socks.len() < conns {
                let (s, _) = listener.accept().await?;
                s.set_nodelay(true)?;
                socks.push(s);
            }
            eprintln!("[floor] {conns} connections accepted");
            monoio::time::sleep(Duration::from_millis(500)).await;
            let bell = Rc::new(Bell::default());
            let mut tasks = Vec::with_capacity(conns);
            for s in socks {
                tasks.push(monoio::spawn(fan_writer(
                    s,
                    bell.clone(),
                    events,
                    frame_bytes,
                )));
            }
            let (cpu, t0) = (stats::self_cpu_secs(), Instant::now());
            let ticks = events.div_ceil(burst.max(1));
            for i in 0..ticks {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate.max(0.001));
                let now = Instant::now();
                if due > now {
                    monoio::time::sleep(due - now).await;
                }
                bell.publish(burst.max(1).min(events - bell.published.get()));
            }
            let mut failed = 0;
            for t in tasks {
                if t.await.is_err() {
                    failed += 1;
                }
            }
            let cpu = stats::self_cpu_secs() - cpu;
            let deliveries = conns as u64 * events;
            json!({"scenario": "floor-fanout", "conns": conns, "events": events,
                   "rate": rate, "burst": burst, "frame_bytes": frame_bytes,
                   "write_errors": failed,
                   "server_cpu_s": cpu,
                   "server_us_per_delivery": cpu * 1e6 / deliveries.max(1) as f64})
        }
        Cmd::Handshake { total, .. } => {
            let cpu = stats::self_cpu_secs();
            let done = Rc::new(Cell::new(0usize));
            let failed = Rc::new(Cell::new(0usize));
            let mut accepted = 0;
            while accepted < total {
                let (s, _) = listener.accept().await?;
                accepted += 1;
                let (done, failed) = (done.clone(), failed.clone());
                monoio::spawn(async move {
                    match hs_server(s).await {
                        Ok(()) => done.set(done.get() + 1),
                        Err(_) => failed.set(failed.get() + 1),
                    }
                });
            }
            while done.get() + failed.get() < total {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            let cpu = stats::self_cpu_secs() - cpu;
            json!({"scenario": "floor-handshake", "total": total,
                   "server_failed": failed.get(),
                   "server_cpu_s": cpu,
                   "server_us_per_handshake": cpu * 1e6 / total.max(1) as f64})
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let _ = child.wait();
    let client: serde_json::Value =
        serde_json::from_str(&line).unwrap_or(json!({"error": "client gave no result"}));
    side["client"] = client;
    Ok(side)
}

async fn fan_writer(
    mut s: TcpStream,
    bell: Rc<Bell>,
    events: u64,
    frame_bytes: usize,
) -> std::io::Result<()> {
    let mut seen = 0u64;
    let mut buf = Vec::new();
    while seen < events {
        let upto = Next { bell: &bell, seen }.await;
        buf.clear();
        for i in seen..upto {
            let sent = bell
                .sent_at_us
                .borrow()
                .get(i as usize)
                .copied()
                .unwrap_or(0);
            buf.extend_from_slice(&sent.to_le_bytes());
            buf.extend_from_slice(&i.to_le_bytes());
            buf.resize(buf.len() + frame_bytes.saturating_sub(16), b'x');
        }
        seen = upto;
        let (r, b) = s.write_all(std::mem::take(&mut buf)).await;
        buf = b;
        r?;
    }
    Ok(())
}

async fn hs_server(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    buf = read_exact(&mut s, buf, UPGRADE_REQUEST).await?;
    s.write_all(vec![b'h'; UPGRADE_REPLY]).await.0?;
    buf = read_exact(&mut s, buf, CONNECT_FRAME).await?;
    s.write_all(vec![b'o'; HELLO_OK]).await.0?;
    let _ = read_exact(&mut s, buf, CLOSE_FRAME).await?;
    s.write_all(vec![b'c'; CLOSE_ECHO]).await.0?;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut s).await;
    Ok(())
}

/// Reads exactly `n` bytes (the peer sends nothing else in between).
async fn read_exact(s: &mut TcpStream, buf: Vec<u8>, n: usize) -> std::io::Result<Vec<u8>> {
    let (r, slice) = s
        .read_exact(monoio::buf::IoBufMut::slice_mut(buf, 0..n))
        .await;
    r?;
    Ok(slice.into_inner())
}

// ---- client side ------------------------------------------------------------------------

async fn client(cmd: Cmd, port: u16) -> serde_json::Value {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match cmd {
        Cmd::Fanout {
            conns,
            events,
            frame_bytes,
            ..
        } => {
            let cpu0 = stats::self_cpu_secs();
            let hist = Rc::new(RefCell::new(Hist::new()));
            let bad = Rc::new(Cell::new(0u64));
            let got = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::with_capacity(conns);
            for _ in 0..conns {
                let s = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => return json!({"error": format!("connect: {e}")}),
                };
                let (hist, bad, got) = (hist.clone(), bad.clone(), got.clone());
                tasks.push(monoio::spawn(async move {
                    fan_reader(s, events, frame_bytes.max(16), &hist, &bad, &got).await
                }));
            }
            for t in tasks {
                t.await;
            }
            let h = hist.borrow();
            json!({"client_cpu_s": stats::self_cpu_secs() - cpu0,
                   "deliveries": got.get(), "expected": conns as u64 * events,
                   "bad_records": bad.get(), "latency": h.summary_ms()})
        }
        Cmd::Handshake { total, concurrency } => {
            let cpu0 = stats::self_cpu_secs();
            let t0 = Instant::now();
            let next = Rc::new(Cell::new(0usize));
            let failed = Rc::new(Cell::new(0usize));
            let hist = Rc::new(RefCell::new(Hist::new()));
            let mut tasks = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (next, failed, hist) = (next.clone(), failed.clone(), hist.clone());
                tasks.push(monoio::spawn(async move {
                    while next.get() < total {
                        next.set(next.get() + 1);
                        let t = Instant::now();
                        match hs_client(addr).await {
                            Ok(()) => hist.borrow_mut().record(t.elapsed().as_micros() as u64),
                            Err(_) => failed.set(failed.get() + 1),
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let secs = t0.elapsed().as_secs_f64();
            let h = hist.borrow();
            json!({"client_cpu_s": stats::self_cpu_secs() - cpu0, "elapsed_s": secs,
                   "handshakes": h.n, "failed": failed.get(),
                   "handshakes_per_sec": h.n as f64 / secs.max(1e-9),
                   "latency": h.summary_ms()})
        }
    }
}

async fn fan_reader(
    mut s: TcpStream,
    events: u64,
    frame: usize,
    hist: &RefCell<Hist>,
    bad: &Cell<u64>,
    got: &Cell<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    let mut next = 0u64;
    while next < events {
        let (r, slice) = s
            .read(monoio::buf::IoBufMut::slice_mut(buf, filled..))
            .await;
        buf = slice.into_inner();
        match r {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let now = stats::now_us();
        let mut at = 0;
        while filled - at >= frame {
            let rec = &buf[at..at + frame];
            let sent = u64::from_le_bytes(rec[0..8].try_into().unwrap_or([0; 8]));
            let idx = u64::from_le_bytes(rec[8..16].try_into().unwrap_or([0; 8]));
            if idx != next {
                bad.set(bad.get() + 1);
            }
            next = idx + 1;
            got.set(got.get() + 1);
            hist.borrow_mut().record(now.saturating_sub(sent));
            at += frame;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
    }
}

async fn hs_client(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    s.write_all(vec![b'u'; UPGRADE_REQUEST]).await.0?;
    buf = read_exact(&mut s, buf, UPGRADE_REPLY).await?;
    s.write_all(vec![b'c'; CONNECT_FRAME]).await.0?;
    buf = read_exact(&mut s, buf, HELLO_OK).await?;
    s.write_all(vec![b'x'; CLOSE_FRAME]).await.0?;
    let _ = read_exact(&mut s, buf, CLOSE_ECHO).await?;
    Ok(())
}
