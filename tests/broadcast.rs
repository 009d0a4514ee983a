#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Gateway-wide broadcast: `system-event` → `presence` to every operator socket on every core,
//! serialized once, with per-connection `seq` and a monotonically increasing `stateVersion`.
mod support;

use std::time::{Duration, Instant};

use clawgate::client::Client;
use serde_json::{json, Value};
use support::{Gateway, Opts, DRIVERS};

fn next_presence(c: &mut Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline);
        if let Some(i) = c.events.iter().position(|v| v["event"] == "presence") {
            return c.events.remove(i);
        }
        let v = c.next_json().unwrap();
        if v["event"] == "presence" {
            return v;
        }
    }
}

#[test]
fn system_event_reaches_every_operator_on_every_core_with_seq_and_state_version() {
    for d in DRIVERS {
        let g = Gateway::start(d);
        // Enough sockets that both cores hold some (SO_REUSEPORT spreads them).
        let mut watchers: Vec<Client> = (0..8).map(|_| g.connect(&["operator.read"])).collect();
        let mut admin = g.connect(&["operator.admin"]);
        let v0 = admin.call("system-presence", json!({})).unwrap();
        assert!(v0
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mode"] == "gateway"));
        let mut versions = Vec::new();
        for round in 0..3 {
            admin.call("system-event", json!({"text": format!("round {round}"), "instanceId": "node-a", "host": "box"})).unwrap();
            let mut seen = Vec::new();
            for w in watchers.iter_mut() {
                let ev = next_presence(w);
                // First event after hello-ok is seq 1, then 2, 3 (no tick within the test).
                assert_eq!(ev["seq"], round + 1, "{d}: per-connection seq");
                let entry = ev["payload"]["presence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["instanceId"] == "node-a")
                    .cloned()
                    .unwrap();
                assert_eq!(entry["text"], format!("round {round}"));
                seen.push(ev["stateVersion"]["presence"].as_u64().unwrap());
            }
            // Every socket saw the same version, and it grows.
            assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
            versions.push(seen[0]);
        }
        assert!(versions.windows(2).all(|w| w[1] > w[0]), "{versions:?}");
        // The presence list is the same on every core (replicated from core 0).
        let p = watchers[0].call("system-presence", json!({})).unwrap();
        assert!(p
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["instanceId"] == "node-a" && e["text"] == "round 2"));
    }
}

#[test]
fn long_lived_clients_join_presence_and_leave_on_disconnect() {
    let g = Gateway::start("uring");
    let mut admin = g.connect(&["operator.admin"]);
    let o = clawgate::client::ConnectOptions {
        token: Some(g.token.clone()),
        client_id: "openclaw-tui".into(),
        client_mode: "ui".into(),
        device: Some(clawgate::client::DeviceIdentity::random()),
        ..clawgate::client::ConnectOptions::default()
    };
    let (tui, _) = Client::connect(&g.url(), &o).unwrap();
    let has_tui = |c: &mut Client| {
        c.call("system-presence", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mode"] == "ui")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has_tui(&mut admin) {
        assert!(
            Instant::now() < deadline,
            "ui client never appeared in presence"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One-shot CLI sockets are not listed.
    let list = admin.call("system-presence", json!({})).unwrap();
    assert!(!list.as_array().unwrap().iter().any(|e| e["mode"] == "cli"));
    tui.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    while has_tui(&mut admin) {
        assert!(Instant::now() < deadline, "ui client never left presence");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_burst_of_joins_is_coalesced_into_few_presence_broadcasts_ending_with_the_full_list() {
    let g = Gateway::start("uring");
    let mut admin = g.connect(&["operator.admin"]);
    const JOINS: usize = 120;
    let url = g.url();
    let token = g.token.clone();
    // 4 threads join at once: a burst of presence changes on core 0.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            std::thread::spawn(move || {
                let o = clawgate::client::ConnectOptions {
                    token: Some(token),
                    client_id: "openclaw-tui".into(),
                    client_mode: "ui".into(),
                    ..clawgate::client::ConnectOptions::default()
                };
                (0..JOINS / 4)
                    .map(|_| Client::connect(&url, &o).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let clients: Vec<Client> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(clients.len(), JOINS);
    // The trailing publish carries every row; count the broadcasts until then.
    let mut broadcasts = 0;
    loop {
        let ev = next_presence(&mut admin);
        broadcasts += 1;
        let ui = ev["payload"]["presence"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mode"] == "ui")
            .count();
        if ui == JOINS {
            break;
        }
    }
    assert!(
        broadcasts < JOINS / 2,
        "{broadcasts} presence broadcasts for {JOINS} joins: not coalesced"
    );
}

#[test]
fn presence_broadcasts_skip_sockets_without_operator_read() {
    let g = Gateway::start("uring");
    // Watchers on both cores: once they all have the event, every core has fanned it out.
    let mut watchers: Vec<Client> = (0..8).map(|_| g.connect(&["operator.read"])).collect();
    let mut bare = g.connect(&[]);
    let mut admin = g.connect(&["operator.admin"]);
    admin
        .call(
            "system-event",
            json!({"text": "hi", "instanceId": "node-b", "host": "box"}),
        )
        .unwrap();
    for w in watchers.iter_mut() {
        let ev = next_presence(w);
        assert!(ev["payload"]["presence"].to_string().contains("node-b"));
    }
    // Anything queued for `bare` is now ahead of the answer to this call.
    let r = bare.call_raw("system-presence", None).unwrap();
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");
    let leaked: Vec<&Value> = bare
        .events
        .iter()
        .filter(|v| v["event"] == "presence")
        .collect();
    assert!(
        leaked.is_empty(),
        "presence reached a socket without operator.read: {leaked:?}"
    );
}

#[test]
fn presence_changes_survive_full_core_to_core_queues() {
    // Two-slot mesh queues: joins/leaves from core 1 to core 0 and the snapshots back
    // overflow constantly; the ordered backlog must still deliver every one of them.
    let g = Gateway::start_with(Opts {
        extra: vec!["--mesh-queue-slots".into(), "2".into()],
        ..Opts::default()
    });
    let mut admin = g.connect(&["operator.admin"]);
    let o = clawgate::client::ConnectOptions {
        token: Some(g.token.clone()),
        client_id: "openclaw-tui".into(),
        client_mode: "ui".into(),
        ..clawgate::client::ConnectOptions::default()
    };
    let ui_rows = |c: &mut Client| {
        c.call("system-presence", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mode"] == "ui")
            .count()
    };
    let wait_for = |c: &mut Client, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = ui_rows(c);
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "presence shows {got} ui rows, want {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Joins and leaves in bursts from 4 threads at once.
    let batches: Vec<Vec<Client>> = (0..4)
        .map(|_| {
            let (url, o) = (g.url(), o.clone());
            std::thread::spawn(move || {
                (0..40)
                    .map(|_| Client::connect(&url, &o).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    wait_for(&mut admin, 160);
    let closers: Vec<_> = batches
        .into_iter()
        .map(|b| std::thread::spawn(move || b.into_iter().for_each(Client::close)))
        .collect();
    closers.into_iter().for_each(|t| t.join().unwrap());
    wait_for(&mut admin, 0);
}

#[test]
fn health_events_bump_state_version_seen_by_every_core() {
    let g = Gateway::start_with(Opts {
        extra: vec!["--health-interval-ms".into(), "150".into()],
        ..Opts::default()
    });
    let mut c = g.connect(&["operator.read"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut versions = Vec::new();
    while versions.len() < 2 {
        assert!(Instant::now() < deadline, "health events: {versions:?}");
        let v = c.next_json().unwrap();
        if v["event"] == "health" {
            assert_eq!(v["payload"]["ok"], true, "{v}");
            versions.push(v["stateVersion"]["health"].as_u64().unwrap());
        }
    }
    assert!(versions[1] > versions[0], "{versions:?}");
    // New connections on either core start from a snapshot at least that new.
    for _ in 0..6 {
        let (c2, hello) = Client::connect(&g.url(), &g.opts()).unwrap();
        let hv = hello["snapshot"]["stateVersion"]["health"]
            .as_u64()
            .unwrap();
        assert!(
            hv >= versions[1],
            "hello-ok health version {hv} < {versions:?}"
        );
        assert!(hello["features"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "health"));
        c2.close();
    }
}

#[test]
fn ticks_arrive_in_seq_order_and_a_peer_that_never_pongs_is_closed() {
    let g = Gateway::start_with(Opts {
        extra: vec![
            "--tick-interval-ms".into(),
            "100".into(),
            "--pong-timeout-ms".into(),
            "300".into(),
        ],
        ..Opts::default()
    });
    let mut live = g.connect(&["operator.read"]);
    let mut silent = g.connect(&["operator.read"]);
    // `live` reads (and answers every ping) for a while: ticks with consecutive seq.
    let mut seqs = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let v = live.next_json().unwrap();
        if v["event"] == "tick" {
            assert!(v["payload"]["ts"].as_i64().unwrap() > 0, "{v}");
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(seqs.len() >= 3, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(live.call("health", json!({})).unwrap()["ok"], true);
    // `silent` read nothing and answered no ping for 1.5 s: closed as dead.
    let end = loop {
        match silent.next_json() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    match end {
        clawgate::client::ClientError::Closed { code, reason } => {
            assert_eq!((code, reason.as_str()), (1011, "keepalive timeout"))
        }
        other => panic!("expected a 1011 close, got {other:?}"),
    }
}

#[test]
fn a_joining_client_gets_hello_ok_before_any_event_even_on_core_0() {
    // One worker: the join is published on core 0 at once, while the socket is still in
    // its handshake. It must not get that presence event (seq 1, pre-auth budget) before
    // its hello-ok.
    let g = Gateway::start_with(Opts {
        workers: 1,
        ..Opts::default()
    });
    let mut keep = Vec::new();
    for i in 0..3 {
        let o = clawgate::client::ConnectOptions {
            token: Some(g.token.clone()),
            client_id: "openclaw-tui".into(),
            client_mode: "ui".into(),
            device: Some(clawgate::client::DeviceIdentity::random()),
            ..clawgate::client::ConnectOptions::default()
        };
        let (mut c, hello) = Client::connect(&g.url(), &o).unwrap();
        assert!(
            c.events.is_empty(),
            "join {i}: events before hello-ok: {:?}",
            c.events
        );
        // Its own row is in the hello-ok snapshot or in the first event after it.
        let in_hello = hello["snapshot"]["presence"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mode"] == "ui")
            .count();
        if in_hello < i + 1 {
            let ev = next_presence(&mut c);
            assert_eq!(ev["seq"], 1);
        }
        keep.push(c);
    }
}

#[test]
fn system_event_rows_are_typed_bounded_and_capped_at_200() {
    let g = Gateway::start("uring");
    let mut admin = g.connect(&["operator.admin"]);
    // Wrong types are refused, not copied into every presence event.
    for bad in [
        json!({"text": "x", "host": {"a": 1}}),
        json!({"text": "x", "lastInputSeconds": "3"}),
        json!({"text": "x", "tags": [1, 2]}),
    ] {
        let e = admin.call("system-event", bad.clone()).unwrap_err();
        assert!(format!("{e:?}").contains("INVALID_REQUEST"), "{bad}: {e:?}");
    }
    // Long fields are clipped.
    admin
        .call(
            "system-event",
            json!({"text": "t".repeat(5000), "host": "h".repeat(1000), "instanceId": "big"}),
        )
        .unwrap();
    let find = |admin: &mut Client, f: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = admin.call("system-presence", json!({})).unwrap();
            if let Some(e) = list.as_array().unwrap().iter().find(|e| f(e)) {
                return (e.clone(), list);
            }
            assert!(Instant::now() < deadline, "row never appeared: {list}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (big, _) = find(&mut admin, &|e| e["instanceId"] == "big");
    assert_eq!(big["text"].as_str().unwrap().len(), 1024);
    assert_eq!(big["host"].as_str().unwrap().len(), 256);
    // Rows without an identity are keyed by their text: 250 distinct texts keep 200 rows.
    for i in 0..250 {
        admin
            .call("system-event", json!({"text": format!("event {i}")}))
            .unwrap();
    }
    let (_, list) = find(&mut admin, &|e| e["text"] == "event 249");
    let rows = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["text"].as_str().unwrap_or("").starts_with("event "))
        .count();
    assert!(rows <= 200, "{rows} system-event rows kept");
}
