//! Operator scopes and the satisfaction rule (OWNED BY THE AUTH HELPER — stub).

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

/// Every operator scope (the closed set).
pub const ALL: &[&str] = &[READ, WRITE, ADMIN, APPROVALS, QUESTIONS, PAIRING, TALK, TALK_SECRETS];

/// True when `granted` satisfies `required` (PROTOCOL.md §5: exact, admin, or write ⊇ read/talk).
pub fn satisfied(granted: &[String], required: &str) -> bool {
    let _ = (granted, required);
    false
}

/// True when `s` is a known operator scope.
pub fn is_known(s: &str) -> bool {
    ALL.contains(&s)
}
