//! The built-in offline agent (`clawgate/offline`): the embedded default when no model
//! provider is configured. It answers deterministically, echoing the last user message,
//! streamed word by word with a short delay so clients see real `delta` events.
//!
//! Test hooks (harmless for people): a user message of exactly `/error` fails the run with
//! `errorKind: "unknown"`; a message starting with `/slow ` streams at 200 ms per token.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::json;

use super::{error_kind, Abort, ChatMessage, Provider, ProviderEvent, Sink};

/// Default delay between tokens.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(10);
/// Delay between tokens for `/slow ` messages.
pub const SLOW_DELAY: Duration = Duration::from_millis(200);
/// Longest echo of the user's message (in bytes); longer ones are cut with `…`.
const MAX_ECHO: usize = 2000;

/// The offline agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineAgent {
    delay: Duration,
}

impl Default for OfflineAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl OfflineAgent {
    /// With the default 10 ms between tokens.
    pub fn new() -> Self {
        Self {
            delay: DEFAULT_DELAY,
        }
    }

    /// With a custom delay between tokens (zero streams as fast as the runtime allows).
    pub fn with_delay(delay: Duration) -> Self {
        Self { delay }
    }

    /// The delay between tokens.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The full reply to `messages` (what the deltas concatenate to).
    pub fn reply_text(messages: &[ChatMessage]) -> String {
        let said = last_user(messages);
        format!(
            "You said: \"{}\". I am clawgate's offline agent; configure models.providers to talk to a real model.",
            super::truncate(said.trim(), MAX_ECHO)
        )
    }

    async fn run(&self, messages: &[ChatMessage], abort: &Abort, on: Sink<'_>) {
        let said = last_user(messages);
        if said.trim() == "/error" {
            on(ProviderEvent::error(
                error_kind::UNKNOWN,
                "offline agent: simulated failure",
            ));
            return;
        }
        let delay = if said.trim_start().starts_with("/slow ") {
            SLOW_DELAY
        } else {
            self.delay
        };
        let reply = Self::reply_text(messages);
        for (i, token) in reply.split_inclusive(' ').enumerate() {
            if i > 0 && !delay.is_zero() {
                monoio::time::sleep(delay).await;
            }
            if abort.is_aborted() {
                return;
            }
            on(ProviderEvent::Delta(token.to_string()));
        }
        on(ProviderEvent::Done {
            stop_reason: Some("stop".into()),
            usage: Some(json!({
                "input": said.split_whitespace().count(),
                "output": reply.split_whitespace().count(),
            })),
        });
    }
}

fn last_user(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text.as_str())
        .unwrap_or_default()
}

impl Provider for OfflineAgent {
    fn stream<'a>(
        &'a self,
        messages: &'a [ChatMessage],
        _timeout: Duration,
        abort: &'a Abort,
        on: Sink<'a>,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
        Box::pin(self.run(messages, abort, on))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_echoes_the_last_user_message() {
        let msgs = [
            ChatMessage::new("user", "first"),
            ChatMessage::new("assistant", "x"),
            ChatMessage::new("user", "  hello there "),
            ChatMessage::new("system", "sys"),
        ];
        assert_eq!(
            OfflineAgent::reply_text(&msgs),
            "You said: \"hello there\". I am clawgate's offline agent; configure models.providers to talk to a real model."
        );
        assert!(OfflineAgent::reply_text(&[]).starts_with("You said: \"\"."));
    }
}
