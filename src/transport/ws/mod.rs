//! WebSocket (RFC 6455): the sans-IO codec.

pub mod codec;
