#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Data plane: sessions pinned to cores, lanes, chat streaming to every client, abort,
//! dedupe, provider errors, durability across kill -9, and slow consumers.
mod support;

use std::time::{Duration, Instant};

use clawgate::client::{Client, ClientError};
use clawgate::store::sessions::shard_of;
use serde_json::{json, Value};
use support::{Gateway, Opts};

const RW: &[&str] = &["operator.read", "operator.write", "operator.admin"];

/// Collect chat events for `run_id` until a terminal state; returns the payloads.
fn chat_until_done(c: &mut Client, run_id: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut pending: Vec<Value> = std::mem::take(&mut c.events);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for run {run_id}: {out:?}"
        );
        let v = if pending.is_empty() {
            c.next_json().unwrap()
        } else {
            pending.remove(0)
        };
        if v["event"] == "chat" && v["payload"]["runId"] == run_id {
            let state = v["payload"]["state"].as_str().unwrap_or("").to_string();
            out.push(v["payload"].clone());
            if matches!(state.as_str(), "final" | "error" | "aborted") {
                return out;
            }
        }
    }
}

/// (runId, state) of every chat event until `finals` runs have ended.
fn chat_states_until_finals(c: &mut Client, finals: usize) -> Vec<(String, String)> {
    chat_states_until(c, |order| {
        order.iter().filter(|(_, s)| s == "final").count() >= finals
    })
}

/// (runId, state) of every chat event until `done(&order)` holds (20 s at most).
fn chat_states_until(
    c: &mut Client,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending = std::mem::take(&mut c.events);
    let mut order: Vec<(String, String)> = Vec::new();
    while !done(&order) {
        assert!(Instant::now() < deadline, "runs did not finish: {order:?}");
        let v = if pending.is_empty() {
            c.next_json().unwrap()
        } else {
            pending.remove(0)
        };
        if v["event"] == "chat" {
            order.push((
                v["payload"]["runId"].as_str().unwrap().to_string(),
                v["payload"]["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    order
}

/// `chat.send` that must be accepted.
fn send(c: &mut Client, key: &str, message: &str, idem: &str) {
    c.call(
        "chat.send",
        json!({"sessionKey": key, "message": message, "idempotencyKey": idem}),
    )
    .unwrap();
}

/// The text of every user message in `key`'s history (up to 1000).
fn user_texts(c: &mut Client, key: &str) -> Vec<String> {
    let h = c
        .call("chat.history", json!({"sessionKey": key, "limit": 1000}))
        .unwrap();
    h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"][0]["text"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `agent` with `params`: skips its first (accepted) answer and returns the final one.
fn agent_final(c: &mut Client, params: Value) -> Value {
    let res = c.call_raw("agent", Some(params)).unwrap();
    let id = res["id"].as_str().unwrap().to_string();
    loop {
        let v = c.next_json().unwrap();
        if v["type"] == "res" && v["id"] == id.as_str() {
            return v;
        }
    }
}

/// A gateway whose `agents.defaults.maxConcurrent` is 1.
fn gateway_with_one_run_slot() -> Gateway {
    Gateway::start_with(Opts {
        config: Some(r#"{ agents: { defaults: { maxConcurrent: 1 } } }"#),
        ..Opts::default()
    })
}

fn key_on_shard(shard: usize, not: Option<&str>) -> String {
    (0..1000)
        .map(|i| format!("agent:main:s{i}"))
        .find(|k| shard_of(k, 2) == shard && Some(k.as_str()) != not)
        .unwrap()
}

#[test]
fn three_clients_see_the_identical_stream_and_history_persists() {
    let g = Gateway::start("uring");
    let mut watchers: Vec<Client> = (0..3).map(|_| g.connect(&["operator.read"])).collect();
    let mut sender = g.connect(RW);
    let ack = sender
        .call(
            "chat.send",
            json!({"sessionKey": "main", "message": "hello there", "idempotencyKey": "run-1"}),
        )
        .unwrap();
    assert_eq!(ack, json!({"runId": "run-1", "status": "started"}));
    let streams: Vec<Vec<Value>> = watchers
        .iter_mut()
        .map(|w| chat_until_done(w, "run-1", Duration::from_secs(10)))
        .collect();
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    let last = streams[0].last().unwrap();
    assert_eq!(last["state"], "final");
    assert_eq!(last["sessionKey"], "agent:main:main");
    let text = last["message"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("hello there"), "{text}");
    // Per-run seq strictly increasing from 1; deltas concatenate to the final text.
    let seqs: Vec<u64> = streams[0]
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let deltas: String = streams[0]
        .iter()
        .filter(|p| p["state"] == "delta")
        .map(|p| p["deltaText"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    // History has both messages.
    let h = sender
        .call("chat.history", json!({"sessionKey": "main"}))
        .unwrap();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{h}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["role"], "assistant");
    // sessions.list sees it.
    let list = sender.call("sessions.list", json!({})).unwrap();
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "agent:main:main"),
        "{list}"
    );
}

#[test]
fn one_session_runs_in_order_two_sessions_run_in_parallel_on_different_cores() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    // Same session: the second run starts only after the first ended.
    c.call(
        "chat.send",
        json!({"sessionKey": "main", "message": "/slow one two three", "idempotencyKey": "a1"}),
    )
    .unwrap();
    c.call(
        "chat.send",
        json!({"sessionKey": "main", "message": "second", "idempotencyKey": "a2"}),
    )
    .unwrap();
    let order = chat_states_until_finals(&mut c, 2);
    let first_final = order
        .iter()
        .position(|(r, s)| r == "a1" && s == "final")
        .unwrap();
    let second_first = order.iter().position(|(r, _)| r == "a2").unwrap();
    assert!(
        first_final < second_first,
        "runs on one session overlapped: {order:?}"
    );

    // Two sessions owned by different cores: their streams interleave.
    let k0 = key_on_shard(0, None);
    let k1 = key_on_shard(1, None);
    c.call(
        "chat.send",
        json!({"sessionKey": k0, "message": "/slow a b c d", "idempotencyKey": "p0"}),
    )
    .unwrap();
    c.call(
        "chat.send",
        json!({"sessionKey": k1, "message": "/slow e f g h", "idempotencyKey": "p1"}),
    )
    .unwrap();
    let order = chat_states_until_finals(&mut c, 2);
    let p0_final = order
        .iter()
        .position(|(r, s)| r == "p0" && s == "final")
        .unwrap();
    let p1_final = order
        .iter()
        .position(|(r, s)| r == "p1" && s == "final")
        .unwrap();
    let p1_first = order.iter().position(|(r, _)| r == "p1").unwrap();
    let p0_first = order.iter().position(|(r, _)| r == "p0").unwrap();
    assert!(
        p1_first < p0_final && p0_first < p1_final,
        "sessions did not run in parallel: {order:?}"
    );
}

#[test]
fn max_concurrent_is_one_gateway_wide_cap_across_cores() {
    // maxConcurrent 1 with 2 workers: sessions owned by different cores still run one at a
    // time (the cap is global, not split per core), and the queued run is not dropped.
    let g = gateway_with_one_run_slot();
    let mut c = g.connect(RW);
    send(&mut c, &key_on_shard(0, None), "/slow a b c d", "q0");
    send(&mut c, &key_on_shard(1, None), "/slow e f g h", "q1");
    let order = chat_states_until_finals(&mut c, 2);
    let pos = |run: &str, final_only: bool| {
        order
            .iter()
            .position(|(r, s)| r == run && (!final_only || s == "final"))
            .unwrap()
    };
    let (first, second) = if pos("q0", false) < pos("q1", false) {
        ("q0", "q1")
    } else {
        ("q1", "q0")
    };
    assert!(
        pos(first, true) < pos(second, false),
        "runs overlapped under maxConcurrent 1: {order:?}"
    );
}

#[test]
fn a_run_aborted_while_waiting_for_a_slot_ends_at_once_and_the_slot_is_not_lost() {
    let g = gateway_with_one_run_slot();
    let mut c = g.connect(RW);
    let k1 = key_on_shard(1, None);
    send(
        &mut c,
        &key_on_shard(0, None),
        "/slow a b c d e f g h",
        "w0",
    );
    std::thread::sleep(Duration::from_millis(100));
    send(&mut c, &k1, "queued", "w1");
    std::thread::sleep(Duration::from_millis(200));
    let r = c.call("chat.abort", json!({"sessionKey": k1})).unwrap();
    assert_eq!(r["runIds"], json!(["w1"]));
    // w1's `aborted` arrives while w0 (holding the only slot) is still streaming.
    let order = chat_states_until(&mut c, |o| o.iter().any(|(r, s)| r == "w0" && s == "final"));
    let aborted = order
        .iter()
        .position(|(r, s)| r == "w1" && s == "aborted")
        .unwrap_or_else(|| panic!("w1 never reported aborted: {order:?}"));
    let w0_final = order.iter().position(|(r, s)| r == "w0" && s == "final");
    assert!(
        Some(aborted) < w0_final,
        "the queued run's abort waited for the slot: {order:?}"
    );
    // The slot the aborted request was granted later came back: a new run still runs.
    send(&mut c, &k1, "after", "w2");
    let events = chat_until_done(&mut c, "w2", Duration::from_secs(10));
    assert_eq!(events.last().unwrap()["state"], "final");
}

#[test]
fn abort_from_another_client_stops_the_run() {
    let g = Gateway::start("uring");
    let mut a = g.connect(RW);
    let mut b = g.connect(RW);
    a.call("chat.send", json!({"sessionKey": "main", "message": "/slow this will take a long long long time", "idempotencyKey": "ab1"})).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = b.call("chat.abort", json!({"sessionKey": "main"})).unwrap();
    assert_eq!(r, json!({"ok": true, "aborted": true, "runIds": ["ab1"]}));
    let events = chat_until_done(&mut a, "ab1", Duration::from_secs(5));
    assert_eq!(events.last().unwrap()["state"], "aborted");
    // Nothing to abort now.
    assert_eq!(
        b.call("chat.abort", json!({"sessionKey": "main"})).unwrap()["aborted"],
        false
    );
}

#[test]
fn repeated_idempotency_key_returns_the_same_run() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    let p = json!({"sessionKey": "dedupe", "message": "once", "idempotencyKey": "same-key"});
    let a = c.call("chat.send", p.clone()).unwrap();
    let b = c.call("chat.send", p).unwrap();
    assert_eq!(a["runId"], b["runId"]);
    chat_until_done(&mut c, "same-key", Duration::from_secs(10));
    let h = c
        .call("chat.history", json!({"sessionKey": "dedupe"}))
        .unwrap();
    let users = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert_eq!(users, 1);
    // Missing idempotencyKey is a schema error.
    let ClientError::Rpc(e) = c
        .call("chat.send", json!({"sessionKey": "main", "message": "x"}))
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(e["code"], "INVALID_REQUEST");
}

#[test]
fn agent_answers_twice_and_agent_wait_reports_the_outcome() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    let res = c
        .call_raw(
            "agent",
            Some(json!({"message": "ping", "idempotencyKey": "ag-1"})),
        )
        .unwrap();
    assert_eq!(res["payload"]["status"], "accepted");
    let id = res["id"].as_str().unwrap().to_string();
    let w = c
        .call("agent.wait", json!({"runId": "ag-1", "timeoutMs": 10000}))
        .unwrap();
    assert_eq!(w["status"], "ok", "{w}");
    assert!(w["startedAt"].as_i64().unwrap() <= w["endedAt"].as_i64().unwrap());
    // The second response with the same id.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut finals = c
        .events
        .iter()
        .filter(|v| v["type"] == "res" && v["id"] == id.as_str())
        .cloned()
        .collect::<Vec<_>>();
    while finals.is_empty() {
        assert!(Instant::now() < deadline);
        let v = c.next_json().unwrap();
        if v["type"] == "res" && v["id"] == id.as_str() {
            finals.push(v);
        }
    }
    assert_eq!(finals[0]["ok"], true);
    let fin = &finals[0]["payload"];
    assert_eq!(fin["status"], "ok");
    // What `openclaw agent` prints: result.payloads[].text (as the real gateway answers).
    assert_eq!(fin["summary"], "completed", "{fin}");
    let text = fin["result"]["payloads"][0]["text"].as_str().unwrap();
    assert!(text.contains("ping"), "{fin}");
    assert_eq!(fin["result"]["meta"]["agentMeta"]["provider"], "clawgate");
    assert!(fin["result"]["meta"]["durationMs"].as_i64().unwrap() >= 0);
    assert!(fin["result"]["meta"]["agentMeta"]["sessionId"].is_string());
    assert!(w.get("_agentMeta").is_none(), "{w}");
    // A run past its deadline: a result with status timeout, not an error.
    let v = agent_final(
        &mut c,
        json!({"message": "/slow take your time please", "idempotencyKey": "ag-t", "timeout": 1}),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["payload"]["status"], "timeout", "{v}");
    assert_eq!(v["payload"]["summary"], "aborted", "{v}");
    assert_eq!(v["payload"]["stopReason"], "timeout", "{v}");
    let w = c
        .call("agent.wait", json!({"runId": "ag-t", "timeoutMs": 1000}))
        .unwrap();
    assert_eq!(w["status"], "timeout", "{w}");
    // Failing run: ok:false with both payload and error.
    let v = agent_final(
        &mut c,
        json!({"message": "/error", "idempotencyKey": "ag-2"}),
    );
    assert_eq!(v["ok"], false);
    assert_eq!(v["payload"]["status"], "error");
    assert_eq!(v["error"]["code"], "UNAVAILABLE");
}

#[test]
fn a_pending_agent_wait_does_not_hold_the_connection_and_is_bounded() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "main", "/slow a long answer", "aw-1");
    // agent.wait first, health second, in one write: health must be answered while the
    // wait is still pending (the wait used to block the connection's read loop).
    let mut batch = Vec::new();
    for (id, method, params) in [
        (
            "w1",
            "agent.wait",
            json!({"runId": "aw-1", "timeoutMs": 30000}),
        ),
        ("h1", "health", json!({})),
    ] {
        let f = json!({"type": "req", "id": id, "method": method, "params": params});
        batch.push(f.to_string());
    }
    for f in &batch {
        c.send_text(f.as_bytes()).unwrap();
    }
    // The per-connection cap: 63 more waits fit, the 65th pending one is refused.
    for i in 0..64 {
        let f = json!({"type": "req", "id": format!("x{i}"), "method": "agent.wait",
                       "params": {"runId": "aw-1", "timeoutMs": 30000}});
        c.send_text(f.to_string().as_bytes()).unwrap();
    }
    let mut order = Vec::new();
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !order.contains(&"w1".to_string()) {
        assert!(Instant::now() < deadline, "no agent.wait answer: {order:?}");
        let v = c.next_json().unwrap();
        if v["type"] != "res" {
            continue;
        }
        let id = v["id"].as_str().unwrap().to_string();
        if id == "w1" {
            assert_eq!(v["payload"]["status"], "ok", "{v}");
        }
        if id.starts_with('x') && v["ok"] == false {
            assert_eq!(v["error"]["code"], "UNAVAILABLE", "{v}");
            refused.push(id.clone());
        }
        order.push(id);
    }
    let h = order.iter().position(|i| i == "h1");
    let w = order.iter().position(|i| i == "w1");
    assert!(
        h.is_some() && h < w,
        "health waited for agent.wait: {order:?}"
    );
    assert_eq!(refused, vec!["x63".to_string()], "{order:?}");
}

#[test]
fn a_run_behind_a_busy_session_is_announced_as_queued_then_runs() {
    let g = Gateway::start("uring");
    let mut watcher = g.connect(RW);
    let mut c = g.connect(RW);
    send(&mut c, "main", "/slow first", "q-1");
    send(&mut c, "main", "second", "q-2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut phases = Vec::new();
    while !phases.contains(&("q-2".to_string(), "end".to_string())) {
        assert!(Instant::now() < deadline, "{phases:?}");
        let v = watcher.next_json().unwrap();
        if v["event"] == "agent" && v["payload"]["stream"] == "lifecycle" {
            let p = &v["payload"];
            if p["runId"] == "q-2" && p["data"]["phase"] == "queued" {
                assert_eq!(p["data"]["ahead"], 1, "{p}");
                assert_eq!(p["seq"], 1, "{p}");
            }
            phases.push((
                p["runId"].as_str().unwrap().to_string(),
                p["data"]["phase"].as_str().unwrap().to_string(),
            ));
        }
    }
    let q2: Vec<&str> = phases
        .iter()
        .filter(|(r, _)| r == "q-2")
        .map(|(_, p)| p.as_str())
        .collect();
    // (A loaded machine may also announce the wait for a gateway-wide slot: "queued" again.)
    assert_eq!(q2.first(), Some(&"queued"), "{phases:?}");
    assert_eq!(&q2[q2.len() - 2..], ["start", "end"], "{phases:?}");
    assert!(
        q2[..q2.len() - 2].iter().all(|p| *p == "queued"),
        "{phases:?}"
    );
    let first_end = phases
        .iter()
        .position(|p| p == &("q-1".into(), "end".into()));
    let second_start = phases
        .iter()
        .position(|p| p == &("q-2".into(), "start".into()));
    assert!(first_end < second_start, "{phases:?}");
}

#[test]
fn a_session_lane_is_bounded_and_a_refused_send_is_not_acknowledged() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "agent:main:lane", "/slow hold the lane", "l-0");
    for i in 1..64 {
        send(&mut c, "agent:main:lane", "queued", &format!("l-{i}"));
    }
    let r = c.call(
        "chat.send",
        json!({"sessionKey": "agent:main:lane", "message": "one too many", "idempotencyKey": "l-64"}),
    );
    match r {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e["code"], "UNAVAILABLE", "{e}");
            assert_eq!(e["retryable"], true, "{e}");
        }
        other => panic!("65th run in one lane was accepted: {other:?}"),
    }
    c.call("chat.abort", json!({"sessionKey": "agent:main:lane"}))
        .unwrap();
    // Refused means not written: the transcript has the 64 accepted messages only.
    let texts = user_texts(&mut c, "agent:main:lane");
    assert_eq!(texts.len(), 64, "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("one too many")));
}

#[test]
fn chat_send_timeout_ms_bounds_the_whole_run() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    c.call(
        "chat.send",
        json!({"sessionKey": "main", "message": "/slow take your time", "idempotencyKey": "to-1", "timeoutMs": 300}),
    )
    .unwrap();
    let stream = chat_until_done(&mut c, "to-1", Duration::from_secs(20));
    let last = stream.last().unwrap();
    assert_eq!(last["state"], "error", "{last}");
    assert_eq!(last["errorKind"], "timeout", "{last}");
    // The session is free again: the next run completes.
    send(&mut c, "main", "hi", "to-2");
    let stream = chat_until_done(&mut c, "to-2", Duration::from_secs(20));
    assert_eq!(stream.last().unwrap()["state"], "final");
}

#[test]
fn a_run_held_by_max_concurrent_is_announced_as_queued() {
    let g = gateway_with_one_run_slot();
    let mut watcher = g.connect(RW);
    let mut c = g.connect(RW);
    let (a, b) = (key_on_shard(0, None), key_on_shard(1, None));
    send(&mut c, &a, "/slow hold the only slot", "mc-1");
    // Wait until mc-1 runs, then a run on another session must wait for the slot.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut phases: Vec<(String, Value)> = Vec::new();
    let lifecycle = |w: &mut Client, phases: &mut Vec<(String, Value)>| {
        let v = w.next_json().unwrap();
        if v["event"] == "agent" && v["payload"]["stream"] == "lifecycle" {
            let p = &v["payload"];
            phases.push((p["runId"].as_str().unwrap().to_string(), p["data"].clone()));
        }
    };
    while !phases
        .iter()
        .any(|(r, d)| r == "mc-1" && d["phase"] == "start")
    {
        assert!(Instant::now() < deadline, "{phases:?}");
        lifecycle(&mut watcher, &mut phases);
    }
    send(&mut c, &b, "second", "mc-2");
    while !phases
        .iter()
        .any(|(r, d)| r == "mc-2" && d["phase"] == "start")
    {
        assert!(Instant::now() < deadline, "{phases:?}");
        lifecycle(&mut watcher, &mut phases);
    }
    let mc2: Vec<&Value> = phases
        .iter()
        .filter(|(r, _)| r == "mc-2")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(mc2[0]["phase"], "queued", "{phases:?}");
    assert_eq!(mc2[0]["reason"], "maxConcurrent", "{phases:?}");
    let first_end = phases
        .iter()
        .position(|(r, d)| r == "mc-1" && d["phase"] == "end");
    let second_start = phases
        .iter()
        .position(|(r, d)| r == "mc-2" && d["phase"] == "start");
    assert!(
        first_end.is_some() && first_end < second_start,
        "{phases:?}"
    );
}

#[test]
fn provider_failures_become_chat_error_events() {
    // A provider pointing at a closed port.
    let cfg = r#"{ models: { providers: { broken: { baseUrl: "http://127.0.0.1:9/v1", api: "openai-completions" } } } }"#;
    let g = Gateway::start_with(Opts {
        config: Some(cfg),
        ..Opts::default()
    });
    let mut c = g.connect(RW);
    c.call(
        "sessions.patch",
        json!({"key": "broken", "model": "broken/some-model"}),
    )
    .unwrap();
    c.call(
        "chat.send",
        json!({"sessionKey": "broken", "message": "hi", "idempotencyKey": "pe1"}),
    )
    .unwrap();
    let ev = chat_until_done(&mut c, "pe1", Duration::from_secs(20));
    let last = ev.last().unwrap();
    assert_eq!(last["state"], "error");
    assert!(
        last["errorMessage"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9"),
        "{last}"
    );
    // The gateway keeps serving other sessions.
    c.call(
        "chat.send",
        json!({"sessionKey": "main", "message": "still ok", "idempotencyKey": "pe2"}),
    )
    .unwrap();
    assert_eq!(
        chat_until_done(&mut c, "pe2", Duration::from_secs(10))
            .last()
            .unwrap()["state"],
        "final"
    );
}

#[test]
fn kill_9_during_a_burst_keeps_every_acknowledged_message() {
    let g = Gateway::start("uring");
    let home = g.home.clone();
    let mut c = g.connect(RW);
    let mut acked = Vec::new();
    // Kill once 120 messages are acknowledged, while the sender keeps going: the kill lands
    // mid-burst on any machine speed, and each session's transcript stays well inside one
    // chat.history page (user + assistant lines), so nothing is hidden by the page limit.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let pid = g.pid();
        let count = count.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while count.load(std::sync::atomic::Ordering::Acquire) < 120
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        })
    };
    for i in 0..2000 {
        let text = format!("burst message {i}");
        match c.call("chat.send", json!({"sessionKey": format!("burst{}", i % 4), "message": text, "idempotencyKey": format!("b{i}")})) {
            Ok(_) => {
                acked.push((i % 4, text));
                count.store(acked.len(), std::sync::atomic::Ordering::Release);
            }
            Err(_) => break,
        }
    }
    killer.join().unwrap();
    drop(g);
    assert!(
        acked.len() > 5,
        "too few acknowledged before the kill: {}",
        acked.len()
    );
    let g2 = Gateway::start_with(Opts {
        home: Some(home),
        ..Opts::default()
    });
    let mut c2 = g2.connect(RW);
    for s in 0..4 {
        let texts = user_texts(&mut c2, &format!("burst{s}"));
        for (_, t) in acked.iter().filter(|(k, _)| *k == s) {
            assert!(
                texts.contains(t),
                "acknowledged message lost after kill -9: {t}"
            );
        }
    }
}

#[test]
fn reset_trigger_starts_a_fresh_session() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    c.call(
        "chat.send",
        json!({"sessionKey": "resettable", "message": "first", "idempotencyKey": "r1"}),
    )
    .unwrap();
    chat_until_done(&mut c, "r1", Duration::from_secs(10));
    let before = c.call("sessions.list", json!({})).unwrap();
    let sid = |l: &Value| {
        l["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == "agent:main:resettable")
            .map(|s| s["sessionId"].clone())
    };
    let old = sid(&before);
    c.call(
        "chat.send",
        json!({"sessionKey": "resettable", "message": "/new fresh start", "idempotencyKey": "r2"}),
    )
    .unwrap();
    chat_until_done(&mut c, "r2", Duration::from_secs(10));
    let after = c.call("sessions.list", json!({})).unwrap();
    assert_ne!(sid(&after), old, "session id must change on /new");
    let h = c
        .call("chat.history", json!({"sessionKey": "resettable"}))
        .unwrap();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "only the post-reset turn remains: {h}");
}

#[test]
fn sigterm_flushes_the_store_and_a_restart_serves_every_session() {
    // Rows, labels and transcripts written through the store's I/O thread must all be on
    // disk after a graceful stop: the last flush waits for that thread.
    let home = support::temp_dir("graceful");
    let mut g = Gateway::start_with(Opts {
        home: Some(home.clone()),
        ..Opts::default()
    });
    let mut c = g.connect(RW);
    for i in 0..6 {
        let idem = format!("g{i}");
        send(
            &mut c,
            &format!("graceful{}", i % 3),
            &format!("turn {i}"),
            &idem,
        );
        chat_until_done(&mut c, &idem, Duration::from_secs(10));
    }
    c.call(
        "sessions.patch",
        json!({"key": "graceful0", "label": "kept label"}),
    )
    .unwrap();
    // The last turn's rows (count, transcript length) change only in memory until a flush;
    // SIGTERM right after it leaves them to the final flush.
    send(&mut c, "graceful2", "turn 6", "g6");
    chat_until_done(&mut c, "g6", Duration::from_secs(10));
    drop(c);
    g.signal("TERM");
    let status = g
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(g);
    // Before a restart could rebuild them from transcripts: the index rows on disk match.
    let state = home.join(".openclaw");
    let mut rows = Vec::new();
    for shard in 0..2 {
        let path = state.join(format!("sessions/index-{shard}-of-2.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        rows.extend(v["entries"].as_array().unwrap().clone());
    }
    for (s, turns) in [(0, 2u64), (1, 2), (2, 3)] {
        let key = format!("agent:main:graceful{s}");
        let row = rows
            .iter()
            .find(|r| r["key"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} not in the index after SIGTERM"));
        assert_eq!(row["messageCount"], turns * 2, "{row}");
        let transcript = state.join(format!(
            "agents/main/sessions/{}.jsonl",
            row["sessionId"].as_str().unwrap()
        ));
        assert_eq!(
            row["transcriptBytes"],
            std::fs::metadata(&transcript).unwrap().len(),
            "{row}"
        );
    }
    let g2 = Gateway::start_with(Opts {
        home: Some(home.clone()),
        ..Opts::default()
    });
    let mut c2 = g2.connect(RW);
    let list = c2.call("sessions.list", json!({})).unwrap();
    let rows = list["sessions"].as_array().unwrap();
    for s in 0..3 {
        let key = format!("agent:main:graceful{s}");
        let row = rows
            .iter()
            .find(|r| r["key"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} missing after restart: {list}"));
        if s == 0 {
            assert_eq!(row["label"], "kept label", "{row}");
        }
        let texts = user_texts(&mut c2, &format!("graceful{s}"));
        let mut want = vec![format!("turn {s}"), format!("turn {}", s + 3)];
        if s == 2 {
            want.push("turn 6".into());
        }
        assert_eq!(texts, want, "history of {key}");
    }
}

#[test]
fn a_slow_disk_delays_only_the_acks_that_need_it_never_the_core() {
    // One worker, every store-thread write 400 ms late. A new session's `chat.send` is
    // acknowledged only once its row is in the on-disk index, and no event of its run comes
    // before that ack; meanwhile the same core keeps answering another client.
    let g = Gateway::start_with(Opts {
        workers: 1,
        extra: vec!["--store-delay-ms".into(), "400".into()],
        ..Opts::default()
    });
    let index = g.state_dir.join("sessions/index-0-of-1.json");
    let in_index = |needle: &str| {
        std::fs::read_to_string(&index)
            .unwrap_or_default()
            .contains(needle)
    };
    let mut a = g.connect(RW);
    let mut b = g.connect(RW);
    let sender = std::thread::spawn(move || {
        let req = json!({"type": "req", "id": "slow-1", "method": "chat.send",
            "params": {"sessionKey": "slowdisk", "message": "hello", "idempotencyKey": "slow-run"}});
        a.send_text(req.to_string().as_bytes()).unwrap();
        let mut early_events = Vec::new();
        let ack = loop {
            let v = a.next_json().unwrap();
            if v["type"] == "res" && v["id"] == "slow-1" {
                break v;
            }
            if (v["event"] == "chat" || v["event"] == "agent")
                && v["payload"]["runId"] == "slow-run"
            {
                early_events.push(v);
            }
        };
        (a, ack, early_events, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(50));
    b.call("health", json!({})).unwrap();
    let health_at = Instant::now();
    // The same key again from another client while the first still waits for the disk:
    // the same run, answered no earlier than the row is on disk.
    let retry = b
        .call(
            "chat.send",
            json!({"sessionKey": "slowdisk", "message": "hello", "idempotencyKey": "slow-run"}),
        )
        .unwrap();
    assert_eq!(retry["runId"], "slow-run");
    assert!(
        in_index("agent:main:slowdisk"),
        "a retried key was acknowledged before the row was on disk"
    );
    let (mut a, ack, early_events, ack_at) = sender.join().unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(
        in_index("agent:main:slowdisk"),
        "acknowledged before the new session's row was on disk"
    );
    assert!(
        early_events.is_empty(),
        "run events before the ack: {early_events:?}"
    );
    assert!(
        health_at < ack_at,
        "the core stalled: another client's health answer came after the slow ack"
    );
    chat_until_done(&mut a, "slow-run", Duration::from_secs(20));
    // A retried key while the first is acknowledged: the same run, no second message.
    let again = a
        .call(
            "chat.send",
            json!({"sessionKey": "slowdisk", "message": "hello", "idempotencyKey": "slow-run"}),
        )
        .unwrap();
    assert_eq!(again["runId"], "slow-run");
    assert_eq!(user_texts(&mut a, "slowdisk"), vec!["hello".to_string()]);

    // patch / delete answer once the index on disk says so.
    a.call(
        "sessions.patch",
        json!({"key": "slowpatch", "label": "durable label"}),
    )
    .unwrap();
    assert!(
        in_index("durable label"),
        "patch acknowledged before it was on disk"
    );
    let row = a.call("sessions.list", json!({})).unwrap();
    let sid = row["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "agent:main:slowdisk")
        .and_then(|s| s["sessionId"].as_str())
        .unwrap()
        .to_string();
    let transcript = g
        .state_dir
        .join(format!("agents/main/sessions/{sid}.jsonl"));
    assert!(transcript.exists());
    a.call(
        "sessions.delete",
        json!({"key": "slowdisk", "deleteTranscript": true}),
    )
    .unwrap();
    assert!(
        !in_index("agent:main:slowdisk"),
        "delete acknowledged before the index dropped the row"
    );
    assert!(!transcript.exists(), "transcript still there after delete");
    let archived = std::fs::read_dir(transcript.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{sid}.deleted."))
        });
    assert!(archived, "the transcript is archived, not destroyed");
}

#[test]
fn sessions_delete_archives_the_transcript_and_refuses_the_main_session() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    for (key, idem) in [("keep", "d1"), ("gone", "d2"), ("main", "d3")] {
        send(&mut c, key, "hello", idem);
        chat_until_done(&mut c, idem, Duration::from_secs(10));
    }
    let sid = |c: &mut Client, key: &str| {
        c.call("sessions.list", json!({})).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .and_then(|s| s["sessionId"].as_str())
            .unwrap()
            .to_string()
    };
    let dir = g.state_dir.join("agents/main/sessions");
    // Default (deleteTranscript true, as the real gateway): archived, not destroyed.
    let gone = sid(&mut c, "agent:main:gone");
    let r = c.call("sessions.delete", json!({"key": "gone"})).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["deleted"], true);
    assert_eq!(r["key"], "agent:main:gone");
    let archived = std::path::PathBuf::from(r["archived"][0].as_str().unwrap());
    assert!(archived.exists(), "{r}");
    assert!(archived
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&format!("{gone}.deleted.")));
    assert!(!dir.join(format!("{gone}.jsonl")).exists());
    // deleteTranscript false: the transcript stays where it is.
    let keep = sid(&mut c, "agent:main:keep");
    let r = c
        .call(
            "sessions.delete",
            json!({"key": "keep", "deleteTranscript": false}),
        )
        .unwrap();
    assert_eq!(r["archived"], json!([]));
    assert!(dir.join(format!("{keep}.jsonl")).exists());
    // A second delete finds nothing.
    let r = c.call("sessions.delete", json!({"key": "keep"})).unwrap();
    assert_eq!(r["deleted"], false);
    // Wrong types and the main session are refused.
    for bad in [
        json!({"key": "main"}),
        json!({"key": "agent:main:main"}),
        json!({"key": "other", "deleteTranscript": "yes"}),
    ] {
        let e = c.call("sessions.delete", bad.clone()).unwrap_err();
        assert!(
            matches!(&e, ClientError::Rpc(v) if v["code"] == "INVALID_REQUEST"),
            "{bad}: {e:?}"
        );
    }
    assert!(c.call("sessions.list", json!({})).unwrap()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["key"] == "agent:main:main"));
}

#[test]
fn wrongly_typed_or_oversized_chat_params_are_refused_not_widened() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "main", "/slow one two three four", "w1");
    for (method, params) in [
        // A non-string runId must not abort every run of the session.
        ("chat.abort", json!({"sessionKey": "main", "runId": 123})),
        (
            "agent",
            json!({"sessionKey": 42, "message": "x", "idempotencyKey": "w2"}),
        ),
        // Closed schemas: an unknown property is refused, not ignored.
        ("chat.abort", json!({"sessionKey": "main", "runld": "w1"})),
        ("chat.history", json!({"sessionKey": "main", "bogus": 1})),
        ("sessions.reset", json!({"key": "main", "bogus": 1})),
        ("agent.wait", json!({"runId": "w1", "timeout": 5})),
        (
            "chat.send",
            json!({"sessionKey": "main", "message": "x", "idempotencyKey": "k".repeat(513)}),
        ),
    ] {
        let e = c.call(method, params.clone()).unwrap_err();
        assert!(
            matches!(&e, ClientError::Rpc(v) if v["code"] == "INVALID_REQUEST"),
            "{method} {params}: {e:?}"
        );
    }
    // The run was not aborted.
    let ev = chat_until_done(&mut c, "w1", Duration::from_secs(20));
    assert_eq!(ev.last().unwrap()["state"], "final");
}

/// A one-shot OpenAI-compatible upstream: reads the request, answers 200 with a chunked
/// event stream, then sends `event` (raw SSE text) `times` times, `gap` apart, as long as
/// the gateway reads. Returns its base URL.
fn sse_upstream(event: &str, times: usize, gap: Duration) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let frame = format!("{:x}\r\n{event}\r\n", event.len());
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut buf = [0u8; 65536];
        let _ = s.read(&mut buf);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..times {
            if s.write_all(frame.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(gap);
        }
    });
    base
}

#[test]
fn an_upstream_that_only_sends_keep_alives_hits_the_whole_run_deadline() {
    // An OpenAI-compatible server that answers 200 + SSE and then only ever sends comment
    // keep-alives: each read is quick, so only the whole-run deadline
    // (agents.defaults.timeoutSeconds) can end the run.
    let ping = ": keep-alive\n\n";
    let base = sse_upstream(ping, 200, Duration::from_millis(100));
    let cfg = format!(
        r#"{{ agents: {{ defaults: {{ timeoutSeconds: 1 }} }},
             models: {{ providers: {{ slow: {{ baseUrl: "{base}/v1", api: "openai-completions" }} }} }} }}"#
    );
    let g = Gateway::start_with(Opts {
        config: Some(&cfg),
        ..Opts::default()
    });
    let mut c = g.connect(RW);
    c.call(
        "sessions.patch",
        json!({"key": "trickle", "model": "slow/m"}),
    )
    .unwrap();
    send(&mut c, "trickle", "hi", "ka1");
    let ev = chat_until_done(&mut c, "ka1", Duration::from_secs(10));
    let last = ev.last().unwrap();
    assert_eq!(last["state"], "error", "{last}");
    assert!(
        last["errorMessage"].as_str().unwrap().contains("timed out"),
        "{last}"
    );
}

#[test]
fn a_reply_past_the_size_cap_ends_the_run_with_an_error() {
    // The upstream streams 64 KiB deltas without end: past 1 MiB the run stops (error),
    // and the gateway keeps serving.
    let delta = "x".repeat(64 * 1024);
    let ev = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{delta}\"}}}}]}}\n\n"
    );
    let base = sse_upstream(&ev, 200, Duration::ZERO);
    let cfg = format!(
        r#"{{ models: {{ providers: {{ big: {{ baseUrl: "{base}/v1", api: "openai-completions" }} }} }} }}"#
    );
    let g = Gateway::start_with(Opts {
        config: Some(&cfg),
        ..Opts::default()
    });
    let mut c = g.connect(RW);
    c.call("sessions.patch", json!({"key": "big", "model": "big/m"}))
        .unwrap();
    send(&mut c, "big", "hi", "big1");
    let ev = chat_until_done(&mut c, "big1", Duration::from_secs(20));
    let last = ev.last().unwrap();
    assert_eq!(last["state"], "error", "{}", last["state"]);
    assert!(
        last["errorMessage"].as_str().unwrap().contains("exceeded"),
        "{}",
        last["errorMessage"]
    );
    let deltas = ev.iter().filter(|e| e["state"] == "delta").count();
    assert!(deltas <= 16, "{deltas} deltas: more than 1 MiB streamed");
    send(&mut c, "main", "still ok", "big2");
    assert_eq!(
        chat_until_done(&mut c, "big2", Duration::from_secs(10))
            .last()
            .unwrap()["state"],
        "final"
    );
}

/// An OpenAI-compatible upstream that streams `steps` (content, pause after it), then
/// `finish_reason: "stop"` and `[DONE]`.
fn scripted_upstream(steps: Vec<(&'static str, Duration)>) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut buf = [0u8; 65536];
        let _ = s.read(&mut buf);
        let chunk = |e: String| format!("{:x}\r\n{e}\r\n", e.len());
        let mut out = String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (text, pause) in steps {
            out.push_str(&chunk(format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
            )));
            if !pause.is_zero() {
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
                out.clear();
                std::thread::sleep(pause);
            }
        }
        out.push_str(&chunk(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".into(),
        ));
        out.push_str("0\r\n\r\n");
        let _ = s.write_all(out.as_bytes());
    });
    base
}

/// Every `chat` and `agent` payload of `run_id` until its chat stream ends.
fn chat_and_agent_until_done(c: &mut Client, run_id: &str) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut chat, mut agent) = (Vec::new(), Vec::new());
    let mut pending: Vec<Value> = std::mem::take(&mut c.events);
    loop {
        assert!(
            Instant::now() < deadline,
            "run {run_id} did not end: {chat:?}"
        );
        let v = if pending.is_empty() {
            c.next_json().unwrap()
        } else {
            pending.remove(0)
        };
        if v["payload"]["runId"] != run_id {
            continue;
        }
        if v["event"] == "agent" {
            agent.push(v["payload"].clone());
        } else if v["event"] == "chat" {
            chat.push(v["payload"].clone());
            if matches!(
                v["payload"]["state"].as_str(),
                Some("final" | "error" | "aborted")
            ) {
                return (chat, agent);
            }
        }
    }
}

fn gateway_with_upstream(base: &str) -> Gateway {
    let cfg = format!(
        r#"{{ models: {{ providers: {{ up: {{ baseUrl: "{base}/v1", api: "openai-completions" }} }} }} }}"#
    );
    Gateway::start_with(Opts {
        config: Some(&cfg),
        ..Opts::default()
    })
}

#[test]
fn a_fast_provider_costs_a_few_merged_chat_deltas_not_one_per_token() {
    // 200 tokens in one burst: the real gateway sends at most one chat delta per 150 ms per
    // run; the agent assistant stream still has every token.
    let words: Vec<&'static str> = (0..200)
        .map(|i| &*Box::leak(format!("w{i} ").into_boxed_str()))
        .collect();
    let want: String = words.concat();
    let g = gateway_with_upstream(&scripted_upstream(
        words.iter().map(|w| (*w, Duration::ZERO)).collect(),
    ));
    let mut c = g.connect(RW);
    c.call("sessions.patch", json!({"key": "fast", "model": "up/m"}))
        .unwrap();
    send(&mut c, "fast", "go", "fast1");
    let (chat, agent) = chat_and_agent_until_done(&mut c, "fast1");
    let last = chat.last().unwrap();
    assert_eq!(last["state"], "final", "{last}");
    assert_eq!(last["message"]["content"][0]["text"], want.as_str());
    let deltas: Vec<&Value> = chat.iter().filter(|p| p["state"] == "delta").collect();
    assert!(
        !deltas.is_empty() && deltas.len() < 40,
        "{} chat deltas for 200 tokens",
        deltas.len()
    );
    // Merged deltas still concatenate to the reply, and the last one is the whole text.
    let joined: String = deltas
        .iter()
        .map(|p| p["deltaText"].as_str().unwrap())
        .collect();
    assert_eq!(joined, want);
    assert_eq!(
        deltas.last().unwrap()["message"]["content"][0]["text"],
        want.as_str()
    );
    // Per-run seq still counts every chat event of the run from 1.
    let seqs: Vec<u64> = chat.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=chat.len() as u64).collect::<Vec<_>>());
    let tokens = agent.iter().filter(|p| p["stream"] == "assistant").count();
    assert_eq!(tokens, 200, "the agent stream is not throttled");
}

#[test]
fn a_held_back_delta_goes_out_when_its_window_ends_even_if_the_provider_pauses() {
    // "a" and "b" arrive together: "a" goes out at once, "b" is held by the throttle and
    // must reach clients while the provider is silent, before "c".
    let g = gateway_with_upstream(&scripted_upstream(vec![
        ("a", Duration::ZERO),
        ("b", Duration::from_millis(1500)),
        ("c", Duration::ZERO),
    ]));
    let mut c = g.connect(RW);
    c.call("sessions.patch", json!({"key": "pause", "model": "up/m"}))
        .unwrap();
    send(&mut c, "pause", "go", "pause1");
    let (chat, _) = chat_and_agent_until_done(&mut c, "pause1");
    let deltas: Vec<&str> = chat
        .iter()
        .filter(|p| p["state"] == "delta")
        .map(|p| p["deltaText"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["a", "b", "c"], "{chat:?}");
    assert_eq!(chat.last().unwrap()["message"]["content"][0]["text"], "abc");
}

#[test]
fn sessions_preview_answers_the_first_64_keys_trimmed_and_keeps_serving_others() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "main", "preview me", "pv1");
    chat_until_done(&mut c, "pv1", Duration::from_secs(10));
    // 1 padded key, 1 empty (skipped), then 10 000 more: only the first 64 are answered.
    let mut keys = vec![json!(" main "), json!("")];
    keys.extend((0..10_000).map(|i| json!(format!("agent:main:p{i}"))));
    let r = c
        .call("sessions.preview", json!({"keys": keys, "limit": 5}))
        .unwrap();
    let previews = r["previews"].as_array().unwrap();
    assert_eq!(previews.len(), 64, "{}", previews.len());
    assert_eq!(previews[0]["key"], "main");
    assert_eq!(previews[0]["status"], "ok");
    assert_eq!(previews[0]["items"][0]["text"], "preview me");
    assert_eq!(previews[1]["key"], "agent:main:p0");
    assert_eq!(previews[1]["status"], "missing");
    let e = c
        .call("sessions.preview", json!({"keys": ["main", 7]}))
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Rpc(v) if v["code"] == "INVALID_REQUEST"),
        "{e:?}"
    );
    // Still serving.
    assert_eq!(c.call("health", json!({})).unwrap()["ok"], true);
}

#[test]
fn health_and_status_count_the_sessions_of_every_core() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    // Sessions owned by both cores.
    let keys = [
        key_on_shard(0, None),
        key_on_shard(1, None),
        "agent:main:x".to_string(),
    ];
    for k in &keys {
        c.call(
            "sessions.patch",
            json!({"key": k, "label": format!("l-{k}")}),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = c.call("health", json!({})).unwrap();
        let s = c.call("status", json!({})).unwrap();
        let health_count = h["sessions"]["count"].as_u64().unwrap();
        let agent_count = h["agents"][0]["sessions"]["count"].as_u64().unwrap();
        let status_count = s["sessions"]["count"].as_u64().unwrap();
        if health_count == 3 && agent_count == 3 && status_count == 3 {
            let recent: Vec<&str> = h["sessions"]["recent"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["key"].as_str().unwrap())
                .collect();
            for k in &keys {
                assert!(recent.contains(&k.as_str()), "{k} not in {recent:?}");
            }
            assert_eq!(s["sessions"]["byAgent"][0]["count"], 3);
            assert_eq!(
                s["sessions"]["recent"].as_array().unwrap().len(),
                3,
                "{}",
                s["sessions"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health {health_count}/{agent_count}, status {status_count}: {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A delete is reflected too.
    c.call("sessions.delete", json!({"key": "agent:main:x"}))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.call("health", json!({})).unwrap()["sessions"]["count"] != 2 {
        assert!(Instant::now() < deadline, "delete never counted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_core_holds_at_most_1024_queued_runs_then_refuses_retryably() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("agent:main:q{i}"))
        .filter(|k| shard_of(k, 2) == 0)
        .take(17)
        .collect();
    let mut refused = None;
    'outer: for (s, k) in keys.iter().enumerate() {
        for i in 0..64 {
            let r = c.call(
                "chat.send",
                // 200 ms per word: no run can end while the loop fills the lanes.
                json!({"sessionKey": k, "message": format!("/slow {}", "w ".repeat(300)), "idempotencyKey": format!("q-{s}-{i}")}),
            );
            if let Err(e) = r {
                refused = Some((s * 64 + i, e));
                break 'outer;
            }
        }
    }
    let (at, e) = refused.expect("never refused");
    assert_eq!(at, 1024, "refused at send {at}");
    let ClientError::Rpc(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    assert_eq!(e["retryable"], true, "{e}");
    // The other core still takes runs.
    send(&mut c, &key_on_shard(1, None), "hi", "other-core");
}

#[test]
fn deleting_a_session_while_its_run_streams_does_not_bring_it_back() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(
        &mut c,
        "doomed",
        "/slow one two three four five six",
        "doomed-1",
    );
    // Wait for the run to be streaming.
    loop {
        let v = c.next_json().unwrap();
        if v["event"] == "chat" && v["payload"]["state"] == "delta" {
            break;
        }
    }
    let r = c.call("sessions.delete", json!({"key": "doomed"})).unwrap();
    assert_eq!(r["deleted"], true);
    let ev = chat_until_done(&mut c, "doomed-1", Duration::from_secs(10));
    assert_eq!(ev.last().unwrap()["state"], "aborted");
    let list = c.call("sessions.list", json!({})).unwrap();
    assert!(
        !list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "agent:main:doomed"),
        "the aborted reply revived the deleted session: {list}"
    );
}

#[test]
fn a_reset_trigger_stops_the_old_sessions_runs_and_starts_with_the_follow_up_text() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "busy", "/slow one two three four five six", "old-1");
    send(&mut c, "busy", "queued behind it", "old-2");
    loop {
        let v = c.next_json().unwrap();
        if v["event"] == "chat"
            && v["payload"]["runId"] == "old-1"
            && v["payload"]["state"] == "delta"
        {
            break;
        }
    }
    send(&mut c, "busy", "/new hello again", "new-1");
    let states = chat_states_until(&mut c, |order| {
        ["old-1", "old-2", "new-1"].iter().all(|id| {
            order
                .iter()
                .any(|(r, s)| r == id && matches!(s.as_str(), "final" | "error" | "aborted"))
        })
    });
    let end = |id: &str| {
        states
            .iter()
            .rev()
            .find(|(r, _)| r == id)
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    assert_eq!(end("old-1"), "aborted", "{states:?}");
    assert_eq!(end("old-2"), "aborted", "{states:?}");
    assert_eq!(end("new-1"), "final", "{states:?}");
    // The new session holds only its own turn, without the trigger word.
    let h = c
        .call("chat.history", json!({"sessionKey": "busy", "limit": 100}))
        .unwrap();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{h}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[0]["content"][0]["text"], "hello again");
    assert_eq!(msgs[1]["role"], "assistant");
}

#[test]
fn sessions_changed_goes_only_to_connections_that_subscribed() {
    let g = Gateway::start("uring");
    let mut subscribed = g.connect(RW);
    let mut other = g.connect(RW);
    assert_eq!(
        subscribed.call("sessions.subscribe", json!({})).unwrap(),
        json!({"subscribed": true})
    );
    // With sessions.list params the list comes along.
    let with_list = subscribed
        .call("sessions.subscribe", json!({"limit": 5}))
        .unwrap();
    assert_eq!(with_list["subscribed"], true);
    assert!(with_list["list"]["sessions"].is_array(), "{with_list}");
    let mut sender = g.connect(RW);
    send(&mut sender, "fresh-session", "hi", "sub-1");
    // Every frame each watcher gets up to the run's final (the row's `created` event goes
    // out before the run starts, on the same ordered path as the final).
    let changed_until_final = |c: &mut Client| {
        let mut pending = std::mem::take(&mut c.events);
        let mut changed = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no final");
            let v = if pending.is_empty() {
                c.next_json().unwrap()
            } else {
                pending.remove(0)
            };
            if v["event"] == "sessions.changed" {
                changed += 1;
            }
            if v["event"] == "chat" && v["payload"]["state"] == "final" {
                return changed;
            }
        }
    };
    assert!(
        changed_until_final(&mut subscribed) >= 1,
        "the subscriber got no sessions.changed"
    );
    assert_eq!(
        changed_until_final(&mut other),
        0,
        "sessions.changed reached a connection that never subscribed"
    );
}

#[test]
fn a_bare_reset_command_answers_a_status_notice_without_asking_the_model() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "noticed", "remember this", "bare-0");
    chat_until_done(&mut c, "bare-0", Duration::from_secs(10));
    send(&mut c, "noticed", "/new", "bare-1");
    let ev = chat_until_done(&mut c, "bare-1", Duration::from_secs(10));
    let last = ev.last().unwrap();
    assert_eq!(last["state"], "final", "{last}");
    assert_eq!(
        last["message"]["content"][0]["text"], "✅ New session started.",
        "{last}"
    );
    // The fresh session is empty: neither the command nor the notice is a turn.
    let h = c
        .call("chat.history", json!({"sessionKey": "noticed"}))
        .unwrap();
    assert_eq!(h["messages"].as_array().unwrap().len(), 0, "{h}");
    // Through `agent`: the notice is the result, flagged as such.
    let v = agent_final(
        &mut c,
        json!({"message": "/reset", "sessionKey": "noticed", "idempotencyKey": "bare-2"}),
    );
    let p = &v["payload"]["result"]["payloads"][0];
    assert_eq!(p["text"], "✅ Session reset.", "{v}");
    assert_eq!(p["isStatusNotice"], true, "{v}");
}

#[test]
fn sessions_patch_takes_the_real_clients_fields() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "patchy", "hi", "patchy-1");
    chat_until_done(&mut c, "patchy-1", Duration::from_secs(10));
    let list = c.call("sessions.list", json!({})).unwrap();
    let sid = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "agent:main:patchy")
        .map(|s| s["sessionId"].as_str().unwrap().to_string())
        .unwrap();
    // What `openclaw sessions archive` sends.
    let r = c
        .call(
            "sessions.patch",
            json!({"key": "patchy", "expectedSessionId": sid, "archived": true}),
        )
        .unwrap();
    assert_eq!(r["entry"]["archived"], true, "{r}");
    assert!(
        r["entry"]["updatedAt"].is_i64(),
        "the TUI reads entry.updatedAt: {r}"
    );
    // The TUI's setting commands.
    let r = c
        .call(
            "sessions.patch",
            json!({"key": "patchy", "responseUsage": "tokens", "verboseLevel": "on"}),
        )
        .unwrap();
    assert_eq!(r["entry"]["responseUsage"], "tokens", "{r}");
    assert_eq!(r["resolved"]["modelProvider"], "clawgate", "{r}");
    let e = c
        .call(
            "sessions.patch",
            json!({"key": "patchy", "expectedSessionId": "someone-else", "label": "x"}),
        )
        .unwrap_err();
    assert!(format!("{e:?}").contains("expectedSessionId"), "{e:?}");
    let e = c
        .call("sessions.patch", json!({"key": "main", "archived": true}))
        .unwrap_err();
    assert!(format!("{e:?}").contains("main session"), "{e:?}");
    // Still closed to fields outside the real schema.
    assert!(c
        .call("sessions.patch", json!({"key": "patchy", "bogus": 1}))
        .is_err());
    // Listing as the real CLI does: "all" includes archived sessions, the default hides them.
    let keys = |c: &mut Client, p: Value| -> Vec<String> {
        c.call("sessions.list", p).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(keys(&mut c, json!({"archived": "all"})).contains(&"agent:main:patchy".to_string()));
    assert!(!keys(&mut c, json!({})).contains(&"agent:main:patchy".to_string()));
    // An archived session cannot be pinned.
    assert!(c
        .call("sessions.patch", json!({"key": "patchy", "pinned": true}))
        .is_err());
}

#[test]
fn chat_history_cuts_long_texts_and_honours_max_bytes() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    let long = "word ".repeat(3000); // 15 000 characters
    send(&mut c, "longish", &long, "long-1");
    chat_until_done(&mut c, "long-1", Duration::from_secs(20));
    let h = c
        .call("chat.history", json!({"sessionKey": "longish"}))
        .unwrap();
    let first = h["messages"][0]["content"][0]["text"].as_str().unwrap();
    // The real gateway's default: 8000 characters and a marker.
    assert!(
        first.ends_with("\n...(truncated)..."),
        "{}",
        &first[first.len() - 40..]
    );
    assert_eq!(
        first.chars().count(),
        8000 + "\n...(truncated)...".chars().count()
    );
    let h = c
        .call(
            "chat.history",
            json!({"sessionKey": "longish", "maxChars": 4, "maxBytes": 400}),
        )
        .unwrap();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "only the newest fits in 400 bytes: {h}");
    assert_eq!(msgs[0]["role"], "assistant");
    assert_eq!(h["hasMore"], true, "{h}");
}

#[test]
fn describe_channels_commands_wake_and_history_session_info() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    send(&mut c, "described", "hi", "desc-1");
    chat_until_done(&mut c, "desc-1", Duration::from_secs(10));
    c.call(
        "sessions.patch",
        json!({"key": "described", "verboseLevel": "on"}),
    )
    .unwrap();
    let d = c
        .call("sessions.describe", json!({"key": "described"}))
        .unwrap();
    assert_eq!(d["session"]["key"], "agent:main:described", "{d}");
    assert_eq!(d["session"]["verboseLevel"], "on", "{d}");
    assert!(d["session"]["sessionId"].is_string(), "{d}");
    let none = c
        .call("sessions.describe", json!({"key": "never-seen"}))
        .unwrap();
    assert_eq!(none, json!({"session": null}));
    assert!(c
        .call("sessions.describe", json!({"key": "described", "bogus": 1}))
        .is_err());
    // chat.history's sessionInfo is the full row (the TUI restores settings from it).
    let h = c
        .call("chat.history", json!({"sessionKey": "described"}))
        .unwrap();
    assert_eq!(h["sessionInfo"]["verboseLevel"], "on", "{h}");
    c.call(
        "sessions.patch",
        json!({"key": "described", "thinkingLevel": "high"}),
    )
    .unwrap();
    let h = c
        .call("chat.history", json!({"sessionKey": "described"}))
        .unwrap();
    assert_eq!(h["sessionInfo"]["thinkingLevel"], "high", "{h}");
    assert_eq!(h["sessionInfo"]["sessionId"], d["session"]["sessionId"]);
    // No channels: the real gateway's empty answer; an unknown channel is an error.
    let ch = c.call("channels.status", json!({"probe": true})).unwrap();
    assert_eq!(ch["channels"], json!({}), "{ch}");
    assert_eq!(ch["channelOrder"], json!([]), "{ch}");
    assert!(c
        .call("channels.status", json!({"channel": "telegram"}))
        .is_err());
    let cmds = c
        .call(
            "commands.list",
            json!({"scope": "text", "includeArgs": false}),
        )
        .unwrap();
    let names: Vec<&str> = cmds["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new", "reset"]);
    // No heartbeat runner: wake is answered, not unknown, and says why it did nothing.
    let w = c
        .call("wake", json!({"mode": "now", "text": "check mail"}))
        .unwrap();
    assert_eq!(w["ok"], false, "{w}");
    assert!(c
        .call("wake", json!({"mode": "later", "text": "x"}))
        .is_err());
    // A run past its deadline: the CLI prints the real runner's timeout notice.
    let v = agent_final(
        &mut c,
        json!({"message": "/slow a b c d e f g h", "idempotencyKey": "desc-t", "timeout": 1}),
    );
    let p = &v["payload"]["result"]["payloads"][0];
    assert_eq!(p["isError"], true, "{v}");
    assert!(
        p["text"].as_str().unwrap().starts_with("Request timed out"),
        "{v}"
    );
}

#[test]
fn sessions_create_makes_a_durable_session_the_tui_can_switch_to() {
    let g = Gateway::start("uring");
    let mut c = g.connect(RW);
    let made = c.call("sessions.create", json!({})).unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("agent:main:dashboard:"), "{made}");
    assert_eq!(made["sessionId"], made["entry"]["sessionId"], "{made}");
    assert_eq!(made["runStarted"], false);
    // What the TUI's /new sends.
    let tui = c
        .call(
            "sessions.create",
            json!({"key": "tui-1234", "agentId": "main", "emitCommandHooks": false, "label": "from tui"}),
        )
        .unwrap();
    assert_eq!(tui["key"], "agent:main:tui-1234", "{tui}");
    assert_eq!(tui["entry"]["label"], "from tui", "{tui}");
    let listed = c.call("sessions.list", json!({})).unwrap();
    let keys: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&key.as_str()) && keys.contains(&"agent:main:tui-1234"),
        "{listed}"
    );
    assert!(c
        .call("sessions.create", json!({"agentId": "nobody"}))
        .is_err());
    send(&mut c, "tui-1234", "hello new session", "create-1");
    let ev = chat_until_done(&mut c, "create-1", Duration::from_secs(10));
    assert_eq!(ev.last().unwrap()["state"], "final");
}
