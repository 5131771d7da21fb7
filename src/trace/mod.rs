//! OpenTelemetry tracing (SPEC section 16): spans exported over OTLP/HTTP, the trace
//! context read from and written to AMQP and HTTP headers.
//!
//! Design decisions:
//! - The spans are this crate's `tracing` spans, turned into OpenTelemetry spans by
//!   `tracing-opentelemetry`, a layer beside the log layer that sees only this crate's spans
//!   (never lapin's, never log events). `process <queue>` is the `event` span of
//!   [`crate::dispatch`] (its OpenTelemetry name set with `otel.name`); `token` and the HTTP
//!   client span (`POST`, ...) are its children.
//! - Off (`tracing.otlp_endpoint` empty), no layer is installed and [`enabled`] is false:
//!   every helper here returns at once and no extra span is created.
//! - Export never waits on the delivery path: see [`export`].
//! - Every republish (retry, deferral, dead letter) writes the current `process` span's
//!   context as `traceparent`/`tracestate`, so the next attempt is its child in the same
//!   trace, whether the publisher or the worker started it.
//! - Log lines inside an event's processing carry `trace_id` and `span_id`: the `event` span
//!   records them as fields, which the JSON log shows with the span's other fields. The
//!   `token` and HTTP spans (target `callback_dispatcher::trace`) are for export only: the
//!   log layer never sees them, so they cost no log formatting.

mod carrier;
pub mod export;

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::FieldTable;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

pub use carrier::{TRACEPARENT, TRACESTATE, extract, inject_amqp, inject_http};
pub use export::{Flusher, spans_dropped};

use crate::config::TracingConfig;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (a layer was installed); one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The OpenTelemetry layer, boxed.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// What keeps tracing running: the provider and the queue's flusher.
pub struct Tracing {
    pub provider: SdkTracerProvider,
    pub flusher: Flusher,
}

/// The OpenTelemetry layer for this crate's spans, or `None` when `otlp_endpoint` is empty.
/// Call inside a Tokio runtime: the export task runs on it.
pub fn layer<S>(
    config: &TracingConfig,
) -> Result<Option<(BoxedLayer<S>, Tracing)>, opentelemetry_otlp::ExporterBuildError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let Some(url) = config.traces_url() else {
        return Ok(None);
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(export::Client::new())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(export::EXPORT_TIMEOUT)
        .with_retry_policy(RetryPolicy::disabled())
        .build()?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    exporter.set_resource(&resource);
    let (queue, flusher) = export::Queue::start(exporter);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("callback-dispatcher");
    let ours = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.target().starts_with("callback_dispatcher")
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        // A child's parent comes from its tracing parent span: no need to make the
        // OpenTelemetry context current on every poll.
        .with_context_activation(false)
        .with_filter(ours)
        .boxed();
    ON.store(true, Ordering::Relaxed);
    Ok(Some((layer, Tracing { provider, flusher })))
}

/// The `event` span's OpenTelemetry name, `process <queue>`, for its `otel.name` (with
/// `otel.kind` `consumer`); `None` when tracing is off.
pub fn process_name(queue: &str) -> Option<String> {
    enabled().then(|| format!("process {queue}"))
}

/// Make the `event` span the `process <queue>` span: the publisher's context (AMQP headers
/// `traceparent`/`tracestate`) as its parent, the messaging attributes, and `trace_id` and
/// `span_id` recorded for the log lines (the span declares them empty).
pub fn adopt(span: &Span, queue: &str, headers: Option<&FieldTable>, message_id: Option<&str>) {
    if !enabled() {
        return;
    }
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.destination.name", queue.to_owned());
    span.set_attribute("messaging.operation", "process");
    if let Some(id) = message_id {
        span.set_attribute("messaging.message.id", id.to_owned());
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if let (true, Some(meta)) = (sc.is_valid(), span.metadata()) {
        // Both at once: the JSON log layer re-reads a span's fields on every record.
        let fields = meta.fields();
        let (trace_id, span_id) = (sc.trace_id().to_string(), sc.span_id().to_string());
        if let (Some(t), Some(s)) = (fields.field("trace_id"), fields.field("span_id")) {
            let values: [(&tracing::field::Field, Option<&dyn tracing::Value>); 2] = [
                (&t, Some(&trace_id.as_str() as &dyn tracing::Value)),
                (&s, Some(&span_id.as_str() as &dyn tracing::Value)),
            ];
            span.record_all(&fields.value_set(&values));
        }
    }
}

/// The event's fate on its `process` span; a dead letter marks it as an error.
pub fn outcome(span: &Span, outcome: &str) {
    if enabled() {
        span.set_attribute("outcome", outcome.to_owned());
        if outcome == "dead_lettered" {
            span.set_status(opentelemetry::trace::Status::error("dead-lettered"));
        }
    }
}

/// Write the current span's context into republished headers (a retry, a deferral or a
/// dead letter), so the next attempt stays in the trace.
pub fn carry_on(h: &mut FieldTable) {
    if enabled() {
        inject_amqp(&Span::current().context(), h);
    }
}

/// The target of the spans that are exported only, never logged.
pub const EXPORT_ONLY: &str = "callback_dispatcher::trace";

/// The HTTP client span of one attempt, named by the method; `Span::none()` when off.
/// `url.full` is the URL without its query, fragment or credentials.
pub fn http_span(method: &reqwest::Method, url: &reqwest::Url) -> Span {
    if !enabled() {
        return Span::none();
    }
    let mut full = url.clone();
    full.set_query(None);
    full.set_fragment(None);
    let _ = full.set_username("");
    let _ = full.set_password(None);
    tracing::info_span!(
        "http",
        otel.name = method.as_str(),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method.as_str(),
        url.full = full.as_str(),
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// The HTTP span's context as the callback's `traceparent`/`tracestate`: only for a profile
/// with `traceparent: true`, and only when tracing is on.
pub fn send_context(span: &Span, headers: &mut reqwest::header::HeaderMap) {
    if enabled() {
        inject_http(&span.context(), headers);
    }
}

/// The answer's status on the HTTP span; 4xx and 5xx are errors (their `error.type` the
/// status code).
pub fn http_answered(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 400 {
        span.record("error.type", status.to_string().as_str());
        span.record("otel.status_code", "error");
    }
}

/// No answer: `error.type` is `timeout`, `connect_error` or `blocked_destination`.
pub fn http_failed(span: &Span, kind: &str) {
    if span.is_none() {
        return;
    }
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
}

/// The `token` span of a request to a profile's auth server; `Span::none()` when off.
pub fn token_span(profile: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "token",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        profile,
        error.type = tracing::field::Empty,
    )
}
