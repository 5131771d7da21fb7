//! Getting finished spans to the collector without ever holding up a delivery.
//!
//! A span that ends is handed to a bounded queue with `try_send` and nothing else happens on
//! the delivery's path: a full queue drops the span and counts it
//! (`callback_dispatcher_spans_dropped_total`). One task drains the queue in batches (up to
//! [`MAX_BATCH`] spans, or what came within [`BATCH_DELAY`]) and posts each batch with the
//! OTLP/HTTP exporter, bounded by [`EXPORT_TIMEOUT`]; a batch that fails or times out is
//! dropped and counted, never retried in a loop. A collector that is down or hangs costs
//! spans, not deliveries.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export at most; more are dropped and counted.
pub const QUEUE: usize = 8192;
/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// How long a batch waits to fill before it is sent.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request at most; then its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `callback_dispatcher_spans_dropped_total`: spans that could not be exported in time
/// (the queue was full, or the collector failed or did not answer). One per process:
/// [`crate::metrics::Metrics`] shows it.
pub fn spans_dropped() -> &'static IntCounter {
    static DROPPED: OnceLock<IntCounter> = OnceLock::new();
    DROPPED.get_or_init(|| {
        IntCounter::new(
            "callback_dispatcher_spans_dropped_total",
            "Spans dropped because they could not be exported in time (tracing.otlp_endpoint full, down or slow).",
        )
        .expect("a valid metric name")
    })
}

enum Msg {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The span processor: a bounded, non-blocking hand-off to the export task.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Flushes what is queued; held by the process (see [`crate::telemetry::Telemetry`]).
#[derive(Debug, Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Msg>,
}

impl Flusher {
    /// Export what is queued now, waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

impl Queue {
    /// The processor and its flusher; the export task runs on the current Tokio runtime.
    pub fn start<E: SpanExporter + 'static>(exporter: E) -> (Queue, Flusher) {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drain(rx, exporter));
        (Queue { tx: tx.clone() }, Flusher { tx })
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            spans_dropped().inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn drain<E: SpanExporter>(mut rx: mpsc::Receiver<Msg>, exporter: E) {
    let mut msgs: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    let mut failing = false;
    // Wait for a first span, then let the batch fill for BATCH_DELAY without being woken by
    // each span, and take what came (up to MAX_BATCH). Under load a full batch is queued
    // already and there is no wait; a flush waits for none.
    while rx.recv_many(&mut msgs, MAX_BATCH).await > 0 {
        let flush = !flushed.is_empty() || msgs.iter().any(|m| matches!(m, Msg::Flush(_)));
        if msgs.len() < MAX_BATCH && !flush {
            tokio::time::sleep(BATCH_DELAY).await;
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
        }
        for m in msgs.drain(..) {
            match m {
                Msg::Span(s) => batch.push(*s),
                Msg::Flush(done) => flushed.push(done),
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let error = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within {}",
                    humantime::format_duration(EXPORT_TIMEOUT)
                )),
            };
            match error {
                None if failing => {
                    failing = false;
                    tracing::info!("span export works again");
                }
                None => {}
                Some(error) => {
                    spans_dropped().inc_by(n);
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, spans = n, "span export failed; these spans are dropped (counted in spans_dropped_total) until it works again");
                    }
                }
            }
        }
        // A flush is answered once everything queued before it is sent.
        if rx.is_empty() {
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// The OTLP exporter's HTTP client: the worker's own reqwest (rustls), without the network
/// guard (the collector is the operator's, not a customer's).
#[derive(Debug)]
pub struct Client(pub reqwest::Client);

impl Client {
    pub fn new() -> Client {
        Client(
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .timeout(EXPORT_TIMEOUT)
                .user_agent(concat!("callback-dispatcher/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the TLS backend initialises"),
        )
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())?;
        let mut req = reqwest::Request::new(parts.method, url);
        *req.headers_mut() = parts.headers;
        *req.body_mut() = Some(body.into());
        let resp = self.0.execute(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = crate::http::read_capped(resp, 64 * 1024).await?;
        let mut out = Response::new(Bytes::from(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// A collector that never answers.
    #[derive(Debug)]
    struct Hangs;

    impl SpanExporter for Hangs {
        fn export(
            &self,
            _batch: Vec<SpanData>,
        ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let (queue, _flusher) = Queue::start(Hangs);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build();
        let tracer = provider.tracer("test");
        // Let the export task take its first batch and hang on it.
        tracer.in_span("first", |_| {});
        tokio::time::sleep(BATCH_DELAY * 2).await;
        let before = spans_dropped().get();
        let extra = 1000;
        let started = std::time::Instant::now();
        for _ in 0..QUEUE + extra {
            tracer.in_span("s", |_| {});
        }
        let took = started.elapsed();
        assert!(
            spans_dropped().get() - before >= extra as u64,
            "{} dropped",
            spans_dropped().get() - before
        );
        assert!(took < Duration::from_secs(5), "ending spans took {took:?}");
    }
}
