//! The `clawgate` binary: parse the command line and hand over to [`clawgate::cli`].

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    clawgate::cli::main()
}
