//! Transport: sockets, HTTP/1.1 on the gateway port, and the WebSocket connection loop.
//!
//! Owns: bytes in and bytes out. Must not touch: auth decisions, method semantics.

pub mod conn;
pub mod http;
pub mod outbox;
pub mod proxy;
pub mod ws;
