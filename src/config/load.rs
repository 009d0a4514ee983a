//! Loading `openclaw.json`: JSON5 parsing, `${VAR}` substitution, typed mapping of the keys
//! clawgate uses, unknown keys reported as non-fatal issues, secret redaction for `config.get`,
//! and the opaque config hash.
//!
//! Behaviour follows OpenClaw where it is observable:
//! * substitution only matches `${NAME}` with `NAME` in `[A-Z_][A-Z0-9_]*`; `$${NAME}` is the
//!   escape for a literal `${NAME}`; anything else containing `$` is left untouched. Variables
//!   come from the `env` closure first, then from the file's own `env` / `env.vars` section
//!   (OpenClaw applies that section to the environment before substituting);
//! * the redaction sentinel is `"__OPENCLAW_REDACTED__"`; string values that are a bare
//!   `${VAR}` reference are not secrets and are left as they are;
//! * `config.get`'s `hash` looks like `hmac-sha256:v1:<43 chars of unpadded base64url>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AgentConfig, AuthMode, BindMode, Config, Paths};

/// What `config.get` (and every other config read) shows in place of a secret value.
/// Write paths (`config.set`/`apply`/`patch`) must treat it as "keep the stored value".
pub const REDACTED_SENTINEL: &str = "__OPENCLAW_REDACTED__";

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

/// Top-level sections of the OpenClaw schema. clawgate reads only `gateway` and `agents`; the
/// others are accepted silently so a real OpenClaw config loads without noise.
const KNOWN_TOP_LEVEL: &[&str] = &[
    "$schema",
    "meta",
    "env",
    "wizard",
    "diagnostics",
    "logging",
    "cli",
    "crestodian",
    "update",
    "browser",
    "ui",
    "secrets",
    "auth",
    "acp",
    "models",
    "nodeHost",
    "agents",
    "tools",
    "bindings",
    "broadcast",
    "audio",
    "media",
    "messages",
    "commands",
    "approvals",
    "session",
    "cron",
    "hooks",
    "web",
    "channels",
    "discovery",
    "canvasHost",
    "talk",
    "gateway",
    "memory",
    "mcp",
    "skills",
    "plugins",
    "surfaces",
    "proxy",
];

/// Keys of the OpenClaw `gateway` section.
const KNOWN_GATEWAY: &[&str] = &[
    "port",
    "mode",
    "bind",
    "customBindHost",
    "controlUi",
    "auth",
    "trustedProxies",
    "allowRealIpFallback",
    "tools",
    "webchat",
    "channelHealthCheckMinutes",
    "channelStaleEventThresholdMinutes",
    "channelMaxRestartsPerHour",
    "tailscale",
    "remote",
    "reload",
    "tls",
    "http",
    "push",
    "nodes",
];

/// Keys of the OpenClaw `gateway.auth` section.
const KNOWN_GATEWAY_AUTH: &[&str] = &[
    "mode",
    "token",
    "password",
    "allowTailscale",
    "rateLimit",
    "trustedProxy",
];

/// Load the config at `paths.config_path`; a missing file yields [`Config::embedded`].
///
/// `env` is the only source of environment variables (tests pass a closure; the binary passes
/// a lookup over the process environment).
pub fn load(paths: Paths, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let file = paths.config_path.display().to_string();
    let raw = match std::fs::read_to_string(&paths.config_path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::embedded(paths)),
        Err(source) => return Err(ConfigError::Read { path: file, source }),
    };
    let source = parse_json5(&raw).map_err(|message| ConfigError::Parse {
        path: file.clone(),
        message,
    })?;
    let Value::Object(source_root) = &source else {
        return Err(invalid(&file, "(root)", "expected an object"));
    };

    let file_env = collect_file_env(source_root);
    let lookup = |name: &str| -> Option<String> {
        env(name).filter(|v| !v.is_empty()).or_else(|| {
            file_env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let parsed = substitute(&source, "", &lookup).map_err(|e| e.into_error(&file))?;

    let mut cfg = Config::embedded(paths);
    cfg.exists = true;
    if let Value::Object(root) = &parsed {
        let mut m = Mapper {
            file: &file,
            issues: Vec::new(),
        };
        m.map_root(root, &mut cfg)?;
        scan_includes(&parsed, "", &mut m.issues);
        cfg.issues = m.issues;
    }
    cfg.raw = raw;
    cfg.parsed = parsed;
    cfg.source = source;
    Ok(cfg)
}

/// Copy of a parsed config with secrets (tokens, passwords, api keys) replaced by
/// `"__OPENCLAW_REDACTED__"` ([`REDACTED_SENTINEL`]).
///
/// A key is secret when its name (case-insensitively) ends in `token`, contains `password`,
/// `secret`, `privatekey`, `encryptionkey`, `api?key` or `encrypt?key` (`?` = any one character
/// or none), contains `authorization` or is `cookie` (header maps), or ends in
/// `serviceAccount`/`serviceAccountRef` — except the non-secret
/// `maxTokens`-style counters and `passwordFile`. Under a secret key, strings and numbers are replaced (recursively inside
/// objects and arrays; for a SecretRef `{source, provider, id}` only `id`); booleans and `null`
/// are kept. A string that is exactly a `${VAR}` reference is kept: it names, not holds, a secret.
///
/// Every value under `env` (inline variables and `env.vars`, except the `shellEnv`
/// switches) is redacted whatever its name: variables are where credentials whose names
/// match no pattern (`OPENAI_KEY`, `DATABASE_URL`) live.
pub fn redact_secrets(v: &serde_json::Value) -> serde_json::Value {
    let mut out = redact_value(v, false);
    if let Some(Value::Object(env)) = out.get_mut("env") {
        for (k, item) in env.iter_mut() {
            if k != "shellEnv" {
                *item = redact_value(item, true);
            }
        }
    }
    out
}

/// The raw JSON5 text with every secret value replaced by the sentinel, as `config.get`'s
/// `raw` must be. Comments and layout are kept when a textual replacement provably yields the
/// same document as [`redact_secrets`] of the parse; otherwise (a secret that also occurs as a
/// non-secret value or key, escape sequences, numeric secrets) the result is the redacted
/// document re-serialised as pretty JSON. Unparseable text yields an empty string — never the
/// unredacted text.
pub fn redact_raw(raw: &str) -> String {
    let Ok(source) = parse_json5(raw) else {
        return String::new();
    };
    let expected = redact_secrets(&source);
    let mut secrets = Vec::new();
    collect_redacted(&source, &expected, &mut secrets);
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    let mut text = raw.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), REDACTED_SENTINEL);
    }
    match parse_json5(&text) {
        Ok(v) if v == expected => text,
        _ => {
            let mut pretty = serde_json::to_string_pretty(&expected).unwrap_or_default();
            pretty.push('\n');
            pretty
        }
    }
}

/// The `hash` of a config file's raw text, in the real gateway's format:
/// `hmac-sha256:v1:` followed by the unpadded base64url HMAC-SHA256 of `raw`.
///
/// Clients treat it as opaque (`config.set`'s `baseHash` must echo it), so equality is all that
/// matters. This variant uses a fixed, public key, which makes it a plain content digest: a
/// reader who sees the redacted `raw` and this hash can test guesses of a redacted low-entropy
/// secret offline. OpenClaw keys the HMAC with a per-install secret for that reason; prefer
/// [`config_hash_keyed`] with such a key when the hash is shown to `operator.read` clients.
pub fn config_hash(raw: &str) -> String {
    config_hash_keyed(b"clawgate:config-hash:v1", raw)
}

/// [`config_hash`] with a caller-supplied HMAC key (e.g. a random per-install secret).
pub fn config_hash_keyed(key: &[u8], raw: &str) -> String {
    format!(
        "hmac-sha256:v1:{}",
        URL_SAFE_NO_PAD.encode(hmac_sha256(key, raw.as_bytes()))
    )
}

// ---------------------------------------------------------------------------------------------
// Parsing and substitution
// ---------------------------------------------------------------------------------------------

fn parse_json5(raw: &str) -> Result<Value, String> {
    let text = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    // Only where, never the offending line: it may hold a secret (`token: "s3cr3t` …).
    json5::from_str::<Value>(text).map_err(|e| match e {
        json5::Error::Message {
            location: Some(at), ..
        } => format!("syntax error at line {}, column {}", at.line, at.column),
        json5::Error::Message { location: None, .. } => "syntax error".to_string(),
    })
}

fn invalid(file: &str, at: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: file.to_string(),
        at: at.to_string(),
        message: message.into(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `${pass:…}` / `${gopass:…}`: OpenClaw secret-store lookups, which clawgate does not run.
fn is_secret_store_ref(name: &str) -> bool {
    name.starts_with("pass:") || name.starts_with("gopass:")
}

enum SubstError {
    Missing { var: String, at: String },
    Unsupported { reference: String, at: String },
}

impl SubstError {
    fn into_error(self, file: &str) -> ConfigError {
        match self {
            SubstError::Missing { var, at } => ConfigError::MissingEnv {
                path: file.to_string(),
                var,
                at,
            },
            SubstError::Unsupported { reference, at } => invalid(
                file,
                &at,
                format!("secret-store reference ${{{reference}}} is not supported by clawgate; use ${{VAR}}"),
            ),
        }
    }
}

fn substitute(
    v: &Value,
    at: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, SubstError> {
    Ok(match v {
        Value::String(s) => Value::String(substitute_str(s, at, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| substitute(item, &format!("{at}[{i}]"), lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| Ok((k.clone(), substitute(item, &join(at, k), lookup)?)))
                .collect::<Result<_, SubstError>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute_str(
    s: &str,
    at: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SubstError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        // `$${NAME}` → literal `${NAME}`.
        if let Some(inner) = tail.strip_prefix("$${") {
            if let Some(end) = inner.find('}') {
                let name = &inner[..end];
                if is_env_name(name) || is_secret_store_ref(name) {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                    rest = &inner[end + 1..];
                    continue;
                }
            }
        }
        // `${NAME}` → value.
        if let Some(inner) = tail.strip_prefix("${") {
            if let Some(end) = inner.find('}') {
                let name = &inner[..end];
                if is_env_name(name) {
                    match lookup(name) {
                        Some(value) if !value.is_empty() => out.push_str(&value),
                        _ => {
                            return Err(SubstError::Missing {
                                var: name.to_string(),
                                at: at.to_string(),
                            })
                        }
                    }
                    rest = &inner[end + 1..];
                    continue;
                }
                if is_secret_store_ref(name) {
                    return Err(SubstError::Unsupported {
                        reference: name.to_string(),
                        at: at.to_string(),
                    });
                }
            }
        }
        // Not a recognised pattern: keep the `$` and move on.
        out.push('$');
        rest = &tail[1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Variables the file defines for itself: `env.vars.NAME` and `env.NAME` string entries.
/// Values that themselves reference variables are skipped (as OpenClaw does).
fn collect_file_env(root: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(Value::Object(env)) = root.get("env") else {
        return out;
    };
    let mut add = |k: &str, v: &Value| {
        if let Value::String(s) = v {
            if is_env_name(k) && !s.trim().is_empty() && !s.contains("${") {
                out.push((k.to_string(), s.clone()));
            }
        }
    };
    if let Some(Value::Object(vars)) = env.get("vars") {
        for (k, v) in vars {
            add(k, v);
        }
    }
    for (k, v) in env {
        if k != "vars" && k != "shellEnv" {
            add(k, v);
        }
    }
    out
}

/// OpenClaw's `$include` directive (config split across files) is not implemented.
fn scan_includes(v: &Value, at: &str, issues: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, item) in map {
                let path = join(at, k);
                if k == "$include" {
                    issues.push(format!(
                        "unsupported: {path} (clawgate does not resolve config includes; ignored)"
                    ));
                } else {
                    scan_includes(item, &path, issues);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_includes(item, &format!("{at}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Typed mapping
// ---------------------------------------------------------------------------------------------

struct Mapper<'f> {
    file: &'f str,
    issues: Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `null` counts as "not set" everywhere.
fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn is_valid_agent_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Mapper<'_> {
    fn err(&self, at: &str, message: impl Into<String>) -> ConfigError {
        invalid(self.file, at, message)
    }

    fn wrong_type(&self, at: &str, expected: &str, got: &Value) -> ConfigError {
        self.err(at, format!("expected {expected}, got {}", type_name(got)))
    }

    fn object<'v>(
        &self,
        obj: &'v Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<Option<&'v Map<String, Value>>, ConfigError> {
        match get(obj, key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(self.wrong_type(at, "an object", other)),
        }
    }

    fn string(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<Option<String>, ConfigError> {
        match get(obj, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(at, "a string", other)),
        }
    }

    fn boolean(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<Option<bool>, ConfigError> {
        match get(obj, key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(at, "a boolean", other)),
        }
    }

    fn integer(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match get(obj, key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(at, format!("expected an integer in {min}..={max}, got {v}"))),
            },
            Some(other) => Err(self.wrong_type(at, "an integer", other)),
        }
    }

    /// A secret: a string (usually via `${VAR}`); empty means unset. SecretRef objects are
    /// OpenClaw's secret-provider indirection, not implemented here.
    fn secret(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<Option<String>, ConfigError> {
        match get(obj, key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.issues
                    .push(format!("empty value: {at} (treated as unset)"));
                Ok(None)
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(_)) => Err(self.err(
                at,
                "SecretRef objects are not supported by clawgate yet; use a string or \"${VAR}\"",
            )),
            Some(other) => Err(self.wrong_type(at, "a string", other)),
        }
    }

    fn report_unknown(&mut self, obj: &Map<String, Value>, prefix: &str, known: &[&str]) {
        for key in obj.keys() {
            if !known.contains(&key.as_str()) && key != "$include" {
                self.issues
                    .push(format!("unknown key: {} (ignored)", join(prefix, key)));
            }
        }
    }

    fn map_root(&mut self, root: &Map<String, Value>, cfg: &mut Config) -> Result<(), ConfigError> {
        self.report_unknown(root, "", KNOWN_TOP_LEVEL);
        if let Some(gateway) = self.object(root, "gateway", "gateway")? {
            self.map_gateway(gateway, cfg)?;
        }
        if let Some(agents) = self.object(root, "agents", "agents")? {
            self.map_agents(agents, cfg)?;
        }
        Ok(())
    }

    fn map_gateway(
        &mut self,
        gw: &Map<String, Value>,
        cfg: &mut Config,
    ) -> Result<(), ConfigError> {
        self.report_unknown(gw, "gateway", KNOWN_GATEWAY);
        let out = &mut cfg.gateway;

        if let Some(port) = self.integer(gw, "port", "gateway.port", 1, 65535)? {
            out.port = u16::try_from(port).ok();
        }

        if let Some(bind) = self.string(gw, "bind", "gateway.bind")? {
            out.bind = Some(match bind.as_str() {
                "loopback" | "auto" => BindMode::Loopback,
                "lan" => BindMode::Lan,
                "custom" => BindMode::Custom,
                "tailnet" => {
                    self.issues.push(
                        "gateway.bind \"tailnet\" is not supported by clawgate; treated as \
                         \"custom\" (set gateway.customBindHost to the tailnet address)"
                            .to_string(),
                    );
                    BindMode::Custom
                }
                other => {
                    return Err(self.err(
                        "gateway.bind",
                        format!(
                            "expected \"loopback\", \"lan\", \"custom\", \"auto\" or \"tailnet\", \
                             got {other:?}"
                        ),
                    ))
                }
            });
        }

        out.custom_bind_host = self
            .string(gw, "customBindHost", "gateway.customBindHost")?
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());

        if let Some(auth) = self.object(gw, "auth", "gateway.auth")? {
            self.report_unknown(auth, "gateway.auth", KNOWN_GATEWAY_AUTH);
            if let Some(mode) = self.string(auth, "mode", "gateway.auth.mode")? {
                cfg.gateway.auth.mode = Some(match mode.as_str() {
                    "token" => AuthMode::Token,
                    "password" => AuthMode::Password,
                    "none" => AuthMode::None,
                    "trusted-proxy" => {
                        return Err(self.err(
                            "gateway.auth.mode",
                            "\"trusted-proxy\" is not supported by clawgate yet",
                        ))
                    }
                    other => {
                        return Err(self.err(
                            "gateway.auth.mode",
                            format!("expected \"token\", \"password\" or \"none\", got {other:?}"),
                        ))
                    }
                });
            }
            cfg.gateway.auth.token = self.secret(auth, "token", "gateway.auth.token")?;
            cfg.gateway.auth.password = self.secret(auth, "password", "gateway.auth.password")?;
        }

        match get(gw, "trustedProxies") {
            None => {}
            Some(Value::Array(items)) => {
                let mut proxies = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => proxies.push(s.trim().to_string()),
                        other => {
                            return Err(self.wrong_type(
                                &format!("gateway.trustedProxies[{i}]"),
                                "a string",
                                other,
                            ))
                        }
                    }
                }
                cfg.gateway.trusted_proxies = proxies;
            }
            Some(other) => {
                return Err(self.wrong_type("gateway.trustedProxies", "an array of strings", other))
            }
        }

        if let Some(Value::Object(tls)) = get(gw, "tls") {
            if matches!(get(tls, "enabled"), Some(Value::Bool(true))) {
                self.issues.push(
                    "gateway.tls.enabled is set but clawgate does not terminate TLS (ignored; \
                     serving plain HTTP/WebSocket)"
                        .to_string(),
                );
            }
        }
        Ok(())
    }

    /// `string` or `{primary: string, …}` → `provider/model`.
    fn model_ref(&self, v: Option<&Value>, at: &str) -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(Value::Object(m)) => Ok(self
                .string(m, "primary", &format!("{at}.primary"))?
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())),
            Some(other) => Err(self.wrong_type(at, "a string or {primary}", other)),
        }
    }

    fn map_agents(
        &mut self,
        agents: &Map<String, Value>,
        cfg: &mut Config,
    ) -> Result<(), ConfigError> {
        if let Some(defaults) = self.object(agents, "defaults", "agents.defaults")? {
            cfg.default_model = self.model_ref(get(defaults, "model"), "agents.defaults.model")?;
            if let Some(n) = self.integer(
                defaults,
                "maxConcurrent",
                "agents.defaults.maxConcurrent",
                1,
                1024,
            )? {
                cfg.max_concurrent = usize::try_from(n).unwrap_or(cfg.max_concurrent);
            }
            if let Some(n) = self.integer(
                defaults,
                "timeoutSeconds",
                "agents.defaults.timeoutSeconds",
                1,
                172_800,
            )? {
                cfg.run_timeout_secs = n;
            }
        }

        let mut list = Vec::new();
        match get(agents, "list") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("agents.list[{i}]");
                    let Value::Object(entry) = item else {
                        return Err(self.wrong_type(&at, "an object", item));
                    };
                    let Some(id) = self.string(entry, "id", &format!("{at}.id"))? else {
                        return Err(self.err(&format!("{at}.id"), "required"));
                    };
                    list.push(self.agent(&id, entry, &at)?);
                }
            }
            Some(other) => return Err(self.wrong_type("agents.list", "an array", other)),
        }
        // OpenClaw ≥ 2026.9 keeps agents in a map keyed by id (the captured gateway's format).
        if let Some(entries) = self.object(agents, "entries", "agents.entries")? {
            for (id, item) in entries {
                let at = join("agents.entries", id);
                let Value::Object(entry) = item else {
                    return Err(self.wrong_type(&at, "an object", item));
                };
                if get(entry, "default").is_some() {
                    self.issues.push(format!(
                        "retired key: {at}.default (OpenClaw removes it; clawgate still honours it)"
                    ));
                }
                list.push(self.agent(id, entry, &at)?);
            }
        }

        for (i, agent) in list.iter().enumerate() {
            if list[..i].iter().any(|a| a.id == agent.id) {
                return Err(self.err("agents", format!("duplicate agent id {:?}", agent.id)));
            }
        }
        let defaults = list.iter().filter(|a| a.default).count();
        if defaults > 1 {
            self.issues.push(format!(
                "{defaults} agents are marked default; using the first ({})",
                list.iter()
                    .find(|a| a.default)
                    .map(|a| a.id.as_str())
                    .unwrap_or("")
            ));
        }
        cfg.agents = list;
        Ok(())
    }

    fn agent(
        &self,
        id: &str,
        entry: &Map<String, Value>,
        at: &str,
    ) -> Result<AgentConfig, ConfigError> {
        let normalized = id.trim().to_ascii_lowercase();
        if !is_valid_agent_id(&normalized) {
            return Err(self.err(
                at,
                format!("invalid agent id {id:?} (expected [a-z0-9][a-z0-9_-]{{0,63}})"),
            ));
        }
        let mut name = self.string(entry, "name", &format!("{at}.name"))?;
        if name.is_none() {
            if let Some(identity) = self.object(entry, "identity", &format!("{at}.identity"))? {
                name = self.string(identity, "name", &format!("{at}.identity.name"))?;
            }
        }
        Ok(AgentConfig {
            id: normalized,
            name,
            default: self
                .boolean(entry, "default", &format!("{at}.default"))?
                .unwrap_or(false),
            model: self.model_ref(get(entry, "model"), &format!("{at}.model"))?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

/// Counter-like names that match the secret patterns but hold no secret.
const NOT_SECRET_SUFFIXES: &[&str] = &[
    "maxtokens",
    "maxoutputtokens",
    "maxinputtokens",
    "maxcompletiontokens",
    "contexttokens",
    "totaltokens",
    "tokencount",
    "tokenlimit",
    "tokenbudget",
    "passwordfile",
];

/// `a`, then at most one arbitrary character, then `b` (OpenClaw's `/api.?key/i`).
fn contains_loose(key: &str, a: &str, b: &str) -> bool {
    key.match_indices(a).any(|(i, _)| {
        let rest = &key[i + a.len()..];
        rest.starts_with(b)
            || rest
                .char_indices()
                .nth(1)
                .is_some_and(|(j, _)| rest[j..].starts_with(b))
    })
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if NOT_SECRET_SUFFIXES.iter().any(|s| k.ends_with(s)) {
        return false;
    }
    k.ends_with("token")
        // HTTP header maps (models.providers.*.headers): credentials under header names.
        || k.contains("authorization")
        || k == "cookie"
        || k.contains("password")
        || k.contains("secret")
        || k.contains("privatekey")
        || contains_loose(&k, "api", "key")
        || contains_loose(&k, "encrypt", "key")
        || k.contains("encryptionkey")
        || k.ends_with("serviceaccount")
        || k.ends_with("serviceaccountref")
}

/// `${ANYTHING}` and nothing else (OpenClaw's `/^\$\{[^}]*\}$/` on the trimmed value).
fn is_env_placeholder(s: &str) -> bool {
    let t = s.trim();
    t.len() >= 3 && t.starts_with("${") && t.ends_with('}') && !t[2..t.len() - 1].contains('}')
}

/// OpenClaw's SecretRef: `{source: "env"|"file"|"exec", provider?, id}`.
fn is_secret_ref(m: &Map<String, Value>) -> bool {
    matches!(m.get("source"), Some(Value::String(s)) if matches!(s.as_str(), "env" | "file" | "exec"))
        && matches!(m.get("id"), Some(Value::String(_)))
}

fn redact_value(v: &Value, secret: bool) -> Value {
    match v {
        Value::String(s) if secret && !is_env_placeholder(s) => {
            Value::String(REDACTED_SENTINEL.to_string())
        }
        Value::Number(_) if secret => Value::String(REDACTED_SENTINEL.to_string()),
        Value::Array(items) => {
            Value::Array(items.iter().map(|x| redact_value(x, secret)).collect())
        }
        Value::Object(map) if secret && is_secret_ref(map) => {
            let mut out = map.clone();
            if let Some(id) = out.get_mut("id") {
                *id = redact_value(id, true);
            }
            Value::Object(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| (k.clone(), redact_value(item, secret || is_secret_key(k))))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The original strings that [`redact_secrets`] replaced.
fn collect_redacted(original: &Value, redacted: &Value, out: &mut Vec<String>) {
    match (original, redacted) {
        (Value::String(o), Value::String(r))
            if r == REDACTED_SENTINEL && o != REDACTED_SENTINEL =>
        {
            out.push(o.clone());
        }
        (Value::Array(a), Value::Array(b)) => {
            for (x, y) in a.iter().zip(b) {
                collect_redacted(x, y, out);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in a {
                if let Some(y) = b.get(k) {
                    collect_redacted(x, y, out);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Hash
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA256 (RFC 2104) over `sha2`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique temp dir removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "clawgate-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn paths(&self) -> Paths {
            Paths {
                state_dir: self.0.clone(),
                config_path: self.0.join("openclaw.json"),
            }
        }

        fn write(&self, text: &str) -> Paths {
            let paths = self.paths();
            std::fs::write(&paths.config_path, text).unwrap();
            paths
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = TempDir::new();
        load(dir.write(text), &no_env)
    }

    fn load_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = TempDir::new();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        load(dir.write(text), &env)
    }

    /// `(at, message)` of an `Invalid` error; anything else fails the test, showing what came back.
    fn invalid_at(r: Result<Config, ConfigError>) -> (String, String) {
        match r {
            Err(ConfigError::Invalid { at, message, .. }) => Ok((at, message)),
            other => Err(other),
        }
        .unwrap()
    }

    /// `(var, at)` of a `MissingEnv` error; anything else fails the test.
    fn missing_env(err: &ConfigError) -> (String, String) {
        match err {
            ConfigError::MissingEnv { var, at, .. } => Ok((var.clone(), at.clone())),
            other => Err(other),
        }
        .unwrap()
    }

    #[test]
    fn missing_file_yields_embedded_defaults() {
        let dir = TempDir::new();
        let cfg = load(dir.paths(), &no_env).unwrap();
        assert!(!cfg.exists);
        assert_eq!(cfg.raw, "");
        assert_eq!(cfg.parsed, json!({}));
        assert_eq!(cfg.source, json!({}));
        assert!(cfg.issues.is_empty());
        assert_eq!(cfg.max_concurrent, 8);
        assert_eq!(cfg.default_agent_id(), "main");
    }

    #[test]
    fn unreadable_path_is_a_read_error() {
        let dir = TempDir::new();
        let paths = dir.paths();
        std::fs::create_dir_all(&paths.config_path).unwrap();
        assert!(matches!(
            load(paths, &no_env),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn syntax_error_is_a_parse_error_naming_the_file() {
        let err = load_text("{ gateway: { port: } }").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("openclaw.json"));
    }

    #[test]
    fn root_must_be_an_object() {
        assert_eq!(invalid_at(load_text("[1, 2]")).0, "(root)");
    }

    #[test]
    fn json5_comments_trailing_commas_unquoted_keys() {
        let text = "\u{feff}// leading comment\n{\n  /* block */ gateway: {\n    port: 0x4965, // hex\n    bind: 'lan',\n  },\n  agents: { defaults: { maxConcurrent: 4, }, },\n}\n";
        let cfg = load_text(text).unwrap();
        assert!(cfg.exists);
        assert_eq!(cfg.raw, text);
        assert_eq!(cfg.gateway.port, Some(18789));
        assert_eq!(cfg.gateway.bind, Some(BindMode::Lan));
        assert_eq!(cfg.max_concurrent, 4);
        assert!(cfg.issues.is_empty(), "{:?}", cfg.issues);
    }

    #[test]
    fn substitution_whole_and_embedded() {
        let cfg = load_with_env(
            r#"{
              gateway: { auth: { mode: "token", token: "${GW_TOKEN}" } },
              models: { providers: { openai: {
                apiKey: "${OPENAI_KEY}",
                headers: ["Bearer ${OPENAI_KEY}", "x-${A}-${B}-y"],
              } } },
            }"#,
            &[
                ("GW_TOKEN", "tok-1"),
                ("OPENAI_KEY", "sk-2"),
                ("A", "a"),
                ("B", "b"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.gateway.auth.token.as_deref(), Some("tok-1"));
        let openai = &cfg.parsed["models"]["providers"]["openai"];
        assert_eq!(openai["apiKey"], "sk-2");
        assert_eq!(openai["headers"], json!(["Bearer sk-2", "x-a-b-y"]));
        // `source` keeps the references; `raw` is the file text.
        assert_eq!(cfg.source["gateway"]["auth"]["token"], "${GW_TOKEN}");
        assert!(cfg.raw.contains("${GW_TOKEN}"));
    }

    #[test]
    fn substitution_escape_and_non_matching_patterns() {
        let cfg = load_with_env(
            r#"{ meta: { a: "$${HOME_DIR}", b: "cost $5 ${lower} $${lower} ${UNCLOSED", c: "$$${X}", d: "${X}${X}" } }"#,
            &[("X", "x")],
        )
        .unwrap();
        let meta = &cfg.parsed["meta"];
        assert_eq!(meta["a"], "${HOME_DIR}");
        assert_eq!(meta["b"], "cost $5 ${lower} $${lower} ${UNCLOSED");
        assert_eq!(meta["c"], "$${X}");
        assert_eq!(meta["d"], "xx");
    }

    #[test]
    fn missing_env_names_variable_and_path() {
        let err =
            load_text(r#"{ models: { providers: { openai: { apiKey: "${OPENAI_API_KEY}" } } } }"#)
                .unwrap_err();
        assert_eq!(
            missing_env(&err),
            (
                "OPENAI_API_KEY".into(),
                "models.providers.openai.apiKey".into()
            )
        );
        let msg = err.to_string();
        assert!(
            msg.contains("${OPENAI_API_KEY}") && msg.contains("models.providers.openai.apiKey")
        );
    }

    #[test]
    fn empty_env_counts_as_missing_and_arrays_are_indexed() {
        let err = load_with_env(
            r#"{ gateway: { trustedProxies: ["10.0.0.1", "Bearer ${EMPTY}"] } }"#,
            &[("EMPTY", "")],
        )
        .unwrap_err();
        assert_eq!(
            missing_env(&err),
            ("EMPTY".into(), "gateway.trustedProxies[1]".into())
        );
    }

    #[test]
    fn file_env_section_supplies_variables_but_process_env_wins() {
        let text = r#"{
          env: { vars: { FROM_VARS: "v" }, INLINE: "i", SHADOWED: "file" },
          meta: { a: "${FROM_VARS}", b: "${INLINE}", c: "${SHADOWED}" },
        }"#;
        let cfg = load_with_env(text, &[("SHADOWED", "process")]).unwrap();
        assert_eq!(
            cfg.parsed["meta"],
            json!({"a": "v", "b": "i", "c": "process"})
        );
    }

    #[test]
    fn secret_store_references_are_rejected() {
        let (at, msg) = invalid_at(load_text(
            r#"{ gateway: { auth: { token: "${pass:gw/token}" } } }"#,
        ));
        assert_eq!(at, "gateway.auth.token");
        assert!(msg.contains("pass:gw/token"), "{msg}");
    }

    #[test]
    fn typed_mapping() {
        let cfg = load_text(
            r#"{
              gateway: {
                port: 19001, bind: "custom", customBindHost: " 10.1.2.3 ",
                auth: { mode: "password", password: "hunter2", token: "t" },
                trustedProxies: ["127.0.0.1", " 10.0.0.0/8 "],
              },
              agents: {
                defaults: { model: { primary: "openai/gpt-5", fallbacks: [] }, maxConcurrent: 1024, timeoutSeconds: 90 },
                list: [
                  { id: "Main", name: "Main agent" },
                  { id: "ops", default: true, model: "anthropic/claude" },
                  { id: "x", model: { primary: "openai/o3" }, identity: { name: "Ex" } },
                ],
              },
            }"#,
        )
        .unwrap();
        let gw = &cfg.gateway;
        assert_eq!(gw.port, Some(19001));
        assert_eq!(gw.bind, Some(BindMode::Custom));
        assert_eq!(gw.custom_bind_host.as_deref(), Some("10.1.2.3"));
        assert_eq!(gw.auth.mode, Some(AuthMode::Password));
        assert_eq!(gw.auth.password.as_deref(), Some("hunter2"));
        assert_eq!(gw.auth.token.as_deref(), Some("t"));
        assert_eq!(gw.trusted_proxies, vec!["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(cfg.default_model.as_deref(), Some("openai/gpt-5"));
        assert_eq!(cfg.max_concurrent, 1024);
        assert_eq!(cfg.run_timeout_secs, 90);
        let ids: Vec<&str> = cfg.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["main", "ops", "x"]);
        assert_eq!(cfg.agents[0].name.as_deref(), Some("Main agent"));
        assert_eq!(cfg.agents[1].model.as_deref(), Some("anthropic/claude"));
        assert_eq!(cfg.agents[2].model.as_deref(), Some("openai/o3"));
        assert_eq!(cfg.agents[2].name.as_deref(), Some("Ex"));
        assert_eq!(cfg.default_agent_id(), "ops");
        assert!(cfg.issues.is_empty(), "{:?}", cfg.issues);
    }

    #[test]
    fn default_model_as_string_and_auth_modes() {
        let cfg = load_text(
            r#"{ agents: { defaults: { model: "openai/gpt-5" } }, gateway: { auth: { mode: "none" } } }"#,
        )
        .unwrap();
        assert_eq!(cfg.default_model.as_deref(), Some("openai/gpt-5"));
        assert_eq!(cfg.gateway.auth.mode, Some(AuthMode::None));
        let cfg = load_text(r#"{ gateway: { auth: { mode: "token", token: "  " } } }"#).unwrap();
        assert_eq!(cfg.gateway.auth.mode, Some(AuthMode::Token));
        assert_eq!(cfg.gateway.auth.token, None);
        assert_eq!(
            cfg.issues,
            ["empty value: gateway.auth.token (treated as unset)"]
        );
    }

    #[test]
    fn bind_aliases() {
        let cfg = load_text(r#"{ gateway: { bind: "auto" } }"#).unwrap();
        assert_eq!(cfg.gateway.bind, Some(BindMode::Loopback));
        assert!(cfg.issues.is_empty());
        let cfg = load_text(r#"{ gateway: { bind: "tailnet" } }"#).unwrap();
        assert_eq!(cfg.gateway.bind, Some(BindMode::Custom));
        assert_eq!(cfg.issues.len(), 1);
        assert!(cfg.issues[0].contains("tailnet"), "{:?}", cfg.issues);
    }

    #[test]
    fn trusted_proxy_mode_is_not_supported() {
        let (at, msg) = invalid_at(load_text(
            r#"{ gateway: { auth: { mode: "trusted-proxy" } } }"#,
        ));
        assert_eq!(at, "gateway.auth.mode");
        assert!(msg.contains("not supported by clawgate yet"), "{msg}");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_path() {
        let cases: &[(&str, &str)] = &[
            (r#"{ gateway: "x" }"#, "gateway"),
            (r#"{ gateway: { port: "18789" } }"#, "gateway.port"),
            (r#"{ gateway: { port: 0 } }"#, "gateway.port"),
            (r#"{ gateway: { port: 65536 } }"#, "gateway.port"),
            (r#"{ gateway: { port: 80.5 } }"#, "gateway.port"),
            (r#"{ gateway: { bind: "everywhere" } }"#, "gateway.bind"),
            (r#"{ gateway: { bind: 1 } }"#, "gateway.bind"),
            (
                r#"{ gateway: { customBindHost: [] } }"#,
                "gateway.customBindHost",
            ),
            (r#"{ gateway: { auth: [] } }"#, "gateway.auth"),
            (
                r#"{ gateway: { auth: { mode: "oauth" } } }"#,
                "gateway.auth.mode",
            ),
            (
                r#"{ gateway: { auth: { token: 42 } } }"#,
                "gateway.auth.token",
            ),
            (
                r#"{ gateway: { auth: { password: { source: "env", provider: "default", id: "PW" } } } }"#,
                "gateway.auth.password",
            ),
            (
                r#"{ gateway: { trustedProxies: "10.0.0.1" } }"#,
                "gateway.trustedProxies",
            ),
            (
                r#"{ gateway: { trustedProxies: ["a", 1] } }"#,
                "gateway.trustedProxies[1]",
            ),
            (r#"{ agents: [] }"#, "agents"),
            (
                r#"{ agents: { defaults: { maxConcurrent: 0 } } }"#,
                "agents.defaults.maxConcurrent",
            ),
            (
                r#"{ agents: { defaults: { maxConcurrent: 1025 } } }"#,
                "agents.defaults.maxConcurrent",
            ),
            (
                r#"{ agents: { defaults: { model: 5 } } }"#,
                "agents.defaults.model",
            ),
            (
                r#"{ agents: { defaults: { model: { primary: 5 } } } }"#,
                "agents.defaults.model.primary",
            ),
            (r#"{ agents: { list: {} } }"#, "agents.list"),
            (r#"{ agents: { list: ["main"] } }"#, "agents.list[0]"),
            (
                r#"{ agents: { list: [{ name: "x" }] } }"#,
                "agents.list[0].id",
            ),
            (r#"{ agents: { list: [{ id: 7 }] } }"#, "agents.list[0].id"),
            (
                r#"{ agents: { list: [{ id: "../etc" }] } }"#,
                "agents.list[0]",
            ),
            (
                r#"{ agents: { list: [{ id: "a", default: "yes" }] } }"#,
                "agents.list[0].default",
            ),
            (
                r#"{ agents: { list: [{ id: "a", name: 1 }] } }"#,
                "agents.list[0].name",
            ),
            (
                r#"{ agents: { list: [{ id: "a", model: [] }] } }"#,
                "agents.list[0].model",
            ),
            (
                r#"{ agents: { entries: { dev: 1 } } }"#,
                "agents.entries.dev",
            ),
            (
                r#"{ agents: { list: [{ id: "a" }, { id: "A" }] } }"#,
                "agents",
            ),
        ];
        for (text, want) in cases {
            let (at, _) = invalid_at(load_text(text));
            assert_eq!(at, *want, "for {text}");
        }
    }

    #[test]
    fn nulls_count_as_unset() {
        let cfg = load_text(r#"{ gateway: { port: null, auth: { token: null } }, agents: null }"#)
            .unwrap();
        assert_eq!(cfg.gateway.port, None);
        assert_eq!(cfg.gateway.auth.token, None);
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let cfg = load_text(
            r#"{
              gateway: { port: 1, foo: 1, controlUi: {}, auth: { mode: "token", bar: 2, rateLimit: {} } },
              channels: { telegram: { whatever: true } },
              frobnicate: {},
              "$include": "./more.json5",
              tools: { x: { "$include": "./t.json5" } },
            }"#,
        )
        .unwrap();
        let mut issues = cfg.issues.clone();
        issues.sort();
        assert_eq!(
            issues,
            [
                "unknown key: frobnicate (ignored)",
                "unknown key: gateway.auth.bar (ignored)",
                "unknown key: gateway.foo (ignored)",
                "unsupported: $include (clawgate does not resolve config includes; ignored)",
                "unsupported: tools.x.$include (clawgate does not resolve config includes; ignored)",
            ]
        );
        assert_eq!(cfg.gateway.port, Some(1));
    }

    #[test]
    fn all_openclaw_top_level_sections_are_known() {
        let mut doc = Map::new();
        for key in KNOWN_TOP_LEVEL {
            doc.insert((*key).to_string(), json!({}));
        }
        doc.insert("$schema".into(), json!("https://example/schema.json"));
        let cfg = load_text(&Value::Object(doc).to_string()).unwrap();
        assert!(cfg.issues.is_empty(), "{:?}", cfg.issues);
    }

    #[test]
    fn tls_enabled_is_flagged() {
        let cfg = load_text(r#"{ gateway: { tls: { enabled: true } } }"#).unwrap();
        assert_eq!(cfg.issues.len(), 1);
        assert!(cfg.issues[0].contains("gateway.tls.enabled"));
    }

    /// The config the real 2026.9.6 gateway served in `cli-call-config-get.jsonl` loads cleanly.
    #[test]
    fn captured_gateway_config_loads() {
        let capture = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/cli-call-config-get.jsonl"
        ))
        .unwrap();
        let payload = capture
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find_map(|l| {
                let p = &l["frame"]["payload"];
                p.get("raw").is_some().then(|| p.clone())
            })
            .unwrap();
        let raw = payload["raw"].as_str().unwrap();
        let cfg = load_text(raw).unwrap();
        assert_eq!(cfg.parsed, payload["parsed"]);
        assert_eq!(cfg.gateway.bind, Some(BindMode::Loopback));
        assert_eq!(cfg.agents.len(), 1);
        assert_eq!(cfg.agents[0].id, "dev");
        assert_eq!(cfg.agents[0].name.as_deref(), Some("C3-PO"));
        assert_eq!(cfg.default_agent_id(), "dev");
        // Only the note mirroring the real server's warning about `agents.entries.*.default`.
        assert_eq!(cfg.issues.len(), 1, "{:?}", cfg.issues);
        assert!(cfg.issues[0].contains("agents.entries.dev.default"));
        // No secrets in it: redaction is the identity, and the hash has the captured shape.
        assert_eq!(redact_secrets(&cfg.parsed), cfg.parsed);
        assert_eq!(redact_raw(raw), raw);
        let hash = config_hash(raw);
        let want = payload["hash"].as_str().unwrap();
        assert_eq!(hash.len(), want.len());
        assert_eq!(&hash[..15], &want[..15]);
    }

    #[test]
    fn every_env_variable_is_redacted_whatever_its_name() {
        let v: Value = serde_json::from_str(
            r#"{"env": {"OPENAI_KEY": "sk-1", "vars": {"DATABASE_URL": "postgres://u:pw@h/db"}, "shellEnv": {"enabled": true}}, "gateway": {"port": 1}}"#,
        )
        .unwrap();
        let r = redact_secrets(&v);
        assert_eq!(r["env"]["OPENAI_KEY"], REDACTED_SENTINEL);
        assert_eq!(r["env"]["vars"]["DATABASE_URL"], REDACTED_SENTINEL);
        assert_eq!(r["env"]["shellEnv"]["enabled"], true);
        assert_eq!(r["gateway"]["port"], 1);
        let raw = redact_raw(
            r#"{ env: { OPENAI_KEY: "sk-1", vars: { DATABASE_URL: "postgres://u:pw@h/db" } } }"#,
        );
        assert!(!raw.contains("sk-1") && !raw.contains("pw@h"), "{raw}");
    }

    #[test]
    fn a_syntax_error_names_the_place_not_the_line() {
        let e = parse_json5("{ gateway: { auth: { token: \"s3cr3t } } }").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn redaction_replaces_secret_keys() {
        let v = json!({
            "gateway": { "auth": { "mode": "token", "token": "t", "password": 1234, "allowTailscale": true },
                         "remote": { "token": null, "url": "wss://x" } },
            "models": { "providers": { "openai": { "apiKey": "sk", "api_key": "sk2", "baseUrl": "https://x",
                                                   "maxTokens": 4096, "contextTokens": 1 } } },
            "channels": { "slack": { "botToken": "xoxb", "appToken": "xapp", "signingSecret": "s",
                                     "webhookSecret": "w", "clientSecret": "c", "privateKey": "pk",
                                     "accessTOKEN": "a", "dbPassword": "p", "openaiApiKey": "k",
                                     "passwordFile": "/run/pw", "tokens": 3, "name": "n" } },
            "env": { "GROQ_API_KEY": "g", "PATH_X": "/bin" },
            "hooks": { "token": "${HOOK_TOKEN}", "secret": "x-${A}" },
        });
        let r = redact_secrets(&v);
        let s = REDACTED_SENTINEL;
        assert_eq!(
            r,
            json!({
                "gateway": { "auth": { "mode": "token", "token": s, "password": s, "allowTailscale": true },
                             "remote": { "token": null, "url": "wss://x" } },
                "models": { "providers": { "openai": { "apiKey": s, "api_key": s, "baseUrl": "https://x",
                                                       "maxTokens": 4096, "contextTokens": 1 } } },
                "channels": { "slack": { "botToken": s, "appToken": s, "signingSecret": s,
                                         "webhookSecret": s, "clientSecret": s, "privateKey": s,
                                         "accessTOKEN": s, "dbPassword": s, "openaiApiKey": s,
                                         "passwordFile": "/run/pw", "tokens": 3, "name": "n" } },
                "env": { "GROQ_API_KEY": s, "PATH_X": s },
                "hooks": { "token": "${HOOK_TOKEN}", "secret": s },
            })
        );
        // Input untouched (deep copy).
        assert_eq!(v["gateway"]["auth"]["token"], "t");
    }

    #[test]
    fn redaction_inside_secret_containers() {
        let v = json!({
            "secrets": { "providers": { "vault": { "url": "u", "on": true } } },
            "skills": { "entries": { "x": { "apiKey": { "source": "env", "provider": "default", "id": "X_KEY" } } } },
            "mcp": { "headersSecret": ["a", { "b": "c" }, null] },
        });
        let s = REDACTED_SENTINEL;
        assert_eq!(
            redact_secrets(&v),
            json!({
                "secrets": { "providers": { "vault": { "url": s, "on": true } } },
                "skills": { "entries": { "x": { "apiKey": { "source": "env", "provider": "default", "id": s } } } },
                "mcp": { "headersSecret": [s, { "b": s }, null] },
            })
        );
    }

    #[test]
    fn secret_key_patterns() {
        for k in [
            "token",
            "botToken",
            "apiKey",
            "api_key",
            "api-key",
            "APIKEY",
            "secret",
            "clientSecret",
            "privateKey",
            "password",
            "adminPassword",
            "encryptionKey",
            "serviceAccount",
            "serviceAccountRef",
            "webhookSecret",
            "signingSecret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "maxTokens",
            "tokenCount",
            "tokens",
            "passwordFile",
            "mode",
            "key",
            "keyPath",
            "apiBase",
            "primary",
            "tokenize",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn raw_redaction_keeps_comments_and_falls_back_safely() {
        let raw = "{\n  // the token\n  gateway: { auth: { token: 'tok-secret-1' } },\n  env: { K: \"${K}\" },\n}\n";
        let out = redact_raw(raw);
        assert_eq!(
            out,
            "{\n  // the token\n  gateway: { auth: { token: '__OPENCLAW_REDACTED__' } },\n  env: { K: \"${K}\" },\n}\n"
        );
        // The secret also appears as a non-secret value: textual replacement would corrupt it,
        // so the structured form is served instead — still without the secret.
        let raw = "{ gateway: { auth: { token: 'main' } }, agents: { list: [{ id: 'main' }] } }";
        let out = redact_raw(raw);
        let reparsed = parse_json5(&out).unwrap();
        assert_eq!(reparsed["gateway"]["auth"]["token"], REDACTED_SENTINEL);
        assert_eq!(reparsed["agents"]["list"][0]["id"], "main");
        // Numeric secret.
        let out = redact_raw("{ gateway: { auth: { password: 123456 } } }");
        assert!(!out.contains("123456"), "{out}");
        assert_eq!(redact_raw("{ not json"), "");
    }

    #[test]
    fn hmac_matches_rfc4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Case 6: key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn config_hash_format() {
        let h = config_hash("{}\n");
        assert!(h.starts_with("hmac-sha256:v1:"), "{h}");
        let tail = &h["hmac-sha256:v1:".len()..];
        assert_eq!(tail.len(), 43);
        assert!(tail
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(h, config_hash("{}\n"));
        assert_ne!(h, config_hash("{} \n"));
        assert_ne!(h, config_hash_keyed(b"other key", "{}\n"));
    }
}
