//! The command line: `serve`, `check`, `migrate`, `health`, `keys`, `usage`, `version`.

mod admin;
mod health;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

const DEFAULT_CONFIG: &str = "shepherd.yaml";

#[derive(Debug, Parser)]
#[command(name = "shepherd", version, about = "A self-hosted AI API gateway")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway.
    Serve {
        /// Config file (YAML). Default: $SHEPHERD_CONFIG, else ./shepherd.yaml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Start (and reload) a config that serves no model, on purpose.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Validate a config file and print every problem with file, line and field.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A config that serves no model is fine.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Create or upgrade the config's database schema (the gateway also does it at start;
    /// safe to run while replicas start), and print its version.
    Migrate {
        /// Config file (YAML). Default: $SHEPHERD_CONFIG, else ./shepherd.yaml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Probe a gateway (container health checks without curl): exit 0 on a 2xx answer.
    Health {
        /// The URL to GET.
        #[arg(default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s")]
        timeout: String,
    },
    /// Manage virtual keys (in the config's database, or through a gateway's admin API).
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Usage and cost, grouped (a table, JSON or CSV).
    Usage {
        #[command(flatten)]
        query: admin::UsageArgs,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Print the version.
    Version,
}

pub(crate) fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("SHEPHERD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Version => {
            let _ = writeln!(std::io::stdout(), "shepherd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check {
            config,
            allow_empty,
        } => check(&config_path(config), allow_empty),
        Command::Migrate { config } => migrate(&config_path(config)),
        Command::Health { url, timeout } => match humantime::parse_duration(&timeout) {
            Ok(timeout) => health::probe(&url, timeout),
            Err(_) => {
                let _ = writeln!(std::io::stderr(), "--timeout `{timeout}` is not a duration");
                ExitCode::FAILURE
            }
        },
        Command::Keys { command, target } => admin::keys(command, &target),
        Command::Usage { query, target } => admin::usage(&query, &target),
        Command::Serve {
            config,
            allow_empty,
        } => {
            let code = serve(&config_path(config), allow_empty);
            crate::telemetry::output::flush();
            code
        }
    }
}

/// The refusal of a config that serves nothing.
fn empty_refusal(path: &std::path::Path) -> String {
    format!(
        "{}: the config serves nothing (no models): an empty or truncated file? \
         Pass --allow-empty if this is on purpose.",
        path.display()
    )
}

fn check(path: &std::path::Path, allow_empty: bool) -> ExitCode {
    match config::load_file(path) {
        Ok(config) if config.serves_nothing() && !allow_empty => {
            let _ = writeln!(std::io::stderr(), "{}", empty_refusal(path));
            ExitCode::FAILURE
        }
        Ok(config) => {
            let _ = writeln!(
                std::io::stdout(),
                "{}: ok ({} providers, {} models, {} keys)",
                path.display(),
                config.providers.len(),
                config.models.len(),
                config.keys.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            let mut err = std::io::stderr();
            let _ = writeln!(err, "{problems}");
            let _ = writeln!(err, "{} problem(s) in {}", problems.0.len(), path.display());
            ExitCode::FAILURE
        }
    }
}

fn migrate(path: &std::path::Path) -> ExitCode {
    let config = match config::load_file(path) {
        Ok(config) => config,
        Err(problems) => {
            let _ = writeln!(std::io::stderr(), "{problems}");
            return ExitCode::FAILURE;
        }
    };
    match crate::store::migrate(&config.state.database) {
        Ok(version) => {
            let _ = writeln!(
                std::io::stdout(),
                "{}: schema at version {version}",
                config.state.database.kind()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "shepherd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime that serves: one thread doing everything when the process may use one core
/// (a pinned or CPU-limited replica: no hand-offs between worker threads, no cross-thread
/// wake-ups), else one worker per core.
fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    tracing::info!(
        cores,
        "runtime: {}",
        if cores == 1 {
            "one thread"
        } else {
            "one worker per core"
        }
    );
    if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

fn serve(path: &std::path::Path, allow_empty: bool) -> ExitCode {
    let config = match config::load_file(path) {
        Ok(config) if config.serves_nothing() && !allow_empty => {
            let _ = writeln!(
                std::io::stderr(),
                "{}\nrefusing to start",
                empty_refusal(path)
            );
            return ExitCode::FAILURE;
        }
        Ok(config) => config,
        Err(problems) => {
            let _ = writeln!(
                std::io::stderr(),
                "{problems}\nrefusing to start: fix the config above"
            );
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::logging::init(&config.telemetry);
    let runtime = match serving_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let running = crate::server::start_watching(config, path.to_path_buf()).await?;
        running
            .state
            .allow_empty
            .store(allow_empty, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(config = %path.display(), addr = %running.addr, "ready");
        crate::server::shutdown_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        running.shutdown();
        running.wait().await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}
