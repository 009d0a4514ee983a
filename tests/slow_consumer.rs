#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Broadcast fanout with drop-if-slow: a client that stops reading has droppable events
//! skipped (it sees a `seq` gap), is closed once its queue passes the budget, and never slows
//! the others.
mod support;

use std::time::{Duration, Instant};

use clawgate::client::ClientError;
use serde_json::json;
use support::{Gateway, Opts};

#[test]
fn slow_consumer_is_skipped_then_closed_while_others_get_everything() {
    let g = Gateway::start_with(Opts {
        extra: vec![
            "--max-buffered-bytes".into(),
            "16777216".into(),
            "--drop-threshold-bytes".into(),
            "4194304".into(),
        ],
        ..Opts::default()
    });
    let mut fast = g.connect(&["operator.read"]);
    // A tiny receive buffer so the kernel cannot hide the backlog (loopback autotunes to 32 MB).
    let so = clawgate::client::ConnectOptions {
        recv_buffer: Some(4096),
        ..g.opts()
    };
    let mut slow = clawgate::client::Client::connect(&g.url(), &so).unwrap().0;
    let mut admin = g.connect(&["operator.admin"]);
    // Rows are clipped to 1 KiB of text: 40 of them make each presence event ~40 KiB.
    let big = "x".repeat(1000);
    let events = 400;
    // The fast client reads on its own thread; `slow` does not read at all while the
    // publisher sends ~16 MB of presence events.
    // The publisher never runs more than a few events ahead of the fast reader, so only a
    // client that really stops reading can fall behind (no timing luck involved).
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = received.clone();
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut last_seq = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < events {
            assert!(
                Instant::now() < deadline,
                "fast client starved: {got}/{events}"
            );
            let v = fast
                .next_json()
                .unwrap_or_else(|e| panic!("fast client failed after {got} events: {e}"));
            if v["event"] == "presence" {
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last_seq + 1, "fast client saw a gap");
                last_seq = seq;
                got += 1;
                seen.store(got, std::sync::atomic::Ordering::Release);
            }
        }
        fast
    });
    for i in 0..events {
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(std::sync::atomic::Ordering::Acquire) + 8 < i {
            assert!(Instant::now() < deadline, "fast reader stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        admin
            .call(
                "system-event",
                json!({"text": format!("{i} {big}"), "instanceId": format!("publisher-{}", i % 40)}),
            )
            .unwrap();
    }
    let mut fast = reader.join().expect("fast client got every event in order");
    // The slow one now reads: it gets fewer, and the seq gap shows what was skipped.
    slow.call("health", json!({})).unwrap();
    let presence: Vec<u64> = slow
        .events
        .iter()
        .filter(|v| v["event"] == "presence")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert!(
        presence.len() < events,
        "nothing was dropped for the slow client"
    );
    // The next event it receives carries a seq past the skipped ones: the gap is visible.
    admin
        .call(
            "system-event",
            json!({"text": "after", "instanceId": "publisher"}),
        )
        .unwrap();
    let next = loop {
        let v = slow.next_json().unwrap();
        if v["event"] == "presence" {
            break v["seq"].as_u64().unwrap();
        }
    };
    let last_seen = presence.last().copied().unwrap_or(0);
    assert!(
        next > last_seen + 1,
        "no seq gap visible to the slow client ({last_seen} -> {next})"
    );

    // Past the budget with non-droppable frames (its own ~40 KB responses) the socket is closed.
    admin
        .call(
            "system-event",
            json!({"text": big, "instanceId": "publisher"}),
        )
        .unwrap();
    let n = 1000;
    for i in 0..n {
        let req =
            json!({"type":"req","id": format!("p{i}"),"method":"system-presence","params":{}});
        if slow.send_text(req.to_string().as_bytes()).is_err() {
            break;
        }
    }
    // Give the gateway time to process the requests while this client reads nothing (less
    // than the 2 s close grace, so the 1008 frame is normally still there to read).
    std::thread::sleep(Duration::from_secs(1));
    let mut answered = 0;
    loop {
        match slow.next_json() {
            Ok(v) if v["type"] == "res" => answered += 1,
            Ok(_) => {}
            Err(ClientError::Closed { code, reason }) => {
                assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
                break;
            }
            // The gateway waits CLOSE_GRACE (2 s) for the close frame to drain, then cuts the
            // socket (a reset: the client's unread requests are still queued).
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the slow-consumer close, got {e}"),
        }
    }
    assert!(
        answered < n,
        "every response was queued (answered {answered}/{n})"
    );
    // Others unaffected.
    assert_eq!(fast.call("health", json!({})).unwrap()["ok"], true);
}
