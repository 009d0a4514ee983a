//! The protocol's `ErrorShape` and the error codes the real gateway emits (PROTOCOL.md §2).

use serde::Serialize;
use serde_json::{json, Value};

/// `INVALID_REQUEST`: schema/precondition and all handshake failures.
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
/// `FORBIDDEN`: authenticated but lacking a scope.
pub const FORBIDDEN: &str = "FORBIDDEN";
/// `NOT_PAIRED`: device identity or pairing required.
pub const NOT_PAIRED: &str = "NOT_PAIRED";
/// `UNAVAILABLE`: temporarily unavailable (retryable).
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// `{code, message, details?, retryable?, retryAfterMs?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorShape {
    /// Top-level code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Structured details (`details.code` etc.).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Whether retrying may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Suggested wait before retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorShape {
    /// An error without details.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        }
    }
    /// `INVALID_REQUEST` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }
    /// Attach details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    /// Mark retryable with a delay.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retryable = Some(true);
        self.retry_after_ms = Some(ms);
        self
    }
    /// The exact `FORBIDDEN` / `MISSING_SCOPE` shape (PROTOCOL.md §2).
    pub fn missing_scope(scope: &str) -> Self {
        Self::new(FORBIDDEN, format!("missing scope: {scope}")).with_details(json!({
            "code": "MISSING_SCOPE",
            "missingScope": scope,
            "requiredScopes": [scope],
        }))
    }
    /// `unknown method: X`.
    pub fn unknown_method(method: &str) -> Self {
        Self::invalid(format!("unknown method: {method}"))
    }
    /// Invalid params for a method.
    pub fn invalid_params(method: &str, why: impl std::fmt::Display) -> Self {
        Self::invalid(format!("invalid {method} params: {why}"))
    }
}
