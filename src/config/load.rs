//! Loading `openclaw.json` (OWNED BY THE CONFIG HELPER — stub).

use super::{Config, Paths};

/// Why the configuration could not be loaded. Each variant names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// JSON5 syntax error.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// Parser message.
        message: String,
    },
    /// `${VAR}` names a variable that is not set.
    #[error("{path}: missing environment variable ${{{var}}} (referenced at {at})")]
    MissingEnv {
        /// File.
        path: String,
        /// Variable name.
        var: String,
        /// JSON path of the value that referenced it.
        at: String,
    },
    /// A known key has the wrong type or value.
    #[error("{path}: invalid value at {at}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// JSON path.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// Load the config at `paths.config_path`; a missing file yields [`Config::embedded`].
pub fn load(paths: Paths, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let _ = env;
    Ok(Config::embedded(paths))
}

/// Copy of a parsed config with secrets (tokens, passwords, api keys) replaced by
/// `"__OPENCLAW_REDACTED__"`.
pub fn redact_secrets(v: &serde_json::Value) -> serde_json::Value {
    v.clone()
}
