//! Wire protocol v4: frame types, error shapes, connect parameters and negotiation.
//!
//! Owns: the JSON shapes on the wire. Pure: no sockets, no runtime, no state.

pub mod connect;
pub mod error;
pub mod frames;
pub mod hello;
