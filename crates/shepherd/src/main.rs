//! The `shepherd` binary: parse the command line and hand off to `cli`.

use clap::Parser;

/// mimalloc: fewer cycles per request than glibc's allocator on this workload (see
/// docs/performance.md), and memory returns to the system after bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shepherd::cli::run(shepherd::cli::Cli::parse())
}
