//! A real OTLP/HTTP endpoint: `POST /v1/traces` with a protobuf body, decoded with the
//! `opentelemetry-proto` types; or one that accepts connections and never answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One exported span, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct Got {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    pub name: String,
    /// OTLP `SpanKind`: 3 client, 5 consumer.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Got {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Default)]
pub struct Collector {
    pub base: String,
    spans: Arc<Mutex<Vec<Got>>>,
    /// Connections accepted (the hanging collector) or export requests (the real one).
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Collector {
    /// Answers every export with 200 and keeps its spans.
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = Collector {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Collector::default()
        };
        let keep = c.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let keep = keep.clone();
                async move {
                    keep.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
                    let mut spans = keep.spans.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .map(|kv| text(&kv.value))
                            .unwrap_or_default();
                        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            spans.push(Got {
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent: hex(&span.parent_span_id),
                                name: span.name,
                                kind: span.kind,
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                                    .collect(),
                                service: service.clone(),
                                start_ns: span.start_time_unix_nano,
                                end_ns: span.end_time_unix_nano,
                            });
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        c
    }

    /// Accepts connections and never reads or answers.
    pub async fn hanging() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = Collector {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Collector::default()
        };
        let hits = c.hits.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(sock);
            }
        });
        c
    }

    pub fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace, in start order.
    pub fn trace(&self, trace_id: &str) -> Vec<Got> {
        let mut t: Vec<Got> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        t.sort_by_key(|s| s.start_ns);
        t
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
