//! OpenTelemetry traces against an OTLP/gRPC collector (a real tonic server speaking the OTLP
//! trace service): a server span per request with GenAI attributes, a client span per upstream
//! attempt, `traceparent` followed from the caller and sent to the upstream, sampling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_upstream::{Behavior, MockUpstream};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;

/// An OTLP trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_of(kv.value.as_ref()?.value.as_ref()?));
            self.service_names
                .lock()
                .unwrap()
                .extend(service.map(str::to_owned));
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_of(value: &Any) -> Option<&str> {
    match value {
        Any::StringValue(text) => Some(text),
        _ => None,
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, endpoint)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `count` spans have arrived.
    async fn wait_for(&self, count: usize) -> Vec<Span> {
        for _ in 0..100 {
            if self.spans.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.spans()
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    attribute(span, key)
        .and_then(string_of)
        .unwrap_or_else(|| panic!("span {}: no text {key}", span.name))
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Any::IntValue(n)) => *n,
        other => panic!("span {}: {key} is {other:?}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn traced(mock: &MockUpstream, telemetry: &str) -> Running {
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models: {{m: {{deployments: [{{provider: up, model: up-m}}]}}}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
retry: {{attempts: 2, backoff: 1ms}}
circuit: {{failures: 100}}
telemetry: {{access_log: off, log_level: warn, {telemetry}}}
",
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "traces.yaml", &|_| None).expect("config");
    shepherd::server::start(config).await.unwrap()
}

async fn chat(server: &Running, body: Value, traceparent: Option<&str>) -> reqwest::Response {
    let mut request = test_client()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .bearer_auth(CLIENT_KEY)
        .body(body.to_string());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.unwrap()
}

fn hello() -> Value {
    json!({"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "trace me"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_attempts_become_spans_with_genai_attributes() {
    let (collector, endpoint) = Collector::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let server = traced(
        &mock,
        &format!("otlp_endpoint: '{endpoint}', service_name: gateway-a"),
    )
    .await;
    // A request whose first attempt fails, then a stream; a probe is not traced.
    mock.set_behavior(Behavior {
        status: Some(500),
        fail_times: Some(1),
        ..Behavior::default()
    });
    let response = chat(&server, hello(), None).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let usage = json_of(response).await["usage"].clone();
    let mut stream = hello();
    stream["stream"] = json!(true);
    let streamed = chat(&server, stream, None).await;
    assert_eq!(sse_payloads(streamed).await.last().unwrap(), "[DONE]");
    let probe = test_client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);

    // 2 requests, 3 attempts.
    let spans = collector.wait_for(5).await;
    assert_eq!(
        spans.len(),
        5,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(
        collector
            .service_names
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "gateway-a")
    );
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 2);
    let first = servers
        .iter()
        .find(|s| text(s, "shepherd.request_id") == request_id)
        .expect("the first request's span");
    assert_eq!(first.name, "chat m");
    assert_eq!(text(first, "gen_ai.operation.name"), "chat");
    assert_eq!(text(first, "gen_ai.request.model"), "m");
    assert_eq!(text(first, "http.route"), "/v1/chat/completions");
    assert_eq!(text(first, "shepherd.deployment"), "up/up-m");
    assert_eq!(text(first, "shepherd.key"), "svc");
    assert_eq!(int(first, "http.response.status_code"), 200);
    assert_eq!(
        int(first, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(first, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert!(
        first.parent_span_id.is_empty(),
        "a root span without a caller's traceparent"
    );
    assert!(first.end_time_unix_nano > first.start_time_unix_nano);

    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == first.span_id)
        .collect();
    attempts.sort_by_key(|s| int(s, "shepherd.attempt"));
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(attempt.trace_id, first.trace_id);
        assert_eq!(attempt.name, "chat up-m");
        assert_eq!(text(attempt, "gen_ai.provider.name"), "openai");
        assert_eq!(text(attempt, "gen_ai.request.model"), "up-m");
        assert_eq!(text(attempt, "server.address"), "127.0.0.1");
        assert_eq!(int(attempt, "server.port"), i64::from(mock.addr().port()));
    }
    assert_eq!(int(attempts[0], "http.response.status_code"), 500);
    assert_eq!(text(attempts[0], "error.type"), "server_error");
    assert_eq!(attempts[0].status.as_ref().unwrap().code, 2, "error status");
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    assert!(attribute(attempts[1], "error.type").is_none());

    // Each attempt told the upstream its own trace context.
    let sent: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(name, _)| name == "traceparent")
                .map(|(_, value)| value.clone())
        })
        .collect();
    assert_eq!(sent.len(), 3);
    for (sent, attempt) in sent.iter().zip(&attempts) {
        assert_eq!(
            sent,
            &format!("00-{}-{}-01", hex(&attempt.trace_id), hex(&attempt.span_id))
        );
    }
    let stream_span = servers.iter().find(|s| s.span_id != first.span_id).unwrap();
    assert!(matches!(
        attribute(stream_span, "shepherd.stream"),
        Some(Any::BoolValue(true))
    ));
    assert!(spans.iter().all(|s| !s.name.contains("healthz")));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_is_followed_and_sampling_is_honoured() {
    let (collector, endpoint) = Collector::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let server = traced(
        &mock,
        &format!("otlp_endpoint: '{endpoint}', trace_sample: 0%"),
    )
    .await;
    // Sampled out: nothing is exported, and the upstream gets an unsampled context.
    assert_eq!(chat(&server, hello(), None).await.status(), 200);
    // The caller's sampled trace wins over the ratio.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let response = chat(
        &server,
        hello(),
        Some(&format!("00-{trace_id}-{parent}-01")),
    )
    .await;
    assert_eq!(response.status(), 200);
    let spans = collector.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let spans_after = collector.spans();
    assert_eq!(spans.len(), 2, "only the caller's trace");
    assert_eq!(spans_after.len(), 2);
    let server_span = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hex(&server_span.trace_id), trace_id);
    assert_eq!(hex(&server_span.parent_span_id), parent);
    let flags: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.headers.iter().find(|(n, _)| n == "traceparent"))
        .map(|(_, value)| value.rsplit('-').next().unwrap().to_owned())
        .collect();
    assert_eq!(flags, ["00", "01"]);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let server = traced(&mock, "otlp_endpoint: 'http://127.0.0.1:9'").await;
    for _ in 0..20 {
        assert_eq!(chat(&server, hello(), None).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(chat(&server, hello(), None).await.status(), 200);
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("the server stops even though its spans cannot leave")
        .unwrap();
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_a_bad_one_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let server = traced(&mock, "metrics: true").await;
    assert_eq!(chat(&server, hello(), None).await.status(), 200);
    let headers = &mock.requests()[0].headers;
    assert!(!headers.iter().any(|(name, _)| name == "traceparent"));
    let problems = shepherd::config::load_str(
        "telemetry: {otlp_endpoint: 'otel-collector:4317'}",
        "bad.yaml",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(problems.contains("telemetry.otlp_endpoint"), "{problems}");
}
