//! Persistence: every durable file clawgate writes goes through here.
//!
//! Owns: file formats and crash-safe writes (temp + fsync + rename + dir fsync). Must not
//! touch: sockets, per-core maps. Callers own caching and decide which core writes.

pub mod atomic;
pub mod commit;
pub mod devices;
pub mod io_thread;
pub mod sessions;
