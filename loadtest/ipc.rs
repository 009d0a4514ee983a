//! Parent ↔ child coordination over pipes.
//!
//! child → parent (child stdout, one line each): `SYNC <tag> <json>` at each barrier and
//! finally `RESULT <json>`. parent → child (child stdin): `PHASE <n>`. A child whose stdin
//! closes (parent gone) jumps to [`PHASE_ABORT`].

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Phase reached when the parent disappears.
pub const PHASE_ABORT: u32 = u32::MAX;

static PHASE: AtomicU32 = AtomicU32::new(0);

/// Child side: current phase as last announced by the parent.
pub fn phase() -> u32 {
    PHASE.load(Ordering::Acquire)
}

/// Child side: start the stdin reader thread.
pub fn start_phase_listener() {
    let _ = std::thread::Builder::new()
        .name("phase-listener".into())
        .spawn(|| {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("PHASE ")
                    .and_then(|n| n.trim().parse::<u32>().ok())
                {
                    PHASE.fetch_max(n, Ordering::AcqRel);
                }
            }
            PHASE.store(PHASE_ABORT, Ordering::Release);
        });
}

/// Child side: wait (polling) until the parent announces phase `n` or later.
pub async fn wait_phase(n: u32) -> u32 {
    loop {
        let p = phase();
        if p >= n {
            return p;
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Child side: emit a barrier line.
pub fn sync(tag: &str, v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "SYNC {tag} {v}");
    let _ = out.flush();
}

/// Child side: emit the final result line.
pub fn result(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "RESULT {v}");
    let _ = out.flush();
}

/// A line from a child.
#[derive(Debug)]
enum Line {
    Sync(String, Value),
    Result(Value),
    Eof,
}

/// Parent side: the spawned children.
pub struct Children {
    procs: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Line)>,
    inbox: Vec<VecDeque<Line>>,
    results: Vec<Option<Value>>,
    dead: Vec<bool>,
}

impl Children {
    /// Re-exec this binary `n` times with `--child-index i` prepended to `args`.
    pub fn spawn(n: usize, args: &[String]) -> anyhow::Result<Children> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut procs = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.arg("--child-index").arg(i.to_string()).args(args);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn()?;
            stdins.push(child.stdin.take());
            if let Some(out) = child.stdout.take() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        let parsed = if let Some(rest) = line.strip_prefix("SYNC ") {
                            let (tag, json) = rest.split_once(' ').unwrap_or((rest, "null"));
                            Line::Sync(
                                tag.to_string(),
                                serde_json::from_str(json).unwrap_or(Value::Null),
                            )
                        } else if let Some(rest) = line.strip_prefix("RESULT ") {
                            Line::Result(serde_json::from_str(rest).unwrap_or(Value::Null))
                        } else {
                            eprintln!("[child {i}] {line}");
                            continue;
                        };
                        if tx.send((i, parsed)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((i, Line::Eof));
                });
            }
            procs.push(child);
        }
        Ok(Children {
            procs,
            stdins,
            rx,
            inbox: (0..n).map(|_| VecDeque::new()).collect(),
            results: vec![None; n],
            dead: vec![false; n],
        })
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    fn pump(&mut self) {
        while let Ok((i, l)) = self.rx.try_recv() {
            match l {
                Line::Result(v) => {
                    if let Some(slot) = self.results.get_mut(i) {
                        *slot = Some(v);
                    }
                }
                Line::Eof => {
                    if let Some(d) = self.dead.get_mut(i) {
                        *d = true;
                    }
                }
                l => {
                    if let Some(q) = self.inbox.get_mut(i) {
                        q.push_back(l);
                    }
                }
            }
        }
    }

    /// Wait until every child sent `SYNC tag` (or finished / died), up to `timeout`.
    /// Returns each child's payload (`None` = not received).
    pub async fn wait_sync(&mut self, tag: &str, timeout: Duration) -> Vec<Option<Value>> {
        let deadline = Instant::now() + timeout;
        let n = self.len();
        let mut got: Vec<Option<Value>> = vec![None; n];
        loop {
            self.pump();
            for (i, g) in got.iter_mut().enumerate() {
                if g.is_some() {
                    continue;
                }
                if let Some(q) = self.inbox.get_mut(i) {
                    if let Some(pos) = q
                        .iter()
                        .position(|l| matches!(l, Line::Sync(t, _) if t == tag))
                    {
                        if let Some(Line::Sync(_, v)) = q.remove(pos) {
                            *g = Some(v);
                        }
                    }
                }
            }
            let pending = (0..n)
                .filter(|&i| got[i].is_none() && !self.dead[i] && self.results[i].is_none())
                .count();
            if pending == 0 || Instant::now() >= deadline {
                return got;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Announce a phase to every child.
    pub fn set_phase(&mut self, n: u32) {
        for s in self.stdins.iter_mut() {
            if let Some(w) = s {
                if writeln!(w, "PHASE {n}").and_then(|_| w.flush()).is_err() {
                    *s = None;
                }
            }
        }
    }

    /// Wait for every child's RESULT (or death), up to `timeout`; then reap them.
    pub async fn results(&mut self, timeout: Duration) -> Vec<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            let pending = (0..self.len())
                .filter(|&i| self.results[i].is_none() && !self.dead[i])
                .count();
            if pending == 0 || Instant::now() >= deadline {
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stdins.clear();
        for p in self.procs.iter_mut() {
            // Give a child that missed the deadline a moment, then stop it.
            let until = Instant::now() + Duration::from_secs(2);
            loop {
                match p.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = p.kill();
                        let _ = p.wait();
                        break;
                    }
                }
            }
        }
        self.results.clone()
    }
}
