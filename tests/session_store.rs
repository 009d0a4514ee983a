#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Durable session store: repartitioning across worker counts, crash safety under
//! `kill -9`, history paging, reset.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clawgate::store::sessions::{
    index_path, shard_of, FsyncPolicy, SessionShard, StoreOptions, TranscriptMessage,
};
use serde_json::json;

const CHILD_ENV: &str = "CLAWGATE_STORE_CHILD";
const CHILD_DIR_ENV: &str = "CLAWGATE_STORE_DIR";

fn temp_dir(tag: &str) -> std::io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!(
        "clawgate-session-store-{tag}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&d)?;
    Ok(d)
}

fn msg(id: &str, role: &str, text: &str, ts: i64) -> TranscriptMessage {
    TranscriptMessage {
        id: id.to_string(),
        role: role.to_string(),
        text: text.to_string(),
        ts,
        run_id: None,
        stop_reason: None,
        error: None,
        usage: None,
    }
}

fn ids(msgs: &[TranscriptMessage]) -> Vec<String> {
    msgs.iter().map(|m| m.id.clone()).collect()
}

fn index_files(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(dir.join("sessions"))? {
        names.insert(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

type Rows = BTreeMap<String, (String, Option<String>, i64)>;

/// Load every shard for `workers` and check each key is present exactly once, on its
/// owner, and that no other shard files remain. Returns key → (sessionId, label,
/// updatedAtMs).
fn check_partition(dir: &Path, workers: usize) -> std::io::Result<Rows> {
    let mut seen = BTreeMap::new();
    for core in 0..workers {
        let s = SessionShard::load(dir, core, workers)?;
        for e in s.list() {
            assert_eq!(shard_of(&e.key, workers), core, "{} on wrong shard", e.key);
            let prev = seen.insert(
                e.key.clone(),
                (e.session_id.clone(), e.label.clone(), e.updated_at_ms),
            );
            assert!(prev.is_none(), "{} on two shards", e.key);
        }
    }
    let want: BTreeSet<String> = (0..workers)
        .map(|c| format!("index-{c}-of-{workers}.json"))
        .collect();
    assert_eq!(index_files(dir)?, want, "stale shard files left behind");
    Ok(seen)
}

#[test]
fn repartition_1_to_2_to_3_keeps_every_entry_once_on_its_owner() {
    let dir = temp_dir("repartition").unwrap();
    SessionShard::repartition(&dir, 1).unwrap();
    let mut s = SessionShard::load(&dir, 0, 1).unwrap();
    let keys: Vec<String> = (0..120)
        .map(|i| format!("agent:dev:explicit:k{i}"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let now = 1_000 + i as i64;
        s.ensure(k, now).unwrap();
        if i % 7 == 0 {
            s.patch(k, &json!({ "label": format!("label {i}") }), now)
                .unwrap();
        }
        if i % 5 == 0 {
            s.append(k, &msg(&format!("m{i}"), "user", "hello", now), now)
                .unwrap();
        }
    }
    s.flush().unwrap();
    let before: Rows = s
        .list()
        .map(|e| {
            (
                e.key.clone(),
                (e.session_id.clone(), e.label.clone(), e.updated_at_ms),
            )
        })
        .collect();
    drop(s);
    assert_eq!(before.len(), keys.len());

    for workers in [2, 3] {
        SessionShard::repartition(&dir, workers).unwrap();
        let after = check_partition(&dir, workers).unwrap();
        assert_eq!(after, before, "rows changed repartitioning to {workers}");
        // Transcripts still resolve through the moved rows.
        let k = &keys[5];
        let owner = SessionShard::load(&dir, shard_of(k, workers), workers).unwrap();
        assert_eq!(ids(&owner.history(k, 10).unwrap()), ["m5"]);
        assert_eq!(owner.get(k).unwrap().message_count, 1);
    }

    // An interrupted repartition (new shards written, old ones still there, one of them
    // holding a stale copy of a row) resolves to the newest row, still exactly once.
    let k = &keys[1];
    let owner3 = shard_of(k, 3);
    let mut s = SessionShard::load(&dir, owner3, 3).unwrap();
    s.patch(k, &json!({"label": "newest"}), 50_000).unwrap();
    drop(s);
    let stale = json!({"version":1,"entries":[
        {"key": k, "sessionId": before[k].0, "agentId": "dev", "createdAtMs": 1, "updatedAtMs": 2, "label": "stale"}
    ]});
    fs::write(index_path(&dir, 0, 1), serde_json::to_vec(&stale).unwrap()).unwrap();
    fs::write(
        dir.join("sessions/index-0-of-2.json.tmp.1.abcd"),
        b"{half a temp file",
    )
    .unwrap();
    SessionShard::repartition(&dir, 2).unwrap();
    let after = check_partition(&dir, 2).unwrap();
    assert_eq!(after.len(), keys.len());
    assert_eq!(after[k].1.as_deref(), Some("newest"));
    // And back down to one worker.
    SessionShard::repartition(&dir, 1).unwrap();
    assert_eq!(check_partition(&dir, 1).unwrap().len(), keys.len());
    fs::remove_dir_all(&dir).unwrap();
}

/// Child half of `kill9_loses_no_acknowledged_message`: only acts when spawned with
/// `CLAWGATE_STORE_CHILD=1`. Appends in a tight loop (Batched fsync, frequent index
/// rewrites, a new session every 40 messages) and prints `ACK <key> <id>` after each
/// append returns.
#[test]
fn crash_child_writer() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).unwrap());
    SessionShard::repartition(&dir, 1).unwrap();
    let mut s = SessionShard::load_with(
        &dir,
        0,
        1,
        StoreOptions {
            fsync: FsyncPolicy::Batched,
            index_flush_ms: 5,
        },
    )
    .unwrap();
    let start = Instant::now();
    let mut i: u64 = 0;
    // Bounded in case the parent dies without killing us.
    while start.elapsed() < Duration::from_secs(30) {
        let key = format!("agent:dev:crash:{}", i / 40);
        let id = format!("m{i}");
        let now = 1_000_000 + start.elapsed().as_millis() as i64;
        let text = format!("message {i} {}", "x".repeat((i % 13) as usize * 50));
        s.append(&key, &msg(&id, "user", &text, now), now).unwrap();
        println!("ACK {key} {id}");
        if i % 500 == 499 {
            s.flush().unwrap();
        }
        i += 1;
    }
}

#[test]
fn kill9_loses_no_acknowledged_message() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = temp_dir("crash").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(CHILD_DIR_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut acks: Vec<(String, String)> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints "test crash_child_writer ... " without a newline before the
            // test body runs, so the first ACK can share its line.
            let Some(at) = line.find("ACK ") else {
                continue;
            };
            let mut parts = line[at + 4..].split_whitespace();
            if let (Some(k), Some(id)) = (parts.next(), parts.next()) {
                acks.push((k.to_string(), id.to_string()));
                if acks.len() == 1 {
                    let _ = first_tx.send(());
                }
            }
        }
        acks
    });
    // Let the writer get going, then kill it mid-stream.
    first_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("child never acknowledged a message");
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(!exit.success(), "child was supposed to die by SIGKILL");
    let acks = reader.join().unwrap();
    assert!(acks.len() > 10, "only {} acks", acks.len());

    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, id) in acks {
        by_key.entry(k).or_default().push(id);
    }
    SessionShard::repartition(&dir, 1).unwrap();
    let s = SessionShard::load(&dir, 0, 1).unwrap();
    for (key, acked) in &by_key {
        assert!(s.get(key).is_some(), "session {key} lost");
        let e = s.get(key).unwrap();
        let history = ids(&s.history(key, usize::MAX).unwrap());
        // Everything acknowledged is there, in order; at most one more (written, killed
        // before the ACK was printed) may follow.
        assert!(
            history.len() >= acked.len(),
            "{key}: {history:?} vs {acked:?}"
        );
        assert_eq!(&history[..acked.len()], &acked[..], "{key}");
        assert!(history.len() <= acked.len() + 1, "{key}: phantom messages");
        assert_eq!(
            e.message_count,
            history.len() as u64,
            "{key}: row not repaired"
        );
    }
    eprintln!(
        "crash test: {} sessions, {} acknowledged messages survived kill -9",
        by_key.len(),
        by_key.values().map(Vec::len).sum::<usize>()
    );
    drop(s);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn history_limit_and_order() {
    let dir = temp_dir("history").unwrap();
    SessionShard::repartition(&dir, 1).unwrap();
    let mut s = SessionShard::load(&dir, 0, 1).unwrap();
    let key = "agent:dev:main";
    assert!(
        s.history(key, 20).unwrap().is_empty(),
        "unknown session = empty"
    );
    for i in 0..10 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        s.append(
            key,
            &msg(&format!("m{i}"), role, &format!("t{i}"), i),
            100 + i,
        )
        .unwrap();
    }
    assert_eq!(ids(&s.history(key, 3).unwrap()), ["m7", "m8", "m9"]);
    assert_eq!(s.history(key, 10).unwrap().len(), 10);
    assert_eq!(ids(&s.history(key, 100).unwrap())[0], "m0");
    assert!(s.history(key, 0).unwrap().is_empty());
    let e = s.get(key).unwrap();
    assert_eq!(e.message_count, 10);
    assert_eq!(e.last_message_preview.as_deref(), Some("t9"));
    assert_eq!(e.updated_at_ms, 109);

    // Large messages: the tail reader must widen its window past 64 KiB.
    let big = "y".repeat(20_000);
    for i in 10..40 {
        s.append(key, &msg(&format!("m{i}"), "user", &big, i), 200 + i)
            .unwrap();
    }
    assert_eq!(ids(&s.history(key, 2).unwrap()), ["m38", "m39"]);
    let all = s.history(key, 1000).unwrap();
    assert_eq!(all.len(), 40);
    assert!(all.windows(2).all(|w| w[0].ts < w[1].ts), "oldest first");
    let wire = all[39].to_wire_seq(40);
    assert_eq!(wire["role"], "user");
    assert_eq!(wire["content"][0]["type"], "text");
    assert_eq!(wire["timestamp"], 39);
    assert_eq!(wire["__openclaw"]["seq"], 40);

    // Survives a reload.
    s.flush().unwrap();
    drop(s);
    let s = SessionShard::load(&dir, 0, 1).unwrap();
    assert_eq!(ids(&s.history(key, 1).unwrap()), ["m39"]);
    assert_eq!(s.get(key).unwrap().message_count, 40);
    drop(s);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reset_keeps_old_transcript_and_starts_empty() {
    let dir = temp_dir("reset").unwrap();
    SessionShard::repartition(&dir, 1).unwrap();
    let mut s = SessionShard::load(&dir, 0, 1).unwrap();
    let key = "agent:dev:main";
    s.patch(key, &json!({"label": "keep me", "model": "openai/x"}), 10)
        .unwrap();
    s.append(key, &msg("a", "user", "before reset", 11), 11)
        .unwrap();
    s.append(key, &msg("b", "assistant", "reply", 12), 12)
        .unwrap();
    let old = s.get(key).unwrap().clone();
    let old_path = s.transcript_path(key).unwrap();

    let e = s.reset(key, 5_000).unwrap().clone();
    assert_ne!(e.session_id, old.session_id);
    assert_eq!(e.message_count, 0);
    assert_eq!(e.last_message_preview, None);
    assert_eq!(e.label.as_deref(), Some("keep me"));
    assert_eq!(e.model.as_deref(), Some("openai/x"));
    assert_eq!(e.created_at_ms, old.created_at_ms);
    assert_eq!(e.updated_at_ms, 5_000);
    assert!(s.history(key, 50).unwrap().is_empty());

    // The old transcript is kept, renamed, with its content.
    assert!(!old_path.exists());
    let kept = old_path.with_file_name(format!("{}.reset.5000.jsonl", old.session_id));
    let text = fs::read_to_string(&kept).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("before reset"));

    // New messages go to the new transcript only.
    s.append(key, &msg("c", "user", "after reset", 6_000), 6_000)
        .unwrap();
    assert_eq!(ids(&s.history(key, 50).unwrap()), ["c"]);
    assert_eq!(
        s.transcript_path(key).unwrap().file_name().unwrap(),
        format!("{}.jsonl", e.session_id).as_str()
    );
    s.flush().unwrap();
    drop(s);
    let s = SessionShard::load(&dir, 0, 1).unwrap();
    let e2 = s.get(key).unwrap();
    assert_eq!(e2.session_id, e.session_id);
    assert_eq!(e2.message_count, 1);
    assert_eq!(ids(&s.history(key, 50).unwrap()), ["c"]);
    drop(s);
    fs::remove_dir_all(&dir).unwrap();
}
