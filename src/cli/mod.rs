//! The command line: `clawgate gateway [run|call|health|auth-token]`.
//!
//! Owns: argument parsing, precedence (flag > environment > config > default), logging
//! setup, exit codes. Must not touch: sockets or per-core state (it calls `runtime::start`
//! and the blocking `client`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{Client, ConnectOptions};
use crate::config::{self, AuthMode, BindMode, Config, Paths};
use crate::runtime::core::{AuthSettings, RunOptions, Shared};
use crate::runtime::{self, Driver};

/// Exit code for configuration errors that make starting unsafe (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Default gateway port.
pub const DEFAULT_PORT: u16 = 18789;

#[derive(Parser, Debug)]
#[command(
    name = "clawgate",
    version,
    about = "Thread-per-core OpenClaw Gateway (protocol v4)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Run or talk to the gateway.
    Gateway(GatewayCmd),
}

#[derive(Args, Debug)]
struct GatewayCmd {
    #[command(subcommand)]
    sub: Option<GatewaySub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum GatewaySub {
    /// Run the gateway in the foreground (the default).
    Run(RunArgs),
    /// Call one RPC method and print the result.
    Call(CallArgs),
    /// Print the gateway's health.
    Health(ClientArgs),
    /// Print the gateway token stored in the state directory.
    AuthToken,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BindArg {
    Loopback,
    Lan,
    Custom,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AuthArg {
    Token,
    Password,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DriverArg {
    Auto,
    Uring,
    Legacy,
}

#[derive(Args, Debug, Clone, Default)]
struct RunArgs {
    /// Port (flag > OPENCLAW_GATEWAY_PORT > gateway.port > 18789). 0 picks a free port.
    #[arg(long)]
    port: Option<u16>,
    /// Interface: loopback (127.0.0.1), lan (0.0.0.0) or custom (--host).
    #[arg(long, value_enum)]
    bind: Option<BindArg>,
    /// Address for --bind custom.
    #[arg(long)]
    host: Option<String>,
    /// Worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Shared token (else OPENCLAW_GATEWAY_TOKEN, gateway.auth.token, or a generated one).
    #[arg(long)]
    token: Option<String>,
    /// Shared password (password mode; else OPENCLAW_GATEWAY_PASSWORD or gateway.auth.password).
    #[arg(long)]
    password: Option<String>,
    /// Auth mode (default: gateway.auth.mode, else token).
    #[arg(long, value_enum)]
    auth: Option<AuthArg>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
    /// Shorthand for --log-level debug.
    #[arg(long)]
    verbose: bool,
    /// I/O driver.
    #[arg(long, value_enum, hide = true)]
    driver: Option<DriverArg>,
    /// Test-only: mount a WebSocket echo at /__echo (conformance suites).
    #[arg(long, hide = true)]
    ws_echo: bool,
    /// Test-only: tick interval in ms (default 30000).
    #[arg(long, hide = true)]
    tick_interval_ms: Option<u64>,
    /// Handshake timeout in ms (default 15000).
    #[arg(long, hide = true)]
    handshake_timeout_ms: Option<u64>,
    /// Per-connection write budget in bytes (default 52428800 = policy.maxBufferedBytes).
    #[arg(long, hide = true)]
    max_buffered_bytes: Option<usize>,
    /// Queued bytes above which droppable events are skipped (default 1 MiB).
    #[arg(long, hide = true)]
    drop_threshold_bytes: Option<usize>,
    /// Test-only: pong window after a server ping in ms (default 25000).
    #[arg(long, hide = true)]
    pong_timeout_ms: Option<u64>,
    /// Test-only: `health` event interval in ms (default 60000).
    #[arg(long, hide = true)]
    health_interval_ms: Option<u64>,
    /// Test-only: slots per core-to-core queue (default 2048).
    #[arg(long, hide = true)]
    mesh_queue_slots: Option<usize>,
    /// Test-only: delay every store-thread batch by this many ms (simulates a slow disk).
    #[arg(long, hide = true)]
    store_delay_ms: Option<u64>,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Gateway URL (default ws://127.0.0.1:<port>).
    #[arg(long)]
    url: Option<String>,
    /// Shared token (default OPENCLAW_GATEWAY_TOKEN, then the stored token).
    #[arg(long)]
    token: Option<String>,
    /// Shared password.
    #[arg(long)]
    password: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Timeout in ms.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct CallArgs {
    /// Method name, e.g. `health`.
    method: String,
    /// JSON params.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Scopes to request (comma-separated; default: all operator scopes).
    #[arg(long)]
    scopes: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Top::Gateway(g) = cli.cmd;
    let result = match g.sub {
        None => run_gateway(g.run),
        Some(GatewaySub::Run(a)) => run_gateway(a),
        Some(GatewaySub::Call(a)) => call(a),
        Some(GatewaySub::Health(a)) => health(a),
        Some(GatewaySub::AuthToken) => auth_token(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clawgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(level: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        b.init();
    } else {
        b.json().with_current_span(false).init();
    }
}

fn load_config() -> anyhow::Result<Config> {
    let paths = Paths::resolve(&env);
    config::load(paths, &env).map_err(|e| anyhow!(e))
}

fn token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("gateway-token")
}

fn read_stored_token(state_dir: &Path) -> Option<String> {
    stored_token(state_dir).ok().flatten()
}

/// The generated token under the state dir: `Ok(None)` only when there is none (a file
/// that exists but cannot be read must not be silently replaced by a new token).
fn stored_token(state_dir: &Path) -> Result<Option<String>, String> {
    let path = token_file(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the stored token at {}: {e}",
            path.display()
        )),
    }
}

/// A secret given on the command line: an empty one (an unset shell variable) is an error,
/// never an empty secret every client matches.
fn flag_secret(v: &Option<String>, flag: &str) -> Result<Option<String>, String> {
    match v.as_deref().map(str::trim) {
        None => Ok(None),
        Some("") => Err(format!("{flag} is empty")),
        Some(t) => Ok(Some(t.to_string())),
    }
}

/// Resolve auth: returns settings, or an error message for exit 78.
fn resolve_auth(a: &RunArgs, cfg: &Config) -> Result<(AuthSettings, bool), String> {
    let flag_token = flag_secret(&a.token, "--token")?;
    let flag_password = flag_secret(&a.password, "--password")?;
    let env_password = env("OPENCLAW_GATEWAY_PASSWORD");
    let mode = match a.auth {
        Some(AuthArg::Token) => AuthMode::Token,
        Some(AuthArg::Password) => AuthMode::Password,
        Some(AuthArg::None) => AuthMode::None,
        // No mode: a password from any source (and no token on the command line) means
        // password mode; otherwise token mode.
        None => cfg.gateway.auth.mode.unwrap_or(
            if flag_token.is_none()
                && (flag_password.is_some()
                    || env_password.is_some()
                    || cfg.gateway.auth.password.is_some())
            {
                AuthMode::Password
            } else {
                AuthMode::Token
            },
        ),
    };
    match mode {
        AuthMode::None => Ok((AuthSettings { mode, secret: None }, false)),
        AuthMode::Password => {
            let p = flag_password
                .or(env_password)
                .or_else(|| cfg.gateway.auth.password.clone());
            match p {
                Some(p) => Ok((AuthSettings { mode, secret: Some(p) }, false)),
                None => Err("auth mode is password but no password is set (--password, OPENCLAW_GATEWAY_PASSWORD or gateway.auth.password)".into()),
            }
        }
        AuthMode::Token => {
            let t = match flag_token
                .or_else(|| env("OPENCLAW_GATEWAY_TOKEN"))
                .or_else(|| cfg.gateway.auth.token.clone())
            {
                Some(t) => Some(t),
                None => stored_token(&cfg.paths.state_dir)?,
            };
            match t {
                Some(t) => Ok((
                    AuthSettings {
                        mode,
                        secret: Some(t),
                    },
                    false,
                )),
                None => {
                    let t = crate::auth::token::generate_token();
                    let path = token_file(&cfg.paths.state_dir);
                    crate::store::atomic::write_atomic(&path, format!("{t}\n").as_bytes(), 0o600)
                        .map_err(|e| {
                        format!(
                            "cannot store the generated token at {}: {e}",
                            path.display()
                        )
                    })?;
                    Ok((
                        AuthSettings {
                            mode,
                            secret: Some(t),
                        },
                        true,
                    ))
                }
            }
        }
    }
}

fn run_gateway(a: RunArgs) -> anyhow::Result<ExitCode> {
    let level = a.log_level.clone().unwrap_or_else(|| {
        if a.verbose {
            "debug".into()
        } else {
            "info".into()
        }
    });
    init_tracing(&level);
    let cfg = match load_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(message = "Configuration error.", error = %e);
            eprintln!("clawgate: configuration error: {e:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for issue in &cfg.issues {
        tracing::warn!(message = "Config issue.", issue = %issue);
    }
    let port = a
        .port
        .or_else(|| env("OPENCLAW_GATEWAY_PORT").and_then(|p| p.parse().ok()))
        .or(cfg.gateway.port)
        .unwrap_or(DEFAULT_PORT);
    let bind = match a.bind {
        Some(BindArg::Loopback) => BindMode::Loopback,
        Some(BindArg::Lan) => BindMode::Lan,
        Some(BindArg::Custom) => BindMode::Custom,
        None => cfg.gateway.bind.unwrap_or_default(),
    };
    let ip: IpAddr = match bind {
        BindMode::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        BindMode::Lan => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        BindMode::Custom => {
            let (h, from) = match (&a.host, &cfg.gateway.custom_bind_host) {
                (Some(h), _) => (h.clone(), "--host"),
                (None, Some(h)) => (h.clone(), "gateway.customBindHost"),
                (None, None) => {
                    eprintln!("clawgate: bind mode custom needs --host or gateway.customBindHost");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            match h.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    eprintln!("clawgate: {from} {h:?} is not an IP address");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
    };
    let (auth, generated) = match resolve_auth(&a, &cfg) {
        Ok(x) => x,
        Err(msg) => {
            eprintln!("clawgate: {msg}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if !ip.is_loopback() && auth.mode == AuthMode::None {
        eprintln!("clawgate: refusing to bind {ip} without auth (auth mode none is only allowed on loopback)");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    if generated {
        tracing::info!(
            message = "Generated a gateway token (stored 0600 in the state dir); print it with `clawgate gateway auth-token`.",
            path = %token_file(&cfg.paths.state_dir).display()
        );
    }
    let workers = a
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let driver = runtime::choose_driver(match a.driver {
        Some(DriverArg::Uring) => Some(Driver::Uring),
        Some(DriverArg::Legacy) => Some(Driver::Legacy),
        _ => None,
    });
    let mut opts = RunOptions {
        workers,
        ws_echo: a.ws_echo,
        ..RunOptions::default()
    };
    if let Some(t) = a.tick_interval_ms {
        opts.tick_interval_ms = t;
    }
    if let Some(t) = a.pong_timeout_ms {
        opts.pong_timeout_ms = t;
    }
    if let Some(d) = a.store_delay_ms {
        opts.store_delay_ms = d;
    }
    if let Some(t) = a.health_interval_ms {
        opts.health_interval_ms = t;
    }
    if let Some(t) = a.handshake_timeout_ms {
        opts.handshake_timeout_ms = t;
    }
    if let Some(b) = a.max_buffered_bytes {
        opts.budget.max_buffered = b.max(64 * 1024);
    }
    if let Some(b) = a.drop_threshold_bytes {
        opts.budget.drop_threshold = b.min(opts.budget.max_buffered);
    }
    let (listeners, addr) = runtime::bind_listeners(SocketAddr::new(ip, port), workers)?;
    for bad in crate::transport::proxy::TrustedProxies::invalid(&cfg.gateway.trusted_proxies) {
        tracing::warn!(message = "Ignoring gateway.trustedProxies entry: not an address or CIDR.", entry = %bad);
    }
    let trusted_proxies =
        crate::transport::proxy::TrustedProxies::parse(&cfg.gateway.trusted_proxies);
    let shared = Arc::new(Shared {
        config: Arc::new(cfg),
        auth,
        opts,
        mesh: runtime::mesh::Mesh::with_capacity(
            workers,
            a.mesh_queue_slots.unwrap_or(runtime::mesh::QUEUE_CAPACITY),
        ),
        accepting: Default::default(),
        preauth_total: Default::default(),
        shutting_down: Default::default(),
        started: std::time::Instant::now(),
        started_at_ms: runtime::core::now_ms(),
        instance_id: crate::auth::token::uuid_v4(),
        host: hostname(),
        trusted_proxies,
    });
    let running = runtime::start(shared, listeners, addr, driver)?;
    tracing::info!(message = "Gateway listening.", addr = %running.addr, workers, driver = ?driver);
    // Machine-readable line for scripts and tests (port 0 resolves here).
    println!("clawgate listening on ws://{}", running.addr);

    let (tx, rx) = std::sync::mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("cannot install signal handler")?;
    let _ = rx.recv();
    tracing::info!(message = "Shutting down.");
    running.shutdown();
    running.join();
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn client_defaults(c: &ClientArgs) -> anyhow::Result<(String, Option<String>)> {
    let cfg = match load_config() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("clawgate: warning: configuration error: {e:#}");
            None
        }
    };
    let url = match &c.url {
        Some(u) => u.clone(),
        None => {
            let port = env("OPENCLAW_GATEWAY_PORT")
                .and_then(|p| p.parse().ok())
                .or(cfg.as_ref().and_then(|c| c.gateway.port))
                .unwrap_or(DEFAULT_PORT);
            format!("ws://127.0.0.1:{port}")
        }
    };
    // The config's and the stored token are this machine's gateway's: never sent to
    // another host named with --url (only --token or OPENCLAW_GATEWAY_TOKEN are).
    let this_machine = c.url.as_deref().is_none_or(url_is_loopback);
    let state_dir = cfg
        .as_ref()
        .map(|c| c.paths.state_dir.clone())
        .unwrap_or_else(|| Paths::resolve(&env).state_dir);
    let token = c
        .token
        .clone()
        .or_else(|| env("OPENCLAW_GATEWAY_TOKEN"))
        .or_else(|| {
            this_machine
                .then(|| cfg.as_ref().and_then(|c| c.gateway.auth.token.clone()))
                .flatten()
        })
        .or_else(|| {
            this_machine
                .then(|| read_stored_token(&state_dir))
                .flatten()
        });
    Ok((url, token))
}

/// Whether a `ws://host:port/…` URL names this machine's loopback.
fn url_is_loopback(url: &str) -> bool {
    use crate::transport::http::{authority_of, is_loopback_host};
    is_loopback_host(authority_of(url))
}

fn connect_for(c: &ClientArgs, scopes: Vec<String>) -> anyhow::Result<Client> {
    let (url, token) = client_defaults(c)?;
    let o = ConnectOptions {
        token: if c.password.is_some() { None } else { token },
        password: c.password.clone(),
        scopes,
        timeout: Duration::from_millis(c.timeout),
        ..ConnectOptions::default()
    };
    let (client, _hello) =
        Client::connect(&url, &o).with_context(|| format!("connect to {url} failed"))?;
    Ok(client)
}

fn print_result(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn call(a: CallArgs) -> anyhow::Result<ExitCode> {
    let params: Value = serde_json::from_str(&a.params).context("--params must be JSON")?;
    let scopes = match &a.scopes {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        None => [
            "operator.admin",
            "operator.read",
            "operator.write",
            "operator.approvals",
            "operator.pairing",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut c = connect_for(&a.client, scopes)?;
    match c.call(&a.method, params) {
        Ok(v) => {
            print_result(&v);
            c.close();
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::client::ClientError::Rpc(e)) => {
            eprintln!(
                "clawgate: {} failed: {}",
                a.method,
                serde_json::to_string(&e).unwrap_or_default()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => bail!(e),
    }
}

fn health(a: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut c = connect_for(&a, vec!["operator.read".into()])?;
    let v = c.call("health", serde_json::json!({}))?;
    if a.json {
        print_result(&v);
    } else {
        println!("Gateway: ok={} (uptime {} ms)", v["ok"], v["durationMs"]);
    }
    c.close();
    Ok(ExitCode::SUCCESS)
}

fn auth_token() -> anyhow::Result<ExitCode> {
    let cfg = load_config()?;
    if let Some(t) = cfg
        .gateway
        .auth
        .token
        .clone()
        .or_else(|| read_stored_token(&cfg.paths.state_dir))
    {
        println!("{t}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "clawgate: no token stored in {} (start the gateway once to generate one)",
            cfg.paths.state_dir.display()
        );
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_get_this_machines_stored_credentials() {
        for u in [
            "ws://127.0.0.1:18789",
            "ws://localhost:1/",
            "wss://[::1]:443/ws",
            "ws://127.0.0.2",
        ] {
            assert!(url_is_loopback(u), "{u}");
        }
        for u in [
            "ws://10.0.0.5:18789",
            "wss://gw.example-tailnet.ts.net",
            "ws://localhost.evil.com",
            "ws://127.0.0.1.nip.io:1",
        ] {
            assert!(!url_is_loopback(u), "{u}");
        }
    }

    #[test]
    fn empty_flag_secrets_are_errors() {
        assert_eq!(flag_secret(&None, "--token"), Ok(None));
        assert_eq!(
            flag_secret(&Some(" t ".into()), "--token"),
            Ok(Some("t".into()))
        );
        assert!(flag_secret(&Some("  ".into()), "--token").is_err());
    }
}
