//! The console's server side: sign-in into an HttpOnly, SameSite=Strict cookie, the CSRF token a
//! change made with it must carry, sign-out, and the typed views it reads (overview, deployments,
//! live tail, usage as CSV). The pages themselves are driven in chromium by
//! tests/console/console.test.mjs.

use mock_upstream::Behavior;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;
use crate::governance::{Gov, MASTER_KEY, gov};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in; returns the `Cookie` header value.
async fn sign_in(gov: &Gov) -> String {
    let response = no_redirects()
        .post(gov.url("/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={MASTER_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/ui");
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    set.split(';').next().unwrap().to_owned()
}

fn with_cookie(gov: &Gov, method: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    gov.client
        .request(method, gov.url(path))
        .header("cookie", cookie)
}

#[tokio::test]
async fn a_session_opens_with_the_master_key_and_changes_need_its_csrf_token() {
    let gov = gov("  []", "").await;
    let page = gov.client.get(gov.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("action=\"/ui/sign-in\"") && !html.contains("app.js"));
    for path in ["/ui/app.js", "/ui/charts.js"] {
        let script = gov.client.get(gov.url(path)).send().await.unwrap();
        assert_eq!(script.status(), 401, "{path} without a session");
    }
    let wrong = no_redirects()
        .post(gov.url("/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("key=not-the-master-key-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let cookie = sign_in(&gov).await;
    let app = with_cookie(&gov, Method::GET, "/ui", &cookie)
        .send()
        .await
        .unwrap();
    assert!(app.text().await.unwrap().contains("/ui/app.js"));
    let listed = with_cookie(&gov, Method::GET, "/admin/keys", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    let forged = with_cookie(&gov, Method::POST, "/admin/keys", &cookie)
        .header("content-type", "application/json")
        .body(json!({"name": "forged"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let session = json_of(
        with_cookie(&gov, Method::GET, "/admin/session", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    let made = with_cookie(&gov, Method::POST, "/admin/keys", &cookie)
        .header("content-type", "application/json")
        .header("x-csrf-token", &csrf)
        .body(json!({"name": "from-console"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);

    let out_without = no_redirects()
        .post(gov.url("/ui/sign-out"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out_without.status(), 403, "signing out is a change too");
    let out = no_redirects()
        .post(gov.url("/ui/sign-out"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = with_cookie(&gov, Method::GET, "/admin/keys", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the session is closed");
    let metrics = gov
        .client
        .get(gov.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for event in ["sign_in", "refused", "sign_out"] {
        let line = format!("shepherd_console_sessions_total{{event=\"{event}\"}} 1");
        assert!(metrics.contains(&line), "{line} in the metrics");
    }
    // A made-up cookie opens nothing either.
    let made_up = with_cookie(&gov, Method::GET, "/admin/keys", "shepherd_console=00")
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), 401);
}

#[tokio::test]
async fn the_views_show_the_traffic_of_a_key() {
    let gov = gov(
        "  []",
        "circuit: {failures: 2, cooldown: 60s}\nretry: {attempts: 1}",
    )
    .await;
    let (_, secret) = gov.create_key(json!({"name": "viewer"})).await;
    for _ in 0..3 {
        assert_eq!(gov.hello(&secret).send().await.unwrap().status(), 200);
    }
    gov.mock.set_behavior(Behavior {
        status: Some(500),
        ..Behavior::default()
    });
    for _ in 0..2 {
        assert!(
            gov.hello(&secret)
                .send()
                .await
                .unwrap()
                .status()
                .is_server_error()
        );
    }
    gov.mock.reset();

    let tail = json_of(
        gov.admin(Method::GET, "/admin/requests?key=viewer")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let rows = tail["data"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows[0]["status"].as_u64().unwrap() >= 500, "newest first");
    assert_eq!(rows[4]["status"], 200);
    assert_eq!(rows[4]["model"], "m");
    assert_eq!(rows[4]["deployment"], "up/up-m");
    assert!(rows[4]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(rows[4]["cost_usd"].as_f64().unwrap() > 0.0);
    let failed = json_of(
        gov.admin(Method::GET, "/admin/requests?status=5xx")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);

    let deployments = json_of(
        gov.admin(Method::GET, "/admin/deployments")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let deployment = &deployments["data"][0]["deployments"][0];
    assert_eq!(deployment["name"], "up/up-m");
    assert_eq!(deployment["circuit"], "open");
    assert_eq!(deployment["healthy"], false);
    assert_eq!(deployment["recent_requests"], 5);
    assert_eq!(deployment["recent_errors"], 2);

    let mut overview = Value::Null;
    for _ in 0..100 {
        overview = json_of(
            gov.admin(Method::GET, "/admin/overview")
                .send()
                .await
                .unwrap(),
        )
        .await;
        if overview["today"]["requests"] == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        overview["today"]["requests"], 5,
        "the ledger's totals reach the overview"
    );
    assert_eq!(overview["today"]["errors"], 2);
    assert!((overview["today"]["error_rate"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    assert!(overview["month"]["requests"].as_u64().unwrap() >= 5);
    assert_eq!(overview["latency_ms"]["samples"], 5);
    assert!(
        overview["last_24h_by_hour"]
            .as_array()
            .is_some_and(|hours| !hours.is_empty())
    );

    let csv = gov
        .admin(Method::GET, "/admin/usage?group_by=model&format=csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("model,requests,errors,prompt_tokens")
    );
    assert!(lines.next().unwrap().starts_with("m,5,2,"));
    let bad = gov
        .admin(Method::GET, "/admin/usage?format=xml")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
