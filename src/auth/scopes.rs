//! Operator scopes and the satisfaction rule (PROTOCOL.md §5).

/// `operator.read`.
pub const READ: &str = "operator.read";
/// `operator.write`.
pub const WRITE: &str = "operator.write";
/// `operator.admin`.
pub const ADMIN: &str = "operator.admin";
/// `operator.approvals`.
pub const APPROVALS: &str = "operator.approvals";
/// `operator.pairing`.
pub const PAIRING: &str = "operator.pairing";
/// `operator.questions`.
pub const QUESTIONS: &str = "operator.questions";
/// `operator.talk`.
pub const TALK: &str = "operator.talk";
/// `operator.talk.secrets`.
pub const TALK_SECRETS: &str = "operator.talk.secrets";

/// Not a scope anyone is granted: the broadcast filter of `sessions.changed`, which the real
/// gateway sends only to connections that called `sessions.subscribe`.
pub const SESSION_EVENTS: &str = "sessions.subscribe";
/// The [`bit`] of [`SESSION_EVENTS`] (above every real scope's).
pub const SESSION_EVENTS_BIT: u16 = 1 << 14;

/// Every operator scope (the closed set).
pub const ALL: &[&str] = &[
    READ,
    WRITE,
    ADMIN,
    APPROVALS,
    QUESTIONS,
    PAIRING,
    TALK,
    TALK_SECRETS,
];

/// True when `granted` satisfies `required` (PROTOCOL.md §5: exact, admin, or write ⊇ read/talk).
///
/// `required` is satisfied when `granted` contains it, or contains [`ADMIN`], or `required`
/// is [`READ`] or [`TALK`] and `granted` contains [`WRITE`]. Comparison is exact
/// (case-sensitive); nothing else implies anything (e.g. `operator.talk` does not imply
/// `operator.talk.secrets`).
pub fn satisfied(granted: &[String], required: &str) -> bool {
    let has = |s: &str| granted.iter().any(|g| g == s);
    has(required) || has(ADMIN) || ((required == READ || required == TALK) && has(WRITE))
}

/// Bit of a known scope in a [`mask`] (0 for unknown scopes, which no mask satisfies).
pub fn bit(scope: &str) -> u16 {
    if scope == SESSION_EVENTS {
        return SESSION_EVENTS_BIT;
    }
    ALL.iter()
        .position(|s| *s == scope)
        .map(|i| 1u16 << i)
        .unwrap_or(0)
}

/// Every known scope that `granted` satisfies, as bits: computed once per connection so a
/// broadcast's scope filter is one AND per recipient.
pub fn mask(granted: &[String]) -> u16 {
    ALL.iter()
        .enumerate()
        .filter(|(_, s)| satisfied(granted, s))
        .fold(0, |m, (i, _)| m | (1u16 << i))
}

/// True when `s` is a known operator scope.
pub fn is_known(s: &str) -> bool {
    ALL.contains(&s)
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    #[test]
    fn mask_agrees_with_satisfied() {
        let sets: [&[&str]; 4] = [&[], &[READ], &[WRITE], &[ADMIN]];
        for set in sets {
            let granted: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let m = mask(&granted);
            for s in ALL {
                assert_eq!(m & bit(s) != 0, satisfied(&granted, s), "{set:?} {s}");
            }
        }
        assert_eq!(bit("operator.unknown"), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact() {
        assert!(satisfied(&g(&[READ]), READ));
        assert!(satisfied(&g(&[PAIRING, READ]), PAIRING));
        assert!(!satisfied(&g(&[READ]), PAIRING));
        assert!(!satisfied(&g(&[]), READ));
        assert!(!satisfied(&g(&["OPERATOR.READ"]), READ));
    }

    #[test]
    fn admin_implies_everything() {
        for s in ALL {
            assert!(satisfied(&g(&[ADMIN]), s));
        }
        assert!(satisfied(&g(&[ADMIN]), "operator.unknown"));
    }

    #[test]
    fn write_implies_read_and_talk_only() {
        let w = g(&[WRITE]);
        assert!(satisfied(&w, READ));
        assert!(satisfied(&w, TALK));
        assert!(satisfied(&w, WRITE));
        for s in [ADMIN, APPROVALS, PAIRING, QUESTIONS, TALK_SECRETS] {
            assert!(!satisfied(&w, s), "{s}");
        }
    }

    #[test]
    fn no_other_implications() {
        assert!(!satisfied(&g(&[READ]), WRITE));
        assert!(!satisfied(&g(&[TALK]), TALK_SECRETS));
        assert!(!satisfied(&g(&[TALK_SECRETS]), TALK));
        assert!(!satisfied(&g(&[PAIRING, APPROVALS, QUESTIONS]), READ));
    }

    #[test]
    fn known() {
        assert!(is_known(TALK_SECRETS));
        assert!(!is_known("operator"));
        assert_eq!(ALL.len(), 8);
    }
}
