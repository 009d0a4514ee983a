#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Gateway-wide broadcast: `system-event` → `presence` to every operator socket on every core,
//! serialized once, with per-connection `seq` and a monotonically increasing `stateVersion`.
mod support;

use std::time::{Duration, Instant};

use clawgate::client::Client;
use serde_json::{json, Value};
use support::{Gateway, DRIVERS};

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
