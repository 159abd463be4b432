//! The attempt loop alone: a scripted `Attempter` stands in for the codec and the upstream, and
//! tokio's clock is paused, so backoff and `Retry-After` waits are checked to the millisecond
//! without waiting for them.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::StatusCode;

use super::*;
use crate::state::AppState;

const CONFIG: &str = "\
providers: {a: {kind: mock}, b: {kind: mock}}
models:
  pair:
    deployments: [{provider: a}, {provider: b}]
    strategy: round_robin
  one:
    deployments: [{provider: a}]
retry: {attempts: 3, backoff: 100ms, max_backoff: 1s, max_retry_after: 5s}
circuit: {failures: 1000, key_cooldown: 0s}
";

/// What one scripted attempt comes to.
enum Outcome {
    Answered,
    Failed(ErrorKind, Option<Duration>),
}

use Outcome::{Answered, Failed};

/// Outcomes handed out in order; records which deployment each attempt went to, and when.
struct Script {
    outcomes: Mutex<VecDeque<Outcome>>,
    seen: Mutex<Vec<(String, Instant)>>,
}

impl Script {
    fn new(outcomes: Vec<Outcome>) -> Script {
        Script {
            outcomes: Mutex::new(outcomes.into()),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<(String, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Attempter for Script {
    fn attempt(
        &self,
        candidate: &Candidate,
        _: Option<usize>,
        _: Instant,
        _: Option<HeaderValue>,
    ) -> impl std::future::Future<Output = Result<Response, Failure>> + Send {
        self.seen
            .lock()
            .unwrap()
            .push((candidate.deployment.name.to_string(), Instant::now()));
        let outcome = self
            .outcomes
            .lock()
            .unwrap()
            .pop_front()
            .expect("an outcome for every attempt");
        std::future::ready(match outcome {
            Answered => Ok(Response::new(Body::empty())),
            Failed(kind, retry_after) => Err(Failure {
                answer: Err(ApiError::upstream_unreachable("scripted")),
                kind,
                code: None,
                retry_after,
            }),
        })
    }
}

/// Runs the loop for `model` with `script` as the world.
async fn run_scripted(model: &str, script: &Script) -> Response {
    let config = crate::config::load_str(CONFIG, "t.yaml", &|_| None).unwrap();
    let state = AppState::new(config, None).unwrap();
    let runtime = state.runtime();
    let body = Bytes::from(format!(r#"{{"model":"{model}","messages":[]}}"#));
    let head = RequestHead::parse(&body).unwrap();
    let ctx = Arc::new(RequestContext::new(
        "req-1".to_owned(),
        None,
        "POST",
        "/v1/chat/completions",
        false,
        None,
        None,
    ));
    let headers = HeaderMap::new();
    let (_end, end) = tokio::sync::watch::channel(false);
    let job = Job {
        runtime: &runtime,
        ctx: &ctx,
        endpoint: Endpoint::ChatCompletions,
        head: &head,
        body: &body,
        headers: &headers,
        stream: false,
        hops: 1,
        fill: std::sync::Mutex::new(None),
        end,
        echo: Echo::new(),
    };
    let requester = crate::routing::canary::Requester {
        key_name: "k",
        key_models: &[],
        headers: &headers,
        client_ip: None,
    };
    let plan = runtime.models.plan(model, &requester).unwrap();
    match run_with(&job, plan, script).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn attempts_of(response: &Response) -> &str {
    response.headers()[ATTEMPTS_HEADER].to_str().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failure_moves_on_to_the_next_deployment_at_once() {
    let script = Script::new(vec![Failed(ErrorKind::Server, None), Answered]);
    let started = Instant::now();
    let response = run_scripted("pair", &script).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_of(&response), "2");
    let seen = script.seen();
    assert_ne!(seen[0].0, seen[1].0, "another deployment");
    assert_eq!(seen[1].1, started, "no pause before a fresh candidate");
}

#[tokio::test(start_paused = true)]
async fn the_same_deployment_is_retried_after_a_jittered_backoff() {
    let script = Script::new(vec![
        Failed(ErrorKind::Server, None),
        Failed(ErrorKind::Timeout, None),
        Answered,
    ]);
    let response = run_scripted("one", &script).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_of(&response), "3");
    let seen = script.seen();
    // Full jitter: the n-th retry waits at most backoff * 2^n.
    let first = seen[1].1 - seen[0].1;
    let second = seen[2].1 - seen[1].1;
    assert!(first <= Duration::from_millis(100), "{first:?}");
    assert!(second <= Duration::from_millis(200), "{second:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_the_only_deployment_then_it_is_tried_again() {
    let script = Script::new(vec![
        Failed(ErrorKind::RateLimited, Some(Duration::from_secs(2))),
        Answered,
    ]);
    let response = run_scripted("one", &script).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = script.seen();
    let waited = seen[1].1 - seen[0].1;
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "waited {waited:?} for a Retry-After of 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_cap_is_not_waited_for() {
    let script = Script::new(vec![Failed(
        ErrorKind::RateLimited,
        Some(Duration::from_secs(60)),
    )]);
    let started = Instant::now();
    let response = run_scripted("one", &script).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(attempts_of(&response), "1");
    assert_eq!(Instant::now(), started, "answered at once");
}

#[tokio::test(start_paused = true)]
async fn a_final_answer_is_not_retried() {
    let script = Script::new(vec![Failed(ErrorKind::InvalidRequest, None)]);
    let response = run_scripted("pair", &script).await;
    assert_eq!(attempts_of(&response), "1");
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_the_configured_count() {
    let script = Script::new(vec![
        Failed(ErrorKind::Server, None),
        Failed(ErrorKind::Server, None),
        Failed(ErrorKind::Server, None),
    ]);
    let response = run_scripted("pair", &script).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(attempts_of(&response), "3");
}
