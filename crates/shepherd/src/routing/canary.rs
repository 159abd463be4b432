//! Canary routing: whether a request goes to a model's second deployment set, by a hash of the
//! client key (sticky: the same key always lands on the same side), a request header, the key's
//! name, or the client's address.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::CanaryRule;

/// The request header that asks for (or declines) the canary under `by: header`.
pub const CANARY_HEADER: &str = "x-shepherd-canary";

/// Who is asking, as far as canary rules and fallbacks care.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub key_name: &'a str,
    /// The models the key may use (fallbacks it may not use are skipped).
    pub key_models: &'a [crate::config::ModelPattern],
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
}

impl Requester<'_> {
    pub fn may_use(&self, model: &str) -> bool {
        self.key_models.iter().any(|pattern| pattern.matches(model))
    }
}

/// Buckets a key falls into: shares are exact to 1/10,000.
const BUCKETS: u64 = 10_000;

pub fn chooses_canary(rule: &CanaryRule, requester: &Requester<'_>) -> bool {
    match rule {
        CanaryRule::KeyShare(share) => {
            let bucket = key_hash(requester.key_name) % BUCKETS;
            (bucket as f64) < share * BUCKETS as f64
        }
        CanaryRule::Header => requester
            .headers
            .get(CANARY_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            }),
        CanaryRule::KeyNames(patterns) => patterns.iter().any(|p| p.matches(requester.key_name)),
        CanaryRule::Ips(ranges) => requester
            .client_ip
            .is_some_and(|ip| ranges.iter().any(|range| range.contains(ip))),
    }
}

/// A well-mixed 64-bit hash of a key's name (FNV-1a, then splitmix64's finalizer), stable across
/// processes and versions: a key must stay on its side.
fn key_hash(name: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_models() -> [crate::config::ModelPattern; 1] {
        [crate::config::ModelPattern::new("*".to_owned())]
    }
    use crate::config::{Cidr, ModelPattern};
    use axum::http::HeaderValue;

    static ALL: std::sync::LazyLock<[ModelPattern; 1]> =
        std::sync::LazyLock::new(|| [ModelPattern::new("*".to_owned())]);

    fn requester<'a>(key_name: &'a str, headers: &'a HeaderMap) -> Requester<'a> {
        Requester {
            key_name,
            key_models: &*ALL,
            headers,
            client_ip: None,
        }
    }

    #[test]
    fn key_share_within_two_percent_and_sticky() {
        let headers = HeaderMap::new();
        let rule = CanaryRule::KeyShare(0.10);
        let names: Vec<String> = (0..10_000).map(|n| format!("service-{n}")).collect();
        let chosen = names
            .iter()
            .filter(|name| chooses_canary(&rule, &requester(name, &headers)))
            .count();
        let share = chosen as f64 / 10_000.0;
        assert!((share - 0.10).abs() < 0.02, "{share}");
        for name in names.iter().take(500) {
            let first = chooses_canary(&rule, &requester(name, &headers));
            for _ in 0..3 {
                assert_eq!(chooses_canary(&rule, &requester(name, &headers)), first);
            }
        }
        assert!(!chooses_canary(
            &CanaryRule::KeyShare(0.0),
            &requester("x", &headers)
        ));
        assert!(chooses_canary(
            &CanaryRule::KeyShare(1.0),
            &requester("x", &headers)
        ));
    }

    #[test]
    fn header_names_and_addresses() {
        let mut headers = HeaderMap::new();
        assert!(!chooses_canary(
            &CanaryRule::Header,
            &requester("k", &headers)
        ));
        headers.insert(CANARY_HEADER, HeaderValue::from_static("true"));
        assert!(chooses_canary(
            &CanaryRule::Header,
            &requester("k", &headers)
        ));
        headers.insert(CANARY_HEADER, HeaderValue::from_static("0"));
        assert!(!chooses_canary(
            &CanaryRule::Header,
            &requester("k", &headers)
        ));

        let names = CanaryRule::KeyNames(vec![ModelPattern::new("beta-*".into())]);
        assert!(chooses_canary(&names, &requester("beta-reviews", &headers)));
        assert!(!chooses_canary(&names, &requester("reviews", &headers)));

        let ips = CanaryRule::Ips(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        let inside = Requester {
            key_models: &all_models(),
            key_name: "k",
            headers: &headers,
            client_ip: "10.9.8.7".parse().ok(),
        };
        let outside = Requester {
            key_models: &all_models(),
            key_name: "k",
            headers: &headers,
            client_ip: "192.168.0.1".parse().ok(),
        };
        assert!(chooses_canary(&ips, &inside));
        assert!(!chooses_canary(&ips, &outside));
    }
}
