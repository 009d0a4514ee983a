//! Configuration: the `openclaw.json` schema clawgate understands, where it lives, and how it
//! is loaded (JSON5, `${VAR}` substitution, unknown keys reported).
//!
//! Owns: turning files + environment into an immutable [`Config`]. Must not touch: sockets,
//! runtime internals. Callers wrap the result in an `Arc` and hand it to every core.

mod load;

use std::path::PathBuf;

pub use load::{
    config_hash, config_hash_keyed, load, redact_raw, redact_secrets, ConfigError,
    REDACTED_SENTINEL,
};

/// Where configuration and state live (`OPENCLAW_CONFIG_PATH`, `OPENCLAW_STATE_DIR`, `~/.openclaw`).
#[derive(Debug, Clone)]
pub struct Paths {
    /// State directory (default `~/.openclaw`).
    pub state_dir: PathBuf,
    /// Config file (default `<state_dir>/openclaw.json`).
    pub config_path: PathBuf,
}

impl Paths {
    /// Resolve paths from an environment lookup (a closure so tests never mutate the process env).
    pub fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let home = env("HOME").unwrap_or_else(|| ".".to_string());
        // `~/x` (a systemd `Environment=` line is not expanded by a shell).
        let expand = |s: String| match s.strip_prefix("~/") {
            Some(rest) => PathBuf::from(&home).join(rest),
            None if s == "~" => PathBuf::from(&home),
            None => PathBuf::from(s),
        };
        let state_dir = env("OPENCLAW_STATE_DIR")
            .filter(|s| !s.is_empty())
            .map(expand)
            .unwrap_or_else(|| PathBuf::from(&home).join(".openclaw"));
        let config_path = env("OPENCLAW_CONFIG_PATH")
            .filter(|s| !s.is_empty())
            .map(expand)
            .unwrap_or_else(|| state_dir.join("openclaw.json"));
        Self {
            state_dir,
            config_path,
        }
    }
}

/// Which interface the gateway listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// 127.0.0.1 (default).
    #[default]
    Loopback,
    /// 0.0.0.0.
    Lan,
    /// `gateway.customBindHost` / `--host`.
    Custom,
}

/// `gateway.auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Shared token.
    Token,
    /// Shared password.
    Password,
    /// No shared secret (private ingress only).
    None,
}

/// `gateway.auth`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Mode; `None` means "not configured" (token mode with a generated token).
    pub mode: Option<AuthMode>,
    /// `gateway.auth.token`.
    pub token: Option<String>,
    /// `gateway.auth.password`.
    pub password: Option<String>,
}

/// The `gateway` section.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// `gateway.port`.
    pub port: Option<u16>,
    /// `gateway.bind`.
    pub bind: Option<BindMode>,
    /// `gateway.customBindHost`.
    pub custom_bind_host: Option<String>,
    /// `gateway.auth`.
    pub auth: AuthConfig,
    /// `gateway.trustedProxies` (addresses or CIDRs); forwarding headers from any other
    /// peer are refused ([`crate::transport::proxy`]).
    pub trusted_proxies: Vec<String>,
}

/// One configured agent (`agents.list[]`).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Agent id (lower-case).
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Whether this is the default agent.
    pub default: bool,
    /// `model.primary` override (`provider/model`).
    pub model: Option<String>,
}

/// Loaded configuration. Immutable once built.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resolved paths.
    pub paths: Paths,
    /// Whether the config file existed.
    pub exists: bool,
    /// The raw file text (empty when it does not exist).
    pub raw: String,
    /// The parsed document after `${VAR}` substitution (`{}` when absent).
    pub parsed: serde_json::Value,
    /// The parsed document before substitution, `${VAR}` references intact (`{}` when absent);
    /// what OpenClaw's `config.get` calls `parsed`/`sourceConfig`.
    pub source: serde_json::Value,
    /// Non-fatal issues (unknown keys, ...), each as a human-readable string.
    pub issues: Vec<String>,
    /// The gateway section.
    pub gateway: GatewayConfig,
    /// Configured agents (empty → one built-in agent `main`).
    pub agents: Vec<AgentConfig>,
    /// `agents.defaults.model.primary` (`provider/model`), if any.
    pub default_model: Option<String>,
    /// `agents.defaults.maxConcurrent` (default 8).
    pub max_concurrent: usize,
    /// `agents.defaults.timeoutSeconds`: the whole-run deadline when a request names none
    /// (default 600, as OpenClaw).
    pub run_timeout_secs: u64,
}

impl Config {
    /// Embedded defaults: no file, loopback, generated token, the offline agent.
    pub fn embedded(paths: Paths) -> Self {
        Self {
            paths,
            exists: false,
            raw: String::new(),
            parsed: serde_json::Value::Object(Default::default()),
            source: serde_json::Value::Object(Default::default()),
            issues: Vec::new(),
            gateway: GatewayConfig::default(),
            agents: Vec::new(),
            default_model: None,
            max_concurrent: 8,
            run_timeout_secs: 600,
        }
    }

    /// The default agent id (`main` unless configured).
    pub fn default_agent_id(&self) -> &str {
        self.agents
            .iter()
            .find(|a| a.default)
            .or_else(|| self.agents.first())
            .map(|a| a.id.as_str())
            .unwrap_or("main")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_config_paths_expand_a_leading_tilde() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            "OPENCLAW_STATE_DIR" => Some("~/state".to_string()),
            "OPENCLAW_CONFIG_PATH" => Some("~/cfg/openclaw.json".to_string()),
            _ => None,
        };
        let p = Paths::resolve(&env);
        assert_eq!(p.state_dir, PathBuf::from("/home/u/state"));
        assert_eq!(p.config_path, PathBuf::from("/home/u/cfg/openclaw.json"));
        let plain = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            "OPENCLAW_STATE_DIR" => Some("/srv/~x".to_string()),
            _ => None,
        };
        let p = Paths::resolve(&plain);
        assert_eq!(p.state_dir, PathBuf::from("/srv/~x"));
        assert_eq!(p.config_path, PathBuf::from("/srv/~x/openclaw.json"));
    }
}
