//! Tracing end to end (SPEC section 16): a real OTLP/HTTP collector on 127.0.0.1 decoding
//! the protobuf exports, a real broker, real HTTP receivers, the worker as a process.

#[path = "tracing/collector.rs"]
mod collector;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use collector::{Collector, Got};
use common::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn hex_id(len: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..len].to_owned()
}

/// An event for `profile` with a publisher's `traceparent`.
fn traced_props(profile: &str, id: &str, traceparent: &str) -> lapin::BasicProperties {
    let props = event_props(Some(profile), id);
    let mut h: FieldTable = props.headers().clone().unwrap_or_default();
    h.insert("traceparent".into(), text(traceparent));
    h.insert("tracestate".into(), text("vendor=publisher"));
    props.with_headers(h)
}

fn one<'a>(spans: &'a [Got], what: &str, pick: impl Fn(&Got) -> bool) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_attempts_token_and_retry_are_one_trace_under_the_publishers_span() {
    let collector = Collector::start().await;
    let auth = Server::start(|_, _| {
        Reply::json(
            200,
            json!({"access_token": "tok-trace", "token_type": "Bearer", "expires_in": 3600}),
        )
    })
    .await;
    let traced_calls = Arc::new(AtomicUsize::new(0));
    let seen = traced_calls.clone();
    let receiver = Server::start(move |_, r| {
        if r.uri.starts_with("/gone") {
            Reply::status(410)
        } else if r.uri.starts_with("/traced") && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503)
        } else {
            Reply::status(204)
        }
    })
    .await;
    let env = Env::new("trace");
    let traced = Profile::new("traced", &receiver.url("/traced?tenant=acme"))
        .traceparent(true)
        .auth(OAuth2::new(&auth.url("/token"), "client", "s3cret"));
    let plain = Profile::new("plain", &receiver.url("/plain"));
    let gone = Profile::new("gone", &receiver.url("/gone"));
    let retry = Retry {
        max_attempts: Some(3),
        jitter: Some(0.0),
        ..Retry::backoff(secs(1), secs(5))
    };
    let mut file = env.file(retry, [traced, plain, gone]);
    file.tracing = Some(Tracing {
        service_name: Some("cbd-test".into()),
        ..Tracing::to(&collector.base)
    });
    file.log.format = Some("json".into());
    env.config(&file);
    let worker = Process::spawn(&file, "info");
    worker.wait_ready().await;

    // A publisher's trace that is not sampled: no span of it is exported. It goes first, so
    // its spans, if there were any, would be exported before the others'.
    let t3 = hex_id(32);
    let unsampled = traced_props("plain", "tr-c", &format!("00-{t3}-{}-00", hex_id(16)));
    env.publish_many(1, move |_| (unsampled.clone(), b"{}".to_vec()))
        .await;
    wait_until(LIMIT, "the unsampled event delivered", || async {
        worker.metrics().await.deliveries("plain", "delivered") == 1.0
    })
    .await;

    // One event from a publisher's span, the other through `publish --traceparent`.
    let (t1, p1) = (hex_id(32), hex_id(16));
    let props = traced_props("traced", "tr-a", &format!("00-{t1}-{p1}-01"));
    env.publish_many(1, move |_| (props.clone(), b"{\"n\":1}".to_vec()))
        .await;
    let (t2, p2) = (hex_id(32), hex_id(16));
    publish_by_hand(&file, "plain", "tr-b", &format!("00-{t2}-{p2}-01")).await;
    let t4 = hex_id(32);
    let doomed = traced_props("gone", "tr-d", &format!("00-{t4}-{}-01", hex_id(16)));
    env.publish_many(1, move |_| (doomed.clone(), b"{}".to_vec()))
        .await;

    wait_until(LIMIT, "both events delivered", || async {
        let m = worker.metrics().await;
        m.deliveries("traced", "delivered") == 1.0 && m.deliveries("plain", "delivered") == 2.0
    })
    .await;
    wait_until(LIMIT, "the spans of both traces exported", || async {
        collector.trace(&t1).len() >= 5 && collector.trace(&t2).len() >= 2
    })
    .await;

    assert!(collector.trace(&t3).is_empty(), "not sampled, not exported");
    let spans = collector.trace(&t1);
    let process: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name.starts_with("process "))
        .collect();
    assert_eq!(process.len(), 2, "a process span per delivery: {spans:#?}");
    let (first, second) = (process[0], process[1]);
    assert_eq!(first.name, format!("process {}", env.queue));
    assert_eq!(first.parent, p1, "the publisher's span is the parent");
    assert_eq!(
        second.parent, first.span_id,
        "the retry, through a delay queue, continues the trace"
    );
    for p in [first, second] {
        assert_eq!(p.kind, 5, "consumer");
        assert_eq!(p.service, "cbd-test");
        assert_eq!(p.attr("messaging.system"), Some("rabbitmq"));
        assert_eq!(
            p.attr("messaging.destination.name"),
            Some(env.queue.as_str())
        );
        assert_eq!(p.attr("messaging.operation"), Some("process"));
        assert_eq!(p.attr("messaging.message.id"), Some("tr-a"));
        assert_eq!(p.attr("profile"), Some("traced"));
    }
    assert_eq!(first.attr("outcome"), Some("retry_scheduled"));
    assert_eq!(second.attr("outcome"), Some("delivered"));

    let token = one(&spans, "token span", |s| s.name == "token");
    assert_eq!(token.parent, first.span_id);
    let http: Vec<&Got> = spans.iter().filter(|s| s.name == "POST").collect();
    assert_eq!(http.len(), 2, "one HTTP span per attempt: {spans:#?}");
    for (h, parent, status) in [(http[0], first, "503"), (http[1], second, "204")] {
        assert_eq!(h.parent, parent.span_id);
        assert_eq!(h.kind, 3, "client");
        assert_eq!(h.attr("http.request.method"), Some("POST"));
        assert_eq!(h.attr("http.response.status_code"), Some(status));
        assert_eq!(
            h.attr("url.full"),
            Some(receiver.url("/traced").as_str()),
            "without the query"
        );
        assert!(h.end_ns >= h.start_ns && h.start_ns >= parent.start_ns);
    }
    assert_eq!(http[0].attr("error.type"), Some("503"));
    assert_eq!(http[1].attr("error.type"), None);

    // The profile that asks gets the context of each attempt's HTTP span; the other never.
    let calls = receiver.all();
    let traced: Vec<_> = calls
        .iter()
        .filter(|r| r.uri.starts_with("/traced"))
        .collect();
    assert_eq!(traced.len(), 2);
    for (r, h) in traced.iter().zip(&http) {
        assert_eq!(
            r.header("traceparent"),
            Some(format!("00-{t1}-{}-01", h.span_id))
        );
        assert_eq!(r.header("tracestate").as_deref(), Some("vendor=publisher"));
    }
    let plain: Vec<_> = calls
        .iter()
        .filter(|r| r.uri.starts_with("/plain"))
        .collect();
    assert_eq!(plain.len(), 2);
    for r in plain {
        assert_eq!(r.header("traceparent"), None);
        assert_eq!(r.header("tracestate"), None);
    }
    let spans2 = collector.trace(&t2);
    let p = one(&spans2, "process span", |s| s.name.starts_with("process "));
    assert_eq!(p.parent, p2, "publish --traceparent is the parent");
    let h = one(&spans2, "HTTP span", |s| s.name == "POST");
    assert_eq!(h.parent, p.span_id);
    assert_eq!(h.attr("http.response.status_code"), Some("204"));

    // A dead letter carries its trace on, for a replay to continue it.
    let dead = env.wait_dead(1, LIMIT).await;
    wait_until(LIMIT, "the dead letter's span exported", || async {
        !collector.trace(&t4).is_empty()
    })
    .await;
    let spans4 = collector.trace(&t4);
    let p = one(&spans4, "process span", |s| s.name.starts_with("process "));
    assert_eq!(p.attr("outcome"), Some("dead_lettered"));
    assert_eq!(
        header_text(&dead[0], "traceparent"),
        Some(format!("00-{t4}-{}-01", p.span_id))
    );

    // Log lines about the event carry its trace and span ids (the log writer may still
    // hold the last ones).
    let lines = |message: &'static str| {
        let logs = worker.logs();
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message && v["span"]["event_id"] == "tr-a")
            .collect::<Vec<Value>>()
    };
    wait_until(LIMIT, "both attempts' settled lines", || async {
        lines("event settled").len() == 2
    })
    .await;
    for (line, p) in lines("event settled").iter().zip([first, second]) {
        assert_eq!(line["span"]["trace_id"], t1.as_str(), "{line}");
        assert_eq!(line["span"]["span_id"], p.span_id.as_str(), "{line}");
    }
    let fetched = lines("auth token fetched");
    assert_eq!(fetched.len(), 1, "{}", worker.logs());
    assert_eq!(fetched[0]["span"]["trace_id"], t1.as_str());
    assert_eq!(fetched[0]["span"]["span_id"], first.span_id.as_str());
}

/// `callback-dispatcher publish --traceparent`, as an operator would try it.
async fn publish_by_hand(file: &ConfigFile, profile: &str, id: &str, traceparent: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatcher.yaml");
    std::fs::write(&config, file.to_yaml()).unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, b"{\"n\":2}").unwrap();
    let args = [
        "publish",
        "--profile",
        profile,
        "--message-id",
        id,
        "--traceparent",
        traceparent,
    ];
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .arg("--file")
        .arg(&body)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A value that is not a W3C traceparent is refused before anything is published.
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(["publish", "--profile", profile, "--traceparent", "not-one"])
        .arg("--config")
        .arg(&config)
        .arg("--file")
        .arg(&body)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("traceparent"),
        "{bad:?}"
    );
}

/// A collector that hangs (accepts, never answers) or is down (nothing listens): every
/// event is delivered at once all the same, none is lost, and the spans that could not be
/// exported are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_absent_collector_never_slows_deliveries() {
    const N: usize = 200;
    let hanging = Collector::hanging().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    for (what, endpoint) in [("hanging", hanging.base.clone()), ("down", down)] {
        let receiver = Server::start(|_, _| Reply::status(204)).await;
        let env = Env::new(&format!("otel{what}"));
        let profile = Profile::new("p", &receiver.url("/cb")).traceparent(true);
        let mut file = env.file(Retry::attempts(3), [profile]);
        file.tracing = Some(Tracing::to(&endpoint));
        env.config(&file);
        let worker = Process::spawn(&file, "warn");
        worker.wait_ready().await;
        // One event first, so the collector is already holding an export when the rest
        // come.
        env.publish(Some("p"), &format!("{what}-first"), b"{}")
            .await;
        receiver.wait_for(1, LIMIT).await;
        if what == "hanging" {
            wait_until(LIMIT, "an export hanging on the collector", || async {
                hanging.hits() >= 1
            })
            .await;
        }
        let started = Instant::now();
        let id = |i: usize| format!("{what}-{i}");
        env.publish_many(N, |i| (event_props(Some("p"), &id(i)), b"{}".to_vec()))
            .await;
        wait_until(LIMIT, "every event delivered", || async {
            worker.metrics().await.deliveries("p", "delivered") == (N + 1) as f64
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "{what}: {N} deliveries took {took:?}"
        );
        let mut ids: Vec<String> = receiver
            .all()
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), N + 1, "{what}: every event arrived");
        assert!(env.dead_letters().await.is_empty());
        wait_until(
            LIMIT,
            "the spans that were not exported counted",
            || async {
                worker
                    .metrics()
                    .await
                    .value("callback_dispatcher_spans_dropped_total", &[])
                    > 0.0
            },
        )
        .await;
    }
}
