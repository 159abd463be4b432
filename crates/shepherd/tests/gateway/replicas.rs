//! Many replicas, one gateway: three real `shepherd` processes on their own ports share one
//! real Redis (`testkit::Redis`) and one real PostgreSQL (`testkit::Postgres`); a client spreads
//! requests round-robin. Limits, requests in flight, budgets and token reservations hold in
//! total; virtual keys and revocations reach every replica within a second; the ledger in
//! PostgreSQL has every request of every replica; an answer cached by one replica is a hit on
//! another, streams included. Outages: Redis killed for 10 s (served under local limits, or
//! refused with 503 when `on_redis_failure: closed`, and the limits resume), PostgreSQL killed
//! for 30 s (no usage record lost). Nothing is mocked but the LLM provider.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};

use crate::common::*;
use crate::governance::{KEY_SECRET, MASTER_KEY};
use crate::shutdown::{TempFile, temp_file};

/// A replica: the real binary, killed when dropped.
struct Replica {
    child: Child,
    addr: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

struct Cluster {
    replicas: Vec<Replica>,
    mock: MockUpstream,
    redis: testkit::Redis,
    postgres: testkit::Postgres,
    config: TempFile,
    client: reqwest::Client,
    next: std::sync::atomic::AtomicUsize,
}

/// The model `m` (priced) on the mock; `keys` and `extra` are YAML added to the config.
fn config_yaml(
    mock: &MockUpstream,
    redis: &str,
    database: &str,
    keys: &str,
    extra: &str,
) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0, timeouts: {{first_byte: 10s, idle: 10s}}}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
state: {{database: '{database}', redis: '{redis}'{extra}}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models:
  m:
    deployments: [{{provider: up, model: up-m}}]
    price: {{input: 2, output: 8}}
cache: {{backend: redis, ttl: 10m}}
keys:
{keys}
",
        mock.base_url()
    )
}

/// Starts `count` replicas at the same moment on a fresh database.
async fn cluster(count: usize, keys: &str, state_extra: &str) -> Cluster {
    let redis = testkit::Redis::start();
    let postgres = testkit::Postgres::start();
    postgres.create_database("shepherd");
    let mock = MockUpstream::start().await.unwrap();
    let yaml = config_yaml(
        &mock,
        &redis.url(),
        &postgres.url("shepherd"),
        keys,
        state_extra,
    );
    let config = temp_file("shepherd.yaml", &yaml);
    let starting: Vec<_> = (0..count).map(|_| spawn(&config)).collect();
    let mut replicas = Vec::new();
    for (child, lines) in starting {
        replicas.push(ready(child, lines).await);
    }
    let cluster = Cluster {
        replicas,
        mock,
        redis,
        postgres,
        config,
        client: test_client(),
        next: Default::default(),
    };
    cluster.wait_for_replicas(count).await;
    cluster
}

fn spawn(config: &TempFile) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["serve", "--config"])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
    }
    (child, lines)
}

async fn ready(child: Child, lines: std::sync::mpsc::Receiver<String>) -> Replica {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replica not ready: {seen:#?}"
        );
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let entry: Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "ready" {
                    let addr = entry["addr"].as_str().unwrap().to_owned();
                    // Keep draining its output so the pipes never fill.
                    std::thread::spawn(move || while lines.recv().is_ok() {});
                    return Replica { child, addr };
                }
                seen.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("replica exited before it was ready: {seen:#?}")
            }
        }
    }
}

fn hello(max_tokens: u64) -> Value {
    json!({"model": "m", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello there"}]})
}

impl Cluster {
    /// The next replica, round-robin.
    fn url(&self, path: &str) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.url_of(n % self.replicas.len(), path)
    }

    fn url_of(&self, replica: usize, path: &str) -> String {
        format!("http://{}{path}", self.replicas[replica].addr)
    }

    /// A request that bypasses the cache (so identical ones are not coalesced).
    fn chat(&self, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("cache-control", "no-store")
            .body(body.to_string())
    }

    fn chat_on(&self, replica: usize, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.cached_on(replica, key, body)
            .header("cache-control", "no-store")
    }

    /// A request the cache may answer.
    fn cached_on(&self, replica: usize, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url_of(replica, "/v1/chat/completions"))
            .bearer_auth(key)
            .body(body.to_string())
    }

    fn cached(&self, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .body(body.to_string())
    }

    /// Sends `count` requests at once, round-robin; the statuses.
    async fn burst(&self, count: usize, key: &str, body: &Value) -> Vec<u16> {
        join_all((0..count).map(|_| self.chat(key, body).send()))
            .await
            .into_iter()
            .map(|answer| answer.map_or(0, |answer| answer.status().as_u16()))
            .collect()
    }

    async fn readyz(&self, replica: usize) -> Value {
        let answer = self
            .client
            .get(self.url_of(replica, "/readyz"))
            .send()
            .await
            .unwrap();
        json_of(answer).await
    }

    /// Waits until every replica's heartbeat is in Redis (each one knows the others).
    async fn wait_for_replicas(&self, count: usize) {
        let started = Instant::now();
        loop {
            let seen: usize = self
                .redis
                .cli(&["ZCARD", "shepherd:replicas"])
                .parse()
                .unwrap_or(0);
            if seen >= count {
                // One more beat each, so every replica counts all of them.
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{seen} of {count} replicas beat"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rows in the PostgreSQL ledger.
    fn ledger_rows(&self) -> u64 {
        self.postgres
            .psql("shepherd", "SELECT count(*) FROM usage")
            .parse()
            .unwrap()
    }

    /// Waits until the ledger holds `count` rows (the writers flush every 200 ms).
    async fn wait_for_ledger(&self, count: u64, within: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let rows = self.ledger_rows();
            if rows >= count || started.elapsed() > within {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn limits_hold_across_three_replicas() {
    let c = cluster(
        3,
        "  - {name: steady, key: sk-steady-1, limits: {rpm: 100}}
  - {name: narrow, key: sk-narrow-1, limits: {concurrency: 5}}
  - {name: tokens, key: sk-tokens-1, limits: {tpm: 1000}}",
        "",
    )
    .await;

    // rpm 100: 130 at once, round-robin over the three: 100 admitted in total.
    let statuses = c.burst(130, "sk-steady-1", &hello(10)).await;
    let admitted = count(&statuses, 200);
    assert!(
        (100..=101).contains(&admitted),
        "{admitted} admitted: {statuses:?}"
    );
    assert_eq!(count(&statuses, 429), 130 - admitted);

    // concurrency 5: 30 slow requests at once; the mock never sees more than 5 at a time.
    c.mock.reset();
    let slow = {
        let mut body = hello(10);
        body["metadata"] = json!({"n": 1});
        body
    };
    let statuses = join_all((0..30).map(|_| {
        c.chat("sk-narrow-1", &slow)
            .header("x-mock-latency-ms", "400")
            .send()
    }))
    .await
    .into_iter()
    .map(|a| a.unwrap().status().as_u16())
    .collect::<Vec<_>>();
    let peak = c.mock.stats().peak_in_flight;
    assert!(peak <= 5, "peak {peak} at the mock: {statuses:?}");
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(peak, 5);

    // tpm 1000, each request reserving its estimate (prompt/4 + max_tokens 200): four fit at
    // once across the replicas; once they settle with their real (small) usage, the room is
    // back.
    let body = hello(200);
    let reserved = body.to_string().len().div_ceil(4) as u64 + 200;
    let fit = (1000 / reserved) as usize;
    let statuses = join_all((0..12).map(|_| {
        c.chat("sk-tokens-1", &body)
            .header("x-mock-latency-ms", "400")
            .send()
    }))
    .await
    .into_iter()
    .map(|a| a.unwrap().status().as_u16())
    .collect::<Vec<_>>();
    assert_eq!(count(&statuses, 200), fit, "{statuses:?}");
    // Settlement is off the request path: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = c.chat("sk-tokens-1", &body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let remaining: u64 = answer.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Without settlement nothing would be left (the reservations alone fill the limit);
    // settled, each earlier request holds only its real usage (well under 100 tokens).
    assert!(
        remaining + reserved + fit as u64 * 100 > 1000,
        "settled usage gave the unused reservation back: {remaining}"
    );
    let mut c = c;
    for replica in &mut c.replicas {
        assert!(replica.alive());
    }
}

#[tokio::test]
async fn a_budget_that_fits_ten_admits_ten_of_a_hundred_across_replicas() {
    let body = hello(50);
    let prompt = body.to_string().len().div_ceil(4) as u64;
    let estimate = prompt * 2000 + 50 * 8000;
    let budget_usd = (estimate * 10) as f64 / 1e9;
    let c = cluster(
        3,
        &format!(
            "  - {{name: thrifty, key: sk-thrifty-1, budget: {{usd: {budget_usd}, period: day}}}}"
        ),
        "",
    )
    .await;
    c.mock.set_behavior(Behavior {
        latency_ms: Some(500),
        ..Behavior::default()
    });
    let statuses = c.burst(100, "sk-thrifty-1", &body).await;
    if count(&statuses, 200) == 0 {
        let refused = c.chat("sk-thrifty-1", &body).send().await.unwrap();
        panic!("{}", refused.text().await.unwrap());
    }
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 90);
    // Every request of every replica is in PostgreSQL; `shepherd usage` reads them.
    let rows = c.wait_for_ledger(100, Duration::from_secs(10)).await;
    assert_eq!(rows, 100);
    let out = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["usage", "--config"])
        .arg(&c.config.path)
        .args(["--by", "key", "--since", "1h", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = report
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["key"] == "thrifty")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(line["requests"], 100, "{report}");
    assert_eq!(line["errors"], 90, "{report}");
}

#[tokio::test]
async fn virtual_keys_reach_every_replica_within_a_second() {
    let c = cluster(3, "  - {name: static, key: sk-static-1}", "").await;
    let created = c
        .client
        .post(c.url_of(0, "/admin/keys"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body(json!({"name": "made-on-one"}).to_string())
        .send()
        .await
        .unwrap();
    let made_at = Instant::now();
    let created = json_of(created).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    for replica in [1, 2] {
        loop {
            let status = c
                .chat_on(replica, &key, &hello(5))
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                break;
            }
            assert!(
                made_at.elapsed() < Duration::from_secs(1),
                "replica {replica} still answers {status} after {:?}",
                made_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let revoked = c
        .client
        .delete(c.url_of(0, &format!("/admin/keys/{id}")))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let revoked_at = Instant::now();
    for replica in [1, 2] {
        loop {
            let status = c
                .chat_on(replica, &key, &hello(5))
                .send()
                .await
                .unwrap()
                .status();
            if status == 401 {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "replica {replica} still answers {status} after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn an_answer_cached_by_one_replica_is_a_hit_on_another_streams_included() {
    let c = cluster(3, "  - {name: svc, key: sk-svc-1}", "").await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "cache me"}]});
    let first = c.cached_on(0, "sk-svc-1", &body).send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first = json_of(first).await;
    let mut hit = None;
    for _ in 0..50 {
        let answer = c.cached_on(1, "sk-svc-1", &body).send().await.unwrap();
        if answer.headers()["x-cache"] == "HIT" {
            hit = Some(json_of(answer).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hit = hit.expect("a hit on replica 2");
    assert_eq!(
        hit["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
    let requests_before = c.mock.stats().requests;

    // A stream stored by replica 1, replayed as a stream by replica 3.
    let streamed = json!({"model": "m", "stream": true,
                          "messages": [{"role": "user", "content": "stream me"}]});
    let first = c.cached_on(0, "sk-svc-1", &streamed).send().await.unwrap();
    let first_text = sse_payloads(first).await.join("");
    let mut replayed = None;
    for _ in 0..50 {
        let answer = c.cached_on(2, "sk-svc-1", &streamed).send().await.unwrap();
        if answer.headers()["x-cache"] == "HIT" {
            assert!(
                answer.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            replayed = Some(sse_payloads(answer).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replayed = replayed.expect("a streamed hit on replica 3");
    assert_eq!(replayed.last().map(String::as_str), Some("[DONE]"));
    let text = |payloads: &str| {
        payloads
            .split("\"content\":\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap_or(""))
            .collect::<String>()
    };
    assert_eq!(text(&replayed.join("")), text(&first_text));
    assert_eq!(
        c.mock.stats().requests,
        requests_before + 1,
        "the replay did not go upstream"
    );
}

#[tokio::test]
async fn misses_are_coalesced_across_replicas() {
    let c = cluster(3, "  - {name: svc, key: sk-svc-1}", "").await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "once please"}]});
    let answers = join_all((0..9).map(|_| {
        c.cached("sk-svc-1", &body)
            .header("x-mock-latency-ms", "500")
            .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    assert_eq!(
        c.mock.stats().requests,
        1,
        "nine identical requests on three replicas, one upstream call"
    );
}

/// Sends requests one after another (round-robin) until `stop`; the statuses.
async fn load(
    c: Arc<Cluster>,
    key: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let status = c
            .chat(key, &hello(5))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |answer| answer.status().as_u16());
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    statuses
}

#[tokio::test]
async fn redis_killed_for_ten_seconds_fail_open_then_limits_resume() {
    let c = cluster(
        3,
        "  - {name: svc, key: sk-svc-1}\n  - {name: capped, key: sk-capped-1, limits: {rpm: 30}}",
        "",
    )
    .await;
    let c = Arc::new(c);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(c.clone(), "sk-svc-1", stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `kill` needs the Redis handle mutably: the cluster is shared, so go through the port.
    let port = c.redis.port();
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SHUTDOWN", "NOSAVE"])
        .output();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = c.readyz(0).await;
    assert_eq!(during["status"], "degraded", "{during}");
    assert_ne!(during["checks"]["redis"], "ok", "{during}");
    // The capped key under local limits: each replica enforces its share (30 / 3 = 10).
    let statuses = c.burst(60, "sk-capped-1", &hello(5)).await;
    let admitted = count(&statuses, 200);
    assert!(
        (27..=33).contains(&admitted),
        "3 replicas x 10 each while Redis is down: {admitted}"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = restart_redis(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = loader.await.unwrap();
    assert!(statuses.len() > 50, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "served all along: {statuses:?}"
    );
    assert_eq!(c.readyz(1).await["status"], "ready");
    // Limits are shared again (a fresh Redis: the capped key has its full rpm, once in total).
    let statuses = c.burst(60, "sk-capped-1", &hello(5)).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    drop(restarted);
    let mut c = Arc::into_inner(c).unwrap();
    for replica in &mut c.replicas {
        assert!(replica.alive(), "no replica restarted");
    }
}

/// Starts redis-server again on `port` (the testkit handle lost its process).
fn restart_redis(port: u16) -> RedisOnPort {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisOnPort(child)
}

struct RedisOnPort(Child);

impl Drop for RedisOnPort {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_down_fail_closed_refuses_with_503_then_serves_again() {
    let c = cluster(
        2,
        "  - {name: svc, key: sk-svc-1}",
        ", on_redis_failure: closed",
    )
    .await;
    assert_eq!(
        c.chat("sk-svc-1", &hello(5)).send().await.unwrap().status(),
        200
    );
    let port = c.redis.port();
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SHUTDOWN", "NOSAVE"])
        .output();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = c.chat("sk-svc-1", &hello(5)).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_openai_error(&json_of(refused).await, "state_unavailable");
    let answer = c.client.get(c.url_of(0, "/readyz")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let _restarted = restart_redis(port);
    let started = Instant::now();
    loop {
        let status = c.chat("sk-svc-1", &hello(5)).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_killed_for_thirty_seconds_loses_no_usage_record() {
    let mut c = cluster(3, "  - {name: svc, key: sk-svc-1}", "").await;
    let before = c.burst(30, "sk-svc-1", &hello(5)).await;
    assert_eq!(count(&before, 200), 30);
    assert_eq!(c.wait_for_ledger(30, Duration::from_secs(10)).await, 30);
    c.postgres.kill();
    let mut sent = 30;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        let statuses = c.burst(9, "sk-svc-1", &hello(5)).await;
        assert_eq!(count(&statuses, 200), 9, "served while PostgreSQL is down");
        sent += 9;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = c.readyz(0).await;
    assert_eq!(during["status"], "degraded", "{during}");
    c.postgres.resume();
    let rows = c.wait_for_ledger(sent, Duration::from_secs(20)).await;
    assert_eq!(rows, sent, "every record written once PostgreSQL is back");
    for replica in &mut c.replicas {
        assert!(replica.alive());
    }
}

#[tokio::test]
async fn a_response_stored_by_one_replica_is_continued_on_another() {
    let c = cluster(
        3,
        "  - {name: svc, key: sk-svc-1}\n  - {name: other, key: sk-other-1}",
        "",
    )
    .await;
    let respond = |replica: usize, key: &str, body: Value| {
        c.client
            .post(c.url_of(replica, "/v1/responses"))
            .bearer_auth(key)
            .header("cache-control", "no-store")
            .body(body.to_string())
    };
    let first = respond(
        0,
        "sk-svc-1",
        json!({"model": "m", "input": "My name is Ada"}),
    );
    let first = json_of(first.send().await.unwrap()).await;
    let id = first["id"].as_str().unwrap();
    assert_eq!(first["store"], true, "{first}");
    let second = respond(
        1,
        "sk-svc-1",
        json!({"model": "m", "input": "What is my name?", "previous_response_id": id}),
    );
    let second = json_of(second.send().await.unwrap()).await;
    assert_eq!(second["previous_response_id"], id, "{second}");
    let sent = c.mock.requests().pop().unwrap().json().unwrap();
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            "My name is Ada",
            "Mock reply to: My name is Ada",
            "What is my name?"
        ],
        "the whole conversation went upstream from the other replica"
    );
    let path = format!("/v1/responses/{id}");
    let read = |replica: usize, key: &str| {
        c.client
            .get(c.url_of(replica, &path))
            .bearer_auth(key)
            .send()
    };
    let got = read(2, "sk-svc-1").await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(json_of(got).await["id"], id);
    assert_eq!(read(2, "sk-other-1").await.unwrap().status(), 404);
    let other = respond(
        2,
        "sk-other-1",
        json!({"model": "m", "input": "hi", "previous_response_id": id}),
    );
    let other = other.send().await.unwrap();
    assert_eq!(other.status(), 400, "another key cannot continue it");
}
