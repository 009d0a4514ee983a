//! methods (in progress).

pub mod system;
