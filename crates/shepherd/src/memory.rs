//! Giving memory back after a burst. The allocator keeps pages freed under load for reuse and
//! returns them only while it is busy allocating, so a gateway that goes quiet after a burst
//! would keep its peak footprint. The binary registers how to give free memory back
//! (`set_trim`); the server calls it every few seconds while no request is in flight and there
//! was work since the last time: nothing is spent under load, nor while idle for long.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often the server looks for a quiet moment.
pub const EVERY: Duration = Duration::from_secs(2);

static TRIM: OnceLock<fn()> = OnceLock::new();

/// Registers the allocator's "give free memory back" call (the binary's global allocator).
pub fn set_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// The registered call, if the binary registered one (tests and other embedders do not).
pub fn registered_trim() -> Option<fn()> {
    TRIM.get().copied()
}

/// Runs until dropped: every `EVERY`, when nothing is in flight and there was work since the
/// last trim (`work` grows with it: the ledger's records), calls `trim`.
pub async fn trim_when_quiet(active: Arc<AtomicUsize>, work: impl Fn() -> u64, trim: fn()) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed_at = work();
    loop {
        ticks.tick().await;
        let now = work();
        if now != trimmed_at && active.load(Ordering::Relaxed) == 0 {
            trim();
            trimmed_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    static TRIMS: AtomicU64 = AtomicU64::new(0);
    static WORK: AtomicU64 = AtomicU64::new(0);

    fn count_trim() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_work_and_never_under_load() {
        let active = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(trim_when_quiet(
            active.clone(),
            || WORK.load(Ordering::SeqCst),
            count_trim,
        ));
        let wait = || tokio::time::sleep(EVERY * 2);
        wait().await;
        assert_eq!(
            TRIMS.load(Ordering::SeqCst),
            0,
            "no work yet: nothing to give back"
        );
        active.store(3, Ordering::SeqCst);
        WORK.store(10, Ordering::SeqCst);
        wait().await;
        assert_eq!(
            TRIMS.load(Ordering::SeqCst),
            0,
            "requests in flight: no trim"
        );
        active.store(0, Ordering::SeqCst);
        wait().await;
        assert_eq!(
            TRIMS.load(Ordering::SeqCst),
            1,
            "quiet after work: one trim"
        );
        wait().await;
        assert_eq!(
            TRIMS.load(Ordering::SeqCst),
            1,
            "still quiet, no new work: no more"
        );
        task.abort();
    }
}
