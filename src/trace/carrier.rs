//! W3C trace context in and out: AMQP headers (lapin `FieldTable`) and HTTP headers.

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::amqp::headers;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

struct AmqpIn<'a>(Option<&'a FieldTable>);

impl Extractor for AmqpIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        headers::get(self.0, key).and_then(headers::as_text)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

struct AmqpOut<'a>(&'a mut FieldTable);

impl Injector for AmqpOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

struct HttpOut<'a>(&'a mut HeaderMap);

impl Injector for HttpOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The publisher's context from `traceparent`/`tracestate`; empty when absent or invalid.
pub fn extract(h: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&AmqpIn(h))
}

/// `cx` as `traceparent`/`tracestate` into AMQP headers, replacing those there. An
/// invalid context (no span) writes nothing and leaves the headers as they are.
pub fn inject_amqp(cx: &Context, h: &mut FieldTable) {
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(cx, &mut AmqpOut(h));
}

/// `cx` as `traceparent`/`tracestate` into an HTTP request's headers.
pub fn inject_http(cx: &Context, h: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HttpOut(h));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_publishers_context_goes_in_and_out_of_amqp_headers() {
        let mut h = FieldTable::default();
        h.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(PARENT)),
        );
        h.insert(
            TRACESTATE.into(),
            AMQPValue::LongString(LongString::from("vendor=x")),
        );
        let cx = extract(Some(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = FieldTable::default();
        inject_amqp(&cx, &mut out);
        assert_eq!(
            headers::get(Some(&out), TRACEPARENT).and_then(headers::as_text),
            Some(PARENT)
        );
        assert_eq!(
            headers::get(Some(&out), TRACESTATE).and_then(headers::as_text),
            Some("vendor=x")
        );
        let mut http = HeaderMap::new();
        inject_http(&cx, &mut http);
        assert_eq!(http.get(TRACEPARENT).unwrap(), PARENT);
    }

    #[test]
    fn nothing_or_garbage_is_no_context_and_writes_nothing() {
        assert!(!extract(None).span().span_context().is_valid());
        let mut h = FieldTable::default();
        h.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from("garbage")),
        );
        let cx = extract(Some(&h));
        assert!(!cx.span().span_context().is_valid());
        let mut out = FieldTable::default();
        inject_amqp(&cx, &mut out);
        assert!(out.inner().is_empty());
    }
}
