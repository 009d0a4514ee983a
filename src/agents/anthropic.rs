//! Anthropic Messages with streaming.
//!
//! `POST {baseUrl}/v1/messages` (or `{baseUrl}/messages` when the base already ends in
//! `/v1`) with `x-api-key`, `anthropic-version: 2023-06-01` and `{model, max_tokens, system?,
//! messages, stream: true}`. System messages are joined into `system`; empty messages are
//! dropped (the API rejects empty text blocks). SSE events: `message_start` (input usage),
//! `content_block_start`/`content_block_delta` with `text_delta` → Delta, `message_delta`
//! (stop reason, output usage), `message_stop` → Done, `ping` ignored, `error` → Error
//! (`overloaded_error`/`rate_limit_error` → rate_limit). A `refusal` stop reason is an Error
//! of kind refusal.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http::{self, Request};
use super::sse::{SseEvent, SseParser};
use super::{
    error_kind, http_status_error, looks_like_context_length, transport_error, Abort, ChatMessage,
    Provider, ProviderEvent, Remote, Sink,
};

/// `max_tokens` when the model entry sets no `maxTokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The API version header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An Anthropic Messages provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicProvider {
    pub(crate) remote: Remote,
}

impl AnthropicProvider {
    /// For `remote` (model, base URL, key, headers, max_tokens).
    pub fn new(remote: Remote) -> Self {
        Self { remote }
    }

    /// The request URL.
    pub fn url(&self) -> http::Url {
        if self.remote.base_url.path.ends_with("/v1") {
            self.remote.base_url.join("/messages")
        } else {
            self.remote.base_url.join("/v1/messages")
        }
    }

    /// The JSON request body.
    pub fn request_body(&self, messages: &[ChatMessage]) -> Value {
        let system: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == "system" && !m.text.trim().is_empty())
            .map(|m| m.text.as_str())
            .collect();
        let msgs: Vec<Value> = messages
            .iter()
            .filter(|m| m.role != "system" && !m.text.trim().is_empty())
            .map(|m| {
                let role = if m.role == "assistant" {
                    "assistant"
                } else {
                    "user"
                };
                json!({"role": role, "content": m.text})
            })
            .collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(self.remote.model));
        body.insert("max_tokens".into(), json!(self.remote.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(msgs));
        body.insert("stream".into(), json!(true));
        Value::Object(body)
    }

    /// Request headers (auth, version, content type, configured extras).
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Accept".to_string(), "text/event-stream".to_string()),
            (
                "anthropic-version".to_string(),
                ANTHROPIC_VERSION.to_string(),
            ),
        ];
        if let Some(key) = &self.remote.api_key {
            h.push(("x-api-key".to_string(), key.clone()));
        }
        for (k, v) in &self.remote.headers {
            h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
            h.push((k.clone(), v.clone()));
        }
        h
    }

    async fn run(&self, messages: &[ChatMessage], timeout: Duration, on: Sink<'_>) {
        let name = self.remote.provider.as_str();
        let url = self.url();
        let headers = self.request_headers();
        let body = self.request_body(messages).to_string().into_bytes();
        let req = Request {
            method: "POST",
            url: &url,
            headers: &headers,
            body,
            tls: None,
        };
        let mut resp = match http::send(req, timeout).await {
            Ok(r) => r,
            Err(e) => return on(transport_error(name, &e)),
        };
        if !(200..300).contains(&resp.status) {
            let body = resp.read_all(timeout, 64 * 1024).await.unwrap_or_default();
            return on(http_status_error(name, resp.status, &resp.reason, &body));
        }
        let mut parser = SseParser::new();
        let mut state = StreamState::new(name);
        loop {
            let (events, eof) = match resp.chunk(timeout).await {
                Ok(Some(bytes)) => (parser.feed(&bytes), false),
                Ok(None) => (parser.finish(), true),
                Err(e) => return on(transport_error(name, &e)),
            };
            if parser.overflowed() {
                return on(ProviderEvent::error(
                    error_kind::UNKNOWN,
                    format!("{name} sent a stream event larger than the 8 MiB limit"),
                ));
            }
            for ev in &events {
                if state.handle(ev, on) {
                    return;
                }
            }
            if eof {
                return state.end_of_stream(on);
            }
        }
    }
}

impl Provider for AnthropicProvider {
    fn stream<'a>(
        &'a self,
        messages: &'a [ChatMessage],
        timeout: Duration,
        _abort: &'a Abort,
        on: Sink<'a>,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
        Box::pin(self.run(messages, timeout, on))
    }
}

/// Per-stream state.
#[derive(Debug)]
pub(crate) struct StreamState<'p> {
    provider: &'p str,
    stop_reason: Option<String>,
    usage: Map<String, Value>,
}

impl<'p> StreamState<'p> {
    pub(crate) fn new(provider: &'p str) -> Self {
        Self {
            provider,
            stop_reason: None,
            usage: Map::new(),
        }
    }

    fn merge_usage(&mut self, u: Option<&Value>) {
        let Some(u) = u else { return };
        for (from, to) in [
            ("input_tokens", "input"),
            ("output_tokens", "output"),
            ("cache_read_input_tokens", "cacheRead"),
            ("cache_creation_input_tokens", "cacheWrite"),
        ] {
            if let Some(n) = u.get(from).and_then(Value::as_u64) {
                if n > 0 || matches!(to, "input" | "output") {
                    self.usage.insert(to.into(), json!(n));
                }
            }
        }
    }

    fn done(&mut self, on: Sink<'_>) {
        if self.stop_reason.as_deref() == Some("refusal") {
            return on(ProviderEvent::error(
                error_kind::REFUSAL,
                format!("{}: the model refused to answer", self.provider),
            ));
        }
        let usage = (!self.usage.is_empty()).then(|| {
            let mut u = std::mem::take(&mut self.usage);
            u.entry("input").or_insert(json!(0));
            u.entry("output").or_insert(json!(0));
            Value::Object(u)
        });
        on(ProviderEvent::Done {
            stop_reason: self.stop_reason.take(),
            usage,
        });
    }

    /// Handle one SSE event. Returns `true` once a terminal event was emitted.
    pub(crate) fn handle(&mut self, ev: &SseEvent, on: Sink<'_>) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(ev.data.trim()) else {
            return false;
        };
        let ty = ev
            .event
            .as_deref()
            .or_else(|| v.get("type").and_then(Value::as_str))
            .unwrap_or_default();
        match ty {
            "message_start" => {
                self.merge_usage(v.get("message").and_then(|m| m.get("usage")));
            }
            "content_block_start" => {
                if let Some(t) = v
                    .get("content_block")
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .and_then(|b| b.get("text"))
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    on(ProviderEvent::Delta(t.to_string()));
                }
            }
            "content_block_delta" => {
                let d = v.get("delta");
                if d.and_then(|d| d.get("type")).and_then(Value::as_str) == Some("text_delta") {
                    if let Some(t) = d
                        .and_then(|d| d.get("text"))
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        on(ProviderEvent::Delta(t.to_string()));
                    }
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_string());
                }
                self.merge_usage(v.get("usage"));
            }
            "message_stop" => {
                self.done(on);
                return true;
            }
            "error" => {
                let err = v.get("error").unwrap_or(&v);
                let etype = err.get("type").and_then(Value::as_str).unwrap_or_default();
                let msg = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                let kind = match etype {
                    "overloaded_error" | "rate_limit_error" => error_kind::RATE_LIMIT,
                    "timeout_error" => error_kind::TIMEOUT,
                    _ if looks_like_context_length(msg, etype) => error_kind::CONTEXT_LENGTH,
                    _ => error_kind::UNKNOWN,
                };
                let label = if etype.is_empty() {
                    String::new()
                } else {
                    format!(" ({etype})")
                };
                on(ProviderEvent::error(
                    kind,
                    format!("{}: {msg}{label}", self.provider),
                ));
                return true;
            }
            _ => {} // ping, content_block_stop, unknown future events
        }
        false
    }

    /// The body ended without `message_stop`.
    pub(crate) fn end_of_stream(&mut self, on: Sink<'_>) {
        if self.stop_reason.is_some() {
            self.done(on);
        } else {
            on(ProviderEvent::error(
                error_kind::UNKNOWN,
                format!(
                    "{}: the stream ended before the reply finished",
                    self.provider
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[(&str, &str)], eof: bool) -> Vec<ProviderEvent> {
        let mut out = Vec::new();
        let mut push = |e| out.push(e);
        let mut st = StreamState::new("anthropic");
        for (e, d) in events {
            let ev = SseEvent {
                event: Some(e.to_string()),
                data: d.to_string(),
            };
            if st.handle(&ev, &mut push) {
                return out;
            }
        }
        if eof {
            st.end_of_stream(&mut push);
        }
        out
    }

    #[test]
    fn full_stream() {
        let got = run(
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
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
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
            true,
        );
        assert_eq!(
            got,
            vec![
                ProviderEvent::Delta("Hello".into()),
                ProviderEvent::Delta("!".into()),
                ProviderEvent::Done {
                    stop_reason: Some("end_turn".into()),
                    usage: Some(json!({"input": 25, "output": 15}))
                }
            ]
        );
    }

    #[test]
    fn errors_and_refusals() {
        let e = run(
            &[(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )],
            true,
        );
        assert!(
            matches!(&e[0], ProviderEvent::Error { kind: "rate_limit", message } if message.contains("Overloaded"))
        );
        let e = run(
            &[
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"refusal"},"usage":{"output_tokens":0}}"#,
                ),
                ("message_stop", "{}"),
            ],
            true,
        );
        assert!(matches!(
            &e[0],
            ProviderEvent::Error {
                kind: "refusal",
                ..
            }
        ));
        let e = run(
            &[(
                "message_start",
                r#"{"message":{"usage":{"input_tokens":1}}}"#,
            )],
            true,
        );
        assert!(matches!(
            &e[0],
            ProviderEvent::Error {
                kind: "unknown",
                ..
            }
        ));
    }

    #[test]
    fn event_type_falls_back_to_data_type() {
        let mut out = Vec::new();
        let mut st = StreamState::new("anthropic");
        let ev = SseEvent {
            event: None,
            data: r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#
                .into(),
        };
        assert!(!st.handle(&ev, &mut |e| out.push(e)));
        assert_eq!(out, vec![ProviderEvent::Delta("x".into())]);
    }
}
