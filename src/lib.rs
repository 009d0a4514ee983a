//! clawgate — an edge-deployable, thread-per-core OpenClaw Gateway (protocol v4).
//!
//! Layers (see ARCHITECTURE.md for the flow of one request):
//! `cli → config, runtime → transport → protocol`;
//! `runtime → methods → {auth, state, store} → protocol`.
//! `protocol`, `auth`, and the `transport::ws` codec are pure (no I/O) so they can be
//! property-tested, fuzzed and benchmarked in isolation.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod agents;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod methods;
pub mod protocol;
pub mod runtime;
pub mod state;
pub mod store;
pub mod transport;
