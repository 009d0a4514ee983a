//! Authentication and authority: shared secrets, Ed25519 device identity, scopes.
//!
//! Owns: pure checks (no sockets, no runtime). Persistence of pairings goes through
//! [`crate::store`]. Must not touch: sockets, per-core maps.

pub mod device;
pub mod scopes;
pub mod token;
