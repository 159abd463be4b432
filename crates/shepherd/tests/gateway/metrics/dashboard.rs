//! The Grafana dashboard and the alert rules ask only for metrics that `/metrics` exposes.

use mock_upstream::Behavior;
use serde_json::Value;

use super::{SERVICE_KEY, TIGHT_KEY, hello, observed};

/// Every `shepherd_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shepherd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `expr` of the dashboard's panels (rows included).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    queries.push(expr.clone());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    queries
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_exposed_metrics() {
    let o = observed("").await;
    // Traffic that brings every family to life: a fallback, a retry, a hit, a refusal.
    assert_eq!(o.chat(SERVICE_KEY, hello("f")).await.status(), 200);
    o.mock.set_behavior(Behavior {
        status: Some(500),
        fail_times: Some(1),
        ..Behavior::default()
    });
    assert_eq!(o.chat(SERVICE_KEY, hello("m")).await.status(), 200);
    for _ in 0..2 {
        let _ = o.chat(SERVICE_KEY, hello("c")).await.bytes().await;
        let _ = o.chat(TIGHT_KEY, hello("m")).await.bytes().await;
    }
    let s = o.scrape().await;
    assert_eq!(
        s.value("shepherd_fallbacks_total", &[("from", "f"), ("to", "m")]),
        1.0
    );
    let exposed = s.names();

    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/shepherd.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = std::collections::BTreeSet::new();
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "a query on no Shepherd metric: {query}");
        for name in names {
            assert!(
                exposed.contains(&name),
                "the dashboard asks for {name}, which /metrics lacks: {query}"
            );
            used.insert(name);
        }
    }
    for wanted in [
        "shepherd_requests_total",
        "shepherd_request_duration_seconds_bucket",
        "shepherd_time_to_first_token_seconds_bucket",
        "shepherd_tokens_total",
        "shepherd_key_tokens_total",
        "shepherd_cost_usd_total",
        "shepherd_cache_requests_total",
        "shepherd_ratelimited_total",
        "shepherd_deployment_healthy",
        "shepherd_inflight_requests",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            for name in metric_names(query) {
                assert!(
                    exposed.contains(&name),
                    "variable {}: {name}",
                    variable["name"]
                );
            }
        }
    }

    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let exprs: Vec<&str> = alerts
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let alert_names = metric_names(&exprs.join("\n"));
    for name in &alert_names {
        // Annotations mention metrics too; every one of them must exist.
        assert!(
            exposed.contains(name),
            "alerts.yml names {name}, which /metrics lacks"
        );
    }
    assert!(alert_names.contains("shepherd_budget_spent_usd"));
}
