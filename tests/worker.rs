//! The worker end to end (issue "The worker end to end"): real RabbitMQ, real HTTP receivers.

mod common;

use std::time::Duration;

use common::*;
use lapin::types::AMQPValue;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LIMIT: Duration = Duration::from_secs(60);

/// Three attempts, 100 ms then 200 ms apart.
fn fast_retry() -> Retry {
    Retry {
        max_attempts: Some(3),
        multiplier: Some(2.0),
        jitter: Some(0.0),
        ..Retry::backoff(ms(100), secs(1))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_delivery_verifies_with_an_independent_check() {
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("signed");
    let acme = Profile::new("acme", &receiver.url("/hooks"))
        .header("X-Env", "prod")
        .header("Content-Type", "text/plain")
        .signing([SECRET, "whsec_c2Vjb25kLWtleQ=="]);
    let worker = env.start(env.config(&env.file(fast_retry(), [acme]))).await;

    let body = br#"{"event":"message.delivered","id":42}"#;
    env.publish(Some("acme"), "evt-signed-1", body).await;
    let got = receiver.wait_for(1, LIMIT).await;
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/hooks");
    assert_eq!(&r.body[..], body);
    assert_eq!(r.header("webhook-id").as_deref(), Some("evt-signed-1"));
    let content_types: Vec<_> = r.headers.get_all("content-type").iter().collect();
    assert_eq!(
        content_types,
        ["application/json"],
        "the event's Content-Type, once"
    );
    assert_eq!(r.header("x-env").as_deref(), Some("prod"));
    assert!(
        r.header("user-agent")
            .unwrap()
            .starts_with("callback-dispatcher/")
    );
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - ts).abs() < 60,
        "timestamp {ts} is not current ({now})"
    );
    assert_eq!(
        r.header("webhook-signature").unwrap().split(' ').count(),
        2,
        "one signature per secret"
    );
    assert!(verify_signature(SECRET, r), "signature does not verify");
    assert!(
        verify_signature("whsec_c2Vjb25kLWtleQ==", r),
        "rotation key does not verify"
    );

    let m = worker.metrics().await;
    assert_eq!(m.deliveries("acme", "delivered"), 1.0);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arrive_byte_for_byte_with_their_content_type() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("bytes");
    let worker = env
        .start(env.config(&env.file(
            fast_retry(),
            [Profile::new("bin", &receiver.url("/b")).method("PUT")],
        )))
        .await;
    let bodies: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, 0x80, b'x'],
        Vec::new(),
        (0..=255u8).cycle().take(100_000).collect(),
    ];
    for (i, b) in bodies.iter().enumerate() {
        let props = event_props(Some("bin"), &format!("bin-{i}"))
            .with_content_type("application/octet-stream".into());
        let b = b.clone();
        env.publish_many(1, move |_| (props.clone(), b.clone()))
            .await;
    }
    let got = receiver.wait_for(3, LIMIT).await;
    for (i, b) in bodies.iter().enumerate() {
        let r = got
            .iter()
            .find(|r| r.header("webhook-id") == Some(format!("bin-{i}")))
            .unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(&r.body[..], &b[..], "body {i}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sends_top_level_scalars_as_query_and_no_body() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("get");
    let worker = env
        .start(env.config(&env.file(
            fast_retry(),
            [Profile::new("g", &receiver.url("/status")).method("GET")],
        )))
        .await;
    env.publish(
        Some("g"),
        "get-1",
        br#"{"to":"+44 7700","n":3,"ok":true,"nested":{"a":1}}"#,
    )
    .await;
    let r = &receiver.wait_for(1, LIMIT).await[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.uri, "/status?n=3&ok=true&to=%2B44+7700");
    assert!(r.body.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_204_is_delivered_on_the_third_attempt_with_the_same_id() {
    let receiver = Server::start(|n, _| Reply::status(if n < 2 { 503 } else { 204 })).await;
    let env = Env::new("retry");
    let retry = Retry {
        max_attempts: Some(5),
        multiplier: Some(2.0),
        jitter: Some(0.0),
        ..Retry::backoff(secs(1), secs(10))
    };
    let worker = env
        .start(env.config(&env.file(
            retry,
            [Profile::new("r", &receiver.url("/r")).signing([SECRET])],
        )))
        .await;
    env.publish(Some("r"), "evt-retry", b"{}").await;
    let got = receiver.wait_for(3, LIMIT).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids, vec!["evt-retry"; 3]);
    let ts: Vec<i64> = got
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert!(ts[2] > ts[0], "timestamps are fresh per attempt: {ts:?}");
    assert!(got.iter().all(|r| verify_signature(SECRET, r)));
    // Delays 1s then 2s (jitter 0): the broker holds each retry at least that long.
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(1950),
        "{:?}",
        got[2].at - got[1].at
    );
    worker.wait_delivered("r", 1).await;
    let m = worker.metrics().await;
    assert_eq!(m.deliveries("r", "retry_scheduled"), 2.0);
    assert_eq!(m.attempts("r", "5xx"), 2.0);
    assert_eq!(m.attempts("r", "2xx"), 1.0);
    assert_eq!(receiver.count(), 3);
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_longer_than_the_back_off_is_respected() {
    let receiver = Server::start(|n, _| {
        if n == 0 {
            Reply::status(429).header("retry-after", "2")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let env = Env::new("retryafter");
    let worker = env
        .start(env.config(&env.file(
            Retry {
                jitter: Some(0.0),
                ..Retry::backoff(ms(100), secs(60))
            },
            [Profile::new("ra", &receiver.url("/"))],
        )))
        .await;
    env.publish(Some("ra"), "evt-ra", b"{}").await;
    let got = receiver.wait_for(2, LIMIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1950),
        "Retry-After: 2 but resent after {gap:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_with_reason_status_and_the_body_unchanged() {
    let receiver =
        Server::start(|_, _| Reply::json(400, serde_json::json!({"error": "bad number"}))).await;
    let env = Env::new("perm");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [Profile::new("p", &receiver.url("/"))])))
        .await;
    // A publisher's per-message TTL must not follow the event into the dead-letter queue.
    let props = event_props(Some("p"), "evt-400").with_expiration("600000".into());
    env.publish_many(1, move |_| (props.clone(), b"{\"to\":\"x\"}".to_vec()))
        .await;
    let dead = env.wait_dead(1, LIMIT).await;
    let d = &dead[0];
    assert_eq!(
        header_text(d, "x-dead-reason").as_deref(),
        Some("permanent_status")
    );
    assert_eq!(header_int(d, "x-last-status"), Some(400));
    assert_eq!(header_int(d, "x-attempt"), Some(1));
    assert!(
        header_text(d, "x-last-error")
            .unwrap()
            .contains("bad number")
    );
    assert_eq!(header_text(d, "profile").as_deref(), Some("p"));
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        "evt-400"
    );
    assert_eq!(d.data, b"{\"to\":\"x\"}");
    assert_eq!(
        d.properties.expiration(),
        &None,
        "a dead letter never expires"
    );
    assert_eq!(receiver.count(), 1, "a permanent failure is not retried");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_is_dead_lettered_after_max_attempts() {
    let receiver = Server::start(|_, _| Reply::status(500)).await;
    let env = Env::new("maxatt");
    let worker = env
        .start(env.config(&env.file(
            fast_retry(),
            // Not about the breaker: it stays out of the way of three failures.
            [Profile::new("m", &receiver.url("/")).breaker(Breaker::off())],
        )))
        .await;
    env.publish(Some("m"), "evt-500", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("max_attempts")
    );
    assert_eq!(header_int(&dead[0], "x-attempt"), Some(3));
    assert_eq!(header_int(&dead[0], "x-last-status"), Some(500));
    assert_eq!(receiver.count(), 3, "max_attempts: 3 attempts in all");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_an_assigned_id_when_the_publisher_sent_none() {
    let receiver = Server::start(|n, _| Reply::status(if n == 0 { 502 } else { 200 })).await;
    let env = Env::new("noid");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [Profile::new("n", &receiver.url("/"))])))
        .await;
    let props = event_props(Some("n"), "x").with_message_id("".into());
    env.publish_many(1, move |_| (props.clone(), b"{}".to_vec()))
        .await;
    let got = receiver.wait_for(2, LIMIT).await;
    let (a, b) = (
        got[0].header("webhook-id").unwrap(),
        got[1].header("webhook-id").unwrap(),
    );
    assert!(a.starts_with("msg_"), "{a}");
    assert_eq!(a, b);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_dead_lettered_with_their_reason_and_good_ones_still_flow() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("bad");
    let mut file = env.file(fast_retry(), [Profile::new("good", &receiver.url("/"))]);
    file.delivery.max_body_bytes = Some(1000);
    let worker = env.start(env.config(&file)).await;
    env.publish(Some("nobody"), "bad-unknown", b"{}").await;
    env.publish(None, "bad-missing", b"{}").await;
    let mut props = event_props(None, "bad-int");
    let mut h = props.headers().clone().unwrap();
    h.insert("profile".into(), AMQPValue::LongInt(7));
    h.insert("x-attempt".into(), text("garbage"));
    props = props.with_headers(h);
    env.publish_many(1, move |_| (props.clone(), b"{}".to_vec()))
        .await;
    env.publish(Some("good"), "bad-huge", &[b'x'; 1001]).await;
    env.publish(Some("good"), "bad\nid", b"{}").await;
    for i in 0..5 {
        env.publish(Some("good"), &format!("good-{i}"), b"{}").await;
    }
    receiver.wait_for(5, LIMIT).await;
    let dead = env.wait_dead(5, LIMIT).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                d.properties.message_id().as_ref().unwrap().to_string(),
                header_text(d, "x-dead-reason").unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("bad\nid".into(), "invalid_message_id".into()),
            ("bad-huge".into(), "payload_too_large".into()),
            ("bad-int".into(), "missing_profile".into()),
            ("bad-missing".into(), "missing_profile".into()),
            ("bad-unknown".into(), "unknown_profile".into()),
        ]
    );
    let int = dead
        .iter()
        .find(|d| d.properties.message_id().as_ref().unwrap().as_str() == "bad-int")
        .unwrap();
    assert!(
        header_text(int, "x-last-error")
            .unwrap()
            .contains("must be a string")
    );
    assert_eq!(
        receiver.count(),
        5,
        "only the good events reached the receiver"
    );
    let m = worker.metrics().await;
    assert_eq!(m.deliveries("(none)", "dead_lettered"), 3.0);
    assert_eq!(m.deliveries("good", "dead_lettered"), 2.0);
    assert_eq!(
        m.value("callback_dispatcher_events_consumed_total", &[]),
        10.0
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    let other = Server::start(|_, _| Reply::status(200)).await;
    let target = other.url("/stolen");
    let receiver = Server::start(move |_, _| Reply::status(302).header("location", &target)).await;
    let env = Env::new("redirect");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [Profile::new("r", &receiver.url("/"))])))
        .await;
    env.publish(Some("r"), "evt-302", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("permanent_status")
    );
    assert_eq!(header_int(&dead[0], "x-last-status"), Some(302));
    assert_eq!(other.count(), 0, "the redirect target saw nothing");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_queue_is_a_clear_start_error() {
    let env = Env::new("conflict");
    let config = env.config(&env.file(fast_retry(), [Profile::new("c", "http://127.0.0.1:9/")]));
    // Someone declared the work queue as a classic queue before us.
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        env.queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    let worker = callback_dispatcher::Worker::bind(config).await.unwrap();
    let err = worker
        .run(std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "queue `{}` already exists with other arguments",
            env.queue
        )),
        "{err}"
    );
    assert!(err.contains("x-queue-type"), "{err}");
    assert!(err.contains("delete_queue"), "{err}");
    conn.close(200, "".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_response_is_not_read_beyond_a_small_cap() {
    let huge = "E".repeat(20 * 1024 * 1024);
    let receiver = Server::start(move |_, _| Reply {
        status: 500,
        headers: vec![],
        body: huge.clone(),
        delay: Duration::ZERO,
    })
    .await;
    let env = Env::new("hugebody");
    let worker = env
        .start(env.config(&env.file(Retry::attempts(1), [Profile::new("h", &receiver.url("/"))])))
        .await;
    env.publish(Some("h"), "evt-huge", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    let err = header_text(&dead[0], "x-last-error").unwrap();
    assert!(
        err.starts_with("HTTP 500: EEEE"),
        "{}",
        &err[..40.min(err.len())]
    );
    assert!(
        err.len() <= 300,
        "x-last-error holds {} bytes of a 20 MiB answer",
        err.len()
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_attempt_headers_are_clamped_not_trusted_or_fatal() {
    let receiver = Server::start(|_, r| {
        Reply::status(if r.header("webhook-id").as_deref() == Some("att-neg") {
            200
        } else {
            500
        })
    })
    .await;
    let env = Env::new("attempts");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [Profile::new("a", &receiver.url("/"))])))
        .await;
    for (id, value) in [
        ("att-neg", AMQPValue::LongInt(-5)),
        ("att-huge", AMQPValue::LongLongInt(i64::MAX)),
        ("att-text", text("2")),
    ] {
        let mut props = event_props(Some("a"), id);
        let mut h = props.headers().clone().unwrap();
        h.insert("x-attempt".into(), value);
        props = props.with_headers(h);
        env.publish_many(1, move |_| (props.clone(), b"{}".to_vec()))
            .await;
    }
    let dead = env.wait_dead(2, LIMIT).await;
    let mut got: Vec<(String, Option<i64>)> = dead
        .iter()
        .map(|d| {
            (
                d.properties.message_id().as_ref().unwrap().to_string(),
                header_int(d, "x-attempt"),
            )
        })
        .collect();
    got.sort();
    // "2" as text counts as 2 attempts made: the 3rd is the last. i64::MAX clamps.
    assert_eq!(
        got,
        vec![
            ("att-huge".into(), Some(i64::from(i32::MAX))),
            ("att-text".into(), Some(3))
        ]
    );
    assert!(
        dead.iter()
            .all(|d| header_text(d, "x-dead-reason").as_deref() == Some("max_attempts"))
    );
    worker.wait_delivered("a", 1).await;
    assert_eq!(receiver.count(), 3, "one attempt each");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_profiles_start_and_route() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("manyprofiles");
    let profiles =
        (0..10_000).map(|i| Profile::new(&format!("p{i}"), &receiver.url(&format!("/p{i}"))));
    let worker = env
        .start(env.config(&env.file(fast_retry(), profiles)))
        .await;
    for id in ["p0", "p5000", "p9999"] {
        env.publish(Some(id), &format!("evt-{id}"), b"{}").await;
    }
    let mut uris: Vec<String> = receiver
        .wait_for(3, LIMIT)
        .await
        .into_iter()
        .map(|r| r.uri)
        .collect();
    uris.sort();
    assert_eq!(uris, vec!["/p0", "/p5000", "/p9999"]);
    worker.stop().await.unwrap();
}
