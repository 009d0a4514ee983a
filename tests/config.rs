#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Configuration end to end: JSON5 + `${VAR}`, startup errors, auth modes, trusted proxies.
mod support;

use clawgate::client::{Client, ClientError, ConnectOptions, DeviceIdentity};
use serde_json::json;
use support::{temp_dir, Gateway, Opts};

#[test]
fn missing_env_var_is_a_startup_error_naming_it() {
    let home = temp_dir("cfg");
    std::fs::create_dir_all(home.join(".openclaw")).unwrap();
    std::fs::write(
        home.join(".openclaw/openclaw.json"),
        "{ gateway: { auth: { token: '${CLAWGATE_TEST_UNSET_VAR}' } } }",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
        .args(["gateway", "run", "--port", "0"])
        .env("HOME", &home)
        .env_remove("CLAWGATE_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CLAWGATE_TEST_UNSET_VAR") && err.contains("gateway.auth.token"),
        "{err}"
    );
}

#[test]
fn json5_config_with_env_token_and_port_precedence() {
    let cfg = "// comment\n{ gateway: { auth: { mode: 'token', token: '${MY_GW_TOKEN}', }, }, }";
    let g = Gateway::start_with(Opts {
        token: None,
        config: Some(cfg),
        env: vec![("MY_GW_TOKEN".into(), "from-env-123".into())],
        ..Opts::default()
    });
    let o = ConnectOptions {
        token: Some("from-env-123".into()),
        ..ConnectOptions::default()
    };
    let (mut c, _) = Client::connect(&g.url(), &o).unwrap();
    let got = c.call("config.get", json!({})).unwrap();
    // Secrets never leave the gateway.
    assert!(!got.to_string().contains("from-env-123"), "{got}");
    // `clawgate gateway call` with the same environment works too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
        .args(["gateway", "call", "health", "--url", &g.url(), "--json"])
        .env("HOME", &g.home)
        .env("OPENCLAW_GATEWAY_TOKEN", "from-env-123")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\": true"));
}

#[test]
fn password_mode_and_generated_token_file() {
    let g = Gateway::start_with(Opts {
        token: None,
        extra: vec![
            "--auth".into(),
            "password".into(),
            "--password".into(),
            "pw-1".into(),
        ],
        ..Opts::default()
    });
    let o = ConnectOptions {
        password: Some("pw-1".into()),
        ..ConnectOptions::default()
    };
    let (_c, hello) = Client::connect(&g.url(), &o).unwrap();
    assert_eq!(hello["auth"]["method"], "password");
    let bad = ConnectOptions {
        password: Some("nope".into()),
        ..ConnectOptions::default()
    };
    let Err(ClientError::Rpc(e)) = Client::connect(&g.url(), &bad) else {
        panic!()
    };
    assert_eq!(e["details"]["code"], "AUTH_PASSWORD_MISMATCH");

    // No token anywhere: one is generated, stored 0600, and `auth-token` prints it.
    let g2 = Gateway::start_with(Opts {
        token: None,
        ..Opts::default()
    });
    let path = g2.state_dir.join("gateway-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
        .args(["gateway", "auth-token"])
        .env("HOME", &g2.home)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.len(), 43);
    let o = ConnectOptions {
        token: Some(token),
        ..ConnectOptions::default()
    };
    Client::connect(&g2.url(), &o).unwrap();
}

#[test]
fn remote_device_behind_a_trusted_proxy_is_not_paired_silently() {
    let cfg = "{ gateway: { trustedProxies: ['127.0.0.1'] } }";
    let g = Gateway::start_with(Opts {
        config: Some(cfg),
        ..Opts::default()
    });
    let remote = vec![("X-Forwarded-For".to_string(), "100.64.1.2".to_string())];
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        device: Some(DeviceIdentity::random()),
        headers: remote.clone(),
        ..ConnectOptions::default()
    };
    let Err(ClientError::Rpc(e)) = Client::connect(&g.url(), &o) else {
        panic!("remote device was let in")
    };
    assert_eq!(e["code"], "NOT_PAIRED");
    assert_eq!(e["details"]["code"], "PAIRING_REQUIRED");
    assert!(!g.state_dir.join("devices/paired.json").exists());
    // The same remote client without a device gets a zero-scope socket (not the CLI's scopes).
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        headers: remote,
        ..ConnectOptions::default()
    };
    let (mut c, hello) = Client::connect(&g.url(), &o).unwrap();
    assert_eq!(hello["auth"]["scopes"], json!([]));
    assert_eq!(c.call("health", json!({})).unwrap()["ok"], true);
}

#[test]
fn forwarded_headers_only_from_listed_proxies_and_the_client_is_the_forwarded_address() {
    // Only 10.9.9.9 is a trusted proxy: forwarding headers straight from 127.0.0.1 are refused.
    let g = Gateway::start_with(Opts {
        config: Some("{ gateway: { trustedProxies: ['10.9.9.9'] } }"),
        ..Opts::default()
    });
    let xff = vec![("X-Forwarded-For".to_string(), "100.64.1.2".to_string())];
    let (code, _) = g
        .http("GET", "/healthz", &[("X-Forwarded-For", "100.64.1.2")])
        .unwrap();
    assert_eq!(code, 403);
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        headers: xff.clone(),
        ..ConnectOptions::default()
    };
    assert!(
        Client::connect(&g.url(), &o).is_err(),
        "untrusted proxy upgraded"
    );
    // Behind a trusted proxy (CIDR form), presence shows the forwarded client, not the proxy.
    let g = Gateway::start_with(Opts {
        config: Some("{ gateway: { trustedProxies: ['127.0.0.0/8'] } }"),
        ..Opts::default()
    });
    let o = ConnectOptions {
        token: Some(g.token.clone()),
        client_id: "openclaw-tui".into(),
        client_mode: "ui".into(),
        headers: vec![(
            "X-Forwarded-For".to_string(),
            "1.1.1.1, 198.51.100.7, 127.0.0.5".to_string(),
        )],
        ..ConnectOptions::default()
    };
    let (ui, _) = Client::connect(&g.url(), &o).unwrap();
    let mut admin = g.connect(&["operator.admin"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let list = admin.call("system-presence", json!({})).unwrap();
        if let Some(row) = list.as_array().unwrap().iter().find(|e| e["mode"] == "ui") {
            assert_eq!(row["ip"], "198.51.100.7", "{row}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ui row never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ui.close();
}

#[test]
fn repeated_wrong_secrets_from_a_remote_client_are_rate_limited() {
    let g = Gateway::start_with(Opts {
        config: Some("{ gateway: { trustedProxies: ['127.0.0.1'] } }"),
        ..Opts::default()
    });
    let from = |ip: &str, token: &str| ConnectOptions {
        token: Some(token.to_string()),
        headers: vec![("X-Forwarded-For".to_string(), ip.to_string())],
        ..ConnectOptions::default()
    };
    let code_of = |o: &ConnectOptions| match Client::connect(&g.url(), o) {
        Err(ClientError::Rpc(e)) => e["details"]["code"].as_str().unwrap_or("").to_string(),
        Err(e) => panic!("{e}"),
        Ok(_) => "ok".to_string(),
    };
    let codes: Vec<String> = (0..30)
        .map(|_| code_of(&from("198.51.100.9", "wrong")))
        .collect();
    let mismatches = codes.iter().filter(|c| *c == "AUTH_TOKEN_MISMATCH").count();
    assert!(mismatches <= 10, "{codes:?}");
    assert!(codes.iter().any(|c| c == "AUTH_RATE_LIMITED"), "{codes:?}");
    // While locked out even the right token is refused, with a retry hint.
    let o = from("198.51.100.9", &g.token);
    let locked = (0..4).all(|_| code_of(&o) == "AUTH_RATE_LIMITED");
    assert!(locked, "the right token got in during the lockout");
    if let Err(ClientError::Rpc(e)) = Client::connect(&g.url(), &o) {
        assert_eq!(e["retryable"], true, "{e}");
        assert!(e["retryAfterMs"].as_u64().unwrap() > 0, "{e}");
        assert_eq!(
            e["details"]["recommendedNextStep"], "wait_then_retry",
            "{e}"
        );
    }
    // Other clients are unaffected: another remote address, and loopback (exempt).
    assert_eq!(code_of(&from("198.51.100.10", &g.token)), "ok");
    for _ in 0..12 {
        let _ = code_of(&ConnectOptions {
            token: Some("wrong".into()),
            ..ConnectOptions::default()
        });
    }
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
    // A remote client behind the proxy cannot escape the lockout by claiming loopback
    // (or by hiding its address behind a hop the gateway cannot read): only direct local
    // connections are exempt.
    let spoofed: Vec<String> = ["127.0.0.1", "127.0.0.1, unknown"]
        .iter()
        .cycle()
        .take(30)
        .map(|xff| code_of(&from(xff, "wrong")))
        .collect();
    assert!(
        spoofed.iter().any(|c| c == "AUTH_RATE_LIMITED"),
        "{spoofed:?}"
    );
    g.connect(&["operator.read"])
        .call("health", json!({}))
        .unwrap();
}

#[test]
fn a_same_host_proxy_is_remote_by_host_or_any_forwarding_header() {
    // A loopback peer is only local with a loopback Host and no forwarding header of any
    // kind: nginx keeping the public Host, stunnel, `ssh -R`, a proxy adding only
    // X-Forwarded-Proto must not get silent pairing or the CLI's scopes.
    let g = Gateway::start("uring");
    for headers in [
        vec![("Host", "gw.example.com")],
        vec![("X-Forwarded-Proto", "https")],
        vec![("X-Forwarded-Host", "gw.example.com")],
    ] {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let o = ConnectOptions {
            token: Some(g.token.clone()),
            device: Some(DeviceIdentity::random()),
            headers: headers.clone(),
            ..ConnectOptions::default()
        };
        let Err(ClientError::Rpc(e)) = Client::connect(&g.url(), &o) else {
            panic!("{headers:?}: a proxied device was paired silently")
        };
        assert_eq!(e["details"]["code"], "PAIRING_REQUIRED", "{headers:?}: {e}");
        let o = ConnectOptions {
            token: Some(g.token.clone()),
            scopes: vec!["operator.admin".into()],
            headers: headers.clone(),
            ..ConnectOptions::default()
        };
        let (_, hello) = Client::connect(&g.url(), &o).unwrap();
        assert_eq!(hello["auth"]["scopes"], json!([]), "{headers:?}");
    }
    // The direct local CLI keeps its scopes (Host 127.0.0.1:port, and `localhost`).
    for host in [None, Some("localhost")] {
        let o = ConnectOptions {
            token: Some(g.token.clone()),
            scopes: vec!["operator.admin".into()],
            headers: host
                .map(|h| vec![("Host".to_string(), h.to_string())])
                .unwrap_or_default(),
            ..ConnectOptions::default()
        };
        let (_, hello) = Client::connect(&g.url(), &o).unwrap();
        assert_eq!(
            hello["auth"]["scopes"],
            json!(["operator.admin"]),
            "{host:?}"
        );
    }
}

#[test]
fn an_unreadable_stored_token_or_an_empty_flag_secret_is_a_startup_error() {
    let home = temp_dir("cfg-token");
    // `gateway-token` exists but cannot be read as a file: never silently replaced.
    std::fs::create_dir_all(home.join(".openclaw/gateway-token")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
        .args(["gateway", "run", "--port", "0"])
        .env("HOME", &home)
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_GATEWAY_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway-token"), "{err}");
    // `--token ""` (an unset shell variable) is not an empty secret.
    for flag in ["--token", "--password"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawgate"))
            .args(["gateway", "run", "--port", "0", "--bind", "lan", flag, ""])
            .env("HOME", &home)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is empty"),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
