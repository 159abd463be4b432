//! Upstream connections: providers that reach the same host share one pool of keep-alive
//! connections, and `server.upstream_pool.max_idle_per_host` bounds how many wait idle.

use serde_json::json;

use crate::common::*;

async fn chat_ok(h: &Harness, model: &str) {
    let response = h
        .chat(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .header("x-mock-latency-ms", "150")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{model}");
    response.bytes().await.unwrap();
}

/// Three requests at once, each holding an upstream connection for 150 ms.
async fn burst(h: &Harness) {
    futures_util::future::join_all((0..3).map(|_| chat_ok(h, "gpt-4.1"))).await;
    // The connections go back to the pool once their answers are read.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test]
async fn providers_on_one_host_share_keep_alive_connections() {
    let h = start().await;
    // Four providers of the harness (OpenAI, Responses, Anthropic, Gemini) reach the one mock.
    for model in ["gpt-4.1", "gpt-resp", "claude-x", "gemini-x", "gpt-4.1"] {
        chat_ok(&h, model).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.mock.stats().requests, 5);
    assert_eq!(
        h.mock.stats().connections,
        1,
        "one keep-alive connection serves every provider of the host"
    );
}

#[tokio::test]
async fn idle_connections_are_kept_up_to_the_bound() {
    let h = start().await;
    burst(&h).await;
    burst(&h).await;
    assert_eq!(
        h.mock.stats().connections,
        3,
        "the default keeps all three idle"
    );

    let h = start_with("  upstream_pool: {max_idle_per_host: 1, idle_timeout: 30s}").await;
    burst(&h).await;
    assert_eq!(h.mock.stats().connections, 3);
    burst(&h).await;
    assert_eq!(
        h.mock.stats().connections,
        5,
        "one connection was kept idle, the other two were closed and opened again"
    );
}
