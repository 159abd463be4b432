//! Strategies that order a model's deployments for one request: the first is the choice, the
//! rest the order of failover. Weighted random (without replacement), round-robin, least in
//! flight, lowest moving-average latency (unmeasured deployments first, so each gets measured).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Deployment;
use crate::config::Strategy;

/// Deployments of a model (or of its canary) with the strategy that orders them.
#[derive(Debug)]
pub struct Pool {
    pub deployments: Vec<Arc<Deployment>>,
    pub strategy: Strategy,
    /// Requests routed so far, for round-robin.
    turns: AtomicU64,
}

impl Pool {
    pub fn new(deployments: Vec<Arc<Deployment>>, strategy: Strategy) -> Self {
        Pool {
            deployments,
            strategy,
            turns: AtomicU64::new(0),
        }
    }

    /// The deployments in the order this request should try them.
    pub fn ordered(&self) -> Vec<Arc<Deployment>> {
        let mut out = self.deployments.clone();
        if out.len() < 2 {
            return out;
        }
        match self.strategy {
            Strategy::Weighted => weighted_order(&mut out),
            Strategy::RoundRobin => {
                let turn = self.turns.fetch_add(1, Ordering::Relaxed);
                let start = usize::try_from(turn % out.len() as u64).unwrap_or(0);
                out.rotate_left(start);
            }
            Strategy::LeastInflight => {
                // Ties go to a random one, not always the first.
                fastrand::shuffle(&mut out);
                out.sort_by_key(|d| d.health.inflight());
            }
            Strategy::LowestLatency => {
                fastrand::shuffle(&mut out);
                out.sort_by_key(|d| d.health.latency().unwrap_or_default());
            }
        }
        out
    }
}

/// Weighted random order without replacement: each position drawn in proportion to the
/// weights of the deployments not yet placed.
fn weighted_order(deployments: &mut [Arc<Deployment>]) {
    let mut remaining: u64 = deployments.iter().map(|d| u64::from(d.weight)).sum();
    for position in 0..deployments.len() {
        let mut ticket = fastrand::u64(0..remaining.max(1));
        let mut chosen = position;
        for (index, deployment) in deployments.iter().enumerate().skip(position) {
            let weight = u64::from(deployment.weight);
            if ticket < weight {
                chosen = index;
                break;
            }
            ticket -= weight;
        }
        deployments.swap(position, chosen);
        remaining = remaining.saturating_sub(u64::from(deployments[position].weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::test_deployment;
    use std::time::Duration;

    fn pool(weights: &[u32], strategy: Strategy) -> Pool {
        let deployments = weights
            .iter()
            .enumerate()
            .map(|(n, w)| test_deployment(&format!("d{n}"), *w))
            .collect();
        Pool::new(deployments, strategy)
    }

    #[test]
    fn weights_hold_within_two_percent_over_10000_selections() {
        let pool = pool(&[6, 3, 1], Strategy::Weighted);
        let mut firsts = [0u32; 3];
        for _ in 0..10_000 {
            let order = pool.ordered();
            assert_eq!(
                order.len(),
                3,
                "every deployment stays a failover candidate"
            );
            let index: usize = order[0].name[1..].parse().unwrap();
            firsts[index] += 1;
        }
        for (count, share) in firsts.iter().zip([0.6, 0.3, 0.1]) {
            let observed = f64::from(*count) / 10_000.0;
            assert!((observed - share).abs() < 0.02, "{firsts:?}");
        }
    }

    #[test]
    fn round_robin_rotates() {
        let pool = pool(&[1, 1, 1], Strategy::RoundRobin);
        let firsts: Vec<String> = (0..6).map(|_| pool.ordered()[0].name.to_string()).collect();
        assert_eq!(firsts, ["d0", "d1", "d2", "d0", "d1", "d2"]);
    }

    #[test]
    fn least_inflight_and_lowest_latency() {
        let pool = pool(&[1, 1, 1], Strategy::LeastInflight);
        let _busy0 = pool.deployments[0].health.start();
        let _busy2 = pool.deployments[2].health.start();
        let _busier2 = pool.deployments[2].health.start();
        let order: Vec<String> = pool.ordered().iter().map(|d| d.name.to_string()).collect();
        assert_eq!(order[0], "d1");
        assert_eq!(order[2], "d2");

        let pool = pool_latency();
        assert_eq!(&*pool.ordered()[0].name, "d1", "unmeasured first");
        pool.deployments[1]
            .health
            .record_latency(Duration::from_millis(300));
        assert_eq!(&*pool.ordered()[0].name, "d0");
    }

    fn pool_latency() -> Pool {
        let pool = pool(&[1, 1], Strategy::LowestLatency);
        pool.deployments[0]
            .health
            .record_latency(Duration::from_millis(50));
        pool
    }
}
