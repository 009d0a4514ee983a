//! OpenAI-compatible Chat Completions with SSE streaming: OpenAI, Ollama (`/v1`), vLLM,
//! llama.cpp server, OpenRouter, LM Studio, ...
//!
//! `POST {baseUrl}/chat/completions` with `{model, messages, stream: true, stream_options:
//! {include_usage: true}}` and `Authorization: Bearer {apiKey}` when a key is set. Each
//! `data: {...}` chunk's `choices[0].delta.content` is a Delta; `finish_reason` is kept as
//! the stop reason; a trailing `usage` chunk is kept; `data: [DONE]` (or the end of the body
//! after a `finish_reason`) completes the reply. A server that ignores `stream` and answers
//! with one JSON completion is handled too.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http::{self, Request};
use super::sse::SseParser;
use super::{
    error_kind, http_status_error, looks_like_context_length, transport_error, Abort, ChatMessage,
    Provider, ProviderEvent, Remote, Sink,
};

/// Cap on an error or non-streaming response body.
const MAX_BODY: usize = 8 << 20;

/// An OpenAI-compatible provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiProvider {
    pub(crate) remote: Remote,
}

impl OpenAiProvider {
    /// For `remote` (model, base URL, key, headers).
    pub fn new(remote: Remote) -> Self {
        Self { remote }
    }

    /// The JSON request body.
    pub fn request_body(&self, messages: &[ChatMessage]) -> Value {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.text}))
            .collect();
        let mut body = json!({
            "model": self.remote.model,
            "messages": msgs,
            "stream": true,
        });
        if self.remote.usage_in_streaming {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// Request headers (auth, content type, configured extras).
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Accept".to_string(), "text/event-stream".to_string()),
        ];
        if let Some(key) = &self.remote.api_key {
            h.push(("Authorization".to_string(), format!("Bearer {key}")));
        }
        for (k, v) in &self.remote.headers {
            h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
            h.push((k.clone(), v.clone()));
        }
        h
    }

    async fn run(&self, messages: &[ChatMessage], timeout: Duration, on: Sink<'_>) {
        let name = self.remote.provider.as_str();
        let url = self.remote.base_url.join("/chat/completions");
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
        let is_json = resp
            .header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("application/json"));
        if is_json {
            match resp.read_all(timeout, MAX_BODY).await {
                Ok(body) => complete_json(name, &body, on),
                Err(e) => on(transport_error(name, &e)),
            }
            return;
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
            for ev in events {
                if state.handle(&ev.data, on) {
                    return;
                }
            }
            if eof {
                return state.end_of_stream(on);
            }
        }
    }
}

impl Provider for OpenAiProvider {
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

/// Per-stream state: what has been seen so far.
#[derive(Debug)]
pub(crate) struct StreamState<'p> {
    provider: &'p str,
    stop_reason: Option<String>,
    usage: Option<Value>,
}

impl<'p> StreamState<'p> {
    pub(crate) fn new(provider: &'p str) -> Self {
        Self {
            provider,
            stop_reason: None,
            usage: None,
        }
    }

    /// Handle one `data:` payload. Returns `true` once a terminal event was emitted.
    pub(crate) fn handle(&mut self, data: &str, on: Sink<'_>) -> bool {
        let data = data.trim();
        if data == "[DONE]" {
            on(ProviderEvent::Done {
                stop_reason: self.stop_reason.take(),
                usage: self.usage.take(),
            });
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return false; // keep-alives and other noise
        };
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            on(upstream_error(self.provider, err));
            return true;
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(normalize_usage(u));
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return false;
        };
        if let Some(text) = choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            on(ProviderEvent::Delta(text.to_string()));
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if reason == "content_filter" {
                on(ProviderEvent::error(
                    error_kind::REFUSAL,
                    format!(
                        "{}: the reply was stopped by the content filter",
                        self.provider
                    ),
                ));
                return true;
            }
            self.stop_reason = Some(reason.to_string());
        }
        false
    }

    /// The body ended without `[DONE]`.
    pub(crate) fn end_of_stream(&mut self, on: Sink<'_>) {
        if self.stop_reason.is_some() {
            on(ProviderEvent::Done {
                stop_reason: self.stop_reason.take(),
                usage: self.usage.take(),
            });
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

/// A non-streaming `chat.completion` body.
fn complete_json(provider: &str, body: &[u8], on: Sink<'_>) {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return on(ProviderEvent::error(
                error_kind::UNKNOWN,
                format!("{provider}: invalid JSON response: {e}"),
            ))
        }
    };
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return on(upstream_error(provider, err));
    }
    let choice = v.get("choices").and_then(|c| c.get(0));
    let Some(choice) = choice else {
        return on(ProviderEvent::error(
            error_kind::UNKNOWN,
            format!("{provider}: the response has no choices"),
        ));
    };
    let reason = choice.get("finish_reason").and_then(Value::as_str);
    if reason == Some("content_filter") {
        return on(ProviderEvent::error(
            error_kind::REFUSAL,
            format!("{provider}: the reply was stopped by the content filter"),
        ));
    }
    if let Some(text) = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        on(ProviderEvent::Delta(text.to_string()));
    }
    on(ProviderEvent::Done {
        stop_reason: reason.map(str::to_string),
        usage: v
            .get("usage")
            .filter(|u| u.is_object())
            .map(normalize_usage),
    });
}

/// An `{"error": ...}` object (or string) sent in-band.
fn upstream_error(provider: &str, err: &Value) -> ProviderEvent {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("unknown error");
    let code = err
        .get("code")
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .or_else(|| err.get("type").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let kind = if code == "429" || code.contains("rate_limit") || code.contains("overloaded") {
        error_kind::RATE_LIMIT
    } else if looks_like_context_length(message, &code) {
        error_kind::CONTEXT_LENGTH
    } else {
        error_kind::UNKNOWN
    };
    ProviderEvent::error(kind, format!("{provider}: {message}"))
}

/// `{prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens}` →
/// `{input, output, cacheRead?}`.
pub(crate) fn normalize_usage(u: &Value) -> Value {
    let mut m = Map::new();
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    m.insert("input".into(), json!(n("prompt_tokens").unwrap_or(0)));
    m.insert("output".into(), json!(n("completion_tokens").unwrap_or(0)));
    if let Some(c) = u
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .filter(|&c| c > 0)
    {
        m.insert("cacheRead".into(), json!(c));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_lines(lines: &[&str], eof: bool) -> Vec<ProviderEvent> {
        let mut out = Vec::new();
        let mut push = |e| out.push(e);
        let mut st = StreamState::new("openai");
        let mut finished = false;
        for l in lines {
            if st.handle(l, &mut push) {
                finished = true;
                break;
            }
        }
        if !finished && eof {
            st.end_of_stream(&mut push);
        }
        out
    }

    #[test]
    fn deltas_finish_reason_usage_done() {
        let got = run_lines(
            &[
                r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
                r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
                r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
                r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":0}}}"#,
                "[DONE]",
                r#"{"choices":[{"delta":{"content":"ignored"}}]}"#,
            ],
            true,
        );
        assert_eq!(
            got,
            vec![
                ProviderEvent::Delta("Hi".into()),
                ProviderEvent::Done {
                    stop_reason: Some("stop".into()),
                    usage: Some(json!({"input": 9, "output": 1}))
                }
            ]
        );
    }

    #[test]
    fn eof_after_finish_is_done_and_eof_before_is_error() {
        let done = run_lines(
            &[r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"length"}]}"#],
            true,
        );
        assert!(
            matches!(&done[1], ProviderEvent::Done { stop_reason: Some(r), .. } if r == "length")
        );
        let err = run_lines(&[r#"{"choices":[{"delta":{"content":"a"}}]}"#], true);
        assert!(matches!(
            &err[1],
            ProviderEvent::Error {
                kind: "unknown",
                ..
            }
        ));
    }

    #[test]
    fn in_band_errors_and_content_filter() {
        let e = run_lines(
            &[r#"{"error":{"message":"Rate limit reached","code":429}}"#],
            false,
        );
        assert!(
            matches!(&e[0], ProviderEvent::Error { kind: "rate_limit", message } if message.contains("Rate limit reached"))
        );
        let e = run_lines(
            &[r#"{"choices":[{"delta":{},"finish_reason":"content_filter"}]}"#],
            false,
        );
        assert!(matches!(
            &e[0],
            ProviderEvent::Error {
                kind: "refusal",
                ..
            }
        ));
        // noise is ignored
        assert!(run_lines(&["", "not json", "{}"], false).is_empty());
    }

    #[test]
    fn non_streaming_json() {
        let mut out = Vec::new();
        complete_json(
            "ollama",
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            &mut |e| out.push(e),
        );
        assert_eq!(out[0], ProviderEvent::Delta("Hello".into()));
        assert!(matches!(&out[1], ProviderEvent::Done { usage: Some(u), .. } if u["input"] == 3));
    }
}
