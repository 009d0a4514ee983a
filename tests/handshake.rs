#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Protocol v4 handshake and auth against the real binary: the happy paths and every bad
//! input the issue names, each with the real error/close behaviour, while others keep working.
mod support;

use std::time::Duration;

use clawgate::client::{Client, ClientError, ConnectOptions, DeviceIdentity};
use clawgate::transport::ws::codec::OpCode;
use serde_json::{json, Value};
use support::{Gateway, Opts, DRIVERS};

fn closed(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Closed { code, reason }) => (code, reason),
        other => panic!("expected close, got {other:?}"),
    }
}

/// Read frames until the close; return (responses seen, close).
fn drain_to_close(c: &mut Client) -> (Vec<Value>, u16, String) {
    let mut seen = vec![];
    loop {
        match c.next_json() {
            Ok(v) => seen.push(v),
            Err(ClientError::Closed { code, reason }) => return (seen, code, reason),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

fn raw_connect(g: &Gateway) -> (Client, Value) {
    let mut c = Client::open(&g.url(), Duration::from_secs(5)).unwrap();
    let ch = c.next_json().unwrap();
    (c, ch)
}

fn connect_frame(g: &Gateway, nonce: &str, ts: i64) -> Value {
    let _ = (nonce, ts);
    json!({"type":"req","id":"1:x","method":"connect","params":{
        "minProtocol":4,"maxProtocol":4,
        "client":{"id":"cli","version":"2026.9.6","platform":"linux","deviceFamily":"Linux","mode":"cli"},
        "caps":[],"auth":{"token": g.token},"role":"operator","scopes":["operator.read"]}})
}

#[test]
fn token_connect_gets_a_complete_hello_ok_and_rpcs_work_on_both_drivers() {
    for d in DRIVERS {
        let g = Gateway::start(d);
        let (mut c, ch) = raw_connect(&g);
        assert_eq!(ch["event"], "connect.challenge");
        assert!(ch["payload"]["nonce"].as_str().unwrap().len() >= 32);
        assert!(ch["payload"]["ts"].as_i64().unwrap() > 0);
        assert!(ch.get("seq").is_none());
        c.send_text(connect_frame(&g, "", 0).to_string().as_bytes())
            .unwrap();
        let res = c.next_json().unwrap();
        assert_eq!(res["ok"], true, "{res}");
        let h = &res["payload"];
        assert_eq!(h["type"], "hello-ok");
        assert_eq!(h["protocol"], 4);
        assert!(h["server"]["version"].is_string() && h["server"]["connId"].is_string());
        assert!(h["features"]["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "health"));
        assert!(h["snapshot"]["presence"].is_array());
        assert!(h["snapshot"]["health"].is_object());
        assert!(h["snapshot"]["stateVersion"]["presence"].is_u64());
        assert!(h["snapshot"]["uptimeMs"].is_i64() || h["snapshot"]["uptimeMs"].is_u64());
        assert_eq!(h["auth"]["role"], "operator");
        assert_eq!(h["auth"]["scopes"], json!(["operator.read"]));
        assert_eq!(
            h["policy"],
            json!({"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000})
        );
        let mut c2 = g.connect(&["operator.read"]);
        let health = c2.call("health", json!({})).unwrap();
        assert_eq!(health["ok"], true);
        let presence = c2.call("system-presence", json!({})).unwrap();
        assert!(presence
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mode"] == "gateway"));
    }
}

#[test]
fn wrong_token_gets_auth_token_mismatch_then_1008() {
    let g = Gateway::start("uring");
    let o = ConnectOptions {
        token: Some("wrong".into()),
        ..ConnectOptions::default()
    };
    let mut c = Client::open(&g.url(), Duration::from_secs(5)).unwrap();
    let _ = c.next_json().unwrap();
    let _ = o;
    let mut f = connect_frame(&g, "", 0);
    f["params"]["auth"]["token"] = json!("wrong");
    c.send_text(f.to_string().as_bytes()).unwrap();
    let (seen, code, reason) = drain_to_close(&mut c);
    let err = &seen[0]["error"];
    assert_eq!(err["code"], "INVALID_REQUEST");
    assert_eq!(err["details"]["code"], "AUTH_TOKEN_MISMATCH");
    assert_eq!(err["details"]["authReason"], "token_mismatch");
    assert_eq!(
        err["details"]["recommendedNextStep"],
        "update_auth_credentials"
    );
    assert_eq!(err["details"]["canRetryWithDeviceToken"], false);
    assert_eq!(code, 1008);
    assert!(reason.starts_with("unauthorized: gateway token mismatch"));
    // Missing token.
    let mut c = Client::open(&g.url(), Duration::from_secs(5)).unwrap();
    let _ = c.next_json().unwrap();
    let mut f = connect_frame(&g, "", 0);
    f["params"]["auth"] = json!({});
    c.send_text(f.to_string().as_bytes()).unwrap();
    let (seen, code, _) = drain_to_close(&mut c);
    assert_eq!(seen[0]["error"]["details"]["code"], "AUTH_TOKEN_MISSING");
    assert_eq!(code, 1008);
    // A (wrong) password to a token gateway: the token is missing, as the real gateway says.
    let mut c = Client::open(&g.url(), Duration::from_secs(5)).unwrap();
    let _ = c.next_json().unwrap();
    let mut f = connect_frame(&g, "", 0);
    f["params"]["auth"] = json!({"password": "not-the-token"});
    c.send_text(f.to_string().as_bytes()).unwrap();
    let (seen, code, _) = drain_to_close(&mut c);
    assert_eq!(seen[0]["error"]["details"]["code"], "AUTH_TOKEN_MISSING");
    assert_eq!(seen[0]["error"]["details"]["authReason"], "token_missing");
    assert_eq!(code, 1008);
    // Others unaffected.
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
}

#[test]
fn first_frame_must_be_connect_and_bad_frames_close() {
    let g = Gateway::start("uring");
    // Request before handshake.
    let (mut c, _) = raw_connect(&g);
    c.send_text(br#"{"type":"req","id":"1","method":"health"}"#)
        .unwrap();
    let (seen, code, reason) = drain_to_close(&mut c);
    assert_eq!(seen[0]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(code, 1008);
    assert!(reason.contains("first request must be connect"), "{reason}");
    // Invalid JSON.
    let (mut c, _) = raw_connect(&g);
    c.send_text(b"{not json").unwrap();
    let (_, code, _) = drain_to_close(&mut c);
    assert_eq!(code, 1008);
    // Binary frame.
    let (mut c, _) = raw_connect(&g);
    c.send_frame(OpCode::Binary, b"\x00\x01").unwrap();
    assert_eq!(closed(c.next_json()).0, 1003);
    // Oversize pre-auth frame (64 KiB + 1) → 1009 before the payload is buffered.
    let (mut c, _) = raw_connect(&g);
    let big = vec![b'a'; 64 * 1024 + 1];
    let _ = c.send_frame(OpCode::Text, &big);
    assert_eq!(closed(c.next_json()).0, 1009);
    // Unknown top-level field in connect.
    let (mut c, _) = raw_connect(&g);
    let mut f = connect_frame(&g, "", 0);
    f["bogus"] = json!(1);
    c.send_text(f.to_string().as_bytes()).unwrap();
    let (seen, code, _) = drain_to_close(&mut c);
    assert_eq!(seen[0]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(code, 1008);
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
}

#[test]
fn protocol_mismatch_closes_1002_with_details() {
    let g = Gateway::start("uring");
    let (mut c, _) = raw_connect(&g);
    let mut f = connect_frame(&g, "", 0);
    f["params"]["minProtocol"] = json!(2);
    f["params"]["maxProtocol"] = json!(3);
    c.send_text(f.to_string().as_bytes()).unwrap();
    let (seen, code, reason) = drain_to_close(&mut c);
    let err = &seen[0]["error"];
    assert_eq!(err["message"], "protocol mismatch");
    assert_eq!(
        err["details"],
        json!({"code":"PROTOCOL_MISMATCH","clientMinProtocol":2,"clientMaxProtocol":3,"expectedProtocol":4,"minimumProbeProtocol":3})
    );
    assert_eq!((code, reason.as_str()), (1002, "protocol mismatch"));
    // A probe with 3..4 is accepted (as `openclaw gateway probe` sends) and gets zero scopes.
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        min_protocol: 3,
        max_protocol: 4,
        client_id: "cli".into(),
        client_mode: "probe".into(),
        ..ConnectOptions::default()
    };
    let (mut c, hello) = Client::connect(&g.url(), &o).unwrap();
    assert_eq!(hello["auth"]["scopes"], json!([]));
    c.call("health", json!({})).unwrap();
    let err = c.call("status", json!({})).unwrap_err();
    let ClientError::Rpc(e) = err else { panic!() };
    assert_eq!(
        e,
        json!({"code":"FORBIDDEN","message":"missing scope: operator.read","details":{"code":"MISSING_SCOPE","missingScope":"operator.read","requiredScopes":["operator.read"]}})
    );
}

#[test]
fn unknown_method_missing_scope_and_post_auth_garbage_keep_the_socket() {
    let g = Gateway::start("uring");
    let mut c = g.connect(&["operator.read"]);
    let ClientError::Rpc(e) = c.call("no.such.method", json!({})).unwrap_err() else {
        panic!()
    };
    assert_eq!(e["code"], "INVALID_REQUEST");
    assert_eq!(e["message"], "unknown method: no.such.method");
    let ClientError::Rpc(e) = c.call("device.pair.list", json!({})).unwrap_err() else {
        panic!()
    };
    assert_eq!(e["details"]["missingScope"], "operator.pairing");
    let ClientError::Rpc(e) = c.call("system-event", json!({"text":"x"})).unwrap_err() else {
        panic!()
    };
    assert_eq!(e["code"], "FORBIDDEN");
    c.send_text(b"{oops").unwrap();
    let v = c.next_json().unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(c.call("health", json!({})).unwrap()["ok"], true);
    // Write scope implies read.
    let mut w = g.connect(&["operator.write"]);
    w.call("status", json!({})).unwrap();
}

/// The answer to a raw request frame with id `id` (events in between are skipped).
fn response_to(c: &mut Client, id: &str) -> Value {
    loop {
        let v = c.next_json().unwrap();
        if v["type"] == "res" && v["id"] == id {
            return v;
        }
    }
}

#[test]
fn params_are_parsed_only_after_the_scope_check() {
    let g = Gateway::start("uring");
    // Nested deeper than serde_json builds trees (128): turning these params into a tree
    // fails, so whoever answers first shows which check ran first.
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let frame = |id: &str| {
        format!(
            r#"{{"type":"req","id":"{id}","method":"chat.send","params":{{"sessionKey":"main","message":{deep},"idempotencyKey":"k"}}}}"#
        )
    };
    let mut r = g.connect(&["operator.read"]);
    r.send_text(frame("deep-1").as_bytes()).unwrap();
    let v = response_to(&mut r, "deep-1");
    assert_eq!(v["error"]["code"], "FORBIDDEN", "{v}");
    assert_eq!(v["error"]["details"]["missingScope"], "operator.write");
    // A caller allowed to send it gets a clear INVALID_REQUEST, and the socket stays usable.
    let mut w = g.connect(&["operator.write"]);
    w.send_text(frame("deep-2").as_bytes()).unwrap();
    let v = response_to(&mut w, "deep-2");
    assert_eq!(v["error"]["code"], "INVALID_REQUEST", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("params"),
        "{v}"
    );
    assert_eq!(w.call("health", json!({})).unwrap()["ok"], true);
}

#[test]
fn device_signed_connect_pairs_locally_and_the_device_token_reconnects() {
    for d in DRIVERS {
        let g = Gateway::start(d);
        let id = DeviceIdentity::random();
        let o = ConnectOptions {
            token: Some(g.token.clone()),
            device: Some(id.clone()),
            ..ConnectOptions::default()
        };
        let (c, hello) = Client::connect(&g.url(), &o).unwrap();
        let dt = hello["auth"]["deviceToken"]
            .as_str()
            .expect("device token issued")
            .to_string();
        assert_eq!(dt.len(), 43);
        assert!(hello["auth"]["issuedAtMs"].as_i64().unwrap() > 0);
        c.close();
        // The pairing is durable (0600) before the token is handed out.
        let path = g.state_dir.join("devices/paired.json");
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(
            on_disk.contains(&id.device_id()),
            "the pairing is in the file when hello-ok arrives"
        );
        // A second signed connect with the shared secret gets the same token back (the real
        // gateway's ensureDeviceToken): a client that discarded it is not locked out.
        let (c, again) = Client::connect(&g.url(), &o).unwrap();
        assert_eq!(again["auth"]["deviceToken"], dt.as_str());
        c.close();
        // Reconnect with only the device token (several times, to hit both cores).
        for _ in 0..6 {
            let o2 = ConnectOptions {
                token: None,
                device_token: Some(dt.clone()),
                device: Some(id.clone()),
                ..ConnectOptions::default()
            };
            let (mut c2, hello2) = Client::connect(&g.url(), &o2).unwrap();
            assert_eq!(hello2["auth"]["method"], "device-token");
            assert_eq!(hello2["auth"]["deviceToken"], dt.as_str());
            c2.call("status", json!({})).unwrap();
        }
        // A wrong device token is refused.
        let o3 = ConnectOptions {
            token: None,
            device_token: Some("x".repeat(43)),
            device: Some(id.clone()),
            ..ConnectOptions::default()
        };
        let Err(ClientError::Rpc(e)) = Client::connect(&g.url(), &o3) else {
            panic!()
        };
        assert_eq!(e["details"]["code"], "AUTH_DEVICE_TOKEN_MISMATCH");
        // Pair list shows the device.
        let mut admin = g.connect(&["operator.pairing"]);
        let list = admin.call("device.pair.list", json!({})).unwrap();
        assert_eq!(list["paired"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn device_proof_failures_have_the_real_codes() {
    let g = Gateway::start("uring");
    let id = DeviceIdentity::random();
    let pk = clawgate::auth::device::public_key_b64url(&id.seed);
    let dev_id =
        clawgate::auth::device::device_id_for(&clawgate::auth::device::public_key_raw(&id.seed));
    let scopes = vec!["operator.read".to_string()];
    let sign = |nonce: &str, ts: i64| {
        let f = clawgate::auth::device::SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            token: &g.token,
            platform: "linux",
            device_family: "Linux",
        };
        clawgate::auth::device::sign_v3(&id.seed, &dev_id, &f, ts, nonce)
    };
    let attempt = |mutate: &dyn Fn(&mut Value, &str, i64)| -> (Value, u16) {
        let (mut c, ch) = raw_connect(&g);
        let nonce = ch["payload"]["nonce"].as_str().unwrap().to_string();
        let ts = ch["payload"]["ts"].as_i64().unwrap();
        let mut f = connect_frame(&g, &nonce, ts);
        f["params"]["device"] = json!({"id": dev_id, "publicKey": pk, "signature": sign(&nonce, ts), "signedAt": ts, "nonce": nonce});
        mutate(&mut f, &nonce, ts);
        c.send_text(f.to_string().as_bytes()).unwrap();
        let (seen, code, _) = drain_to_close(&mut c);
        (seen.first().cloned().unwrap_or(Value::Null), code)
    };
    // Bad signature.
    let (r, code) = attempt(&|f, _, _| {
        let s = f["params"]["device"]["signature"]
            .as_str()
            .unwrap()
            .to_string();
        let flipped = match s.strip_prefix('A') {
            Some(rest) => format!("B{rest}"),
            None => format!("A{}", &s[1..]),
        };
        f["params"]["device"]["signature"] = json!(flipped);
    });
    assert_eq!(r["error"]["message"], "device signature invalid");
    assert_eq!(
        r["error"]["details"],
        json!({"code":"DEVICE_AUTH_SIGNATURE_INVALID","reason":"device-signature"})
    );
    assert_eq!(code, 1008);
    // Replayed nonce: a proof signed for another socket's challenge.
    let (mut other, ch) = raw_connect(&g);
    let old_nonce = ch["payload"]["nonce"].as_str().unwrap().to_string();
    let old_ts = ch["payload"]["ts"].as_i64().unwrap();
    let (r, _) = attempt(&|f, _, _| {
        f["params"]["device"] = json!({"id": dev_id, "publicKey": pk, "signature": sign(&old_nonce, old_ts), "signedAt": old_ts, "nonce": old_nonce});
    });
    assert_eq!(r["error"]["details"]["code"], "DEVICE_AUTH_NONCE_MISMATCH");
    other
        .send_frame(OpCode::Close, &1000u16.to_be_bytes())
        .unwrap();
    // Stale signedAt (3 minutes old, correctly signed).
    let (r, _) = attempt(&|f, nonce, ts| {
        let stale = ts - 180_000;
        f["params"]["device"]["signedAt"] = json!(stale);
        f["params"]["device"]["signature"] = json!(sign(nonce, stale));
    });
    assert_eq!(
        r["error"]["details"]["code"],
        "DEVICE_AUTH_SIGNATURE_EXPIRED"
    );
    // Device id that is not the key's fingerprint.
    let (r, _) = attempt(&|f, _, _| {
        f["params"]["device"]["id"] = json!("0".repeat(64));
    });
    assert_eq!(
        r["error"]["details"]["code"],
        "DEVICE_AUTH_DEVICE_ID_MISMATCH"
    );
    // Same socket cannot connect twice (nonce is single-use).
    let mut c = g.connect(&["operator.read"]);
    let ClientError::Rpc(e) = c.call("connect", json!({})).unwrap_err() else {
        panic!()
    };
    assert_eq!(e["code"], "INVALID_REQUEST");
}

#[test]
fn sockets_that_never_send_connect_are_capped_and_timed_out() {
    let g = Gateway::start_with(Opts {
        extra: vec!["--handshake-timeout-ms".into(), "1500".into()],
        ..Opts::default()
    });
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        match Client::open(&g.url(), Duration::from_secs(5)) {
            Ok(c) => open.push(c),
            Err(ClientError::Upgrade(line)) => {
                assert!(line.contains("503"), "{line}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        open.len() <= 32,
        "per-IP pre-auth budget: {} open",
        open.len()
    );
    assert!(refused >= 1000 - 32);
    // HTTP keeps serving during the flood.
    assert_eq!(g.http("GET", "/healthz", &[]).unwrap().0, 200);
    // After the handshake timeout every idle pre-auth socket is closed with 1008.
    for mut s in open {
        let _ = s.next_json(); // challenge
        let (code, _) = closed(s.next_json());
        assert_eq!(code, 1008);
    }
    // Budget is returned: new sockets are accepted again.
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
}

#[test]
fn frames_pipelined_behind_a_failed_connect_are_not_processed() {
    let g = Gateway::start("uring");
    let (mut c, _) = raw_connect(&g);
    let mut bad = connect_frame(&g, "", 0);
    bad["params"]["auth"]["token"] = json!("wrong");
    let good = connect_frame(&g, "", 0);
    c.send_text(bad.to_string().as_bytes()).unwrap();
    c.send_text(good.to_string().as_bytes()).unwrap();
    let (seen, code, _) = drain_to_close(&mut c);
    assert_eq!(code, 1008);
    assert_eq!(
        seen.len(),
        1,
        "only the failed connect is answered: {seen:?}"
    );
    assert_eq!(seen[0]["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
}

#[test]
fn a_pre_auth_socket_that_floods_pings_and_never_reads_is_closed_as_slow() {
    let g = Gateway::start("uring");
    let mut c = Client::open_with(&g.url(), Duration::from_secs(20), Some(4096), &[]).unwrap();
    let _ = c.next_json().unwrap(); // connect.challenge
                                    // ~5 MB of pongs owed to a socket that reads nothing: far past the 64 KiB pre-auth
                                    // budget (the full 50 MiB budget would have queued them all until the 15 s timeout).
    let ping = [b'p'; 125];
    for _ in 0..40_000 {
        if c.send_frame(OpCode::Ping, &ping).is_err() {
            break;
        }
    }
    let end = loop {
        match c.next_json() {
            Ok(_) => continue,
            Err(ClientError::Closed { code, reason }) => break Ok((code, reason)),
            Err(e) => break Err(e.to_string()),
        }
    };
    match end {
        Ok((code, reason)) => {
            assert_eq!((code, reason.as_str()), (1008, "slow consumer"))
        }
        // The gateway may also have cut the socket once the close grace ran out.
        Err(e) => assert!(!e.contains("timed out"), "{e}"),
    }
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
}

#[test]
fn a_signed_connect_with_a_stale_shared_token_is_told_to_retry_with_its_device_token() {
    let g = Gateway::start("uring");
    let id = DeviceIdentity::random();
    let good = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(id.clone()),
        ..ConnectOptions::default()
    };
    let (c, hello) = Client::connect(&g.url(), &good).unwrap();
    let dt = hello["auth"]["deviceToken"].as_str().unwrap().to_string();
    c.close();
    // Wrong shared token, signed, no deviceToken: the client may retry with its stored one.
    let stale = ConnectOptions {
        token: Some("rotated-away".into()),
        ..good.clone()
    };
    let e = match Client::connect(&g.url(), &stale) {
        Err(ClientError::Rpc(e)) => e,
        Err(other) => panic!("expected an auth error, got {other:?}"),
        Ok(_) => panic!("a wrong shared token was accepted"),
    };
    assert_eq!(e["details"]["code"], "AUTH_TOKEN_MISMATCH", "{e}");
    assert_eq!(e["details"]["canRetryWithDeviceToken"], true, "{e}");
    assert_eq!(
        e["details"]["recommendedNextStep"], "retry_with_device_token",
        "{e}"
    );
    // ... and that retry works.
    let retry = ConnectOptions {
        token: None,
        device_token: Some(dt),
        ..good.clone()
    };
    let (c, _) = Client::connect(&g.url(), &retry).unwrap();
    c.close();
    // Already sending a device token: no second retry suggested.
    let both = ConnectOptions {
        token: Some("rotated-away".into()),
        device_token: Some("not-it".into()),
        ..good
    };
    let e = match Client::connect(&g.url(), &both) {
        Err(ClientError::Rpc(e)) => e,
        Err(other) => panic!("expected an auth error, got {other:?}"),
        Ok(_) => panic!("a wrong shared token was accepted"),
    };
    assert_eq!(e["details"]["canRetryWithDeviceToken"], false, "{e}");
}

#[test]
fn no_device_token_is_handed_out_before_its_pairing_is_on_disk() {
    // A slow disk: every store-thread write waits 400 ms. Two connects of one new device,
    // the second while the first one's save is still queued: neither may get `hello-ok`
    // (and so a token) before the pairing is in paired.json.
    let g = Gateway::start_with(Opts {
        extra: vec!["--store-delay-ms".into(), "400".into()],
        ..Opts::default()
    });
    let id = DeviceIdentity::random();
    let path = g.state_dir.join("devices/paired.json");
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(id.clone()),
        ..ConnectOptions::default()
    };
    let connect = |delay_ms: u64| {
        let (url, o, path, device_id) = (g.url(), o.clone(), path.clone(), id.device_id());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            let (c, hello) = Client::connect(&url, &o).unwrap();
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            c.close();
            (
                hello["auth"]["deviceToken"].as_str().unwrap().to_string(),
                on_disk.contains(&device_id),
            )
        })
    };
    let first = connect(0);
    let second = connect(150);
    let (t1, durable1) = first.join().unwrap();
    let (t2, durable2) = second.join().unwrap();
    assert!(
        durable1,
        "first connect got its token before the pairing was on disk"
    );
    assert!(
        durable2,
        "second connect got the token before the pairing was on disk"
    );
    assert_eq!(t1, t2, "one device, one token");
}

#[test]
fn a_device_reconnecting_while_its_pairing_is_being_saved_waits_for_that_save() {
    // A slow disk (every store-thread write 700 ms late) and twelve simultaneous connects
    // of one new device. Connects that change nothing wait for the save already on its
    // way instead of each queueing another one (which, one after the other on the store
    // thread, took the last of them past the handshake timeout).
    let g = Gateway::start_with(Opts {
        extra: vec![
            "--store-delay-ms".into(),
            "700".into(),
            "--handshake-timeout-ms".into(),
            "5000".into(),
        ],
        ..Opts::default()
    });
    let id = DeviceIdentity::random();
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(id.clone()),
        ..ConnectOptions::default()
    };
    let first = {
        let (url, o) = (g.url(), o.clone());
        std::thread::spawn(move || Client::connect(&url, &o))
    };
    std::thread::sleep(Duration::from_millis(100));
    let rest: Vec<_> = (0..11)
        .map(|_| {
            let (url, o) = (g.url(), o.clone());
            std::thread::spawn(move || Client::connect(&url, &o))
        })
        .collect();
    let mut tokens = Vec::new();
    for t in std::iter::once(first).chain(rest) {
        let (c, hello) = t
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("connect failed: {e:?}"));
        tokens.push(hello["auth"]["deviceToken"].as_str().unwrap().to_string());
        c.close();
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "one device, one token: {tokens:?}");
    let on_disk = std::fs::read_to_string(g.state_dir.join("devices/paired.json")).unwrap();
    assert!(on_disk.contains(&id.device_id()));
}

#[test]
fn new_devices_pairing_together_share_registry_saves() {
    // A slow disk (700 ms per store-thread write) and twelve different new devices at
    // once: pairings made while one save is on its way share the next save, so all of
    // them are answered within a 5 s handshake timeout (one save each, in a row, took
    // 8.4 s) — each only after its record is on disk.
    let g = Gateway::start_with(Opts {
        extra: vec![
            "--store-delay-ms".into(),
            "700".into(),
            "--handshake-timeout-ms".into(),
            "5000".into(),
        ],
        ..Opts::default()
    });
    let path = g.state_dir.join("devices/paired.json");
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let id = DeviceIdentity::random();
            let o = ConnectOptions {
                token: Some(g.token.clone()),
                device: Some(id.clone()),
                ..ConnectOptions::default()
            };
            let (url, path) = (g.url(), path.clone());
            std::thread::spawn(move || {
                let (c, hello) =
                    Client::connect(&url, &o).unwrap_or_else(|e| panic!("connect failed: {e:?}"));
                let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
                c.close();
                assert!(hello["auth"]["deviceToken"].is_string(), "{hello}");
                assert!(
                    on_disk.contains(&id.device_id()),
                    "token handed out before the pairing was on disk"
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn after_a_failed_pairing_save_every_core_hands_out_only_the_token_on_disk() {
    // A scope upgrade issues a new token whose save fails (the devices directory is
    // replaced by a file); a later save (another device) writes the whole registry, new
    // token included. From then on no core may hand out the old token: it is no longer on
    // disk, so it would not survive a restart.
    let g = Gateway::start_with(Opts::default());
    let devices = g.state_dir.join("devices");
    let x = DeviceIdentity::random();
    let connect_x = |scopes: &[&str]| {
        let o = ConnectOptions {
            token: Some(g.token.clone()),
            device: Some(x.clone()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..ConnectOptions::default()
        };
        Client::connect(&g.url(), &o).map(|(c, hello)| {
            c.close();
            hello["auth"]["deviceToken"].as_str().unwrap().to_string()
        })
    };
    let t1 = connect_x(&["operator.read"]).unwrap();
    std::fs::rename(&devices, g.state_dir.join("devices.bak")).unwrap();
    std::fs::write(&devices, b"not a directory").unwrap();
    let upgrade = connect_x(&["operator.read", "operator.write"]);
    assert!(upgrade.is_err(), "the upgrade's save cannot have succeeded");
    std::fs::remove_file(&devices).unwrap();
    std::fs::rename(g.state_dir.join("devices.bak"), &devices).unwrap();
    let y = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(DeviceIdentity::random()),
        ..ConnectOptions::default()
    };
    Client::connect(&g.url(), &y).unwrap().0.close();
    let on_disk = std::fs::read_to_string(devices.join("paired.json")).unwrap();
    assert!(
        !on_disk.contains(&t1),
        "the upgrade replaced the first token on disk"
    );
    for _ in 0..12 {
        let t = connect_x(&["operator.read"]).unwrap();
        assert!(
            on_disk.contains(&t),
            "a core handed out a token that is not on disk (stale replica)"
        );
    }
}

#[test]
fn a_device_token_is_no_bearer_credential_without_its_device() {
    let g = Gateway::start("uring");
    let id = DeviceIdentity::random();
    let signed = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(id),
        ..ConnectOptions::default()
    };
    let (c, hello) = Client::connect(&g.url(), &signed).unwrap();
    let dt = hello["auth"]["deviceToken"].as_str().unwrap().to_string();
    c.close();
    // The token alone (no signed device block), as `auth.deviceToken` or `auth.token`.
    for o in [
        ConnectOptions {
            device_token: Some(dt.clone()),
            ..ConnectOptions::default()
        },
        ConnectOptions {
            token: Some(dt.clone()),
            ..ConnectOptions::default()
        },
    ] {
        match Client::connect(&g.url(), &o) {
            Err(ClientError::Rpc(e)) => assert!(
                e["details"]["code"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("AUTH_")),
                "{e}"
            ),
            Err(other) => panic!("expected an auth error, got {other:?}"),
            Ok(_) => panic!("a device token without its device was accepted"),
        }
    }
}
