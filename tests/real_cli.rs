#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real OpenClaw CLI (npm `openclaw@2026.9.6`, installed by scripts/setup-test-peers.sh)
//! against clawgate. Under CI=true a missing CLI fails these tests instead of skipping them.
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{real_cli, temp_dir, Gateway};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cli: &Path, home: &Path, args: &[&str]) -> Out {
    run_with(cli, home, args, &[])
}

/// [`run`] with extra environment variables (which replace the removed ones).
fn run_with(cli: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let o = Command::new(cli)
        .args(args)
        .env("HOME", home)
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_STATE_DIR")
        .env_remove("OPENCLAW_CONFIG_PATH")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run openclaw");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).to_string(),
        stderr: String::from_utf8_lossy(&o.stderr).to_string(),
    }
}

fn json_of(o: &Out) -> Value {
    let s = o.stdout.trim();
    let start = s.find(['{', '[']).unwrap_or(0);
    serde_json::from_str(&s[start..])
        .unwrap_or_else(|e| panic!("not JSON ({e}): stdout={} stderr={}", o.stdout, o.stderr))
}

#[test]
fn real_cli_gateway_calls_succeed() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let url = g.url();
    let home = temp_dir("cli-home");
    for method in [
        "health",
        "status",
        "system-presence",
        "sessions.list",
        "config.get",
        "models.list",
        "agents.list",
    ] {
        let o = run(
            &cli,
            &home,
            &[
                "gateway", "call", method, "--url", &url, "--token", &g.token, "--json",
            ],
        );
        assert_eq!(
            o.code, 0,
            "{method}: stdout={} stderr={}",
            o.stdout, o.stderr
        );
        let v = json_of(&o);
        match method {
            "health" => assert_eq!(v["ok"], true),
            "system-presence" => assert!(v
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["mode"] == "gateway"))),
            "sessions.list" => assert!(v["sessions"].is_array()),
            "models.list" => assert!(v["models"].is_array()),
            "agents.list" => assert!(v["agents"].is_array()),
            "config.get" => assert!(v.get("hash").is_some()),
            _ => assert!(v.is_object()),
        }
    }
}

#[test]
fn real_cli_health_and_probe_succeed() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let url = g.url();
    let home = temp_dir("cli-home");
    let o = run(
        &cli,
        &home,
        &["gateway", "health", "--url", &url, "--token", &g.token],
    );
    assert_eq!(o.code, 0, "health: stdout={} stderr={}", o.stdout, o.stderr);
    let o = run(
        &cli,
        &home,
        &["gateway", "probe", "--url", &url, "--token", &g.token],
    );
    assert_eq!(o.code, 0, "probe: stdout={} stderr={}", o.stdout, o.stderr);
    let o = run(
        &cli,
        &home,
        &[
            "gateway",
            "call",
            "health",
            "--url",
            &url,
            "--token",
            "wrong-token",
            "--json",
        ],
    );
    assert_ne!(o.code, 0, "a wrong token must fail: {}", o.stdout);
    assert!(
        format!("{}{}", o.stdout, o.stderr).contains("token mismatch"),
        "{} {}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn real_cli_signed_device_connect_pairs_and_reconnects_with_its_device_token() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let port = g.port.to_string();
    let home = temp_dir("cli-home");
    // `system presence` (a read-write CLI command) creates the CLI's device identity, signs the
    // connect (the shared secret travels as --password on loopback, which token mode accepts)
    // and stores the device token from hello-ok. `gateway call` is read-only and never does.
    let o = run(
        &cli,
        &home,
        &[
            "system",
            "presence",
            "--port",
            &port,
            "--password",
            &g.token,
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    let paired = std::fs::read_to_string(g.state_dir.join("devices/paired.json"))
        .expect("pairing persisted");
    let reg: Value = serde_json::from_str(&paired).unwrap();
    assert_eq!(reg["devices"].as_array().map(Vec::len), Some(1), "{paired}");
    // No credentials at all now: only the stored device token (auth.deviceToken + signed
    // device) can authenticate this call.
    let o = run(
        &cli,
        &home,
        &["gateway", "call", "status", "--port", &port, "--json"],
    );
    assert_eq!(
        o.code, 0,
        "reconnect with device token: stdout={} stderr={}",
        o.stdout, o.stderr
    );
    assert!(json_of(&o)["sessions"].is_object());
    // A signed connect with the shared secret returns the same token (it is not rotated), so
    // the stored one keeps working.
    let o = run(
        &cli,
        &home,
        &[
            "gateway",
            "call",
            "status",
            "--port",
            &port,
            "--password",
            &g.token,
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    let o = run(
        &cli,
        &home,
        &["gateway", "call", "health", "--port", &port, "--json"],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
}

#[test]
fn real_cli_runs_a_chat_against_the_offline_agent() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let url = g.url();
    let home = temp_dir("cli-home");
    let params = r#"{"sessionKey":"main","message":"hello from the real cli","idempotencyKey":"cli-chat-1"}"#;
    let o = run(
        &cli,
        &home,
        &[
            "gateway",
            "call",
            "chat.send",
            "--params",
            params,
            "--url",
            &url,
            "--token",
            &g.token,
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    assert_eq!(json_of(&o)["runId"], "cli-chat-1");
    let params = r#"{"runId":"cli-chat-1","timeoutMs":10000}"#;
    let o = run(
        &cli,
        &home,
        &[
            "gateway",
            "call",
            "agent.wait",
            "--params",
            params,
            "--url",
            &url,
            "--token",
            &g.token,
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    assert_eq!(json_of(&o)["status"], "ok");
    let params = r#"{"sessionKey":"main"}"#;
    let o = run(
        &cli,
        &home,
        &[
            "gateway",
            "call",
            "chat.history",
            "--params",
            params,
            "--url",
            &url,
            "--token",
            &g.token,
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    let h = json_of(&o);
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{h}");
    let reply = msgs[1]["content"][0]["text"].as_str().unwrap();
    assert!(reply.contains("hello from the real cli"), "{reply}");
}

/// `openclaw agent --message …` (the CLI's everyday command) prints the agent's reply.
#[test]
fn real_cli_agent_command_prints_the_reply() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let home = temp_dir("cli-home");
    let url = g.url();
    let env = [
        ("OPENCLAW_GATEWAY_URL", url.as_str()),
        ("OPENCLAW_GATEWAY_TOKEN", g.token.as_str()),
    ];
    let agent = |args: &[&str]| run_with(&cli, &home, args, &env);
    let o = agent(&[
        "agent",
        "--agent",
        "main",
        "--message",
        "hello from openclaw agent",
    ]);
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("hello from openclaw agent"),
        "the reply was not printed: stdout={} stderr={}",
        o.stdout,
        o.stderr
    );
    let o = agent(&[
        "agent",
        "--agent",
        "main",
        "--message",
        "and as json",
        "--json",
    ]);
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    let v = json_of(&o);
    let text = v["result"]["payloads"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("and as json"), "{v}");
}

/// Commands that find the gateway from `~/.openclaw/openclaw.json`: `sessions archive`
/// (sessions.patch with expectedSessionId, confirmed by `archivedAt`) and `channels status`.
#[test]
fn real_cli_archives_a_session_and_reads_channel_status() {
    let Some(cli) = real_cli() else { return };
    let g = Gateway::start("uring");
    let home = temp_dir("cli-home");
    std::fs::create_dir_all(home.join(".openclaw")).unwrap();
    std::fs::write(
        home.join(".openclaw/openclaw.json"),
        format!(
            r#"{{"gateway":{{"mode":"local","port":{},"auth":{{"mode":"token","token":"{}"}}}}}}"#,
            g.port, g.token
        ),
    )
    .unwrap();
    let mut c = g.connect(&["operator.read", "operator.write", "operator.admin"]);
    c.call(
        "chat.send",
        serde_json::json!({"sessionKey": "to-archive", "message": "hi", "idempotencyKey": "arch-1"}),
    )
    .unwrap();
    let o = run(
        &cli,
        &home,
        &["sessions", "archive", "agent:main:to-archive"],
    );
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    let listed = c
        .call("sessions.list", serde_json::json!({"archived": true}))
        .unwrap();
    let rows = listed["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["key"], "agent:main:to-archive");
    assert!(rows[0]["archivedAt"].is_i64(), "{listed}");
    let o = run(&cli, &home, &["channels", "status"]);
    assert_eq!(o.code, 0, "stdout={} stderr={}", o.stdout, o.stderr);
    assert!(
        !o.stdout.contains("unknown method") && !o.stderr.contains("unknown method"),
        "stdout={} stderr={}",
        o.stdout,
        o.stderr
    );
}
