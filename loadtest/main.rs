//! `clawgate-load`: a monoio load generator for the clawgate gateway (protocol v4).
//!
//! The parent process re-executes itself `--procs P` times (hidden `--child-index i`);
//! child `i` opens its share of the connections from its own loopback source addresses
//! (127.0.j.(2+i)) so ephemeral ports (~28k per source address) and the per-process file
//! limit (~19.9k sockets) are not a ceiling. Children meet the parent at barriers over
//! pipes, the parent samples the gateway's RSS and (for fan-out) publishes events, then
//! prints exactly one JSON object on stdout. Progress goes to stderr. See README.md.

mod child;
mod frames;
mod ipc;
mod parent;
mod stats;
mod ws;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "clawgate-load",
    version,
    about = "Load generator for the clawgate gateway (WebSocket protocol v4)"
)]
struct Cli {
    /// Gateway URL.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:18789")]
    url: String,
    /// Shared gateway token.
    #[arg(
        long,
        global = true,
        env = "OPENCLAW_GATEWAY_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// Child processes that hold the connections (the parent only coordinates/publishes).
    #[arg(long, global = true, default_value_t = 1)]
    procs: usize,
    /// Gateway pid: RSS (VmRSS) and peak (VmHWM) are read from /proc/PID/status.
    #[arg(long, global = true)]
    gateway_pid: Option<u32>,
    /// I/O driver for the load generator's own runtime.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    driver: DriverArg,
    /// Loopback source addresses per child (0 = auto: one per 8 concurrent handshakes).
    /// The gateway allows 32 unauthenticated sockets per client IP (16 per core with 2
    /// workers); more in-flight handshakes per address get HTTP 503.
    #[arg(long, global = true, default_value_t = 0)]
    addrs_per_proc: usize,
    /// Handshakes in flight per child while opening long-lived connections.
    #[arg(long, global = true, default_value_t = 8)]
    setup_concurrency: usize,
    /// Attempts per long-lived connection (503 / timeout / reset are retried with backoff).
    #[arg(long, global = true, default_value_t = 50)]
    setup_attempts: u32,
    /// Per-connection handshake timeout (ms).
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Do not bind a source address (use when the gateway is not on loopback).
    #[arg(long, global = true)]
    no_bind: bool,
    /// Internal: run as child number N.
    #[arg(long, global = true, hide = true)]
    child_index: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum DriverArg {
    /// io_uring when available, else epoll.
    Auto,
    /// io_uring.
    Uring,
    /// epoll.
    Legacy,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `auth.token` only.
    Token,
    /// `auth.token` plus a signed device identity.
    Device,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Open, upgrade, challenge, connect, hello-ok, close — as fast as possible.
    ConnectStorm {
        /// token or device.
        #[arg(long, value_enum, default_value = "token")]
        mode: Mode,
        /// Handshakes in total.
        #[arg(long, default_value_t = 1000)]
        total: usize,
        /// Handshakes in flight in total.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// device mode: one fixed identity for every connection instead of a fresh one.
        #[arg(long)]
        reuse_identity: bool,
    },
    /// Hold N authenticated idle connections; measure the gateway's RSS per connection.
    HoldIdle {
        /// Connections in total.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to keep them open after the RSS sample.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Seconds between "all connected" and the RSS sample.
        #[arg(long, default_value_t = 2)]
        settle_secs: u64,
    },
    /// Closed-loop request/response throughput and latency.
    Rpc {
        /// Connections in total.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Run length in seconds.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
        /// Method to call (params {}); a comma list (`health,status,system-presence`) is an
        /// RPC mix: requests rotate through it.
        #[arg(long, default_value = "health")]
        method: String,
        /// Open loop: total requests per second over all connections, sent on a fixed
        /// schedule without waiting for answers (latency from the scheduled send time).
        /// Without it: closed loop with `--pipeline` requests in flight per connection.
        #[arg(long)]
        rate: Option<f64>,
        /// Open loop: most requests outstanding per connection; further scheduled requests
        /// on that connection are skipped and counted (`skipped_inflight_cap`).
        #[arg(long, default_value_t = 64)]
        max_inflight: usize,
        /// Open loop: schedule granularity in µs (requests due in one tick on the same
        /// connection go out in one write).
        #[arg(long, default_value_t = 1000)]
        tick_us: u64,
        /// Open loop: consecutive scheduled requests given to the same connection (they
        /// share a tick, so they go out in one write) before moving to the next one.
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// Broadcast latency: an admin publisher calls system-event; every subscriber gets a
    /// `presence` event.
    Fanout {
        /// Subscriber connections in total.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events to publish.
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Publisher ticks per second (each tick sends `--burst` events in one write).
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Events per publisher tick, written back-to-back in one write (each with its own
        /// index and send timestamp); `--events` stays the total, so the event rate is
        /// rate x burst and there are ceil(events / burst) ticks.
        #[arg(long, default_value_t = 1)]
        burst: u64,
        /// Seconds to wait for deliveries after the last send.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
    },
    /// Chat streaming to N watchers: an admin driver calls `chat.send` (built-in offline
    /// agent) on a few sessions; every watcher receives every run's `chat` stream.
    Chat {
        /// Watcher connections in total.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Agent runs (`chat.send` calls) in total.
        #[arg(long, default_value_t = 40)]
        runs: u64,
        /// `chat.send` calls per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Sessions the runs rotate over (runs on one session queue in its lane; different
        /// sessions run in parallel up to agents.defaults.maxConcurrent).
        #[arg(long, default_value_t = 8)]
        sessions: u64,
        /// Seconds to wait for the streams to finish after the last send.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
    },
    /// Fan-out with a fraction of subscribers that never read (slow consumers).
    Slow {
        /// Subscriber connections in total.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Fraction of subscribers that stop reading.
        #[arg(long, default_value_t = 0.1)]
        slow_fraction: f64,
        /// Events to publish (per run).
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Publisher ticks per second (each tick sends `--burst` events in one write).
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Events per publisher tick, written back-to-back in one write (each with its own
        /// index and send timestamp); `--events` stays the total, so the event rate is
        /// rate x burst and there are ceil(events / burst) ticks.
        #[arg(long, default_value_t = 1)]
        burst: u64,
        /// First run the same fan-out with everybody reading (baseline) on the same sockets.
        #[arg(long)]
        baseline: bool,
        /// Seconds to wait for deliveries after the last send.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
        /// Seconds between dropping the slow sockets and the last RSS sample.
        #[arg(long, default_value_t = 5)]
        drop_wait_secs: u64,
        /// SO_RCVBUF for the slow subscribers' sockets (0 = kernel default). Loopback
        /// receive buffers autotune to many MB, which hides the backlog from the gateway; a
        /// small value (e.g. 4096) makes it reach the gateway's outbox sooner.
        #[arg(long, default_value_t = 0)]
        slow_rcvbuf: usize,
    },
}

fn block_on<T>(driver: DriverArg, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    let uring = match driver {
        DriverArg::Auto => monoio::utils::detect_uring(),
        DriverArg::Uring => true,
        DriverArg::Legacy => false,
    };
    if uring {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build()?;
        Ok(rt.block_on(fut))
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?;
        Ok(rt.block_on(fut))
    }
}

/// Handshakes in flight per child for this scenario (sizes the source-address pool).
fn per_child_concurrency(cli: &Cli, index: usize) -> usize {
    match &cli.cmd {
        Cmd::ConnectStorm { concurrency, .. } => {
            stats::share(*concurrency, cli.procs, index).max(1)
        }
        _ => cli.setup_concurrency.max(1),
    }
}

fn addrs_per_proc(cli: &Cli) -> usize {
    if cli.addrs_per_proc > 0 {
        return cli.addrs_per_proc;
    }
    per_child_concurrency(cli, 0).div_ceil(8).clamp(1, 255)
}

/// Source addresses of child `i`: 127.0.j.(2+i), j = 0..M.
fn source_addrs(cli: &Cli, target: &ws::Target, i: usize) -> Vec<IpAddr> {
    if cli.no_bind || !target.addr.ip().is_loopback() || !target.addr.is_ipv4() {
        return Vec::new();
    }
    (0..addrs_per_proc(cli))
        .map(|j| IpAddr::V4(Ipv4Addr::new(127, 0, j as u8, (2 + i).min(254) as u8)))
        .collect()
}

fn run_child(cli: Cli, index: usize, target: ws::Target) -> anyhow::Result<()> {
    ipc::start_phase_listener();
    let srcs = source_addrs(&cli, &target, index);
    eprintln!(
        "[child {index}] pid {} source addresses {:?}",
        std::process::id(),
        srcs
    );
    let ctx = Rc::new(child::Ctx {
        target,
        token: cli.token.clone(),
        index,
        procs: cli.procs.max(1),
        srcs,
        setup_concurrency: cli.setup_concurrency.max(1),
        timeout: Duration::from_millis(cli.timeout_ms),
        setup_attempts: cli.setup_attempts.max(1),
    });
    let driver = cli.driver;
    block_on(driver, async move {
        match cli.cmd {
            Cmd::ConnectStorm {
                mode,
                total,
                concurrency,
                reuse_identity,
            } => {
                child::storm(
                    ctx,
                    child::StormOpts {
                        total,
                        concurrency,
                        device: mode == Mode::Device,
                        reuse_identity,
                    },
                )
                .await
            }
            Cmd::HoldIdle { conns, .. } => child::hold(ctx, conns).await,
            Cmd::Rpc {
                conns,
                duration_secs,
                pipeline,
                method,
                rate,
                max_inflight,
                tick_us,
                batch,
            } => {
                child::rpc(
                    ctx,
                    child::RpcOpts {
                        conns,
                        duration: Duration::from_secs(duration_secs),
                        pipeline,
                        method,
                        rate: rate.filter(|r| *r > 0.0),
                        max_inflight: max_inflight.max(1),
                        tick: Duration::from_micros(tick_us.max(50)),
                        batch: batch.max(1),
                    },
                )
                .await
            }
            Cmd::Fanout {
                subscribers,
                events,
                ..
            } => {
                child::fan(
                    ctx,
                    child::FanOpts {
                        subscribers,
                        events,
                        slow_fraction: 0.0,
                        run_a: true,
                        run_b: false,
                        slow_rcvbuf: None,
                        chat: false,
                    },
                )
                .await
            }
            Cmd::Chat { watchers, runs, .. } => {
                child::fan(
                    ctx,
                    child::FanOpts {
                        subscribers: watchers,
                        events: runs,
                        slow_fraction: 0.0,
                        run_a: true,
                        run_b: false,
                        slow_rcvbuf: None,
                        chat: true,
                    },
                )
                .await
            }
            Cmd::Slow {
                subscribers,
                slow_fraction,
                events,
                baseline,
                slow_rcvbuf,
                ..
            } => {
                child::fan(
                    ctx,
                    child::FanOpts {
                        subscribers,
                        events,
                        slow_fraction: slow_fraction.clamp(0.0, 1.0),
                        run_a: baseline,
                        run_b: true,
                        slow_rcvbuf: (slow_rcvbuf > 0).then_some(slow_rcvbuf),
                        chat: false,
                    },
                )
                .await
            }
        }
    })
}

fn run_parent(cli: Cli, target: ws::Target) -> anyhow::Result<serde_json::Value> {
    let common = parent::Common {
        target,
        token: cli.token.clone(),
        procs: cli.procs.max(1),
        gateway_pid: cli.gateway_pid,
        child_args: std::env::args().skip(1).collect(),
        timeout: Duration::from_millis(cli.timeout_ms),
        addrs_per_proc: if cli.no_bind { 0 } else { addrs_per_proc(&cli) },
    };
    let cmd = cli.cmd.clone();
    block_on(cli.driver, async move {
        let started = std::time::Instant::now();
        let r = match cmd {
            Cmd::ConnectStorm {
                mode,
                total,
                concurrency,
                reuse_identity,
            } => {
                let m = if mode == Mode::Device {
                    "device"
                } else {
                    "token"
                };
                parent::storm(&common, m, reuse_identity, total, concurrency).await
            }
            Cmd::HoldIdle {
                conns,
                hold_secs,
                settle_secs,
            } => parent::hold(&common, conns, hold_secs, settle_secs).await,
            Cmd::Rpc {
                conns,
                duration_secs,
                pipeline,
                method,
                rate,
                max_inflight,
                tick_us,
                batch,
            } => {
                parent::rpc(
                    &common,
                    parent::RpcPlan {
                        conns,
                        secs: duration_secs,
                        pipeline: pipeline.max(1),
                        method: &method,
                        rate: rate.filter(|r| *r > 0.0),
                        max_inflight: max_inflight.max(1),
                        tick_us: tick_us.max(50),
                        batch: batch.max(1),
                    },
                )
                .await
            }
            Cmd::Fanout {
                subscribers,
                events,
                rate,
                burst,
                grace_secs,
            } => {
                parent::fan(
                    &common,
                    parent::FanPlan {
                        scenario: "fanout",
                        subscribers,
                        events,
                        rate,
                        burst: burst.max(1),
                        slow_fraction: 0.0,
                        run_a: true,
                        run_b: false,
                        grace: Duration::from_secs(grace_secs),
                        drop_wait: Duration::ZERO,
                        slow_rcvbuf: 0,
                        chat_sessions: None,
                    },
                )
                .await
            }
            Cmd::Chat {
                watchers,
                runs,
                rate,
                sessions,
                grace_secs,
            } => {
                parent::fan(
                    &common,
                    parent::FanPlan {
                        scenario: "chat",
                        subscribers: watchers,
                        events: runs,
                        rate,
                        burst: 1,
                        slow_fraction: 0.0,
                        run_a: true,
                        run_b: false,
                        grace: Duration::from_secs(grace_secs),
                        drop_wait: Duration::ZERO,
                        slow_rcvbuf: 0,
                        chat_sessions: Some(sessions.max(1)),
                    },
                )
                .await
            }
            Cmd::Slow {
                subscribers,
                slow_fraction,
                events,
                rate,
                burst,
                baseline,
                grace_secs,
                drop_wait_secs,
                slow_rcvbuf,
            } => {
                parent::fan(
                    &common,
                    parent::FanPlan {
                        scenario: "slow",
                        subscribers,
                        events,
                        rate,
                        burst: burst.max(1),
                        slow_fraction: slow_fraction.clamp(0.0, 1.0),
                        run_a: baseline,
                        run_b: true,
                        grace: Duration::from_secs(grace_secs),
                        drop_wait: Duration::from_secs(drop_wait_secs),
                        slow_rcvbuf,
                        chat_sessions: None,
                    },
                )
                .await
            }
        };
        r.map(|mut v| {
            v["elapsed_s"] = json!((started.elapsed().as_secs_f64() * 100.0).round() / 100.0);
            v
        })
    })?
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = match ws::Target::parse(&cli.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("clawgate-load: {e}");
            println!("{}", json!({"error": e}));
            return ExitCode::from(2);
        }
    };
    if let Some(i) = cli.child_index {
        return match run_child(cli, i, target) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("[child {i}] failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run_parent(cli, target) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clawgate-load: {e:#}");
            println!("{}", json!({"error": format!("{e:#}")}));
            ExitCode::FAILURE
        }
    }
}
