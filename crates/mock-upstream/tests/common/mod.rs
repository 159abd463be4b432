//! Helpers shared by the black-box tests of the Anthropic, Gemini and cross-protocol routes.

#![allow(dead_code)]

use serde_json::Value;

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client builds")
}

pub async fn post(
    client: &reqwest::Client,
    url: String,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request sent")
}

pub async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.expect("body read");
    serde_json::from_slice(&bytes).expect("body is JSON")
}

/// Reads a streaming body until it ends or fails; returns the text and whether it failed.
pub async fn read_stream(mut resp: reqwest::Response) -> (String, bool) {
    let mut text = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
            Ok(None) => return (String::from_utf8(text).expect("utf-8"), false),
            Err(_) => return (String::from_utf8(text).expect("utf-8"), true),
        }
    }
}

/// The events of an SSE body as `(event name or "", parsed data)`.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).expect("data is JSON");
                }
            }
            (name, data)
        })
        .collect()
}
