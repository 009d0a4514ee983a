//! Agent providers: turn a chat transcript into a stream of assistant text.
//!
//! Owns: resolving a `provider/model` reference against `models.providers` in openclaw.json
//! ([`resolve_model`]) and streaming one reply ([`stream_reply`]) from either the built-in
//! offline agent, an OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM,
//! llama.cpp, OpenRouter, ...) or Anthropic Messages. Must not touch: sessions, events,
//! sockets other than the upstream one. Everything runs on the calling core's monoio runtime
//! (no `Send` needed; the runtime must have its timer enabled).
//!
//! Contract of [`stream_reply`]: zero or more [`ProviderEvent::Delta`], then exactly one
//! [`ProviderEvent::Done`] or [`ProviderEvent::Error`] — unless the [`Abort`] fires, in which
//! case it returns promptly with no terminal event (the caller emits chat `aborted`).

pub mod anthropic;
pub mod http;
pub mod offline;
pub mod openai;
pub mod sse;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use serde_json::Value;

pub use anthropic::AnthropicProvider;
pub use offline::OfflineAgent;
pub use openai::OpenAiProvider;

/// The built-in offline model, used when nothing else is configured.
pub const OFFLINE_MODEL_REF: &str = "clawgate/offline";

/// Upper bound applied to `stream_reply`'s timeout (a day).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// One transcript entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"user"`, `"assistant"` or `"system"`.
    pub role: String,
    /// Plain text content.
    pub text: String,
}

impl ChatMessage {
    /// Convenience constructor.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            text: text.into(),
        }
    }
}

/// What a provider reports while streaming.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// Next chunk of assistant text.
    Delta(String),
    /// The reply is complete.
    Done {
        /// Why the model stopped (`"stop"`, `"length"`, `"end_turn"`, `"max_tokens"`, ...).
        stop_reason: Option<String>,
        /// Token usage, normalised to `{input, output, cacheRead?, cacheWrite?}`.
        usage: Option<Value>,
    },
    /// The run failed.
    Error {
        /// Human-readable message (names the provider/URL and upstream status/message).
        message: String,
        /// One of `refusal`, `timeout`, `rate_limit`, `context_length`, `unknown`.
        kind: &'static str,
    },
}

impl ProviderEvent {
    /// `Done` or `Error`.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ProviderEvent::Delta(_))
    }

    pub(crate) fn error(kind: &'static str, message: impl Into<String>) -> Self {
        ProviderEvent::Error {
            message: message.into(),
            kind,
        }
    }
}

/// `errorKind` values.
pub mod error_kind {
    /// The model refused / content filter.
    pub const REFUSAL: &str = "refusal";
    /// Upstream too slow (connect, first byte or idle gap exceeded the timeout).
    pub const TIMEOUT: &str = "timeout";
    /// 429 / overloaded.
    pub const RATE_LIMIT: &str = "rate_limit";
    /// Prompt too long for the model.
    pub const CONTEXT_LENGTH: &str = "context_length";
    /// Anything else.
    pub const UNKNOWN: &str = "unknown";
}

#[derive(Default)]
struct AbortInner {
    aborted: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

/// Cooperative cancellation shared by a run and `chat.abort` (single-threaded: `Rc` inside).
#[derive(Clone, Default)]
pub struct Abort {
    inner: Rc<AbortInner>,
}

impl fmt::Debug for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Abort")
            .field("aborted", &self.is_aborted())
            .finish()
    }
}

impl Abort {
    /// A fresh, un-fired abort handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire: every [`Abort::aborted`] future resolves. Idempotent.
    pub fn abort(&self) {
        if self.inner.aborted.replace(true) {
            return;
        }
        let wakers = std::mem::take(&mut *self.inner.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Has [`Abort::abort`] been called?
    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.get()
    }

    /// Resolves once aborted (immediately if already).
    pub async fn aborted(&self) {
        std::future::poll_fn(|cx| {
            if self.is_aborted() {
                return Poll::Ready(());
            }
            let mut wakers = self.inner.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// Which wire protocol a remote provider speaks (`models.providers.<name>.api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The built-in offline agent.
    Offline,
    /// `openai-completions` (and `openai-responses`, served through Chat Completions).
    OpenAiCompletions,
    /// `anthropic-messages`.
    AnthropicMessages,
}

impl Api {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Offline => "offline",
            Api::OpenAiCompletions => "openai-completions",
            Api::AnthropicMessages => "anthropic-messages",
        }
    }
}

/// Connection details of a remote provider (the API key is never printed by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    /// Provider name (for messages).
    pub provider: String,
    /// Model id sent upstream.
    pub model: String,
    /// Parsed `baseUrl`.
    pub base_url: http::Url,
    /// `apiKey`, if any.
    pub api_key: Option<String>,
    /// Extra headers (`models.providers.<name>.headers`).
    pub headers: Vec<(String, String)>,
    /// Anthropic `max_tokens` (from the model entry's `maxTokens`, default 4096).
    pub max_tokens: u64,
    /// OpenAI-compatible: ask for usage in the stream (`stream_options`); the model entry's
    /// `compat.supportsUsageInStreaming` (default true, as OpenClaw) turns it off for
    /// servers that reject the field.
    pub usage_in_streaming: bool,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url.to_string())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Offline(OfflineAgent),
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
}

/// A resolved model: which provider, which model, and how to reach it.
#[derive(Debug, Clone)]
pub struct ModelTarget {
    /// Provider name (`clawgate`, `openai`, `ollama`, `anthropic`, ...).
    pub provider: String,
    /// Model id as sent upstream (`gpt-4o-mini`, `llama3.2`, `offline`, ...).
    pub model: String,
    kind: Kind,
}

impl ModelTarget {
    /// The built-in offline agent (`clawgate/offline`, 10 ms between tokens).
    pub fn offline() -> Self {
        Self::offline_with(OfflineAgent::new())
    }

    /// The offline agent with custom settings (e.g. [`OfflineAgent::with_delay`]).
    pub fn offline_with(agent: OfflineAgent) -> Self {
        Self {
            provider: "clawgate".into(),
            model: "offline".into(),
            kind: Kind::Offline(agent),
        }
    }

    /// `provider/model`.
    pub fn model_ref(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }

    /// The wire protocol.
    pub fn api(&self) -> Api {
        match self.kind {
            Kind::Offline(_) => Api::Offline,
            Kind::OpenAi(_) => Api::OpenAiCompletions,
            Kind::Anthropic(_) => Api::AnthropicMessages,
        }
    }

    /// Remote connection details (`None` for the offline agent).
    pub fn remote(&self) -> Option<&Remote> {
        match &self.kind {
            Kind::Offline(_) => None,
            Kind::OpenAi(p) => Some(&p.remote),
            Kind::Anthropic(p) => Some(&p.remote),
        }
    }

    fn provider_impl(&self) -> &dyn Provider {
        match &self.kind {
            Kind::Offline(p) => p,
            Kind::OpenAi(p) => p,
            Kind::Anthropic(p) => p,
        }
    }
}

/// Event sink handed to providers.
pub type Sink<'a> = &'a mut dyn FnMut(ProviderEvent);

/// One streaming backend. Implementations emit Deltas then one terminal event; they need
/// not watch for abort themselves ([`stream_reply`] drops their future when it fires) but
/// may, and must bound every upstream wait by `timeout`.
pub trait Provider {
    /// Stream a reply to `messages` into `on`.
    fn stream<'a>(
        &'a self,
        messages: &'a [ChatMessage],
        timeout: Duration,
        abort: &'a Abort,
        on: Sink<'a>,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>>;
}

fn providers(cfg: &crate::config::Config) -> Option<&serde_json::Map<String, Value>> {
    cfg.parsed.get("models")?.get("providers")?.as_object()
}

/// Resolve `provider/model` (or `None` → `agents.defaults.model.primary` → the built-in
/// offline model `clawgate/offline`) against `models.providers`.
///
/// * The provider is everything before the first `/` (so `openrouter/meta-llama/llama-3`
///   is provider `openrouter`, model `meta-llama/llama-3`).
/// * `clawgate/*` and `offline/*` (and the bare ref `offline`) are the offline agent.
/// * A bare model id is looked up in every provider's `models[].id`.
/// * `api` absent → `anthropic-messages` for a provider named `anthropic`, else
///   `openai-completions`; a model entry's own `api` wins over the provider's.
/// * `baseUrl` absent → the well-known default for openai / anthropic / ollama /
///   openrouter / vllm, else an error.
pub fn resolve_model(
    cfg: &crate::config::Config,
    model_ref: Option<&str>,
) -> Result<ModelTarget, String> {
    let r = model_ref
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or(cfg
            .default_model
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty()))
        .unwrap_or(OFFLINE_MODEL_REF);
    let provs = providers(cfg);
    let (provider, model) = match r.split_once('/') {
        Some((p, m)) => (p.trim(), m.trim()),
        None if r.eq_ignore_ascii_case("offline") => ("clawgate", "offline"),
        None => {
            let owner = provs.and_then(|ps| {
                ps.iter().find(|(_, p)| {
                    model_entries(p).any(|m| m.get("id").and_then(Value::as_str) == Some(r))
                })
            });
            match owner {
                Some((name, _)) => (name.as_str(), r),
                None => {
                    return Err(format!(
                        "model \"{r}\" names no provider: use provider/model (e.g. openai/{r})"
                    ))
                }
            }
        }
    };
    if provider.is_empty() || model.is_empty() {
        return Err(format!(
            "bad model reference \"{r}\": expected provider/model"
        ));
    }
    if provider.eq_ignore_ascii_case("clawgate") || provider.eq_ignore_ascii_case("offline") {
        return Ok(ModelTarget {
            provider: provider.to_ascii_lowercase(),
            model: model.to_string(),
            kind: Kind::Offline(OfflineAgent::new()),
        });
    }
    let (name, pcfg) = provs
        .and_then(|ps| {
            ps.get_key_value(provider)
                .or_else(|| ps.iter().find(|(k, _)| k.eq_ignore_ascii_case(provider)))
        })
        .ok_or_else(|| {
            format!(
                "unknown model provider \"{provider}\" (model \"{r}\"): add models.providers.{provider} to openclaw.json"
            )
        })?;
    let at = format!("models.providers.{name}");
    let pobj = pcfg
        .as_object()
        .ok_or_else(|| format!("{at} must be an object"))?;
    let entry = model_entries(pcfg).find(|m| m.get("id").and_then(Value::as_str) == Some(model));

    let api_str = entry
        .and_then(|m| m.get("api"))
        .or_else(|| pobj.get("api"))
        .and_then(Value::as_str)
        .map(str::trim);
    let api = match api_str {
        Some("openai-completions") | Some("openai-responses") | Some("openai") => {
            Api::OpenAiCompletions
        }
        Some("anthropic-messages") | Some("anthropic") => Api::AnthropicMessages,
        Some(other) => {
            return Err(format!(
            "{at}.api \"{other}\" is not supported (use openai-completions or anthropic-messages)"
        ))
        }
        None if name.eq_ignore_ascii_case("anthropic") => Api::AnthropicMessages,
        None => Api::OpenAiCompletions,
    };

    let base = match pobj.get("baseUrl").and_then(Value::as_str).map(str::trim) {
        Some(b) if !b.is_empty() => b.to_string(),
        _ => default_base_url(name)
            .ok_or_else(|| format!("{at}.baseUrl is missing"))?
            .to_string(),
    };
    let base_url = http::Url::parse(&base).map_err(|e| format!("{at}.baseUrl: {e}"))?;
    let api_key = ["apiKey", "api_key"]
        .iter()
        .find_map(|k| pobj.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let headers = pobj
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let max_tokens = entry
        .and_then(|m| m.get("maxTokens"))
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .unwrap_or(anthropic::DEFAULT_MAX_TOKENS);
    let usage_in_streaming = entry
        .and_then(|m| m.get("compat"))
        .or_else(|| pobj.get("compat"))
        .and_then(|c| c.get("supportsUsageInStreaming"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let remote = Remote {
        usage_in_streaming,
        provider: name.clone(),
        model: model.to_string(),
        base_url,
        api_key,
        headers,
        max_tokens,
    };
    let kind = match api {
        Api::AnthropicMessages => Kind::Anthropic(AnthropicProvider::new(remote)),
        _ => Kind::OpenAi(OpenAiProvider::new(remote)),
    };
    Ok(ModelTarget {
        provider: name.clone(),
        model: model.to_string(),
        kind,
    })
}

fn model_entries(p: &Value) -> impl Iterator<Item = &Value> {
    p.get("models")
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

fn default_base_url(provider: &str) -> Option<&'static str> {
    Some(match provider.to_ascii_lowercase().as_str() {
        "openai" => "https://api.openai.com/v1",
        "anthropic" => "https://api.anthropic.com",
        "openrouter" => "https://openrouter.ai/api/v1",
        "ollama" => "http://127.0.0.1:11434/v1",
        "vllm" => "http://127.0.0.1:8000/v1",
        _ => return None,
    })
}

/// Stream one assistant reply to `messages` from `target`.
///
/// Calls `on` with zero or more `Delta`, then exactly one `Done` or `Error` — unless `abort`
/// fires, in which case it returns promptly without a terminal event. Never panics; a hung
/// upstream yields `Error{kind:"timeout"}` after `timeout` (connect, first byte, and each
/// gap between chunks are each bounded by it).
pub async fn stream_reply(
    target: &ModelTarget,
    messages: &[ChatMessage],
    timeout: Duration,
    abort: &Abort,
    on: &mut dyn FnMut(ProviderEvent),
) {
    if abort.is_aborted() {
        return;
    }
    // Keep timer arithmetic sane whatever a client asked for.
    let timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMEOUT);
    let finished = Cell::new(false);
    let aborted = {
        let mut gate = |ev: ProviderEvent| {
            if finished.get() || abort.is_aborted() {
                return;
            }
            if ev.is_terminal() {
                finished.set(true);
            }
            on(ev);
        };
        let fut = target
            .provider_impl()
            .stream(messages, timeout, abort, &mut gate);
        race_abort(fut, abort).await
    };
    if !aborted && !finished.get() && !abort.is_aborted() {
        on(ProviderEvent::error(
            error_kind::UNKNOWN,
            format!("{}: the provider ended without a reply", target.model_ref()),
        ));
    }
}

/// Drive `fut` until it completes (`false`) or `abort` fires (`true`, `fut` dropped).
async fn race_abort<F: Future<Output = ()>>(fut: F, abort: &Abort) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut ab = std::pin::pin!(abort.aborted());
    std::future::poll_fn(|cx| {
        if ab.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// Turn an upstream HTTP error status + body into a terminal event.
pub(crate) fn http_status_error(
    provider: &str,
    status: u16,
    reason: &str,
    body: &[u8],
) -> ProviderEvent {
    let text = String::from_utf8_lossy(body);
    let json: Option<Value> = serde_json::from_str(text.trim()).ok();
    let upstream_type = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(|e| e.get("type").or_else(|| e.get("code")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let upstream_msg = json
        .as_ref()
        .and_then(|j| {
            let e = j.get("error")?;
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
                .map(str::to_string)
        })
        .or_else(|| {
            json.as_ref()
                .and_then(|j| j.get("message").and_then(Value::as_str).map(str::to_string))
        })
        .unwrap_or_else(|| truncate(text.trim(), 300));
    let kind = match status {
        429 | 529 => error_kind::RATE_LIMIT,
        408 | 504 => error_kind::TIMEOUT,
        400 | 413 | 422 if looks_like_context_length(&upstream_msg, &upstream_type) => {
            error_kind::CONTEXT_LENGTH
        }
        _ if upstream_type.contains("overloaded") || upstream_type.contains("rate_limit") => {
            error_kind::RATE_LIMIT
        }
        _ => error_kind::UNKNOWN,
    };
    let mut message = format!("{provider}: HTTP {status}");
    if !reason.is_empty() {
        message.push(' ');
        message.push_str(reason);
    }
    if !upstream_msg.is_empty() {
        message.push_str(": ");
        message.push_str(&upstream_msg);
    }
    ProviderEvent::error(kind, message)
}

/// Does an upstream error message say the prompt is too long?
pub(crate) fn looks_like_context_length(message: &str, code: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == "context_length_exceeded"
        || [
            "context length",
            "context_length",
            "context window",
            "maximum context",
            "prompt is too long",
            "too many tokens",
            "input is too long",
            "reduce the length",
        ]
        .iter()
        .any(|p| m.contains(p))
}

/// Map a client-side HTTP failure to a terminal event.
pub(crate) fn transport_error(provider: &str, e: &http::HttpError) -> ProviderEvent {
    let kind = match e.kind {
        http::HttpErrorKind::Timeout => error_kind::TIMEOUT,
        _ => error_kind::UNKNOWN,
    };
    ProviderEvent::error(kind, format!("{provider}: {}", e.message))
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_are_classified() {
        let e = http_status_error(
            "openai",
            401,
            "Unauthorized",
            br#"{"error":{"message":"Incorrect API key provided: sk-x.","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        );
        assert_eq!(
            e,
            ProviderEvent::error(
                "unknown",
                "openai: HTTP 401 Unauthorized: Incorrect API key provided: sk-x."
            )
        );
        let kind = |status, body: &str| match http_status_error("p", status, "", body.as_bytes()) {
            ProviderEvent::Error { kind, .. } => kind,
            _ => "none",
        };
        assert_eq!(kind(429, "{}"), "rate_limit");
        assert_eq!(
            kind(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "rate_limit"
        );
        assert_eq!(
            kind(
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","code":"context_length_exceeded"}}"#
            ),
            "context_length"
        );
        assert_eq!(
            kind(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#
            ),
            "context_length"
        );
        assert_eq!(kind(400, r#"{"error":"bad"}"#), "unknown");
        assert_eq!(kind(500, "oops"), "unknown");
        assert_eq!(kind(504, ""), "timeout");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }

    #[test]
    fn abort_wakes_waiters() {
        let a = Abort::new();
        let b = a.clone();
        assert!(!b.is_aborted());
        a.abort();
        a.abort();
        assert!(b.is_aborted());
    }
}
