//! The `mock-upstream` binary: serves the mock on a fixed address until SIGINT or SIGTERM.
//!
//! `mock-upstream [--listen 127.0.0.1:9000] [--no-record]`

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mock_upstream::{State, serve};
use tokio::net::TcpListener;

/// A fast mock of the OpenAI, Anthropic Messages and Gemini APIs with fault injection.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Do not keep received requests (for benchmarks); counters are still kept.
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("listening on {addr}"),
        Err(_) => eprintln!("listening on {}", args.listen),
    }
    let state = Arc::new(State::new(!args.no_record));
    tokio::select! {
        () = serve(listener, state) => {}
        () = shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM (only Ctrl-C outside Unix).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
