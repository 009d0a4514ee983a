//! Test support: start the real `clawgate` binary on port 0 with a temp state dir, and helpers
//! to talk to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawgate::client::{Client, ConnectOptions};

/// Both I/O drivers, so every I/O test runs on io_uring and on epoll.
pub const DRIVERS: &[&str] = &["uring", "legacy"];

pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub token: String,
    pub home: PathBuf,
    pub state_dir: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).unwrap();
    let d = std::env::temp_dir().join(format!(
        "clawgate-test-{tag}-{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Opts<'a> {
    pub driver: &'a str,
    pub workers: usize,
    pub extra: Vec<String>,
    pub token: Option<&'a str>,
    pub config: Option<&'a str>,
    pub env: Vec<(String, String)>,
    pub home: Option<PathBuf>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Self {
            driver: "uring",
            workers: 2,
            extra: vec![],
            token: Some("test-token-123"),
            config: None,
            env: vec![],
            home: None,
        }
    }
}

impl Gateway {
    pub fn start(driver: &str) -> Self {
        Self::start_with(Opts {
            driver,
            ..Opts::default()
        })
    }

    pub fn start_with(o: Opts<'_>) -> Self {
        let home = o.home.clone().unwrap_or_else(|| temp_dir("home"));
        let state_dir = home.join(".openclaw");
        std::fs::create_dir_all(&state_dir).unwrap();
        if let Some(cfg) = o.config {
            std::fs::write(state_dir.join("openclaw.json"), cfg).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawgate"));
        cmd.args(["gateway", "run", "--port", "0", "--driver", o.driver]);
        cmd.args(["--workers", &o.workers.to_string()]);
        if let Some(t) = o.token {
            cmd.args(["--token", t]);
        }
        cmd.args(&o.extra);
        cmd.env("HOME", &home)
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("OPENCLAW_STATE_DIR")
            .env_remove("OPENCLAW_CONFIG_PATH")
            .env_remove("OPENCLAW_GATEWAY_PORT");
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn clawgate");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listening line from gateway: {line:?}"));
        let g = Self {
            child: Some(child),
            port,
            token: o.token.unwrap_or("").to_string(),
            home,
            state_dir,
        };
        g.wait_ready();
        g
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((code, _)) = self.http("GET", "/readyz", &[]) {
                if code == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gateway never became ready");
    }

    /// One HTTP/1.1 request (Connection: close); returns status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((code, body))
    }

    pub fn opts(&self) -> ConnectOptions {
        ConnectOptions {
            token: Some(self.token.clone()),
            ..ConnectOptions::default()
        }
    }

    pub fn connect(&self, scopes: &[&str]) -> Client {
        let mut o = self.opts();
        o.scopes = scopes.iter().map(|s| s.to_string()).collect();
        Client::connect(&self.url(), &o).expect("connect").0
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Path of the real OpenClaw CLI wrapper installed by scripts/setup-test-peers.sh, or None.
/// Under CI=true a missing CLI is a failure, not a skip.
pub fn real_cli() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".peers/bin/openclaw");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!(
            "CI=true but the real openclaw CLI is missing at {} (run scripts/setup-test-peers.sh)",
            p.display()
        );
    }
    eprintln!(
        "SKIP: real openclaw CLI not installed at {} (run scripts/setup-test-peers.sh)",
        p.display()
    );
    None
}
