//! Session reset and maintenance policy: owns reading `session.*` from openclaw.json and
//! deciding, per session key, whether an automatic reset is due.
//!
//! Matches OpenClaw 2026.9.6 at runtime (`config/sessions/reset-policy.ts`, `reset.ts`,
//! `store-maintenance.ts`): `session.reset {mode: none|daily|idle, atHour, idleMinutes}`
//! (absent → none; an object without `mode` → daily; daily and idle limits both apply when
//! both are set), `session.resetByType {direct, group, thread}` and `session.resetByChannel`
//! overrides chosen from the session key, `session.resetTriggers` (default
//! `["/new", "/reset"]`, phrases allowed), and `session.maintenance {mode: enforce|warn,
//! pruneAfter ("30d"), maxEntries (5000)}`. Daily resets happen at `atHour` local time on the
//! gateway host. Values OpenClaw's schema would reject are applied as its runtime applies them
//! (or the default is kept) and reported in [`SessionPolicy::warnings`].
//!
//! Pure apart from [`local_offset_ms`], which asks the C library for the host's UTC offset.

use std::collections::BTreeMap;

use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// OpenClaw's `DEFAULT_RESET_AT_HOUR`.
const DEFAULT_AT_HOUR: u32 = 4;
/// OpenClaw's `DEFAULT_SESSION_PRUNE_AFTER_MS`.
const DEFAULT_PRUNE_AFTER_MS: i64 = 30 * DAY_MS;
/// OpenClaw's `DEFAULT_SESSION_MAX_ENTRIES`.
const DEFAULT_MAX_ENTRIES: usize = 5000;
/// JavaScript's `Number.MAX_SAFE_INTEGER`: OpenClaw rejects durations beyond it.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `mode` of a reset object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMode {
    /// No automatic reset (idle limits are ignored too).
    None,
    /// Reset at `atHour` local time (plus `idleMinutes` when set).
    Daily,
    /// Reset after `idleMinutes` without interaction.
    Idle,
    /// A value OpenClaw's schema rejects; its runtime then applies only `idleMinutes`.
    Other,
}

/// One `session.reset`-shaped object as configured; `None` fields were not set, so they
/// inherit from the next level (type override → base → default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetConfig {
    /// `mode`.
    pub mode: Option<ResetMode>,
    /// `atHour`, already floored and clamped to 0..=23 (non-numbers → 4, as OpenClaw).
    pub at_hour: Option<u32>,
    /// `idleMinutes`, floored and at least 0; 0 turns the idle limit off.
    pub idle_minutes: Option<u64>,
}

/// `session.resetByType`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetByType {
    /// Direct (one-to-one) sessions, including `agent:<id>:main`.
    pub direct: Option<ResetConfig>,
    /// Group and channel sessions.
    pub group: Option<ResetConfig>,
    /// Thread sessions.
    pub thread: Option<ResetConfig>,
}

/// Which `resetByType` entry a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// Neither group nor thread.
    Direct,
    /// The key has a `:group:` or `:channel:` segment.
    Group,
    /// The key's last `:thread:` marker is followed by a non-blank id.
    Thread,
}

/// The reset that applies to one session after overrides are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveReset {
    /// Effective mode.
    pub mode: ResetMode,
    /// Local hour of the daily boundary (used only in daily mode).
    pub at_hour: u32,
    /// Idle limit in minutes; `None` or 0 means no idle limit.
    pub idle_minutes: Option<u64>,
}

/// Everything the owner core needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// `session.reset` (`None`: not configured).
    pub reset: Option<ResetConfig>,
    /// `session.resetByType`.
    pub reset_by_type: ResetByType,
    /// `session.resetByChannel`, keyed as configured (matched against canonical channel ids).
    pub reset_by_channel: BTreeMap<String, ResetConfig>,
    /// Lower-cased reset triggers, in configured order (the first that matches wins).
    pub triggers: Vec<String>,
    /// Drop entries idle longer than this. Always `Some`: OpenClaw cannot turn age pruning off.
    pub prune_after_ms: Option<i64>,
    /// Keep at most this many entries (gateway-wide). Always `Some`, as in OpenClaw.
    pub max_entries: Option<usize>,
    /// `session.maintenance.mode` is `enforce` (default): prune and cap. `false` (`warn`): only
    /// report what maintenance would remove.
    pub maintenance_enforce: bool,
    /// Configured values that were ignored, replaced or clamped; the caller logs them.
    pub warnings: Vec<String>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            reset: None,
            reset_by_type: ResetByType::default(),
            reset_by_channel: BTreeMap::new(),
            triggers: default_triggers(),
            prune_after_ms: Some(DEFAULT_PRUNE_AFTER_MS),
            max_entries: Some(DEFAULT_MAX_ENTRIES),
            maintenance_enforce: true,
            warnings: Vec::new(),
        }
    }
}

fn default_triggers() -> Vec<String> {
    vec!["/new".into(), "/reset".into()]
}

/// Parse a duration as OpenClaw's `parseDurationMs(.., {defaultUnit: "d"})` does for
/// `session.maintenance`: `"30d"`, `"12h"`, `"90m"`, `"45s"`, `"500ms"`, composites like
/// `"1h30m"`, and bare numbers (strings or JSON numbers) in days. Units are case-insensitive;
/// spaces inside, weeks and other units are not durations. `None` when it is not a
/// duration; the result may be 0.
pub fn parse_duration_ms(v: &Value) -> Option<i64> {
    let days = match v {
        // JavaScript stringifies the number first; a negative one then fails the pattern.
        Value::Number(n) => n.as_f64().filter(|d| *d >= 0.0)?,
        Value::String(s) => return parse_duration_str(s),
        _ => return None,
    };
    // JavaScript writes numbers below 1e-6 in exponent notation, which is not a duration.
    if days != 0.0 && days < 1e-6 {
        return None;
    }
    safe_ms(days * DAY_MS as f64)
}

fn parse_duration_str(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let (first, rest) = duration_token(&s)?;
    let Some(first_unit) = first.1 else {
        // A bare number is in days, and only on its own.
        return if rest.is_empty() {
            safe_ms(first.0 * DAY_MS as f64)
        } else {
            None
        };
    };
    let mut total = first.0 * first_unit;
    let mut rest = rest;
    while !rest.is_empty() {
        let ((n, unit), tail) = duration_token(rest)?;
        // Each composite segment needs a unit.
        total += n * unit?;
        rest = tail;
    }
    safe_ms(total)
}

/// One `<digits>[.<digits>][ms|s|m|h|d]` token at the start of `s`: (value, unit ms), rest.
fn duration_token(s: &str) -> Option<((f64, Option<f64>), &str)> {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if int_end == 0 {
        return None;
    }
    let mut end = int_end;
    if let Some(frac) = s[int_end..].strip_prefix('.') {
        let frac_len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        // "1." is not a number in OpenClaw's pattern.
        if frac_len == 0 {
            return None;
        }
        end = int_end + 1 + frac_len;
    }
    let n: f64 = s[..end].parse().ok()?;
    let rest = &s[end..];
    // `ms` before `m` and `s`, as the alternation in OpenClaw's pattern.
    for (unit, mult) in [
        ("ms", 1.0),
        ("s", 1000.0),
        ("m", 60_000.0),
        ("h", HOUR_MS as f64),
        ("d", DAY_MS as f64),
    ] {
        if let Some(tail) = rest.strip_prefix(unit) {
            return Some(((n, Some(mult)), tail));
        }
    }
    Some(((n, None), rest))
}

/// Round to whole ms; beyond JavaScript's safe integers OpenClaw rejects the value.
fn safe_ms(ms: f64) -> Option<i64> {
    let ms = ms.round();
    (ms.is_finite() && (0.0..=MAX_SAFE_INTEGER).contains(&ms)).then_some(ms as i64)
}

/// `session.reset`-shaped object at `path`, or `None` when absent.
fn parse_reset(v: &Value, path: &str, warnings: &mut Vec<String>) -> Option<ResetConfig> {
    let obj = match v {
        Value::Null => return None,
        Value::Object(o) => o,
        _ => {
            warnings.push(format!("{path} is not an object; ignored"));
            return None;
        }
    };
    let mut r = ResetConfig::default();
    match obj.get("mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "none" => r.mode = Some(ResetMode::None),
        Some(Value::String(m)) if m == "daily" => r.mode = Some(ResetMode::Daily),
        Some(Value::String(m)) if m == "idle" => r.mode = Some(ResetMode::Idle),
        Some(other) => {
            // OpenClaw's runtime keeps the unknown mode, so neither the daily boundary nor
            // the `none` switch applies; only a set idleMinutes can reset.
            warnings.push(format!(
                "{path}.mode {other} is not none, daily or idle; only idleMinutes applies"
            ));
            r.mode = Some(ResetMode::Other);
        }
    }
    match obj.get("atHour") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let h = n.as_f64().unwrap_or(f64::from(DEFAULT_AT_HOUR)).floor();
            // normalizeResetAtHour: floor, then clamp (not wrap) into 0..=23.
            let clamped = h.clamp(0.0, 23.0);
            if clamped != h || n.as_f64() != Some(h) {
                warnings.push(format!(
                    "{path}.atHour {n} is not an hour 0-23; using {clamped}"
                ));
            }
            r.at_hour = Some(clamped as u32);
        }
        Some(other) => {
            warnings.push(format!(
                "{path}.atHour {other} is not a number; using {DEFAULT_AT_HOUR}"
            ));
            r.at_hour = Some(DEFAULT_AT_HOUR);
        }
    }
    match obj.get("idleMinutes") {
        None | Some(Value::Null) => {}
        Some(v) => {
            // OpenClaw applies Math.floor (which coerces strings and booleans) and then
            // max(0); a value that is not a number afterwards means no idle limit.
            let raw = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) if s.trim().is_empty() => Some(0.0),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                _ => None,
            }
            .filter(|m| m.is_finite());
            let minutes = raw.map_or(0.0, |m| m.floor().max(0.0));
            if !matches!(v, Value::Number(_)) || raw != Some(minutes) || minutes == 0.0 {
                warnings.push(format!(
                    "{path}.idleMinutes {v} is not a positive whole number; using {minutes}{}",
                    if minutes == 0.0 {
                        " (no idle reset)"
                    } else {
                        ""
                    }
                ));
            }
            // Saturates for absurd values: such a limit never expires either way.
            r.idle_minutes = Some(minutes as u64);
        }
    }
    Some(r)
}

impl SessionPolicy {
    /// Read from the parsed config document. Invalid values keep defaults or are normalized
    /// as OpenClaw's runtime normalizes them; each such value adds a warning.
    pub fn from_config(parsed: &Value) -> Self {
        let mut p = Self::default();
        let w = &mut p.warnings;
        let session = &parsed["session"];
        p.reset = parse_reset(&session["reset"], "session.reset", w);
        match &session["resetByType"] {
            Value::Null => {}
            Value::Object(o) => {
                for (name, v) in o {
                    let path = format!("session.resetByType.{name}");
                    let slot = match name.as_str() {
                        "direct" => &mut p.reset_by_type.direct,
                        "group" => &mut p.reset_by_type.group,
                        "thread" => &mut p.reset_by_type.thread,
                        _ => {
                            w.push(format!("{path}: not direct, group or thread; ignored"));
                            continue;
                        }
                    };
                    *slot = parse_reset(v, &path, w);
                }
            }
            _ => w.push("session.resetByType is not an object; ignored".into()),
        }
        match &session["resetByChannel"] {
            Value::Null => {}
            Value::Object(o) => {
                for (channel, v) in o {
                    let path = format!("session.resetByChannel.{channel}");
                    if let Some(r) = parse_reset(v, &path, w) {
                        p.reset_by_channel.insert(channel.clone(), r);
                    }
                }
            }
            _ => w.push("session.resetByChannel is not an object; ignored".into()),
        }
        match &session["resetTriggers"] {
            Value::Null => {}
            // An empty list keeps the defaults (OpenClaw checks `resetTriggers?.length`).
            Value::Array(t) if t.is_empty() => {}
            Value::Array(t) => {
                p.triggers = t
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| s.trim().to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                if p.triggers.len() != t.len() {
                    w.push("session.resetTriggers: empty or non-string entries ignored".into());
                }
            }
            _ => w.push("session.resetTriggers is not a list; using /new and /reset".into()),
        }
        let m = &session["maintenance"];
        match &m["mode"] {
            Value::Null => {}
            Value::String(s) if s == "enforce" => {}
            Value::String(s) if s == "warn" => p.maintenance_enforce = false,
            other => w.push(format!(
                "session.maintenance.mode {other} is not enforce or warn; enforcing"
            )),
        }
        let prune = &m["pruneAfter"];
        let blank = matches!(prune, Value::String(s) if s.trim().is_empty());
        if !prune.is_null() && !blank {
            match parse_duration_ms(prune) {
                Some(ms) if ms > 0 => p.prune_after_ms = Some(ms),
                // Zero is rejected by OpenClaw's schema and `openclaw doctor --fix` removes it
                // so the default applies; it never means "keep forever".
                _ => w.push(format!(
                    "session.maintenance.pruneAfter {prune} is not a positive duration \
                     (use ms, s, m, h, d, e.g. 30d or 1h30m); keeping 30d"
                )),
            }
        }
        match &m["maxEntries"] {
            Value::Null => {}
            v => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => p.max_entries = Some(n),
                _ => w.push(format!(
                    "session.maintenance.maxEntries {v} is not a positive whole number; \
                     keeping {DEFAULT_MAX_ENTRIES}"
                )),
            },
        }
        p
    }

    /// The reset that applies to `session_key`, as OpenClaw's `resolveSessionResetPolicy`:
    /// a `resetByChannel` entry for the key's channel replaces `reset` and `resetByType`
    /// outright; otherwise the `resetByType` entry's fields override `reset`'s.
    pub fn effective_reset(&self, session_key: &str) -> EffectiveReset {
        // This runs before every chat turn: parse the key only when an override could apply.
        let by_channel = if self.reset_by_channel.is_empty() {
            None
        } else {
            session_channel(session_key).and_then(|c| self.reset_by_channel.get(&c))
        };
        let base = by_channel.or(self.reset.as_ref());
        let typed = if by_channel.is_some() || self.reset_by_type == ResetByType::default() {
            None
        } else {
            match session_type(session_key) {
                SessionType::Direct => self.reset_by_type.direct.as_ref(),
                SessionType::Group => self.reset_by_type.group.as_ref(),
                SessionType::Thread => self.reset_by_type.thread.as_ref(),
            }
        };
        let base_mode = base.and_then(|b| b.mode);
        let mode = match typed {
            // A type entry without a mode inherits the base mode unless that is `none`.
            Some(t) => t
                .mode
                .or(base_mode.filter(|m| *m != ResetMode::None))
                .unwrap_or(ResetMode::Daily),
            None => base_mode.unwrap_or(if base.is_some() {
                ResetMode::Daily
            } else {
                ResetMode::None
            }),
        };
        let at_hour = typed
            .and_then(|t| t.at_hour)
            .or(base.and_then(|b| b.at_hour))
            .unwrap_or(DEFAULT_AT_HOUR);
        let idle_minutes = typed
            .and_then(|t| t.idle_minutes)
            .or(base.and_then(|b| b.idle_minutes))
            // OpenClaw's DEFAULT_IDLE_MINUTES is 0: idle mode without a limit never resets.
            .or((mode == ResetMode::Idle).then_some(0));
        EffectiveReset {
            mode,
            at_hour,
            idle_minutes,
        }
    }

    /// Is an automatic reset due for `session_key` before the next turn? Times are epoch ms;
    /// the daily boundary is at `atHour` local time on this host.
    pub fn reset_due(
        &self,
        session_key: &str,
        session_started_at_ms: i64,
        last_interaction_ms: Option<i64>,
        now_ms: i64,
    ) -> bool {
        self.reset_due_with(
            session_key,
            session_started_at_ms,
            last_interaction_ms,
            now_ms,
            &local_offset_ms,
        )
    }

    /// [`Self::reset_due`] with the host's UTC offset injected (tests use fixed zones).
    fn reset_due_with(
        &self,
        session_key: &str,
        session_started_at_ms: i64,
        last_interaction_ms: Option<i64>,
        now_ms: i64,
        offset: &dyn Fn(i64) -> i64,
    ) -> bool {
        let r = self.effective_reset(session_key);
        if r.mode == ResetMode::None {
            return false;
        }
        // As OpenClaw's resolveTimestamp: negative or future times (a clock that was ahead)
        // are ignored, so they cannot keep a session fresh forever. OpenClaw then falls back
        // to `updatedAt`, which this signature does not carry; 0 makes such a session stale.
        let valid = |t: i64| (0..=now_ms).contains(&t).then_some(t);
        let started = valid(session_started_at_ms).unwrap_or(0);
        let last = last_interaction_ms.and_then(valid).unwrap_or(started);
        if r.mode == ResetMode::Daily && started < daily_reset_at_ms(now_ms, r.at_hour, offset) {
            return true;
        }
        match r.idle_minutes.filter(|m| *m > 0) {
            Some(m) => {
                let idle = i64::try_from(m).unwrap_or(i64::MAX).saturating_mul(60_000);
                now_ms > last.saturating_add(idle)
            }
            None => false,
        }
    }

    /// If `message` starts with a reset trigger (case-insensitive; a trigger may be several
    /// words), the text after it, possibly empty. The trigger must be followed by the end of
    /// the message or whitespace; a `/command` trigger may also be followed by `:`
    /// (`/new: hello`), as OpenClaw normalizes command bodies.
    pub fn trigger<'a>(&self, message: &'a str) -> Option<&'a str> {
        let text = message.trim_start();
        for t in &self.triggers {
            let Some(rest) = strip_prefix_ci(text, t) else {
                continue;
            };
            match rest.chars().next() {
                None => return Some(""),
                Some(c) if c.is_whitespace() => return Some(rest.trim_start()),
                Some(':')
                    if t.starts_with('/')
                        && !t.contains(|c: char| c.is_whitespace() || c == ':') =>
                {
                    return Some(rest[1..].trim_start())
                }
                _ => {}
            }
        }
        None
    }
}

/// `text` without a leading `lower` (already lower-cased), compared case-insensitively.
fn strip_prefix_ci<'a>(text: &'a str, lower: &str) -> Option<&'a str> {
    let mut want = lower;
    for (i, c) in text.char_indices() {
        if want.is_empty() {
            return Some(&text[i..]);
        }
        for l in c.to_lowercase() {
            let mut buf = [0u8; 4];
            want = want.strip_prefix(&*l.encode_utf8(&mut buf))?;
        }
    }
    want.is_empty().then_some("")
}

/// The part of a key after `agent:<agentId>:`, as OpenClaw's `parseAgentSessionKeyParts`.
fn agent_rest(key: &str) -> Option<&str> {
    let after = key.strip_prefix("agent:")?;
    let (agent, rest) = after.split_once(':')?;
    (!agent.trim().is_empty() && !rest.is_empty() && !rest.starts_with(':')).then_some(rest)
}

/// Reset type of a session key, as OpenClaw's `resolveSessionResetType` for a bare key: a
/// non-empty `:thread:<id>` suffix is a thread, a `:group:` or `:channel:` segment a group,
/// anything else (e.g. `agent:main:main`) direct.
pub fn session_type(session_key: &str) -> SessionType {
    let key = session_key.trim().to_lowercase();
    let thread = key
        .rfind(":thread:")
        .is_some_and(|i| !key[i + 8..].trim().is_empty());
    if thread {
        SessionType::Thread
    } else if key.contains(":group:") || key.contains(":channel:") {
        SessionType::Group
    } else {
        SessionType::Direct
    }
}

/// Canonical channel id of a session key for `resetByChannel`, from the external delivery
/// shapes OpenClaw's `parseSessionDeliveryRoute` accepts:
/// `agent:<id>:<channel>:<group|channel|direct|dm>:<peer>` and
/// `agent:<id>:<channel>:<account>:<direct|dm>:<peer>` (a `:thread:<id>` suffix is ignored).
/// Other keys (`agent:main:main`, cron, subagents) have no channel.
pub fn session_channel(session_key: &str) -> Option<String> {
    let key = session_key.trim().to_lowercase();
    let base = key.rfind(":thread:").map_or(key.as_str(), |i| &key[..i]);
    let parts: Vec<&str> = agent_rest(base)?.split(':').collect();
    if parts.len() < 3 || parts[0] == "agent" {
        return None;
    }
    let channel = parts[0].trim();
    // The peer id must be non-blank (its first segment is enough: the rest only adds).
    let route = if parts.len() >= 4 && matches!(parts[2], "direct" | "dm") {
        !parts[1].trim().is_empty() && !parts[3].trim().is_empty()
    } else {
        matches!(parts[1], "channel" | "direct" | "dm" | "group") && !parts[2].trim().is_empty()
    };
    (route && !channel.is_empty()).then(|| canonical_channel(channel).to_string())
}

/// Built-in channel aliases (OpenClaw's bundled channel ids); other ids stay as they are.
fn canonical_channel(channel: &str) -> &str {
    match channel {
        "lark" => "feishu",
        "gchat" | "google-chat" => "googlechat",
        "imsg" => "imessage",
        "internet-relay-chat" => "irc",
        "teams" => "msteams",
        "nc" | "nc-talk" => "nextcloud-talk",
        "twitch-chat" => "twitch",
        "zl" => "zalo",
        "zlu" => "zalouser",
        other => other,
    }
}

/// The most recent `at_hour`:00 local time at or before `now_ms`, as OpenClaw's
/// `resolveDailyResetAtMs` (JavaScript `Date#setHours` on the local calendar day).
fn daily_reset_at_ms(now_ms: i64, at_hour: u32, offset: &dyn Fn(i64) -> i64) -> i64 {
    let day = now_ms.saturating_add(offset(now_ms)).div_euclid(DAY_MS);
    let hour = i64::from(at_hour) * HOUR_MS;
    let today = local_to_utc_ms(day * DAY_MS + hour, offset);
    if now_ms < today {
        local_to_utc_ms((day - 1) * DAY_MS + hour, offset)
    } else {
        today
    }
}

/// The instant of local wall-clock time `local_ms` (ms since 1970-01-01T00:00 local), with
/// ECMAScript's rules, so daily boundaries match OpenClaw's across DST changes: a time that
/// occurs twice takes the first occurrence; a time skipped by a forward change uses the
/// offset before the change, which lands the same distance past the change (02:00 in a
/// 02:00→03:00 gap becomes 03:00).
fn local_to_utc_ms(local_ms: i64, offset: &dyn Fn(i64) -> i64) -> i64 {
    // Offsets a day either side bracket any single transition near `local_ms`.
    let first = local_ms - offset(local_ms - DAY_MS);
    let second = local_ms - offset(local_ms + DAY_MS);
    let is_valid = |u: i64| u + offset(u) == local_ms;
    match (is_valid(first), is_valid(second)) {
        (true, true) => first.min(second),
        (false, true) => second,
        _ => first,
    }
}

/// The host's UTC offset in ms at `utc_ms` (local = UTC + offset), from the C library's
/// time-zone rules (`TZ`, else /etc/localtime). 0 (UTC) when the C library cannot convert.
#[allow(unsafe_code)] // The one FFI call; the crate otherwise has no unsafe code.
#[allow(clippy::useless_conversion)] // `tm_gmtoff` is a C long: i64 here, i32 on 32-bit targets.
pub fn local_offset_ms(utc_ms: i64) -> i64 {
    // `time_t` is 32 bits on some targets; out of its range there is no conversion.
    let Some(t) = libc::time_t::try_from(utc_ms.div_euclid(1000)).ok() else {
        return 0;
    };
    // SAFETY: `tm` is plain data (integers and a nullable pointer), so all-zero is a valid
    // value; localtime_r only writes into the `tm` we own and reads `t`, both live for the
    // call, and is the reentrant variant (no shared static buffer).
    let converted = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm.tm_gmtoff)
    };
    converted.map_or(0, |secs| i64::from(secs) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: i64 = 60_000;
    /// 2024-10-07T00:00Z, a Monday well away from DST changes.
    const DAY0: i64 = 20_003 * DAY_MS;

    fn policy(session: Value) -> SessionPolicy {
        SessionPolicy::from_config(&json!({ "session": session }))
    }

    fn utc(_: i64) -> i64 {
        0
    }

    /// [`SessionPolicy::reset_due`] on a host whose local time is UTC.
    fn due_utc(p: &SessionPolicy, key: &str, started: i64, last: Option<i64>, now: i64) -> bool {
        p.reset_due_with(key, started, last, now, &utc)
    }

    #[test]
    fn parses_durations_like_openclaw() {
        assert_eq!(parse_duration_ms(&json!("30d")), Some(30 * DAY_MS));
        assert_eq!(parse_duration_ms(&json!("90m")), Some(90 * MIN));
        assert_eq!(parse_duration_ms(&json!("500ms")), Some(500));
        assert_eq!(parse_duration_ms(&json!(" 2H ")), Some(2 * HOUR_MS));
        assert_eq!(parse_duration_ms(&json!("1h30m")), Some(90 * MIN));
        assert_eq!(parse_duration_ms(&json!("1.5s")), Some(1500));
        // Bare numbers are days, as OpenClaw's defaultUnit "d".
        assert_eq!(parse_duration_ms(&json!(7)), Some(7 * DAY_MS));
        assert_eq!(parse_duration_ms(&json!("7")), Some(7 * DAY_MS));
        assert_eq!(parse_duration_ms(&json!(0)), Some(0));
        for bad in [
            json!("30 days"),
            json!("7w"),
            json!("1h 30m"),
            json!("1h30"),
            json!("1."),
            json!("-5d"),
            json!(-5),
            json!(false),
            json!(""),
            json!("1e30d"),
        ] {
            assert_eq!(parse_duration_ms(&bad), None, "{bad}");
        }
    }

    #[test]
    fn maintenance_from_config() {
        let p = policy(json!({"maintenance": {"pruneAfter": "2h", "maxEntries": 10}}));
        assert_eq!(p.prune_after_ms, Some(2 * HOUR_MS));
        assert_eq!(p.max_entries, Some(10));
        assert!(p.maintenance_enforce);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);

        let warn = policy(json!({"maintenance": {"mode": "warn"}}));
        assert!(!warn.maintenance_enforce);
        assert!(warn.warnings.is_empty());
        assert!(policy(json!({"maintenance": {"mode": "enforce"}})).maintenance_enforce);
        let odd = policy(json!({"maintenance": {"mode": "dry"}}));
        assert!(odd.maintenance_enforce);
        assert_eq!(odd.warnings.len(), 1);
        assert!(SessionPolicy::default().maintenance_enforce);
    }

    #[test]
    fn bad_maintenance_values_keep_defaults_and_warn() {
        for bad in [json!("30 days"), json!(0), json!(false), json!("0d")] {
            let p = policy(json!({"maintenance": {"pruneAfter": bad}}));
            assert_eq!(p.prune_after_ms, Some(30 * DAY_MS), "{bad}");
            assert_eq!(p.warnings.len(), 1, "{bad}");
            assert!(p.warnings[0].contains("pruneAfter"), "{:?}", p.warnings);
        }
        // Blank means unset, as in OpenClaw.
        let blank = policy(json!({"maintenance": {"pruneAfter": "  "}}));
        assert_eq!(blank.prune_after_ms, Some(30 * DAY_MS));
        assert!(blank.warnings.is_empty());
        for bad in [json!(0), json!(-1), json!(2.5), json!("10")] {
            let p = policy(json!({"maintenance": {"maxEntries": bad}}));
            assert_eq!(p.max_entries, Some(5000), "{bad}");
            assert_eq!(p.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn reset_modes_and_defaults() {
        let none = SessionPolicy::default();
        assert_eq!(
            none.effective_reset("agent:main:main").mode,
            ResetMode::None
        );
        assert!(!due_utc(&none, "agent:main:main", 0, Some(0), DAY0 * 2));

        // An object without `mode` is daily at 04:00.
        let p = policy(json!({"reset": {}}));
        let r = p.effective_reset("agent:main:main");
        assert_eq!(
            (r.mode, r.at_hour, r.idle_minutes),
            (ResetMode::Daily, 4, None)
        );
        assert!(due_utc(
            &p,
            "agent:main:main",
            DAY0 + 3 * HOUR_MS,
            None,
            DAY0 + 5 * HOUR_MS
        ));

        // `none` ignores idleMinutes.
        let off = policy(json!({"reset": {"mode": "none", "idleMinutes": 1}}));
        assert!(!due_utc(&off, "agent:main:main", 0, Some(0), DAY0));

        // Idle mode without idleMinutes uses OpenClaw's default 0: never resets.
        let idle = policy(json!({"reset": {"mode": "idle"}}));
        assert_eq!(
            idle.effective_reset("agent:main:main").idle_minutes,
            Some(0)
        );
        assert!(!due_utc(&idle, "agent:main:main", 0, Some(0), DAY0));

        // Idle mode ignores atHour.
        let idle = policy(json!({"reset": {"mode": "idle", "atHour": 4, "idleMinutes": 600}}));
        assert!(!due_utc(
            &idle,
            "agent:main:main",
            DAY0 + 3 * HOUR_MS,
            None,
            DAY0 + 5 * HOUR_MS
        ));
    }

    #[test]
    fn idle_minutes_zero_is_off() {
        for cfg in [
            json!({"mode": "idle", "idleMinutes": 0}),
            json!({"mode": "idle", "idleMinutes": -5}),
            json!({"mode": "idle", "idleMinutes": "soon"}),
        ] {
            let p = policy(json!({ "reset": cfg }));
            assert!(!due_utc(&p, "agent:main:main", 0, Some(0), DAY0), "{cfg}");
            assert_eq!(p.warnings.len(), 1, "{cfg}");
        }
        // Floored, as Math.floor: 1.9 minutes is 1 minute.
        let p = policy(json!({"reset": {"mode": "idle", "idleMinutes": 1.9}}));
        assert_eq!(p.effective_reset("agent:main:main").idle_minutes, Some(1));
        assert!(due_utc(
            &p,
            "agent:main:main",
            0,
            Some(DAY0),
            DAY0 + MIN + 1
        ));
    }

    #[test]
    fn idle_reset_uses_last_interaction_then_start() {
        let p = policy(json!({"reset": {"mode": "idle", "idleMinutes": 10}}));
        let k = "agent:main:main";
        let last = DAY0 + HOUR_MS;
        assert!(!due_utc(&p, k, 0, Some(last), last + 10 * MIN));
        assert!(due_utc(&p, k, 0, Some(last), last + 10 * MIN + 1));
        // No interaction yet: idle counts from the session start, as OpenClaw.
        assert!(!due_utc(&p, k, last, None, last + 9 * MIN));
        assert!(due_utc(&p, k, last, None, last + 11 * MIN));
        // Huge limits saturate instead of overflowing.
        let big = policy(json!({"reset": {"mode": "idle", "idleMinutes": 1e300}}));
        assert!(!due_utc(&big, k, 0, Some(0), i64::MAX / 2));
    }

    #[test]
    fn daily_and_idle_both_apply() {
        let p = policy(json!({"reset": {"mode": "daily", "atHour": 4, "idleMinutes": 30}}));
        let k = "agent:main:main";
        let started = DAY0 + 5 * HOUR_MS;
        assert!(!due_utc(&p, k, started, Some(started), started + 29 * MIN));
        assert!(due_utc(&p, k, started, Some(started), started + 31 * MIN));
        assert!(due_utc(
            &p,
            k,
            started,
            Some(DAY0 + DAY_MS + 4 * HOUR_MS),
            DAY0 + DAY_MS + 4 * HOUR_MS
        ));
    }

    #[test]
    fn at_hour_is_floored_and_clamped() {
        let hour = |v: Value| {
            let p = policy(json!({"reset": {"mode": "daily", "atHour": v}}));
            (
                p.effective_reset("agent:main:main").at_hour,
                p.warnings.len(),
            )
        };
        assert_eq!(hour(json!(4)), (4, 0));
        assert_eq!(hour(json!(0)), (0, 0));
        assert_eq!(hour(json!(23)), (23, 0));
        assert_eq!(hour(json!(25)), (23, 1), "clamped, not wrapped to 1");
        assert_eq!(hour(json!(100)), (23, 1));
        assert_eq!(hour(json!(-3)), (0, 1));
        assert_eq!(hour(json!(5.7)), (5, 1));
        assert_eq!(hour(json!("6")), (4, 1), "non-numbers use the default");
    }

    #[test]
    fn daily_reset_crosses_the_boundary_once() {
        let p = policy(json!({"reset": {"mode": "daily", "atHour": 4}}));
        let k = "agent:main:main";
        let started = DAY0 + 3 * HOUR_MS; // 03:00
        assert!(!due_utc(
            &p,
            k,
            started,
            None,
            DAY0 + 3 * HOUR_MS + 30 * MIN
        ));
        assert!(due_utc(&p, k, started, None, DAY0 + 5 * HOUR_MS)); // crossed 04:00
        let restarted = DAY0 + 5 * HOUR_MS;
        assert!(!due_utc(&p, k, restarted, None, DAY0 + 23 * HOUR_MS));
        assert!(!due_utc(
            &p,
            k,
            restarted,
            None,
            DAY0 + DAY_MS + 4 * HOUR_MS - 1
        ));
        assert!(due_utc(&p, k, restarted, None, DAY0 + DAY_MS + 4 * HOUR_MS));
    }

    #[test]
    fn daily_boundary_is_local_time() {
        // UTC+2: 04:00 local is 02:00Z.
        let plus2 = |_: i64| 2 * HOUR_MS;
        assert_eq!(
            daily_reset_at_ms(DAY0 + 3 * HOUR_MS, 4, &plus2),
            DAY0 + 2 * HOUR_MS
        );
        assert_eq!(
            daily_reset_at_ms(DAY0 + HOUR_MS, 4, &plus2),
            DAY0 - 22 * HOUR_MS
        );
        // UTC-8 at 03:00Z is 19:00 the previous local day: the boundary is that day's 04:00.
        let minus8 = |_: i64| -8 * HOUR_MS;
        assert_eq!(
            daily_reset_at_ms(DAY0 + 3 * HOUR_MS, 4, &minus8),
            DAY0 - DAY_MS + 12 * HOUR_MS
        );
        // Half-hour zones: UTC+5:30, 04:00 local is 22:30Z the day before.
        let india = |_: i64| 5 * HOUR_MS + 30 * MIN;
        assert_eq!(
            daily_reset_at_ms(DAY0, 4, &india),
            DAY0 - HOUR_MS - 30 * MIN
        );

        let p = policy(json!({"reset": {"mode": "daily", "atHour": 4}}));
        let k = "agent:main:main";
        let started = DAY0 + HOUR_MS; // 03:00 local at UTC+2
        assert!(!p.reset_due_with(k, started, None, DAY0 + HOUR_MS + 59 * MIN, &plus2));
        assert!(p.reset_due_with(k, started, None, DAY0 + 2 * HOUR_MS, &plus2));
        // In UTC the same instants have not reached 04:00 yet.
        assert!(!due_utc(&p, k, started, None, DAY0 + 2 * HOUR_MS));
    }

    #[test]
    fn daily_boundary_across_dst_changes() {
        // A CET/CEST-like zone changing at DAY0+01:00Z.
        let change = DAY0 + HOUR_MS;
        let spring = move |t: i64| if t < change { HOUR_MS } else { 2 * HOUR_MS };
        let autumn = move |t: i64| if t < change { 2 * HOUR_MS } else { HOUR_MS };
        // Spring: local 02:00 does not exist (02:00 → 03:00); the boundary is the change.
        assert_eq!(daily_reset_at_ms(DAY0 + 5 * HOUR_MS, 2, &spring), change);
        // Hours after the change use the new offset: 04:00 local = 02:00Z.
        assert_eq!(
            daily_reset_at_ms(DAY0 + 5 * HOUR_MS, 4, &spring),
            DAY0 + 2 * HOUR_MS
        );
        // Autumn: local 02:00 happens at 00:00Z and again at 01:00Z; the first one counts.
        assert_eq!(daily_reset_at_ms(DAY0 + 5 * HOUR_MS, 2, &autumn), DAY0);
        assert_eq!(
            daily_reset_at_ms(DAY0 + 5 * HOUR_MS, 4, &autumn),
            DAY0 + 3 * HOUR_MS
        );
        // Before the day's boundary, the previous day's (with its own offset) applies.
        assert_eq!(
            daily_reset_at_ms(DAY0 + 2 * HOUR_MS, 4, &autumn),
            DAY0 - DAY_MS + 2 * HOUR_MS
        );
    }

    #[test]
    fn host_offset_matches_date_command() {
        // Cross-check the C library conversion against date(1) in whatever zone the tests
        // run in (run them with TZ=Europe/Berlin etc. to exercise DST); skipped without
        // GNU date.
        for secs in [
            0_i64,
            1_711_846_800,
            1_711_850_400,
            1_729_990_800,
            1_750_000_000,
        ] {
            let Ok(out) = std::process::Command::new("date")
                .args(["-d", &format!("@{secs}"), "+%z"])
                .output()
            else {
                return;
            };
            let z = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || z.len() != 5 {
                return;
            }
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let h: i64 = z[1..3].parse().unwrap();
            let m: i64 = z[3..5].parse().unwrap();
            assert_eq!(
                local_offset_ms(secs * 1000),
                sign * (h * HOUR_MS + m * MIN),
                "@{secs}"
            );
        }
    }

    #[test]
    fn future_and_negative_timestamps_do_not_keep_a_session_fresh() {
        let daily = policy(json!({"reset": {"mode": "daily", "atHour": 4}}));
        let k = "agent:main:main";
        let now = DAY0 + 12 * HOUR_MS;
        // A start written by a clock that ran ahead is ignored: the session is stale.
        assert!(due_utc(&daily, k, now + DAY_MS, None, now));
        assert!(due_utc(&daily, k, -1, None, now));
        assert!(!due_utc(&daily, k, now - HOUR_MS, None, now));
        let idle = policy(json!({"reset": {"mode": "idle", "idleMinutes": 10}}));
        // A future last interaction falls back to the start.
        assert!(due_utc(&idle, k, now - HOUR_MS, Some(now + HOUR_MS), now));
        assert!(!due_utc(&idle, k, now - 5 * MIN, Some(now + HOUR_MS), now));
    }

    #[test]
    fn session_types_and_channels_from_keys() {
        assert_eq!(session_type("agent:main:main"), SessionType::Direct);
        assert_eq!(
            session_type("agent:main:telegram:direct:123"),
            SessionType::Direct
        );
        assert_eq!(
            session_type("agent:main:discord:group:42"),
            SessionType::Group
        );
        assert_eq!(
            session_type("agent:main:Slack:Channel:C1"),
            SessionType::Group
        );
        assert_eq!(
            session_type("agent:main:slack:channel:c1:thread:171.2"),
            SessionType::Thread
        );
        assert_eq!(
            session_type("agent:main:slack:channel:c1:thread:  "),
            SessionType::Group
        );

        assert_eq!(session_channel("agent:main:main"), None);
        assert_eq!(
            session_channel("agent:main:discord:group:42").as_deref(),
            Some("discord")
        );
        assert_eq!(
            session_channel("agent:main:telegram:direct:123").as_deref(),
            Some("telegram")
        );
        assert_eq!(
            session_channel("agent:main:telegram:acct1:dm:123").as_deref(),
            Some("telegram")
        );
        assert_eq!(
            session_channel("agent:main:teams:channel:x:thread:9").as_deref(),
            Some("msteams")
        );
        assert_eq!(session_channel("agent:main:cron:job:run:1"), None);
        assert_eq!(session_channel("agent:main:discord:group:"), None);
        assert_eq!(session_channel("agent:main:agent:x:discord:group:1"), None);
        assert_eq!(session_channel("discord:group:42"), None);
    }

    #[test]
    fn type_and_channel_overrides() {
        let p = policy(json!({
            "reset": {"mode": "daily", "atHour": 4},
            "resetByType": {
                "direct": {"mode": "idle", "idleMinutes": 240},
                "group": {"idleMinutes": 120},
                "thread": {"atHour": 6}
            },
            "resetByChannel": {"discord": {"mode": "idle", "idleMinutes": 30}}
        }));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let eff = |k: &str| {
            let r = p.effective_reset(k);
            (r.mode, r.at_hour, r.idle_minutes)
        };
        assert_eq!(eff("agent:main:main"), (ResetMode::Idle, 4, Some(240)));
        // A type entry without mode inherits the base mode and fills in its own fields.
        assert_eq!(
            eff("agent:main:slack:group:g1"),
            (ResetMode::Daily, 4, Some(120))
        );
        assert_eq!(
            eff("agent:main:slack:channel:c1:thread:7"),
            (ResetMode::Daily, 6, None)
        );
        // The channel entry wins outright (no type fields, no base fields).
        assert_eq!(
            eff("agent:main:discord:group:42"),
            (ResetMode::Idle, 4, Some(30))
        );

        let now = DAY0 + 12 * HOUR_MS;
        // Direct: idle 240 min, no daily boundary.
        assert!(!due_utc(
            &p,
            "agent:main:main",
            DAY0 - DAY_MS,
            Some(now - 200 * MIN),
            now
        ));
        // Discord group: idle 30 min instead of the group type's 120.
        assert!(due_utc(
            &p,
            "agent:main:discord:group:42",
            now - HOUR_MS,
            Some(now - 31 * MIN),
            now
        ));
        assert!(!due_utc(
            &p,
            "agent:main:slack:group:g1",
            now - HOUR_MS,
            Some(now - 31 * MIN),
            now
        ));
        // Slack group: daily at 04:00 applies.
        assert!(due_utc(
            &p,
            "agent:main:slack:group:g1",
            DAY0 + 3 * HOUR_MS,
            Some(now),
            now
        ));

        // With a base mode of `none`, a type entry without mode is daily.
        let p = policy(json!({"reset": {"mode": "none"}, "resetByType": {"thread": {}}}));
        assert_eq!(
            p.effective_reset("agent:main:x:channel:c:thread:1").mode,
            ResetMode::Daily
        );
        assert_eq!(p.effective_reset("agent:main:main").mode, ResetMode::None);
        // Only a type entry: that type resets, others do not.
        let p = policy(json!({"resetByType": {"group": {"mode": "idle", "idleMinutes": 5}}}));
        assert_eq!(p.effective_reset("agent:main:main").mode, ResetMode::None);
        assert_eq!(
            p.effective_reset("agent:main:x:group:1").mode,
            ResetMode::Idle
        );

        let bad = policy(json!({"resetByType": {"dm": {"mode": "idle"}}, "reset": "daily"}));
        assert_eq!(bad.warnings.len(), 2, "{:?}", bad.warnings);
        assert_eq!(bad.effective_reset("agent:main:main").mode, ResetMode::None);
    }

    #[test]
    fn unknown_mode_applies_only_idle() {
        let p = policy(json!({"reset": {"mode": "weekly", "atHour": 4, "idleMinutes": 10}}));
        assert_eq!(p.warnings.len(), 1);
        let k = "agent:main:main";
        assert!(!due_utc(
            &p,
            k,
            DAY0 - DAY_MS,
            Some(DAY0 + HOUR_MS),
            DAY0 + HOUR_MS + 5 * MIN
        ));
        assert!(due_utc(
            &p,
            k,
            DAY0 - DAY_MS,
            Some(DAY0 + HOUR_MS),
            DAY0 + HOUR_MS + 11 * MIN
        ));
    }

    #[test]
    fn triggers() {
        let p = SessionPolicy::default();
        assert_eq!(p.trigger("/new hello there"), Some("hello there"));
        assert_eq!(p.trigger("  /RESET"), Some(""));
        assert_eq!(p.trigger("/new\nsecond line"), Some("second line"));
        assert_eq!(p.trigger("/new: hello"), Some("hello"));
        assert_eq!(p.trigger("/new:hello"), Some("hello"));
        assert_eq!(p.trigger("/newish"), None);
        assert_eq!(p.trigger("/new-chat"), None);
        assert_eq!(p.trigger("hi /new"), None);
        assert_eq!(p.trigger("hi"), None);
        assert_eq!(p.trigger(""), None);

        let p = policy(json!({"resetTriggers": ["Start over", "/tell", "", 5]}));
        assert_eq!(p.triggers, ["start over", "/tell"]);
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.trigger("start OVER please"), Some("please"));
        assert_eq!(p.trigger("Start over"), Some(""));
        assert_eq!(p.trigger("start overtime"), None);
        assert_eq!(p.trigger("start"), None);
        assert_eq!(
            p.trigger("start over: x"),
            None,
            "colon only after /commands"
        );
        assert_eq!(
            p.trigger("/new"),
            None,
            "configured triggers replace the defaults"
        );

        // An empty list keeps the defaults, as OpenClaw.
        assert_eq!(
            policy(json!({"resetTriggers": []})).triggers,
            ["/new", "/reset"]
        );
        // Case-insensitive beyond ASCII.
        let p = policy(json!({"resetTriggers": ["ÉCLAIR"]}));
        assert_eq!(p.trigger("Éclair now"), Some("now"));
    }
}
