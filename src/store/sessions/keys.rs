//! Session keys: canonical form, agent extraction, owner-core routing.

/// Longest raw session key accepted (characters, after trimming).
pub const MAX_KEY_CHARS: usize = 256;
/// Longest agent id accepted.
pub const MAX_AGENT_ID_CHARS: usize = 64;
/// The main session's short key.
pub const MAIN: &str = "main";

const AGENT_PREFIX: &str = "agent:";

/// Canonical form of a session key as a client sent it.
///
/// * `"main"` → `agent:<default>:main`;
/// * `agent:<id>:<rest>` is kept, with `<id>` lower-cased (the `agent:` prefix is matched
///   case-insensitively) and validated as `[a-z0-9][a-z0-9_-]*` (≤ 64 chars), `<rest>`
///   non-empty;
/// * any other key `<rest>` → `agent:<default>:<rest>`.
///
/// Leading/trailing whitespace is trimmed. Empty or whitespace-only keys, keys over
/// [`MAX_KEY_CHARS`] characters and keys containing control characters are rejected with
/// a message fit for an `INVALID_REQUEST` error. `default_agent` is lower-cased and must
/// itself be a valid agent id.
pub fn canonical_key(raw: &str, default_agent: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.is_empty() {
        return Err("invalid session key: empty".to_string());
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(format!(
            "invalid session key: longer than {MAX_KEY_CHARS} characters"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("invalid session key: control characters".to_string());
    }
    if let Some(rest) = strip_agent_prefix(key) {
        let (id, tail) = rest
            .split_once(':')
            .ok_or_else(|| format!("invalid session key {key:?}: expected agent:<id>:<key>"))?;
        let id = id.to_ascii_lowercase();
        if !valid_agent_id(&id) {
            return Err(format!("invalid session key {key:?}: bad agent id"));
        }
        if tail.trim().is_empty() {
            return Err(format!(
                "invalid session key {key:?}: empty key after agent id"
            ));
        }
        return Ok(format!("{AGENT_PREFIX}{id}:{tail}"));
    }
    let default_agent = default_agent.trim().to_ascii_lowercase();
    if !valid_agent_id(&default_agent) {
        return Err(format!("invalid default agent id {default_agent:?}"));
    }
    Ok(format!("{AGENT_PREFIX}{default_agent}:{key}"))
}

fn strip_agent_prefix(key: &str) -> Option<&str> {
    let head = key.get(..AGENT_PREFIX.len())?;
    head.eq_ignore_ascii_case(AGENT_PREFIX)
        .then(|| &key[AGENT_PREFIX.len()..])
}

/// `[a-z0-9][a-z0-9_-]*`, at most [`MAX_AGENT_ID_CHARS`]: safe as a path component.
pub fn valid_agent_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_AGENT_ID_CHARS
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The agent id of a canonical key (`agent:<id>:<rest>` → `<id>`); `""` when `canonical`
/// is not in canonical form.
pub fn agent_of(canonical: &str) -> &str {
    canonical
        .strip_prefix(AGENT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map_or("", |(id, _)| id)
}

/// The part after the agent id (`agent:<id>:<rest>` → `<rest>`); `""` when `canonical` is
/// not in canonical form.
pub fn rest_of(canonical: &str) -> &str {
    canonical
        .strip_prefix(AGENT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map_or("", |(_, rest)| rest)
}

/// Whether `key` is exactly what [`canonical_key`] produces (for keys read back from disk
/// or handed to the store by callers).
pub fn is_canonical(key: &str) -> bool {
    let Some((id, tail)) = key
        .strip_prefix(AGENT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    valid_agent_id(id)
        && !tail.trim().is_empty()
        && key.trim() == key
        && !key.chars().any(char::is_control)
        && key.chars().count() <= MAX_KEY_CHARS + AGENT_PREFIX.len() + MAX_AGENT_ID_CHARS + 1
}

/// The core that owns `canonical_key` among `workers` cores: FNV-1a 64 of the key's UTF-8
/// bytes, modulo `workers` (`workers == 0` is treated as 1). Stable across processes,
/// builds and platforms, so on-disk shard placement survives restarts.
pub fn shard_of(canonical_key: &str, workers: usize) -> usize {
    let n = workers.max(1) as u64;
    // The remainder is < workers, so it fits back into usize.
    (fnv1a64(canonical_key.as_bytes()) % n) as usize
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_get_the_default_agent() {
        assert_eq!(canonical_key("main", "dev").unwrap(), "agent:dev:main");
        assert_eq!(canonical_key("  main\t", "Dev").unwrap(), "agent:dev:main");
        assert_eq!(
            canonical_key("explicit:spec-1", "dev").unwrap(),
            "agent:dev:explicit:spec-1"
        );
        assert_eq!(canonical_key("Hello", "main").unwrap(), "agent:main:Hello");
    }

    #[test]
    fn agent_keys_are_kept_with_lowercased_id() {
        assert_eq!(
            canonical_key("agent:dev:main", "other").unwrap(),
            "agent:dev:main"
        );
        assert_eq!(
            canonical_key("Agent:DEV:Main", "other").unwrap(),
            "agent:dev:Main"
        );
        assert_eq!(
            canonical_key("agent:a_b-9:x:y:z", "o").unwrap(),
            "agent:a_b-9:x:y:z"
        );
    }

    #[test]
    fn invalid_keys_are_rejected() {
        for bad in [
            "",
            "   ",
            "\n",
            "ma\u{0}in",
            "a\nb",
            "agent:",
            "agent:dev",
            "agent:dev:",
            "agent:dev:  ",
            "agent::main",
            "agent:-x:main",
            "agent:d/v:main",
            "agent:../..:main",
        ] {
            assert!(canonical_key(bad, "dev").is_err(), "{bad:?} accepted");
        }
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        assert!(canonical_key(&long, "dev").is_err());
        let ok = "k".repeat(MAX_KEY_CHARS);
        assert!(canonical_key(&ok, "dev").is_ok());
        // Multi-byte characters count once.
        let wide = "é".repeat(MAX_KEY_CHARS);
        assert!(canonical_key(&wide, "dev").is_ok());
        assert!(canonical_key("main", "").is_err());
        assert!(canonical_key("main", "a/b").is_err());
    }

    #[test]
    fn agent_of_and_is_canonical() {
        assert_eq!(agent_of("agent:dev:main"), "dev");
        assert_eq!(agent_of("agent:dev:x:y"), "dev");
        assert_eq!(agent_of("main"), "");
        assert!(is_canonical("agent:dev:main"));
        assert!(!is_canonical("agent:Dev:main"));
        assert!(!is_canonical("main"));
        assert!(!is_canonical("agent:dev:"));
        for raw in ["main", "agent:X:y", "foo:bar"] {
            assert!(is_canonical(&canonical_key(raw, "dev").unwrap()));
        }
    }

    #[test]
    fn shard_is_stable_fnv1a() {
        // Reference values computed independently (Python FNV-1a 64).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"agent:main:main"), 0x235d_49bb_3f53_1194);
        assert_eq!(fnv1a64(b"agent:dev:main"), 0x1a40_557f_1b12_4062);
        assert_eq!(shard_of("agent:dev:main", 3), 2);
        assert_eq!(shard_of("agent:dev:main", 7), 3);
        assert_eq!(shard_of("agent:main:main", 7), 4);
        assert_eq!(shard_of("agent:dev:main", 1), 0);
        assert_eq!(shard_of("agent:dev:main", 0), 0);
    }

    #[test]
    fn shards_spread_keys() {
        let n = 4;
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("agent:dev:explicit:{i}"), n)] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "{counts:?}");
        }
    }
}
