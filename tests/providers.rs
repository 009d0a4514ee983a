//! Agent providers against real sockets: local HTTP servers (std threads on 127.0.0.1:0)
//! speak the real OpenAI Chat Completions and Anthropic Messages SSE formats, and
//! `stream_reply` runs inside a monoio runtime.

// Test helpers outside `#[test]` fns are not covered by clippy.toml's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clawgate::agents::{
    resolve_model, stream_reply, Abort, Api, ChatMessage, ModelTarget, OfflineAgent, ProviderEvent,
};
use clawgate::config::{Config, Paths};
use serde_json::{json, Value};

// ---------------------------------------------------------------- test server

/// What the server received.
#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

enum Step {
    Write(Vec<u8>),
    /// Write byte by byte-ish: pieces of this size, with a flush each.
    Trickle(Vec<u8>, usize),
    Sleep(Duration),
}

fn read_request<S: Read>(s: &mut S) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

/// Serve one connection with `steps`; returns `http://127.0.0.1:PORT` and the request.
fn serve(steps: Vec<Step>) -> (String, mpsc::Receiver<Recorded>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let Some(req) = read_request(&mut s) else {
            return;
        };
        let _ = tx.send(req);
        for step in steps {
            let ok = match step {
                Step::Write(b) => s.write_all(&b).and_then(|_| s.flush()).is_ok(),
                Step::Trickle(b, n) => b.chunks(n.max(1)).all(|c| {
                    let ok = s.write_all(c).and_then(|_| s.flush()).is_ok();
                    std::thread::sleep(Duration::from_micros(300));
                    ok
                }),
                Step::Sleep(d) => {
                    std::thread::sleep(d);
                    true
                }
            };
            if !ok {
                return; // the client went away (abort / timeout)
            }
        }
    });
    (base, rx)
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

const SSE_CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";

/// A chunked SSE response, one HTTP chunk per SSE event.
fn sse_chunked(events: &[String]) -> Vec<Step> {
    let mut steps = vec![Step::Write(SSE_CHUNKED_HEAD.as_bytes().to_vec())];
    for e in events {
        steps.push(Step::Write(chunk(e)));
    }
    steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
    steps
}

fn json_response(status: &str, body: &str) -> Vec<Step> {
    vec![Step::Write(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )]
}

// ---------------------------------------------------------------- realistic streams

const OPENAI_TEXT: &str = "Hello! How can I assist you today?";

fn openai_chunk(delta: &str, finish: &str) -> String {
    format!(
        r#"data: {{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}],"usage":null}}"#
    ) + "\n\n"
}

fn openai_events() -> Vec<String> {
    let mut ev = vec![openai_chunk(
        r#"{"role":"assistant","content":"","refusal":null}"#,
        "null",
    )];
    for piece in [
        "Hello", "!", " How", " can", " I", " assist", " you", " today", "?",
    ] {
        ev.push(openai_chunk(
            &json!({ "content": piece }).to_string(),
            "null",
        ));
    }
    ev.push(openai_chunk("{}", "\"stop\""));
    ev.push(
        r#"data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#
            .to_string()
            + "\n\n",
    );
    ev.push("data: [DONE]\n\n".to_string());
    ev
}

const ANTHROPIC_TEXT: &str = "Hello! I'm Claude.";

fn anthropic_stream() -> String {
    let pairs = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"! I'm"}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" Claude."}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    pairs
        .iter()
        .map(|(e, d)| format!("event: {e}\r\ndata: {d}\r\n\r\n"))
        .collect()
}

// ---------------------------------------------------------------- helpers

fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

static CFG_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Load `text` through the real config loader (JSON5, `${VAR}` via `env`).
fn config_with_env(text: &str, env: &[(&str, &str)]) -> Config {
    let n = CFG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("clawgate-providers-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openclaw.json");
    std::fs::write(&path, text).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = clawgate::config::load(
        Paths {
            state_dir: dir.clone(),
            config_path: path,
        },
        &lookup,
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    cfg
}

fn config(text: &str) -> Config {
    config_with_env(text, &[])
}

fn target(provider_json: &str, model_ref: &str) -> ModelTarget {
    let cfg = config(&format!("{{ models: {{ providers: {provider_json} }} }}"));
    resolve_model(&cfg, Some(model_ref)).unwrap()
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", text)]
}

/// Run `stream_reply` on a fresh runtime and collect the events.
fn collect(t: &ModelTarget, msgs: &[ChatMessage], timeout: Duration) -> Vec<ProviderEvent> {
    rt().block_on(async {
        let mut out = Vec::new();
        stream_reply(t, msgs, timeout, &Abort::new(), &mut |e| out.push(e)).await;
        out
    })
}

/// Deltas concatenated; asserts exactly one terminal event and that it is last.
fn text_and_end(events: &[ProviderEvent]) -> (String, &ProviderEvent) {
    let terminal: Vec<_> = events.iter().filter(|e| e.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {events:?}");
    let last = events.last().unwrap();
    assert!(last.is_terminal(), "terminal event last: {events:?}");
    let text = events
        .iter()
        .filter_map(|e| match e {
            ProviderEvent::Delta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    (text, last)
}

fn expect_error(events: &[ProviderEvent]) -> (&'static str, String) {
    match text_and_end(events).1 {
        ProviderEvent::Error { kind, message } => (kind, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- OpenAI

#[test]
fn openai_streams_realistic_sse_and_sends_the_right_request() {
    let (base, rx) = serve(sse_chunked(&openai_events()));
    // The key comes through ${VAR} substitution by the real config loader.
    let cfg = config_with_env(
        &format!(
            r#"{{ models: {{ providers: {{ openai: {{ baseUrl: "{base}/v1", apiKey: "${{OPENAI_API_KEY}}", headers: {{ "X-Title": "clawgate" }} }} }} }} }}"#
        ),
        &[("OPENAI_API_KEY", "sk-test-123")],
    );
    let t = resolve_model(&cfg, Some("openai/gpt-4o-mini")).unwrap();
    assert_eq!(t.api(), Api::OpenAiCompletions);
    let msgs = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    let events = collect(&t, &msgs, Duration::from_secs(5));
    let (text, end) = text_and_end(&events);
    assert_eq!(text, OPENAI_TEXT);
    assert_eq!(
        end,
        &ProviderEvent::Done {
            stop_reason: Some("stop".into()),
            usage: Some(json!({"input": 19, "output": 10}))
        }
    );
    // Deltas arrive one per chunk, not merged.
    assert_eq!(events.len(), 10);

    let req = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-title"), Some("clawgate"));
    assert!(req.header("host").unwrap().starts_with("127.0.0.1:"));
    let body = req.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["messages"],
        json!([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}])
    );
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[test]
fn a_model_marked_without_streaming_usage_gets_no_stream_options() {
    // OpenClaw's `compat.supportsUsageInStreaming: false`, for servers that reject the field.
    let (base, rx) = serve(sse_chunked(&openai_events()));
    let t = target(
        &format!(
            r#"{{ strict: {{ baseUrl: "{base}/v1", models: [{{ id: "m", compat: {{ supportsUsageInStreaming: false }} }}] }} }}"#
        ),
        "strict/m",
    );
    let (text, _) = text_and_end(&collect(&t, &user("Hi"), Duration::from_secs(5)));
    assert_eq!(text, OPENAI_TEXT);
    let body = rx.recv_timeout(Duration::from_secs(1)).unwrap().json();
    assert!(body.get("stream_options").is_none(), "{body}");
    assert_eq!(body["stream"], true);
}

#[test]
fn openai_sse_survives_tiny_reads() {
    // The whole stream trickles out 3 bytes at a time: chunk headers, CRLFs and SSE lines
    // all split across reads.
    let mut raw = Vec::new();
    for s in sse_chunked(&openai_events()) {
        if let Step::Write(b) = s {
            raw.extend(b);
        }
    }
    let (base, _rx) = serve(vec![Step::Trickle(raw, 3)]);
    let t = target(
        &format!(r#"{{ vllm: {{ baseUrl: "{base}/v1" }} }}"#),
        "vllm/qwen",
    );
    let events = collect(&t, &user("Hi"), Duration::from_secs(5));
    let (text, end) = text_and_end(&events);
    assert_eq!(text, OPENAI_TEXT);
    assert!(matches!(end, ProviderEvent::Done { .. }));
}

#[test]
fn openai_compatible_without_key_sends_no_authorization() {
    // Ollama style: no apiKey, Content-Length (not chunked) SSE body ending in [DONE].
    let body: String = [
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hey\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ]
    .concat();
    let (base, rx) = serve(vec![Step::Write(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )]);
    let t = target(
        &format!(r#"{{ ollama: {{ baseUrl: "{base}/v1" }} }}"#),
        "ollama/llama3.2",
    );
    let events = collect(&t, &user("Hi"), Duration::from_secs(5));
    let (text, end) = text_and_end(&events);
    assert_eq!(text, "Hey there");
    assert_eq!(
        end,
        &ProviderEvent::Done {
            stop_reason: Some("stop".into()),
            usage: None
        }
    );
    let req = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.json()["model"], "llama3.2");
}

#[test]
fn openai_non_streaming_json_answer_is_accepted() {
    let (base, _rx) = serve(json_response(
        "200 OK",
        r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Whole reply."},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
    ));
    let t = target(
        &format!(r#"{{ local: {{ baseUrl: "{base}" }} }}"#),
        "local/m",
    );
    let events = collect(&t, &user("Hi"), Duration::from_secs(5));
    let (text, end) = text_and_end(&events);
    assert_eq!(text, "Whole reply.");
    assert!(
        matches!(end, ProviderEvent::Done { usage: Some(u), .. } if u == &json!({"input":4,"output":2}))
    );
}

#[test]
fn openai_mid_stream_error_and_truncated_stream() {
    let (base, _rx) = serve(sse_chunked(&[
        openai_chunk(r#"{"content":"par"}"#, "null"),
        "data: {\"error\":{\"message\":\"Provider returned error\",\"code\":502}}\n\n".into(),
    ]));
    let t = target(
        &format!(r#"{{ openrouter: {{ baseUrl: "{base}/api/v1", apiKey: "k" }} }}"#),
        "openrouter/meta-llama/llama-3.1-8b",
    );
    assert_eq!(t.model, "meta-llama/llama-3.1-8b");
    let events = collect(&t, &user("Hi"), Duration::from_secs(5));
    let (kind, msg) = expect_error(&events);
    assert_eq!(kind, "unknown");
    assert!(msg.contains("Provider returned error"), "{msg}");
    assert_eq!(events[0], ProviderEvent::Delta("par".into()));

    // The body ends (cleanly) before any finish_reason or [DONE].
    let (base, _rx) = serve(sse_chunked(&[openai_chunk(r#"{"content":"par"}"#, "null")]));
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/x",
    );
    let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(5)));
    assert_eq!(kind, "unknown");
    assert!(msg.contains("ended before"), "{msg}");
}

// ---------------------------------------------------------------- Anthropic

#[test]
fn anthropic_streams_realistic_events_and_sends_the_right_request() {
    // Body delimited by connection close (no length, not chunked), CRLF line endings.
    let (base, rx) = serve(vec![
        Step::Write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nrequest-id: req_1\r\n\r\n"
                .to_vec(),
        ),
        Step::Trickle(anthropic_stream().into_bytes(), 64),
    ]);
    let t = target(
        &format!(
            r#"{{ anthropic: {{ baseUrl: "{base}", apiKey: "sk-ant-test", models: [{{ id: "claude-sonnet-4-5", maxTokens: 1024 }}] }} }}"#
        ),
        "anthropic/claude-sonnet-4-5",
    );
    assert_eq!(t.api(), Api::AnthropicMessages);
    let msgs = vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Who are you?"),
    ];
    let events = collect(&t, &msgs, Duration::from_secs(5));
    let (text, end) = text_and_end(&events);
    assert_eq!(text, ANTHROPIC_TEXT);
    assert_eq!(
        end,
        &ProviderEvent::Done {
            stop_reason: Some("end_turn".into()),
            usage: Some(json!({"input": 25, "output": 12}))
        }
    );
    let req = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(req.header("authorization"), None);
    let body = req.json();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["messages"],
        json!([
            {"role":"user","content":"Hi"},
            {"role":"assistant","content":"Hello."},
            {"role":"user","content":"Who are you?"}
        ])
    );
}

#[test]
fn anthropic_defaults_and_v1_base() {
    let (base, rx) = serve(sse_chunked(&[anthropic_stream()]));
    // Custom provider name with an explicit api, base already ending in /v1, no maxTokens.
    let t = target(
        &format!(
            r#"{{ claude: {{ baseUrl: "{base}/v1/", api: "anthropic-messages", apiKey: "k" }} }}"#
        ),
        "claude/claude-haiku-4-5",
    );
    let events = collect(&t, &user("Hi"), Duration::from_secs(5));
    assert_eq!(text_and_end(&events).0, ANTHROPIC_TEXT);
    let req = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.json()["max_tokens"], 4096);
    assert!(req.json().get("system").is_none());
}

#[test]
fn anthropic_error_event_maps_overloaded_to_rate_limit() {
    let stream = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
    ];
    let (base, _rx) = serve(sse_chunked(&stream.map(String::from)));
    let t = target(
        &format!(r#"{{ anthropic: {{ baseUrl: "{base}", apiKey: "k" }} }}"#),
        "anthropic/m",
    );
    let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(5)));
    assert_eq!(kind, "rate_limit");
    assert!(msg.contains("Overloaded"), "{msg}");
}

// ---------------------------------------------------------------- HTTP errors

#[test]
fn upstream_http_errors_map_to_kinds() {
    let cases: [(&str, &str, &str, &str, &[&str]); 6] = [
        (
            "openai",
            "401 Unauthorized",
            r#"{"error":{"message":"Incorrect API key provided: sk-bad. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            "unknown",
            &["401", "Incorrect API key provided"],
        ),
        (
            "anthropic",
            "401 Unauthorized",
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            "unknown",
            &["401", "invalid x-api-key"],
        ),
        (
            "openai",
            "429 Too Many Requests",
            r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            "rate_limit",
            &["429", "Rate limit reached"],
        ),
        (
            "anthropic",
            "429 Too Many Requests",
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
            "rate_limit",
            &["429"],
        ),
        (
            "openai",
            "500 Internal Server Error",
            r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
            "unknown",
            &["500", "server had an error"],
        ),
        (
            "openai",
            "400 Bad Request",
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            "context_length",
            &["400", "maximum context length"],
        ),
    ];
    for (provider, status, body, want_kind, want_in_msg) in cases {
        let (base, _rx) = serve(json_response(status, body));
        let t = target(
            &format!(r#"{{ {provider}: {{ baseUrl: "{base}/v1", apiKey: "sk-bad" }} }}"#),
            &format!("{provider}/m"),
        );
        let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(5)));
        assert_eq!(kind, want_kind, "{provider} {status}: {msg}");
        for w in want_in_msg {
            assert!(msg.contains(w), "{provider} {status}: {msg:?} lacks {w:?}");
        }
        assert!(
            !msg.contains("sk-bad\""),
            "the key is not echoed by us: {msg}"
        );
    }
    // A plain-text 500 with a chunked body.
    let (base, _rx) = serve(vec![
        Step::Write(b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        Step::Write(chunk("upstream connect error")),
        Step::Write(b"0\r\n\r\n".to_vec()),
    ]);
    let t = target(
        &format!(r#"{{ vllm: {{ baseUrl: "{base}/v1" }} }}"#),
        "vllm/m",
    );
    let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(5)));
    assert_eq!(kind, "unknown");
    assert!(
        msg.contains("502") && msg.contains("upstream connect error"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- timeouts, refusal to connect

#[test]
fn hung_server_times_out() {
    // Accepts and reads the request, then says nothing.
    let (base, _rx) = serve(vec![Step::Sleep(Duration::from_secs(3))]);
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/m",
    );
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let events = collect(&t, &user("Hi"), timeout);
    let took = start.elapsed();
    let (kind, msg) = expect_error(&events);
    assert_eq!(kind, "timeout", "{msg}");
    assert!(msg.contains(&base), "names the URL: {msg}");
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < timeout + Duration::from_millis(700), "{took:?}");
}

#[test]
fn stalled_stream_times_out_between_chunks() {
    let mut steps = sse_chunked(&openai_events()[..3]);
    steps.pop(); // no terminating chunk
    steps.push(Step::Sleep(Duration::from_secs(3)));
    let (base, _rx) = serve(steps);
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/m",
    );
    let start = Instant::now();
    let events = collect(&t, &user("Hi"), Duration::from_millis(300));
    let took = start.elapsed();
    let (kind, _) = expect_error(&events);
    assert_eq!(kind, "timeout");
    assert_eq!(text_and_end(&events).0, "Hello!");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn connection_refused_names_the_url() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (scheme, provider) in [
        ("http", "openai"),
        ("https", "openai"),
        ("http", "anthropic"),
    ] {
        let t = target(
            &format!(r#"{{ {provider}: {{ baseUrl: "{scheme}://127.0.0.1:{port}/v1" }} }}"#),
            &format!("{provider}/m"),
        );
        let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(2)));
        assert_eq!(kind, "unknown");
        assert!(
            msg.contains(&format!("{scheme}://127.0.0.1:{port}/v1/")),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}

#[test]
fn https_base_url_goes_through_tls() {
    // A plain-HTTP server behind an https:// URL: the TLS handshake must fail, clearly.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf); // the ClientHello
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "https://{addr}/v1", apiKey: "k" }} }}"#),
        "openai/m",
    );
    let (kind, msg) = expect_error(&collect(&t, &user("Hi"), Duration::from_secs(2)));
    assert_eq!(kind, "unknown");
    assert!(msg.contains("TLS"), "{msg}");
    assert!(
        msg.contains(&format!("https://{addr}/v1/chat/completions")),
        "{msg}"
    );
}

// ---------------------------------------------------------------- HTTPS (local rustls server)

/// A TLS server for `localhost` with a fresh self-signed cert; returns its port and a client
/// config trusting that cert.
fn tls_serve(
    response: Vec<u8>,
    close_notify: bool,
) -> (
    u16,
    std::sync::Arc<rustls::ClientConfig>,
    mpsc::Receiver<Recorded>,
) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((tcp, _)) = l.accept() else { return };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(conn) = rustls::ServerConnection::new(Arc::new(server)) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let Some(req) = read_request(&mut tls) else {
            return;
        };
        let _ = tx.send(req);
        let _ = tls.write_all(&response).and_then(|_| tls.flush());
        if close_notify {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        // Dropped: a bare TCP close when !close_notify.
    });
    (port, Arc::new(client), rx)
}

fn https_exchange(
    port: u16,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<(u16, Vec<u8>), String> {
    use clawgate::agents::http::{send, Request, Url};
    rt().block_on(async move {
        let url = Url::parse(&format!("https://localhost:{port}/v1/chat/completions"))?;
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        let req = Request {
            method: "POST",
            url: &url,
            headers: &headers,
            body: br#"{"stream":true}"#.to_vec(),
            tls,
        };
        let mut resp = send(req, Duration::from_secs(5))
            .await
            .map_err(|e| e.message)?;
        let body = resp
            .read_all(Duration::from_secs(5), 1 << 20)
            .await
            .map_err(|e| e.message)?;
        Ok((resp.status, body))
    })
}

#[test]
fn https_streams_through_rustls_with_chunked_body_and_close_notify() {
    let mut raw = SSE_CHUNKED_HEAD.as_bytes().to_vec();
    for e in openai_events() {
        raw.extend(chunk(&e));
    }
    raw.extend(b"0\r\n\r\n");
    let (port, client, rx) = tls_serve(raw, true);
    // `localhost` goes through the off-thread resolver (and may try ::1 first).
    let (status, body) = https_exchange(port, Some(client)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), openai_events().concat());
    let req = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("host"),
        Some(format!("localhost:{port}").as_str())
    );
    assert_eq!(req.body, br#"{"stream":true}"#);
}

#[test]
fn https_body_until_close_without_close_notify() {
    let body = anthropic_stream();
    let raw = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{body}");
    let (port, client, _rx) = tls_serve(raw.into_bytes(), false);
    let (status, got) = https_exchange(port, Some(client)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(got).unwrap(), body);
}

#[test]
fn https_verifies_certificates_against_the_built_in_roots() {
    let (port, _client, _rx) = tls_serve(Vec::new(), true);
    let err = https_exchange(port, None).unwrap_err();
    assert!(
        err.contains("TLS handshake") && err.contains("certificate"),
        "{err}"
    );
}

// ---------------------------------------------------------------- abort

/// Runs a stream and aborts it `after` into the run; returns (events, abort→return latency).
fn run_and_abort(t: &ModelTarget, msg: &str, after: Duration) -> (Vec<ProviderEvent>, Duration) {
    rt().block_on(async {
        let abort = Abort::new();
        let fired_at: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        {
            let abort = abort.clone();
            let fired_at = fired_at.clone();
            monoio::spawn(async move {
                monoio::time::sleep(after).await;
                fired_at.set(Some(Instant::now()));
                abort.abort();
            });
        }
        let events = RefCell::new(Vec::new());
        stream_reply(t, &user(msg), Duration::from_secs(5), &abort, &mut |e| {
            events.borrow_mut().push(e)
        })
        .await;
        let latency = fired_at.get().expect("aborted").elapsed();
        (events.into_inner(), latency)
    })
}

#[test]
fn abort_mid_stream_returns_promptly_without_done() {
    // One delta every 200 ms for 4 s.
    let mut steps = vec![Step::Write(SSE_CHUNKED_HEAD.as_bytes().to_vec())];
    for i in 0..20 {
        steps.push(Step::Write(chunk(&openai_chunk(
            &json!({ "content": format!("w{i} ") }).to_string(),
            "null",
        ))));
        steps.push(Step::Sleep(Duration::from_millis(200)));
    }
    let (base, _rx) = serve(steps);
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/m",
    );
    let (events, latency) = run_and_abort(&t, "Hi", Duration::from_millis(450));
    assert!(!events.is_empty(), "some deltas before the abort");
    assert!(events.iter().all(|e| !e.is_terminal()), "{events:?}");
    assert!(latency < Duration::from_millis(50), "{latency:?}");
}

#[test]
fn abort_while_waiting_for_the_response_head() {
    let (base, _rx) = serve(vec![Step::Sleep(Duration::from_secs(3))]);
    let t = target(
        &format!(r#"{{ anthropic: {{ baseUrl: "{base}" }} }}"#),
        "anthropic/m",
    );
    let (events, latency) = run_and_abort(&t, "Hi", Duration::from_millis(100));
    assert!(events.is_empty(), "{events:?}");
    assert!(latency < Duration::from_millis(50), "{latency:?}");
}

#[test]
fn already_aborted_emits_nothing() {
    let abort = Abort::new();
    abort.abort();
    let events = rt().block_on(async {
        let mut out = Vec::new();
        stream_reply(
            &ModelTarget::offline(),
            &user("hi"),
            Duration::from_secs(1),
            &abort,
            &mut |e| out.push(e),
        )
        .await;
        out
    });
    assert!(events.is_empty());
}

// ---------------------------------------------------------------- offline agent

#[test]
fn offline_reply_is_deterministic_word_by_word() {
    let t = ModelTarget::offline_with(OfflineAgent::with_delay(Duration::from_millis(1)));
    let msgs = vec![
        ChatMessage::new("user", "earlier"),
        ChatMessage::new("assistant", "ok"),
        ChatMessage::new("user", "What is the weather?"),
    ];
    let a = collect(&t, &msgs, Duration::from_secs(1));
    let b = collect(&t, &msgs, Duration::from_secs(1));
    assert_eq!(a, b);
    let (text, end) = text_and_end(&a);
    let want = "You said: \"What is the weather?\". I am clawgate's offline agent; configure models.providers to talk to a real model.";
    assert_eq!(text, want);
    assert_eq!(text, OfflineAgent::reply_text(&msgs));
    let words = want.split(' ').count();
    assert_eq!(a.len(), words + 1, "one delta per word");
    assert_eq!(a[0], ProviderEvent::Delta("You ".into()));
    assert_eq!(a[words - 1], ProviderEvent::Delta("model.".into()));
    assert_eq!(
        end,
        &ProviderEvent::Done {
            stop_reason: Some("stop".into()),
            usage: Some(json!({"input": 4, "output": words}))
        }
    );
}

#[test]
fn offline_default_delay_streams_over_time() {
    let t = ModelTarget::offline();
    let start = Instant::now();
    let events = collect(&t, &user("hi"), Duration::from_secs(1));
    let took = start.elapsed();
    let n = events.len() - 1;
    // (n-1) gaps of 10 ms
    assert!(
        took >= Duration::from_millis(10 * (n as u64 - 1)),
        "{took:?}"
    );
    assert!(matches!(events.last(), Some(ProviderEvent::Done { .. })));
}

#[test]
fn offline_slow_messages_are_abortable() {
    let t = ModelTarget::offline();
    let (events, latency) = run_and_abort(
        &t,
        "/slow please take your time",
        Duration::from_millis(500),
    );
    // 200 ms per token: the first token is immediate, then ~2 more before 500 ms.
    assert!((2..=4).contains(&events.len()), "{events:?}");
    assert!(events.iter().all(|e| matches!(e, ProviderEvent::Delta(_))));
    assert!(latency < Duration::from_millis(50), "{latency:?}");
}

#[test]
fn offline_error_hook() {
    let events = collect(
        &ModelTarget::offline(),
        &user("/error"),
        Duration::from_secs(1),
    );
    assert_eq!(
        events,
        vec![ProviderEvent::Error {
            message: "offline agent: simulated failure".into(),
            kind: "unknown"
        }]
    );
}

#[test]
fn works_on_io_uring_too() {
    // Optional: skip where io_uring is unavailable (old kernels, seccomp'd sandboxes).
    let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
    else {
        eprintln!("io_uring unavailable; skipped");
        return;
    };
    let (base, _rx) = serve(sse_chunked(&openai_events()));
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/m",
    );
    let events = rt.block_on(async {
        let mut out = Vec::new();
        stream_reply(
            &t,
            &user("Hi"),
            Duration::from_secs(5),
            &Abort::new(),
            &mut |e| out.push(e),
        )
        .await;
        out
    });
    assert_eq!(text_and_end(&events).0, OPENAI_TEXT);

    // Abort while a read is in flight (the in-flight op is cancelled on drop).
    let (base, _rx) = serve(vec![Step::Sleep(Duration::from_secs(2))]);
    let t = target(
        &format!(r#"{{ openai: {{ baseUrl: "{base}/v1" }} }}"#),
        "openai/m",
    );
    let start = Instant::now();
    let events = rt.block_on(async {
        let abort = Abort::new();
        let a2 = abort.clone();
        monoio::spawn(async move {
            monoio::time::sleep(Duration::from_millis(100)).await;
            a2.abort();
        });
        let mut out = Vec::new();
        stream_reply(&t, &user("Hi"), Duration::from_secs(5), &abort, &mut |e| {
            out.push(e)
        })
        .await;
        out
    });
    assert!(events.is_empty());
    assert!(start.elapsed() < Duration::from_millis(600));
}

// ---------------------------------------------------------------- resolve_model

#[test]
fn resolve_model_cases() {
    // Nothing configured → the offline agent.
    let empty = config("{}");
    let t = resolve_model(&empty, None).unwrap();
    assert_eq!(
        (t.provider.as_str(), t.model.as_str(), t.api()),
        ("clawgate", "offline", Api::Offline)
    );
    assert_eq!(t.model_ref(), "clawgate/offline");
    assert_eq!(
        resolve_model(&empty, Some("  ")).unwrap().api(),
        Api::Offline
    );
    assert_eq!(
        resolve_model(&empty, Some("offline")).unwrap().api(),
        Api::Offline
    );
    assert_eq!(
        resolve_model(&empty, Some("offline/anything"))
            .unwrap()
            .api(),
        Api::Offline
    );

    // Unknown provider → error naming it.
    let err = resolve_model(&empty, Some("openai/gpt-4o")).unwrap_err();
    assert!(
        err.contains("\"openai\"") && err.contains("models.providers.openai"),
        "{err}"
    );
    let err = resolve_model(&empty, Some("gpt-4o")).unwrap_err();
    assert!(err.contains("gpt-4o"), "{err}");

    let cfg = config_with_env(
        r#"{
          agents: { defaults: { model: { primary: "anthropic/claude-sonnet-4-5" } } },
          models: { providers: {
            openai: { apiKey: "${OPENAI_API_KEY}" },
            anthropic: { apiKey: "sk-ant" },
            ollama: { baseUrl: "http://127.0.0.1:11434/v1", models: [{ id: "llama3.2", name: "Llama" }] },
            openrouter: { baseUrl: "https://openrouter.ai/api/v1", apiKey: "or" },
            vllm: { baseUrl: "http://127.0.0.1:8000/v1" },
            custom: { baseUrl: "https://llm.example.com/v1", api: "openai-responses" },
            claudeproxy: { baseUrl: "https://proxy.example.com", api: "anthropic-messages" },
            mixed: { baseUrl: "http://127.0.0.1:1/v1", models: [{ id: "a", api: "anthropic-messages" }] },
            weird: { baseUrl: "http://127.0.0.1:1", api: "google-generative-ai" },
            nourl: { apiKey: "x" },
            badurl: { baseUrl: "ftp://x" },
          } },
        }"#,
        &[("OPENAI_API_KEY", "sk-env")],
    );
    // None → agents.defaults.model.primary.
    let t = resolve_model(&cfg, None).unwrap();
    assert_eq!(
        (t.provider.as_str(), t.model.as_str(), t.api()),
        ("anthropic", "claude-sonnet-4-5", Api::AnthropicMessages)
    );
    let r = t.remote().unwrap();
    assert_eq!(r.base_url.to_string(), "https://api.anthropic.com/");
    assert_eq!(r.api_key.as_deref(), Some("sk-ant"));
    assert!(
        !format!("{t:?}").contains("sk-ant"),
        "Debug redacts the key"
    );

    let t = resolve_model(&cfg, Some("openai/gpt-4o-mini")).unwrap();
    assert_eq!(t.api(), Api::OpenAiCompletions);
    let r = t.remote().unwrap();
    assert_eq!(r.base_url.to_string(), "https://api.openai.com/v1");
    assert_eq!(
        r.api_key.as_deref(),
        Some("sk-env"),
        "${{VAR}} substituted by the loader"
    );

    let t = resolve_model(&cfg, Some("ollama/llama3.2")).unwrap();
    assert_eq!(
        (t.api(), t.remote().unwrap().api_key.clone()),
        (Api::OpenAiCompletions, None)
    );
    // A bare model id found in a provider's models list.
    let t = resolve_model(&cfg, Some("llama3.2")).unwrap();
    assert_eq!(
        (t.provider.as_str(), t.model.as_str()),
        ("ollama", "llama3.2")
    );

    let t = resolve_model(&cfg, Some("openrouter/anthropic/claude-3.5-sonnet")).unwrap();
    assert_eq!(
        (t.provider.as_str(), t.model.as_str(), t.api()),
        (
            "openrouter",
            "anthropic/claude-3.5-sonnet",
            Api::OpenAiCompletions
        )
    );
    assert_eq!(
        resolve_model(&cfg, Some("vllm/qwen")).unwrap().api(),
        Api::OpenAiCompletions
    );
    assert_eq!(
        resolve_model(&cfg, Some("custom/m")).unwrap().api(),
        Api::OpenAiCompletions
    );
    assert_eq!(
        resolve_model(&cfg, Some("claudeproxy/m")).unwrap().api(),
        Api::AnthropicMessages
    );
    assert_eq!(
        resolve_model(&cfg, Some("mixed/a")).unwrap().api(),
        Api::AnthropicMessages
    );
    assert_eq!(
        resolve_model(&cfg, Some("mixed/b")).unwrap().api(),
        Api::OpenAiCompletions
    );
    // Explicit model ref wins over the default; offline stays available.
    assert_eq!(
        resolve_model(&cfg, Some("clawgate/offline")).unwrap().api(),
        Api::Offline
    );

    for (r, needle) in [
        ("weird/m", "google-generative-ai"),
        ("nourl/m", "models.providers.nourl.baseUrl"),
        ("badurl/m", "models.providers.badurl.baseUrl"),
        ("openai/", "provider/model"),
        ("nosuch/m", "\"nosuch\""),
    ] {
        let err = resolve_model(&cfg, Some(r)).unwrap_err();
        assert!(err.contains(needle), "{r}: {err}");
    }

    // agents.defaults.model as a plain string.
    let cfg = config(
        r#"{ agents: { defaults: { model: "ollama/qwen3" } }, models: { providers: { ollama: {} } } }"#,
    );
    let t = resolve_model(&cfg, None).unwrap();
    assert_eq!(t.model_ref(), "ollama/qwen3");
    assert_eq!(
        t.remote().unwrap().base_url.to_string(),
        "http://127.0.0.1:11434/v1"
    );
}
