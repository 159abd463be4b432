//! The `shepherd` binary: parse the command line and hand off to `cli`.

use clap::Parser;

/// mimalloc: fewer cycles per request than glibc's allocator on this workload (see
/// docs/performance.md), and memory returns to the system after bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the allocator's free pages back to the system (called by the server when quiet).
#[allow(unsafe_code)]
fn give_back_free_memory() {
    // SAFETY: `mi_collect` only walks the allocator's own structures; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    shepherd::memory::set_trim(give_back_free_memory);
    shepherd::cli::run(shepherd::cli::Cli::parse())
}
