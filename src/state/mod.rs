//! Per-core owned state beyond connections: the sessions this core owns, their lanes, runs
//! and the idempotency dedupe cache.

pub mod policy;
pub mod sessions;
