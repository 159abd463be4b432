//! A circuit breaker (one per deployment, one per upstream key): closed while things work; open
//! after `failures` consecutive failures or an error rate over a sliding window, for the cool-down
//! (or the upstream's `Retry-After`, when longer); then half-open, letting one probe through,
//! which closes it on success or opens it again on failure. Time is tokio's, so tests pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitConfig;

/// What a breaker says to a request that wants to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the one half-open probe.
    Probe,
    /// Not now; the breaker may let a probe through at `until`.
    Rejected {
        until: Instant,
    },
}

impl Admission {
    pub fn allowed(self) -> bool {
        !matches!(self, Admission::Rejected { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The state a breaker shows to metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// 0 closed, 1 open, 2 half-open (the `circuit_state` gauge).
    pub fn as_number(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
    window_start: Instant,
    current: (u32, u32),
    previous: (u32, u32),
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive_failures: 0,
                window_start: Instant::now(),
                current: (0, 0),
                previous: (0, 0),
            }),
        }
    }
}

impl Breaker {
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// Asks to send a request; `cooldown` bounds how long a probe may stay unanswered.
    pub fn admit(&self, cooldown: Duration) -> Admission {
        let now = Instant::now();
        self.with_state(|state| match state.phase {
            Phase::Closed => Admission::Allowed,
            Phase::Open { until } if now < until => Admission::Rejected { until },
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen { probe_since: now };
                Admission::Probe
            }
            Phase::HalfOpen { probe_since } if now < probe_since + cooldown => {
                Admission::Rejected {
                    until: probe_since + cooldown,
                }
            }
            // A probe that never reported back: let another one try.
            Phase::HalfOpen { .. } => {
                state.phase = Phase::HalfOpen { probe_since: now };
                Admission::Probe
            }
        })
    }

    /// Whether a request would be let through now (without taking the probe).
    pub fn is_available(&self) -> bool {
        let now = Instant::now();
        self.with_state(|state| match state.phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { .. } => false,
        })
    }

    /// When a rejected request could be tried again, if the breaker is not closed (`cooldown`:
    /// how long a probe may stay unanswered).
    pub fn reopens_at(&self, cooldown: Duration) -> Option<Instant> {
        self.with_state(|state| match state.phase {
            Phase::Closed => None,
            Phase::Open { until } => Some(until),
            Phase::HalfOpen { probe_since } => Some(probe_since + cooldown),
        })
    }

    pub fn state(&self) -> CircuitState {
        self.with_state(|state| match state.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        })
    }

    pub fn success(&self, config: &CircuitConfig) {
        let now = Instant::now();
        self.with_state(|state| {
            roll_window(state, config, now);
            state.current.0 += 1;
            state.consecutive_failures = 0;
            if state.phase != Phase::Closed {
                state.phase = Phase::Closed;
                state.current = (0, 0);
                state.previous = (0, 0);
            }
        });
    }

    /// Records a failure; returns whether it opened the breaker.
    pub fn failure(&self, config: &CircuitConfig, retry_after: Option<Duration>) -> bool {
        let now = Instant::now();
        let cooldown = config.cooldown.max(retry_after.unwrap_or_default());
        self.with_state(|state| {
            roll_window(state, config, now);
            state.current.1 += 1;
            state.consecutive_failures += 1;
            let open = match state.phase {
                Phase::HalfOpen { .. } => true,
                Phase::Open { .. } => false,
                Phase::Closed => {
                    state.consecutive_failures >= config.failures
                        || error_rate_exceeded(state, config, now)
                }
            };
            if open {
                state.phase = Phase::Open {
                    until: now + cooldown,
                };
            }
            open
        })
    }

    /// Opens the breaker for `duration` at once (an upstream said when to come back, or
    /// refused the key).
    pub fn open_for(&self, duration: Duration) {
        let until = crate::bounds::later(Instant::now(), duration);
        self.with_state(|state| {
            let later = match state.phase {
                Phase::Open { until: current } => current.max(until),
                _ => until,
            };
            state.phase = Phase::Open { until: later };
        });
    }
}

/// Moves the two-bucket sliding window forward to `now`.
fn roll_window(state: &mut State, config: &CircuitConfig, now: Instant) {
    let elapsed = now.saturating_duration_since(state.window_start);
    if elapsed < config.window {
        return;
    }
    state.previous = if elapsed < config.window * 2 {
        state.current
    } else {
        (0, 0)
    };
    state.current = (0, 0);
    state.window_start = now;
}

fn error_rate_exceeded(state: &State, config: &CircuitConfig, now: Instant) -> bool {
    // The previous bucket counts for the part of it still inside the window.
    let into_current = now
        .saturating_duration_since(state.window_start)
        .as_secs_f64();
    let weight = (1.0 - into_current / config.window.as_secs_f64()).clamp(0.0, 1.0);
    let successes = f64::from(state.current.0) + f64::from(state.previous.0) * weight;
    let failures = f64::from(state.current.1) + f64::from(state.previous.1) * weight;
    let total = successes + failures;
    total >= f64::from(config.min_requests.max(1)) && failures / total >= config.error_rate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig {
            failures: 3,
            cooldown: Duration::from_secs(10),
            error_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 10,
            key_cooldown: Duration::from_secs(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let breaker = Breaker::default();
        let config = config();
        assert!(!breaker.failure(&config, None));
        assert!(!breaker.failure(&config, None));
        assert!(breaker.failure(&config, None), "third failure opens");
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(matches!(
            breaker.admit(config.cooldown),
            Admission::Rejected { .. }
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(config.cooldown), Admission::Probe);
        assert!(
            matches!(breaker.admit(config.cooldown), Admission::Rejected { .. }),
            "one probe at a time"
        );
        breaker.success(&config);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.admit(config.cooldown), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_retry_after_lengthens_the_cooldown() {
        let breaker = Breaker::default();
        let config = config();
        for _ in 0..3 {
            breaker.failure(&config, None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(config.cooldown), Admission::Probe);
        assert!(breaker.failure(&config, Some(Duration::from_secs(25))));
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(!breaker.is_available());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_over_the_window_opens() {
        let breaker = Breaker::default();
        let config = config();
        // Alternating: never 3 failures in a row, but half of the requests fail.
        for _ in 0..4 {
            breaker.success(&config);
            assert!(!breaker.failure(&config, None));
        }
        breaker.success(&config);
        assert!(breaker.failure(&config, None), "5 of 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_lock_the_breaker() {
        let breaker = Breaker::default();
        breaker.open_for(Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(Duration::from_secs(5)), Admission::Probe);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.admit(Duration::from_secs(5)), Admission::Probe);
    }
}
