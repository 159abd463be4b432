//! Hot reload: on SIGHUP, and when the config file's contents change (checked every second, which
//! also catches Kubernetes ConfigMap updates that swap a symlink), the file is loaded and
//! validated again and the new runtime swapped in; a bad file is refused and logged, and the
//! running config keeps serving.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::state::{AppState, ReloadTrigger};

/// How often the config file is looked at.
const POLL: Duration = Duration::from_secs(1);

fn fingerprint(path: &Path) -> Option<u64> {
    let contents = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    contents.hash(&mut hasher);
    Some(hasher.finish())
}

/// Watches for SIGHUP and for changes of `path` until the server stops.
pub fn watch(state: Arc<AppState>, path: PathBuf) -> tokio::task::JoinHandle<()> {
    // Read now, not when the task first runs: a change made meanwhile must count as one.
    let mut last = fingerprint(&path);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = hangup_signal();
        loop {
            let forced = tokio::select! {
                _ = ticks.tick() => false,
                () = next_hangup(&mut hangup) => true,
            };
            let now = fingerprint(&path);
            if !forced && (now == last || now.is_none()) {
                continue;
            }
            let trigger = if forced {
                tracing::info!("SIGHUP: reloading the config");
                ReloadTrigger::Signal
            } else {
                // An editor's save truncates, then writes: wait until the file holds still.
                settle(&path).await;
                tracing::info!(config = %path.display(), "config file changed: reloading");
                ReloadTrigger::FileChange
            };
            last = fingerprint(&path);
            let _outcome = state.reload_on(trigger);
        }
    })
}

/// How long the file's size and modification time must stay the same before a change is read,
/// and the longest wait for that.
const SETTLE: Duration = Duration::from_millis(300);
const SETTLE_AT_MOST: Duration = Duration::from_secs(5);

/// The file's size and modification time (through symlinks, as ConfigMaps swap them).
fn shape(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

/// Waits until the file's size and modification time stay unchanged over `SETTLE`.
async fn settle(path: &Path) {
    let started = tokio::time::Instant::now();
    let mut before = shape(path);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = shape(path);
        if now == before || started.elapsed() >= SETTLE_AT_MOST {
            return;
        }
        before = now;
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(signal: &mut Hangup) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_signal: &mut Hangup) {
    std::future::pending::<()>().await
}
