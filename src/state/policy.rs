//! Session reset and maintenance policy from `session.*` in openclaw.json (pure).
//!
//! `session.reset {mode: none|daily|idle, atHour, idleMinutes}` (default none; both limits
//! apply when both are set, whichever expires first), `session.resetTriggers` (default
//! `["/new", "/reset"]`), `session.maintenance {pruneAfter ("30d"), maxEntries (5000)}`.
//! Daily resets use UTC hours (clawgate keeps no time-zone database).

use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Automatic reset policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetPolicy {
    /// Reset once a day at this UTC hour.
    pub daily_at_hour: Option<u32>,
    /// Reset after this much inactivity.
    pub idle_minutes: Option<u64>,
}

/// Everything the owner core needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Automatic reset.
    pub reset: ResetPolicy,
    /// Messages that reset the session (case-insensitive, first word).
    pub triggers: Vec<String>,
    /// Drop entries idle longer than this.
    pub prune_after_ms: Option<i64>,
    /// Keep at most this many entries (gateway-wide).
    pub max_entries: Option<usize>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            reset: ResetPolicy::default(),
            triggers: vec!["/new".into(), "/reset".into()],
            prune_after_ms: Some(30 * DAY_MS),
            max_entries: Some(5000),
        }
    }
}

/// Parse `"30d"`, `"12h"`, `"90m"`, `"45s"`, `"500ms"` or a number of ms. `false`/`0` → None.
pub fn parse_duration_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().filter(|n| *n > 0),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let split = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: f64 = num.parse().ok()?;
            let mult = match unit.trim() {
                "" | "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => HOUR_MS as f64,
                "d" => DAY_MS as f64,
                "w" => 7.0 * DAY_MS as f64,
                _ => return None,
            };
            let ms = (n * mult) as i64;
            (ms > 0).then_some(ms)
        }
        _ => None,
    }
}

impl SessionPolicy {
    /// Read from the parsed config document (unknown or invalid values keep defaults).
    pub fn from_config(parsed: &Value) -> Self {
        let mut p = Self::default();
        let session = &parsed["session"];
        let reset = &session["reset"];
        match reset["mode"].as_str() {
            Some("daily") => {
                p.reset.daily_at_hour = Some(
                    reset["atHour"]
                        .as_u64()
                        .map(|h| (h % 24) as u32)
                        .unwrap_or(4),
                )
            }
            Some("idle") => {
                p.reset.idle_minutes = Some(reset["idleMinutes"].as_u64().unwrap_or(60).max(1))
            }
            _ => {}
        }
        if p.reset.daily_at_hour.is_some() {
            if let Some(m) = reset["idleMinutes"].as_u64() {
                p.reset.idle_minutes = Some(m.max(1));
            }
        }
        if let Some(t) = session["resetTriggers"].as_array() {
            p.triggers = t
                .iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect();
        }
        let m = &session["maintenance"];
        if !m.is_null() {
            if m.get("pruneAfter").is_some() {
                p.prune_after_ms = parse_duration_ms(&m["pruneAfter"]);
            }
            if let Some(n) = m["maxEntries"].as_u64() {
                p.max_entries = usize::try_from(n).ok().filter(|n| *n > 0);
            }
        }
        p
    }

    /// Is an automatic reset due before the next turn?
    pub fn reset_due(
        &self,
        session_started_at_ms: i64,
        last_interaction_ms: Option<i64>,
        now_ms: i64,
    ) -> bool {
        if let Some(h) = self.reset.daily_at_hour {
            // The most recent boundary at `h`:00 UTC at or before now.
            let today = now_ms - now_ms.rem_euclid(DAY_MS) + i64::from(h) * HOUR_MS;
            let boundary = if today <= now_ms {
                today
            } else {
                today - DAY_MS
            };
            if session_started_at_ms < boundary {
                return true;
            }
        }
        if let (Some(m), Some(last)) = (self.reset.idle_minutes, last_interaction_ms) {
            let idle = i64::try_from(m)
                .unwrap_or(i64::MAX / 60_000)
                .saturating_mul(60_000);
            if now_ms - last > idle {
                return true;
            }
        }
        false
    }

    /// If `message` starts with a reset trigger, the text after it (possibly empty).
    pub fn trigger<'a>(&self, message: &'a str) -> Option<&'a str> {
        let trimmed = message.trim_start();
        let first = trimmed.split_whitespace().next()?;
        let lower = first.to_lowercase();
        self.triggers
            .contains(&lower)
            .then(|| trimmed[first.len()..].trim_start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_ms(&json!("30d")), Some(30 * DAY_MS));
        assert_eq!(parse_duration_ms(&json!("90m")), Some(90 * 60_000));
        assert_eq!(parse_duration_ms(&json!(1500)), Some(1500));
        assert_eq!(parse_duration_ms(&json!(false)), None);
        assert_eq!(parse_duration_ms(&json!("7x")), None);
    }

    #[test]
    fn daily_reset_crosses_the_boundary_once() {
        let p = SessionPolicy::from_config(
            &json!({"session": {"reset": {"mode": "daily", "atHour": 4}}}),
        );
        let day = 20_000 * DAY_MS;
        let started = day + 3 * HOUR_MS; // 03:00
        assert!(!p.reset_due(started, None, day + 3 * HOUR_MS + 30 * 60_000)); // 03:30
        assert!(p.reset_due(started, None, day + 5 * HOUR_MS)); // 05:00, crossed 04:00
        let restarted = day + 5 * HOUR_MS;
        assert!(!p.reset_due(restarted, None, day + 23 * HOUR_MS));
        assert!(p.reset_due(restarted, None, day + DAY_MS + 4 * HOUR_MS));
    }

    #[test]
    fn idle_reset_and_triggers() {
        let p = SessionPolicy::from_config(
            &json!({"session": {"reset": {"mode": "idle", "idleMinutes": 10}}}),
        );
        assert!(!p.reset_due(0, Some(1_000_000), 1_000_000 + 9 * 60_000));
        assert!(p.reset_due(0, Some(1_000_000), 1_000_000 + 11 * 60_000));
        assert!(!SessionPolicy::default().reset_due(0, Some(0), i64::MAX / 2));
        assert_eq!(p.trigger("/new hello there"), Some("hello there"));
        assert_eq!(p.trigger("/RESET"), Some(""));
        assert_eq!(p.trigger("/newish"), None);
        assert_eq!(p.trigger("hi"), None);
    }

    #[test]
    fn maintenance_from_config() {
        let p = SessionPolicy::from_config(
            &json!({"session": {"maintenance": {"pruneAfter": "2h", "maxEntries": 10}}}),
        );
        assert_eq!(p.prune_after_ms, Some(2 * HOUR_MS));
        assert_eq!(p.max_entries, Some(10));
    }
}
