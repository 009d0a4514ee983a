//! Command line (in progress).

/// Entry point used by `main`.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
