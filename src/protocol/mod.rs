//! protocol (in progress).

pub mod hello;
