//! Hot reload: a config file edited under a steady load of requests and streams is picked up
//! without failing any of them; a broken file is refused (counted) and the old config serves on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mock_upstream::MockUpstream;
use serde_json::json;

use crate::common::*;
use crate::shutdown::temp_file;

fn config(mock: &MockUpstream, extra_model: &str, weight: u32) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0, timeouts: {{idle: 5s}}}}
providers: {{p: {{kind: openai, base_url: '{}'}}}}
models:
  m:
    deployments: [{{provider: p, weight: {weight}}}]
{extra_model}keys: [{{name: svc, key: {CLIENT_KEY}}}]
",
        mock.base_url()
    )
}

async fn model_ids(client: &reqwest::Client, addr: std::net::SocketAddr) -> Vec<String> {
    let response = client
        .get(format!("http://{addr}/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    json_of(response).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn edits_under_load_fail_nothing_and_a_broken_file_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let file = temp_file("shepherd.yaml", &config(&mock, "", 1));
    let loaded = shepherd::config::load_file(&file.path).unwrap();
    let server = shepherd::server::start_watching(loaded, file.path.clone())
        .await
        .unwrap();
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for worker in 0..6 {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = test_client();
            let stream = worker % 2 == 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"model": "m", "stream": stream,
                                  "messages": [{"role": "user", "content": "steady"}]});
                let sent = client
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth(CLIENT_KEY)
                    .header("x-mock-chunks", "5")
                    .header("x-mock-chunk-delay-ms", "40")
                    .body(body.to_string())
                    .send()
                    .await;
                let ok = match sent {
                    Ok(response) if response.status() == 200 => {
                        let text = response.text().await.unwrap_or_default();
                        !stream || text.ends_with("data: [DONE]\n\n")
                    }
                    _ => false,
                };
                let counter = if ok { &served } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let client = test_client();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A valid edit: a new model appears, the weight changes.
    let extra = "  spare:\n    deployments: [{provider: p, model: m}]\n";
    std::fs::write(&file.path, config(&mock, extra, 5)).unwrap();
    assert!(
        eventually(|| server.state.reloads.succeeded.load(Ordering::Relaxed) == 1).await,
        "the edit was picked up"
    );
    assert!(model_ids(&client, addr).await.contains(&"spare".to_owned()));

    // A broken edit: refused, counted; the running config keeps serving.
    std::fs::write(
        &file.path,
        "models: {m: {deployments: [{provider: nowhere}]}}\n",
    )
    .unwrap();
    assert!(
        eventually(|| server.state.reloads.failed.load(Ordering::Relaxed) == 1).await,
        "the broken edit was seen and refused"
    );
    assert!(model_ids(&client, addr).await.contains(&"spare".to_owned()));

    // And a reload by hand (what SIGHUP does) of a fixed file.
    std::fs::write(&file.path, config(&mock, "", 2)).unwrap();
    server.state.reload().unwrap();
    assert_eq!(model_ids(&client, addr).await, ["m"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(served > 20, "load ran: {served}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across reloads",
        served + failed
    );
}

#[tokio::test]
async fn breaker_state_survives_a_reload_of_unchanged_deployments() {
    let mock = MockUpstream::start().await.unwrap();
    let file = temp_file("shepherd.yaml", &config(&mock, "", 1));
    let loaded = shepherd::config::load_file(&file.path).unwrap();
    let server = shepherd::server::start(loaded).await.unwrap();
    let before = server.state.runtime();
    let health = server.state.health.get("p/m");
    health.breaker.open_for(Duration::from_secs(60));
    let extra = "  other:\n    deployments: [{provider: p, model: o}]\n";
    let changed =
        shepherd::config::load_str(&config(&mock, extra, 3), "t.yaml", &|_| None).unwrap();
    server.state.apply(changed).unwrap();
    assert!(
        !Arc::ptr_eq(&before, &server.state.runtime()),
        "a new runtime"
    );
    assert!(
        Arc::ptr_eq(&health, &server.state.health.get("p/m")),
        "the same breaker"
    );
    assert!(
        !health.breaker.is_available(),
        "still open after the reload"
    );
}

#[tokio::test]
async fn an_empty_or_keyless_file_is_not_applied_on_a_file_event() {
    let mock = MockUpstream::start().await.unwrap();
    let file = temp_file("shepherd.yaml", &config(&mock, "", 1));
    let loaded = shepherd::config::load_file(&file.path).unwrap();
    let server = shepherd::server::start_watching(loaded, file.path.clone())
        .await
        .unwrap();
    let addr = server.addr;
    let client = test_client();
    let works = || async {
        client
            .get(format!("http://{addr}/v1/models"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap()
            .status()
    };
    // An editor's save: the file is truncated first, then written. Truncated and left empty,
    // it is refused (it serves nothing), and clients keep their keys.
    std::fs::write(&file.path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(works().await, 200);
    assert!(
        server.state.reloads.failed.load(Ordering::Relaxed) >= 1,
        "failed {} succeeded {}",
        server.state.reloads.failed.load(Ordering::Relaxed),
        server.state.reloads.succeeded.load(Ordering::Relaxed)
    );
    // Truncated then written within the debounce: one good reload, no failure in between.
    let failed_before = server.state.reloads.failed.load(Ordering::Relaxed);
    let succeeded_before = server.state.reloads.succeeded.load(Ordering::Relaxed);
    std::fs::write(&file.path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::write(&file.path, config(&mock, "", 2)).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.state.reloads.failed.load(Ordering::Relaxed),
        failed_before
    );
    assert_eq!(
        server.state.reloads.succeeded.load(Ordering::Relaxed),
        succeeded_before + 1
    );
    // A change that removes every key: refused on the file event (clients keep working), applied
    // by a SIGHUP.
    let keyless =
        config(&mock, "", 1).replace(&format!("keys: [{{name: svc, key: {CLIENT_KEY}}}]\n"), "");
    assert!(!keyless.contains("keys:"));
    std::fs::write(&file.path, keyless).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(works().await, 200, "a file event does not remove every key");
    server.state.reload().unwrap();
    assert_eq!(works().await, 401, "a SIGHUP does");
}

/// The upstream keys the mock saw on chat requests since its last reset.
fn keys_seen(mock: &MockUpstream) -> std::collections::BTreeSet<String> {
    mock.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn upstream_keys_new_in_a_reload_are_checked_before_they_serve() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_behavior(mock_upstream::Behavior {
        refuse_key: Some("sk-revoked-by-provider".to_owned()),
        ..Default::default()
    });
    let keys = |list: &str| {
        format!(
            "server: {{listen: 127.0.0.1:0}}
providers: {{p: {{kind: openai, base_url: '{}', api_keys: [{list}]}}}}
models: {{m: {{deployments: [{{provider: p}}]}}}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
",
            mock.base_url()
        )
    };
    let file = temp_file("shepherd.yaml", &keys("sk-first-key"));
    let loaded = shepherd::config::load_file(&file.path).unwrap();
    let server = shepherd::server::start_watching(loaded, file.path.clone())
        .await
        .unwrap();
    let client = test_client();
    let chat = || {
        client
            .post(format!("http://{}/v1/chat/completions", server.addr))
            .bearer_auth(CLIENT_KEY)
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            )
            .send()
    };
    let checks = |result: &str| {
        server
            .state
            .metrics
            .upstream_key_checks
            .with_label_values(&["p", result])
            .get()
    };
    let wait_for = |result: &'static str, count: u64| {
        let checks = &checks;
        async move {
            for _ in 0..100 {
                if checks(result) >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("no {result} check");
        }
    };

    // A key the provider refuses: reported, and never used.
    std::fs::write(&file.path, keys("sk-first-key, sk-revoked-by-provider")).unwrap();
    server.state.reload().unwrap();
    wait_for("refused", 1).await;
    mock.reset();
    mock.set_behavior(mock_upstream::Behavior {
        refuse_key: Some("sk-revoked-by-provider".to_owned()),
        ..Default::default()
    });
    for _ in 0..6 {
        assert_eq!(chat().await.unwrap().status(), 200);
    }
    assert_eq!(
        keys_seen(&mock).into_iter().collect::<Vec<_>>(),
        ["Bearer sk-first-key"],
        "the refused key never served"
    );
    let models_asked: Vec<_> = server
        .state
        .metrics
        .render(&server.state)
        .lines()
        .filter(|l| l.starts_with("shepherd_upstream_key_checks_total"))
        .map(str::to_owned)
        .collect();
    assert!(
        models_asked
            .iter()
            .any(|l| l.contains("result=\"refused\"") && l.ends_with(" 1")),
        "{models_asked:?}"
    );

    // A key it accepts: checked (on the model list), then in rotation.
    mock.reset();
    mock.set_behavior(mock_upstream::Behavior {
        refuse_key: Some("sk-revoked-by-provider".to_owned()),
        ..Default::default()
    });
    std::fs::write(&file.path, keys("sk-first-key, sk-rotated-in")).unwrap();
    server.state.reload().unwrap();
    wait_for("ok", 1).await;
    let asked: Vec<_> = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/models"))
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        asked,
        ["Bearer sk-rotated-in"],
        "only the new key is checked"
    );
    for _ in 0..6 {
        assert_eq!(chat().await.unwrap().status(), 200);
    }
    assert_eq!(
        keys_seen(&mock).into_iter().collect::<Vec<_>>(),
        ["Bearer sk-first-key", "Bearer sk-rotated-in"]
    );
}
