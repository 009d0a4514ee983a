//! Crash-safe file replacement (OWNED BY THE AUTH HELPER — stub).

use std::path::Path;

/// Replace `path` with `bytes` atomically: write a temp file in the same directory with
/// `mode`, fsync it, rename over `path`, fsync the directory. A kill -9 at any point leaves
/// the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = (path, bytes, mode);
    Ok(())
}
