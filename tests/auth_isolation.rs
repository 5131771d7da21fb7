//! A customer's auth server never holds back others (SPEC section 4): auth servers that hang
//! or answer 503 beside a healthy profile, and auth server text that must never be repeated.
//! Real RabbitMQ, real HTTP servers on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const HEALTHY: usize = 300;
const PER_FAILING: usize = 40;

/// The back-off after the n-th failed token request in a row (SPEC section 4).
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << (n - 1).min(6)).min(Duration::from_secs(60))
}

/// The most token requests an auth server can see within `window` of the first one when
/// every request fails: the k-th starts at least the first k-1 back-offs after the first.
fn request_bound(window: Duration) -> usize {
    let mut starts = Duration::ZERO;
    let mut n = 1;
    loop {
        starts += backoff(n as u32);
        if starts > window {
            return n;
        }
        n += 1;
    }
}

fn base(env: &Env, profiles: Vec<Value>) -> String {
    let config = json!({
        "amqp": {"url": amqp_url(), "queue": env.queue, "exchange": env.queue, "prefetch": 64},
        "delivery": {
            "concurrency": 64, "timeout": "5s", "connect_timeout": "1s",
            "allow_networks": ["127.0.0.0/8"]
        },
        "retry": {
            "initial_delay": "1s", "multiplier": 2.0, "max_delay": "4s",
            "max_attempts": 500, "max_age": "1h"
        },
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"format": "text"},
        "profiles": profiles,
    });
    serde_json::to_string(&config).unwrap()
}

fn oauth_profile(id: &str, callback: &str, auth: &str, timeout: &str) -> Value {
    json!({
        "id": id, "url": callback, "timeout": timeout,
        "auth": {
            "type": "oauth2", "url": auth, "client_id": format!("client-{id}"),
            "client_secret": format!("cs-{id}-0123456789")
        }
    })
}

fn token_reply(n: usize) -> Reply {
    Reply::json(
        200,
        json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 3600}),
    )
}

fn ids(server: &Server) -> HashSet<String> {
    server
        .all()
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_failing_auth_servers_never_hold_back_a_healthy_profile() {
    let recovered = Arc::new(AtomicBool::new(false));
    let healthy_auth = Server::start(|n, _| token_reply(n)).await;
    let mut hanging = Vec::new();
    let mut failing = Vec::new();
    for _ in 0..4 {
        let r = recovered.clone();
        hanging.push(
            Server::start(move |n, _| {
                if r.load(Ordering::SeqCst) {
                    token_reply(n)
                } else {
                    Reply::status(200).after(Duration::from_secs(3600))
                }
            })
            .await,
        );
        let r = recovered.clone();
        failing.push(
            Server::start(move |n, _| {
                if r.load(Ordering::SeqCst) {
                    token_reply(n)
                } else {
                    Reply::json(503, json!({"error": "temporarily_unavailable"}))
                }
            })
            .await,
        );
    }
    let ok_callbacks = Server::start(|_, _| Reply::status(204)).await;
    let bad_callbacks = Server::start(|_, _| Reply::status(204)).await;

    let env = Env::new("authiso");
    let mut profiles = vec![oauth_profile(
        "ok",
        &ok_callbacks.url("/"),
        &healthy_auth.url("/token"),
        "5s",
    )];
    let mut bad_ids = Vec::new();
    for (i, s) in hanging.iter().enumerate() {
        let id = format!("hang{i}");
        profiles.push(oauth_profile(
            &id,
            &bad_callbacks.url("/"),
            &s.url("/token"),
            "2s",
        ));
        bad_ids.push(id);
    }
    for (i, s) in failing.iter().enumerate() {
        let id = format!("e503-{i}");
        profiles.push(oauth_profile(
            &id,
            &bad_callbacks.url("/"),
            &s.url("/token"),
            "2s",
        ));
        bad_ids.push(id);
    }
    let worker = env.start(env.config_text(&base(&env, profiles))).await;

    // The healthy profile alone.
    let started = Instant::now();
    env.publish_many(HEALTHY, |i| {
        (
            event_props(Some("ok"), &format!("ok-a-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    worker.wait_delivered("ok", HEALTHY).await;
    let alone = started.elapsed();

    // The same beside four hanging and four failing auth servers, events interleaved.
    let n_bad = bad_ids.len() * PER_FAILING;
    let mut order: Vec<(String, String)> = Vec::new();
    for k in 0..HEALTHY.max(n_bad) {
        if k < n_bad {
            let p = &bad_ids[k % bad_ids.len()];
            order.push((p.clone(), format!("{p}-{k}")));
        }
        if k < HEALTHY {
            order.push(("ok".into(), format!("ok-b-{k}")));
        }
    }
    let started = Instant::now();
    env.publish_many(order.len(), move |i| {
        (event_props(Some(&order[i].0), &order[i].1), b"{}".to_vec())
    })
    .await;
    wait_until(
        Duration::from_secs(120),
        "the healthy profile's events delivered beside the failing auth servers",
        || async { worker.metrics().await.deliveries("ok", "delivered") == (2 * HEALTHY) as f64 },
    )
    .await;
    let beside = started.elapsed();
    eprintln!(
        "auth isolation: {HEALTHY} healthy events delivered in {alone:?} alone, in {beside:?} beside \
         4 hanging and 4 failing (503) auth servers ({n_bad} of their events in the queue)"
    );
    assert!(
        beside < alone * 5 + Duration::from_secs(10),
        "the healthy profile was held back: {beside:?} beside, {alone:?} alone"
    );

    // Keep them failing for a while: each auth server sees only what the back-off allows,
    // however many of its events come back from the delay queues meanwhile.
    let first = |s: &Server| s.all().first().map(|r| r.at);
    let all_failing: Vec<&Server> = hanging.iter().chain(failing.iter()).collect();
    for s in &all_failing {
        assert!(first(s).is_some(), "every failing auth server was asked");
    }
    let observe = Duration::from_secs(12);
    wait_until(
        Duration::from_secs(60),
        "the observation window",
        || async {
            all_failing
                .iter()
                .all(|s| first(s).is_some_and(|t| t.elapsed() >= observe))
        },
    )
    .await;
    let mut counts = Vec::new();
    for s in &all_failing {
        let at = s.all();
        let window = at.last().unwrap().at - at[0].at;
        let bound = request_bound(window + Duration::from_millis(250));
        counts.push((at.len(), window.as_secs_f64(), bound));
        assert!(
            at.len() <= bound,
            "auth server {} saw {} requests in {window:?}; the back-off allows {bound}",
            s.addr,
            at.len()
        );
    }
    let consumed = worker
        .metrics()
        .await
        .value("callback_dispatcher_events_consumed_total", &[]);
    eprintln!(
        "auth isolation: token requests per failing auth server (requests, seconds since the first, bound): \
         hanging {:?}, 503 {:?}; {consumed} events consumed in all",
        &counts[..4],
        &counts[4..]
    );

    // The auth servers recover: every event is delivered, none lost or dead-lettered.
    recovered.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(180),
        "every event of the recovered profiles delivered",
        || async { ids(&bad_callbacks).len() == n_bad },
    )
    .await;
    let m = worker.metrics().await;
    let delivered: f64 = bad_ids.iter().map(|p| m.deliveries(p, "delivered")).sum();
    assert_eq!(delivered, n_bad as f64, "each delivered once");
    assert_eq!(ids(&ok_callbacks).len(), 2 * HEALTHY);
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_server_text_holding_the_secret_or_the_token_never_reaches_dead_letters_or_logs() {
    const SECRET: &str = "cs-ECHOED-7f3a9c1e5b";
    const TOKEN: &str = "tok-EXPIRY-PATH-0123456789abcdefghijklmnopqrstuvwxyz";
    // Wrong credentials, and an error_description that echoes the secret it was sent.
    let echo = Server::start(|_, _| {
        Reply::json(
            401,
            json!({"error": "invalid_client",
                   "error_description": format!("client_secret {SECRET} does not match")}),
        )
    })
    .await;
    // A good answer read through an expiration_field_path that points at the token.
    let expiry =
        Server::start(|_, _| Reply::json(200, json!({"access_token": TOKEN, "expires_in": 3600})))
            .await;
    let callbacks = Server::start(|_, _| Reply::status(204)).await;

    let env = Env::new("authscrub");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let port = free_port();
    let mut echo_profile = oauth_profile("echo", &callbacks.url("/"), &echo.url("/token"), "5s");
    echo_profile["auth"]["client_secret"] = json!(SECRET);
    let mut expiry_profile =
        oauth_profile("expiry", &callbacks.url("/"), &expiry.url("/token"), "5s");
    expiry_profile["auth"]["expiration_field_path"] = json!("$.access_token");
    expiry_profile["auth"]["client_secret"] = json!(SECRET);
    let mut config: Value =
        serde_json::from_str(&base(&env, vec![echo_profile, expiry_profile])).unwrap();
    config["retry"]["max_attempts"] = json!(1);
    config["metrics"]["listen"] = json!(format!("127.0.0.1:{port}"));
    let text = serde_json::to_string(&config).unwrap();
    env.config_text(&text); // the queues are cleaned up with the test
    let path = dir.path().join("dispatcher.yaml");
    std::fs::write(&path, &text).unwrap();
    let worker = Process::spawn_at(dir.clone(), path.clone(), port, "debug");
    worker.wait_ready().await;

    env.publish(Some("echo"), "scrub-echo", b"{}").await;
    env.publish(Some("expiry"), "scrub-expiry", b"{}").await;
    let dead = env.wait_dead(2, Duration::from_secs(30)).await;
    let last_error = |profile: &str| {
        dead.iter()
            .find(|d| header_text(d, "profile").as_deref() == Some(profile))
            .and_then(|d| header_text(d, "x-last-error"))
            .unwrap_or_else(|| panic!("a dead letter of {profile}"))
    };
    let (echo_error, expiry_error) = (last_error("echo"), last_error("expiry"));
    eprintln!("x-last-error: {echo_error:?} / {expiry_error:?}");
    for e in [&echo_error, &expiry_error] {
        assert!(e.starts_with("auth_failed"), "{e}");
        assert!(!e.contains("ECHOED") && !e.contains("EXPIRY-PATH"), "{e}");
    }
    assert!(echo_error.contains("401") && echo_error.contains("invalid_client"));
    assert!(echo_error.contains("[redacted]"), "{echo_error}");
    assert!(
        expiry_error.contains("$.access_token") && expiry_error.contains("a string"),
        "names the path and the value's JSON type: {expiry_error}"
    );
    assert!(callbacks.count() == 0, "no callback without a token");

    // The operator command shows the error body, scrubbed the same way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(["token", "--profile", "echo", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        shown.contains("401") && !shown.contains("ECHOED"),
        "{shown}"
    );

    let logs = worker.logs();
    assert!(
        logs.contains("auth token request failed"),
        "the failures are logged"
    );
    assert!(!logs.contains("ECHOED"), "the secret reached the log");
    assert!(!logs.contains("EXPIRY-PATH"), "the token reached the log");
}
