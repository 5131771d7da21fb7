//! OpenTelemetry tracing (SPEC section 16): spans exported over OTLP/HTTP, the trace
//! context read from and written to AMQP and HTTP headers.
//!
//! Design decisions:
//! - The spans are built with the OpenTelemetry SDK directly, not through a `tracing` layer:
//!   a `tracing` span costs a registry entry, a lookup on every poll that enters it and a
//!   conversion of each field into an owned attribute, where the SDK span costs one builder
//!   with static keys. [`Process::start`] makes the `process <queue>` span of an event (the
//!   publisher's context as its parent), [`Process::scope`] makes it the current one (a
//!   task-local) while the event is processed and ends it after; `token` and the HTTP client
//!   span (`POST`, ...) are [`ClientSpan`]s, children of the current `process` span.
//! - Off (`tracing.otlp_endpoint` empty), no tracer is installed and [`enabled`] is false:
//!   every helper here returns at once and no span is created.
//! - Export never waits on the delivery path: see [`export`].
//! - Every republish (retry, deferral, dead letter) writes the current `process` span's
//!   context as `traceparent`/`tracestate`, so the next attempt is its child in the same
//!   trace, whether the publisher or the worker started it.
//! - Log lines inside an event's processing carry `trace_id` and `span_id`: the `event`
//!   `tracing` span of [`crate::dispatch`] is created with them as fields (from
//!   [`Process::ids`]), which the JSON log shows with the span's other fields.
//! - Exported attributes are those of docs/tracing.md, no more: the span's own ids are not
//!   repeated as attributes.

mod carrier;
pub mod export;

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use lapin::types::FieldTable;
use opentelemetry::trace::{
    SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter};

pub use carrier::{TRACEPARENT, TRACESTATE, extract, inject_amqp, inject_http};
pub use export::{Flusher, spans_dropped};

use crate::config::TracingConfig;

static ON: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

tokio::task_local! {
    /// The `process` span of the event this task is processing.
    static PROCESS: Context;
}

/// Whether spans are exported (a tracer was installed); one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

fn tracer() -> Option<&'static SdkTracer> {
    if enabled() { TRACER.get() } else { None }
}

/// What keeps tracing running: the provider and the queue's flusher.
pub struct Tracing {
    pub provider: SdkTracerProvider,
    pub flusher: Flusher,
}

/// Start exporting spans, or `None` when `otlp_endpoint` is empty. Call inside a Tokio
/// runtime: the export task runs on it. Once per process (a second call exports nothing).
pub fn start(
    config: &TracingConfig,
) -> Result<Option<Tracing>, opentelemetry_otlp::ExporterBuildError> {
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
    if TRACER.set(provider.tracer("callback-dispatcher")).is_ok() {
        ON.store(true, Ordering::Relaxed);
    }
    Ok(Some(Tracing { provider, flusher }))
}

/// The queue's name and `process <queue>`, made once (the worker consumes one queue).
fn queue_names(queue: &str) -> (Arc<str>, Cow<'static, str>) {
    static NAMES: OnceLock<(Arc<str>, &'static str)> = OnceLock::new();
    let (q, name) = NAMES.get_or_init(|| {
        let name: &'static str = Box::leak(format!("process {queue}").into_boxed_str());
        (Arc::from(queue), name)
    });
    if &**q == queue {
        (q.clone(), Cow::Borrowed(*name))
    } else {
        (Arc::from(queue), Cow::Owned(format!("process {queue}")))
    }
}

/// The `process <queue>` span of one delivery of an event (none when tracing is off).
pub struct Process(Option<Context>);

impl Process {
    /// Start the `process <queue>` span: the publisher's context (AMQP headers
    /// `traceparent`/`tracestate`) as its parent, the messaging attributes, the event's id
    /// (`messaging.message.id` when the event was read) and its profile (`-` when unknown).
    pub fn start(
        queue: &str,
        headers: Option<&FieldTable>,
        message_id: Option<&str>,
        event_id: &str,
        profile: Option<&Arc<str>>,
    ) -> Process {
        let Some(tracer) = tracer() else {
            return Process(None);
        };
        let parent = extract(headers);
        let (queue, name) = queue_names(queue);
        let id: Arc<str> = Arc::from(event_id);
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new("messaging.system", "rabbitmq"));
        attributes.push(KeyValue::new(
            "messaging.destination.name",
            Value::String(queue.into()),
        ));
        attributes.push(KeyValue::new("messaging.operation", "process"));
        if let Some(m) = message_id {
            let m = if m == event_id {
                id.clone()
            } else {
                Arc::from(m)
            };
            attributes.push(KeyValue::new(
                "messaging.message.id",
                Value::String(m.into()),
            ));
        }
        attributes.push(KeyValue::new("event_id", Value::String(id.into())));
        let profile = profile.map_or(Value::from(crate::metrics::NO_PROFILE), |p| {
            Value::String(p.clone().into())
        });
        attributes.push(KeyValue::new("profile", profile));
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Process(Some(parent.with_span(span)))
    }

    /// The span's trace and span ids, for the log lines' `trace_id` and `span_id`.
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    }

    /// Run `f` with this span as the current `process` span, and end the span after.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        match self.0 {
            None => f.await,
            Some(cx) => {
                let out = PROCESS.scope(cx.clone(), f).await;
                cx.span().end();
                out
            }
        }
    }
}

fn with_process<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    if !enabled() {
        return None;
    }
    PROCESS.try_with(|cx| f(cx)).ok()
}

/// The event's fate on its `process` span; a dead letter marks it as an error.
pub fn outcome(outcome: &'static str) {
    with_process(|cx| {
        let span = cx.span();
        span.set_attribute(KeyValue::new("outcome", outcome));
        if outcome == "dead_lettered" {
            span.set_status(Status::error("dead-lettered"));
        }
    });
}

/// Write the current `process` span's context into republished headers (a retry, a
/// deferral or a dead letter), so the next attempt stays in the trace.
pub fn carry_on(h: &mut FieldTable) {
    with_process(|cx| inject_amqp(cx, h));
}

/// A client span (`token`, or an HTTP attempt named by its method), child of the current
/// `process` span; nothing when tracing is off. Ends when dropped.
pub struct ClientSpan(Option<Context>);

impl ClientSpan {
    fn start(name: Cow<'static, str>, attributes: Vec<KeyValue>) -> ClientSpan {
        let Some(tracer) = tracer() else {
            return ClientSpan(None);
        };
        let parent = PROCESS.try_with(Context::clone).unwrap_or_default();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ClientSpan(Some(parent.with_span(span)))
    }

    /// No span (tracing off).
    pub fn none() -> ClientSpan {
        ClientSpan(None)
    }

    /// This span's context as the callback's `traceparent`/`tracestate`; the caller sends
    /// it only for a profile with `traceparent: true`.
    pub fn send_context(&self, headers: &mut reqwest::header::HeaderMap) {
        if let Some(cx) = &self.0 {
            inject_http(cx, headers);
        }
    }

    /// The answer's status; 4xx and 5xx are errors (their `error.type` the status code).
    pub fn answered(&self, status: u16) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 400 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
            }
        }
    }

    /// No answer, or an unusable one: `error.type` is `kind` (`timeout`, `connect_error`,
    /// `blocked_destination`, ...), and the span is an error.
    pub fn failed(&self, kind: &str) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
            span.set_status(Status::error(""));
        }
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

fn method_name(method: &reqwest::Method) -> Cow<'static, str> {
    match method.as_str() {
        "POST" => Cow::Borrowed("POST"),
        "PUT" => Cow::Borrowed("PUT"),
        "PATCH" => Cow::Borrowed("PATCH"),
        "GET" => Cow::Borrowed("GET"),
        "DELETE" => Cow::Borrowed("DELETE"),
        other => Cow::Owned(other.to_owned()),
    }
}

/// The HTTP client span of one attempt, named by the method; nothing when off.
/// `url.full` is the URL without its query, fragment or credentials.
pub fn http_span(method: &reqwest::Method, url: &reqwest::Url) -> ClientSpan {
    if !enabled() {
        return ClientSpan::none();
    }
    let full = if url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
    {
        url.as_str().to_owned()
    } else {
        let mut full = url.clone();
        full.set_query(None);
        full.set_fragment(None);
        let _ = full.set_username("");
        let _ = full.set_password(None);
        String::from(full)
    };
    let method = method_name(method);
    let mut attributes = Vec::with_capacity(6);
    attributes.push(KeyValue::new(
        "http.request.method",
        Value::String(method.clone().into()),
    ));
    attributes.push(KeyValue::new("url.full", full));
    attributes.push(KeyValue::new(
        "server.address",
        url.host_str().unwrap_or_default().to_owned(),
    ));
    if let Some(port) = url.port_or_known_default() {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    ClientSpan::start(method, attributes)
}

/// The `token` span of a request to a profile's auth server; nothing when off.
pub fn token_span(profile: &str) -> ClientSpan {
    if !enabled() {
        return ClientSpan::none();
    }
    ClientSpan::start(
        Cow::Borrowed("token"),
        vec![KeyValue::new("profile", profile.to_owned())],
    )
}
