//! methods (in progress).
