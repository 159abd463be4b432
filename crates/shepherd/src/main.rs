//! The `shepherd` binary: parse the command line and hand off to `cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    shepherd::cli::run(shepherd::cli::Cli::parse())
}
