//! OpenTelemetry traces over OTLP/gRPC, when `telemetry.otlp_endpoint` is set (nothing is built
//! and nothing runs otherwise). A request gets a server span named as the GenAI conventions say
//! (`chat gpt-4.1`), each upstream attempt a client child span; a caller's `traceparent` is
//! followed, and each attempt sends its own to the upstream. Spans leave in batches from a task
//! of the server's runtime, so the request path only queues them.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TracesConfig;

/// How long spans wait to leave in a batch.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// Spans kept while the collector is slow or away; beyond it new spans are dropped.
const QUEUE_SIZE: usize = 8192;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Traces {
    /// Builds the exporter and its batch task (on the current Tokio runtime). The collector is
    /// reached lazily: one that is down loses spans, never requests.
    pub fn start(config: &TracesConfig) -> Result<Traces, String> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| format!("telemetry.otlp_endpoint: {error}"))?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_DELAY)
            .with_max_queue_size(QUEUE_SIZE)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batches)
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("shepherd");
        tracing::info!(endpoint = %config.endpoint, sample = config.sample, "traces exported over OTLP");
        Ok(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts the span of a request, child of the caller's `traceparent` if it sent one.
    pub fn request(&self, headers: &HeaderMap, method: &str, route: &str) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            tracer: self.tracer.clone(),
            cx: parent.with_span(span),
        }
    }

    /// Sends what is queued and stops the exporter (blocking: call off the runtime's workers).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "traces: the last spans could not be sent");
        }
    }
}

/// The span of one request.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: SdkTracer,
    cx: Context,
}

impl RequestTrace {
    pub fn rename(&self, name: String) {
        self.cx.span().update_name(name);
    }

    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// Ends the span; a 5xx marks it failed with `error.type`.
    pub fn finish(&self, status: u16, error: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(error) = error {
            span.set_attribute(KeyValue::new("error.type", error.to_owned()));
        }
        if status >= 500 {
            span.set_status(Status::error(error.unwrap_or("server error").to_owned()));
        }
        span.end();
    }

    /// Starts the span of one upstream attempt.
    pub fn attempt(&self, name: String, attributes: Vec<KeyValue>) -> AttemptTrace {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        AttemptTrace { span }
    }
}

/// The span of one upstream attempt.
#[derive(Debug)]
pub struct AttemptTrace {
    span: opentelemetry_sdk::trace::Span,
}

impl AttemptTrace {
    /// The W3C `traceparent` that makes the upstream's work a child of this attempt.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let context = self.span.span_context();
        if !context.is_valid() {
            return None;
        }
        let text = format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        );
        HeaderValue::from_str(&text).ok()
    }

    /// Ends the attempt: the upstream's status if it answered, the failure's kind if it failed.
    pub fn finish(mut self, status: Option<u16>, failure: Option<&str>) {
        if let Some(status) = status {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(failure) = failure {
            self.span
                .set_attribute(KeyValue::new("error.type", failure.to_owned()));
            self.span.set_status(Status::error(failure.to_owned()));
        }
        self.span.end();
    }
}

/// `traceparent` and `tracestate` of a request's headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// `gen_ai.operation.name` of a route.
pub fn operation_of(route: &str) -> &'static str {
    match route {
        "/v1/embeddings" => "embeddings",
        "/v1/completions" => "text_completion",
        _ => "chat",
    }
}
