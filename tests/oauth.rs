//! Advanced Authentication end to end: customers' auth servers of different shapes, token
//! caching, refresh, failures, and secrets kept out of the logs.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use serde_json::json;

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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(alg: &str, exp: u64) -> String {
    let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        enc(json!({"alg": alg, "typ": "JWT"})),
        enc(json!({"exp": exp, "sub": "acme"}))
    )
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    v.sort();
    v
}

fn oauth_profile(id: &str, callback: &str, auth: OAuth2) -> Profile {
    Profile::new(id, callback).auth(auth)
}

fn map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaleyra_style_form_body_custom_headers_and_string_numbers() {
    let auth = Server::start(|_, _| {
        Reply::json(200, json!({"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1686632570","not_before":"1686628670","resource":"00000002-0000-0000-c000-000000000000","access_token":"kal-token-1"}))
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("kaleyra");
    let a = OAuth2 {
        params: map(&[("resource", "api://acme")]),
        headers: map(&[("X-Tenant", "acme")]),
        ..OAuth2::new(
            &auth.url("/oauth2/token"),
            "MDXXXXTM3NXXXXDUXXXXm",
            "kal-secret",
        )
        .scope("callbacks.write")
    };
    let worker = env
        .start(env.config(&env.file(
            fast_retry(),
            [oauth_profile("kal", &receiver.url("/cb"), a)],
        )))
        .await;
    for i in 0..3 {
        env.publish(Some("kal"), &format!("kal-{i}"), b"{}").await;
    }
    worker.wait_delivered("kal", 3).await;
    assert!(
        receiver
            .all()
            .iter()
            .all(|r| r.header("authorization").as_deref() == Some("Bearer kal-token-1"))
    );
    let reqs = auth.all();
    assert_eq!(reqs.len(), 1, "one token for three events");
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/oauth2/token")
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(r.header("authorization"), None);
    let want: Vec<(String, String)> = [
        ("client_id", "MDXXXXTM3NXXXXDUXXXXm"),
        ("client_secret", "kal-secret"),
        ("grant_type", "client_credentials"),
        ("resource", "api://acme"),
        ("scope", "callbacks.write"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(form(&r.body), want);
    let m = worker.metrics().await;
    assert_eq!(
        m.value(
            "callback_dispatcher_token_requests_total",
            &[("profile", "kal"), ("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "callback_dispatcher_token_cache_hits_total",
            &[("profile", "kal")]
        ),
        2.0
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_style_basic_header_with_special_characters() {
    let auth = Server::start(|_, _| Reply::json(200, json!({"access_token":"bw-tok","access_token_id":"id-1","token_type":"Bearer","expires_in":600}))).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("bandwidth");
    let a = OAuth2::new(&auth.url("/api/v1/oauth2/token"), "bw client", "s$ @+/=")
        .client_auth("basic_header")
        .scope("voice.webrtc");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("bw", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("bw"), "bw-1", b"{}").await;
    worker.wait_delivered("bw", 1).await;
    let r = &auth.all()[0];
    let basic = r.header("authorization").unwrap();
    let decoded = String::from_utf8(
        STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded, "bw%20client:s%24%20%40%2B%2F%3D",
        "RFC 6749 2.3.1: urlencode (a space as %20), then base64"
    );
    assert_eq!(
        &r.body[..],
        b"grant_type=client_credentials&scope=voice.webrtc"
    );
    assert_eq!(
        receiver.all()[0].header("authorization").as_deref(),
        Some("Bearer bw-tok")
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infobip_style_get_nested_token_and_ibsso_scheme() {
    let exp = now() + 3600;
    let auth = Server::start(move |_, _| {
        Reply::json(
            200,
            json!({"data": {"token": "ib-tok-9", "tokenType": "IBSSO", "expiresAt": exp}}),
        )
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("infobip");
    let a = OAuth2 {
        token_field_path: Some("$.data.token".into()),
        token_type_field_path: Some("$.data.tokenType".into()),
        expiration_field_path: Some("$.data.expiresAt".into()),
        expiration_format: Some("unix_seconds".into()),
        ..OAuth2::new(&auth.url("/auth/1/session"), "ib-user", "ib-pass").method("GET")
    };
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("ib", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("ib"), "ib-1", b"{}").await;
    worker.wait_delivered("ib", 1).await;
    let r = &auth.all()[0];
    assert_eq!(r.method, "GET");
    let (path, query) = r.uri.split_once('?').unwrap();
    assert_eq!(path, "/auth/1/session");
    assert_eq!(
        form(query.as_bytes()),
        vec![
            ("client_id".into(), "ib-user".into()),
            ("client_secret".into(), "ib-pass".into()),
            ("grant_type".into(), "client_credentials".into())
        ]
    );
    assert_eq!(
        receiver.all()[0].header("authorization").as_deref(),
        Some("IBSSO ib-tok-9")
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_client_auth_and_a_jwt_only_response() {
    let token = jwt("RS256", now() + 600);
    let t2 = token.clone();
    let auth = Server::start(move |_, _| Reply::json(200, json!({ "access_token": t2 }))).await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("jsonbody");
    let a = OAuth2::new(&auth.url("/t"), "j-id", "j-secret")
        .method("PUT")
        .client_auth("json_body")
        .auth_algorithm("RS256");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("j", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("j"), "j-1", b"{}").await;
    worker.wait_delivered("j", 1).await;
    env.publish(Some("j"), "j-2", b"{}").await;
    worker.wait_delivered("j", 2).await;
    let r = &auth.all()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"grant_type":"client_credentials","client_id":"j-id","client_secret":"j-secret"})
    );
    assert_eq!(
        auth.count(),
        1,
        "the JWT's exp (10 minutes) keeps it cached"
    );
    assert_eq!(
        receiver.all()[1].header("authorization"),
        Some(format!("Bearer {token}"))
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_events_at_once_make_one_auth_request() {
    let auth = Server::start(|_, _| {
        Reply::json(200, json!({"access_token":"shared","expires_in":3600}))
            .after(Duration::from_millis(300))
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("singleflight");
    let a = OAuth2::new(&auth.url("/t"), "c", "s");
    let mut file = env.file(fast_retry(), [oauth_profile("sf", &receiver.url("/"), a)]);
    file.amqp.prefetch = Some(256);
    file.delivery.concurrency = Some(256);
    let config = env.config(&file);
    // Queue the 200 first, then start: they all need the token at the same moment.
    env.publish_many(200, |i| {
        (event_props(Some("sf"), &format!("sf-{i}")), b"{}".to_vec())
    })
    .await;
    let worker = env.start(config).await;
    worker.wait_delivered("sf", 200).await;
    assert_eq!(
        auth.count(),
        1,
        "exactly one request reached the auth server"
    );
    let m = worker.metrics().await;
    assert_eq!(
        m.value(
            "callback_dispatcher_token_cache_hits_total",
            &[("profile", "sf")]
        ),
        199.0
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_refreshed_after_it_expires() {
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("short-{n}"), "expires_in": 2}),
        )
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("refresh");
    // Lifetime 2s, margin 30s: under twice the margin, so reused for half its life (1s).
    let a = OAuth2::new(&auth.url("/t"), "c", "s");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("sh", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("sh"), "sh-1", b"{}").await;
    worker.wait_delivered("sh", 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // the token's reuse window passing is the point
    env.publish(Some("sh"), "sh-2", b"{}").await;
    worker.wait_delivered("sh", 2).await;
    let auths: Vec<_> = receiver
        .all()
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(auths, vec!["Bearer short-0", "Bearer short-1"]);
    assert_eq!(auth.count(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once_and_resends_at_once_even_for_a_burst() {
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("t{}", n + 1), "expires_in": 3600}),
        )
        // Long enough for all 50 events to be waiting for the first token.
        .after(Duration::from_millis(500))
    })
    .await;
    // The 401s come back slowly enough that every event waiting for t1 has sent it before
    // the first one is refused: a burst of 401s for one stale token.
    let receiver = Server::start(|_, r| {
        if r.header("authorization").as_deref() == Some("Bearer t1") {
            Reply::status(401).after(Duration::from_millis(300))
        } else {
            Reply::status(200)
        }
    })
    .await;
    let env = Env::new("unauth");
    let a = OAuth2::new(&auth.url("/t"), "c", "s");
    let n = 50;
    // All 50 at once: the profile may have them all in flight.
    let mut file = env.file(fast_retry(), [oauth_profile("u", &receiver.url("/"), a)]);
    file.delivery.per_profile_concurrency = Some(64);
    let config = env.config(&file);
    env.publish_many(n, |i| {
        (event_props(Some("u"), &format!("u-{i}")), b"{}".to_vec())
    })
    .await;
    let worker = env.start(config).await;
    worker.wait_delivered("u", n).await;
    let m = worker.metrics().await;
    assert_eq!(
        m.deliveries("u", "retry_scheduled"),
        0.0,
        "resent at once, not after a back-off"
    );
    assert_eq!(
        auth.count(),
        2,
        "one stale token, one refresh, for {n} events that all got 401"
    );
    assert_eq!(m.attempts("u", "4xx"), n as f64);
    assert_eq!(m.attempts("u", "2xx"), n as f64);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_is_a_retryable_failure() {
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("t{n}"), "expires_in": 3600}),
        )
    })
    .await;
    let receiver = Server::start(|n, _| Reply::status(if n < 2 { 401 } else { 200 })).await;
    let env = Env::new("unauth2");
    let a = OAuth2::new(&auth.url("/t"), "c", "s");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("u2", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("u2"), "u2-1", b"{}").await;
    worker.wait_delivered("u2", 1).await;
    let m = worker.metrics().await;
    assert_eq!(m.deliveries("u2", "retry_scheduled"), 1.0);
    assert_eq!(receiver.count(), 3);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_server_failing_twice_then_recovering_gets_the_event_delivered() {
    let auth = Server::start(|n, _| match n {
        0 => Reply::json(
            500,
            json!({"error": "temporarily_unavailable", "error_description": "maintenance"}),
        ),
        1 => Reply::status(200)
            .header("content-type", "text/html")
            .after(Duration::ZERO),
        _ => Reply::json(200, json!({"access_token": "finally", "expires_in": 3600})),
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("authrecover");
    // Retries that outlast the auth back-off (1 s, then 2 s): an attempt within it fails at
    // once without a request.
    let a = OAuth2::new(&auth.url("/t"), "c", "s");
    let worker = env
        .start(env.config(&env.file(
            Retry {
                max_attempts: Some(10),
                multiplier: Some(2.0),
                jitter: Some(0.0),
                ..Retry::backoff(secs(1), secs(4))
            },
            [oauth_profile("ar", &receiver.url("/"), a)],
        )))
        .await;
    env.publish(Some("ar"), "ar-1", b"{}").await;
    worker.wait_delivered("ar", 1).await;
    let m = worker.metrics().await;
    assert_eq!(
        m.value(
            "callback_dispatcher_token_requests_total",
            &[("profile", "ar"), ("outcome", "failure")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "callback_dispatcher_token_requests_total",
            &[("profile", "ar"), ("outcome", "success")]
        ),
        1.0
    );
    assert!(m.attempts("ar", "auth_failed") >= 2.0);
    assert_eq!(receiver.count(), 1, "nothing was sent without a token");
    assert_eq!(
        receiver.all()[0].header("authorization").as_deref(),
        Some("Bearer finally")
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_the_wrong_alg_is_never_sent_and_ends_dead_lettered() {
    let auth = Server::start(|_, _| {
        Reply::json(200, json!({ "access_token": jwt("HS256", now() + 600) }))
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("wrongalg");
    let a = OAuth2::new(&auth.url("/t"), "c", "s").auth_algorithm("RS256");
    let worker = env
        .start(env.config(&env.file(fast_retry(), [oauth_profile("wa", &receiver.url("/"), a)])))
        .await;
    env.publish(Some("wa"), "wa-1", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("max_attempts")
    );
    let err = header_text(&dead[0], "x-last-error").unwrap();
    assert!(
        err.starts_with("auth_failed:") && err.contains("HS256"),
        "{err}"
    );
    assert_eq!(receiver.count(), 0, "the callback URL never saw the token");
    // One token request: the later attempts come within its back-off (1 s) and fail at
    // once without a request (SPEC section 4).
    assert_eq!(auth.count(), 1);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs_at_trace_level() {
    let auth = Server::start(|_, r| {
        if r.uri.contains("fail") {
            Reply::json(
                401,
                json!({"error": "invalid_client", "error_description": "bad credentials"}),
            )
        } else {
            Reply::json(
                200,
                json!({"access_token": "tok-SECRET-from-auth-server", "expires_in": 3600}),
            )
        }
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("tracelogs");
    let signing = "whsec_c2lnbmluZy1TRUNSRVQta2V5LWJ5dGVz"; // "signing-SECRET-key-bytes"
    let cb = receiver.url("/");
    let token_url = auth.url("/t");
    let mut profiles = vec![
        oauth_profile(
            "o-form",
            &cb,
            OAuth2::new(&token_url, "c", "cs-SECRET-form"),
        ),
        oauth_profile(
            "o-basic",
            &cb,
            OAuth2::new(&token_url, "c", "cs-SECRET-basic").client_auth("basic_header"),
        ),
        oauth_profile(
            "o-get",
            &cb,
            OAuth2::new(&token_url, "c", "cs-SECRET-query").method("GET"),
        ),
        oauth_profile(
            "o-fail",
            &cb,
            OAuth2::new(&auth.url("/fail"), "c", "cs-SECRET-fail"),
        ),
        Profile::new("st-basic", &cb).auth(Auth::Basic {
            username: "u".into(),
            password: "pw-SECRET-basic".into(),
        }),
        Profile::new("st-bearer", &cb).auth(Auth::Bearer {
            token: "tok-SECRET-static".into(),
        }),
        Profile::new("st-key", &cb)
            .auth(Auth::ApiKey {
                header: None,
                value: "App key-SECRET-api".into(),
            })
            .signing([signing]),
    ];
    // Key material: a private_key_jwt key, a TLS client key, an ed25519 signing seed.
    let assertion_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tls_key = rcgen::KeyPair::generate().unwrap();
    let tls_cert = rcgen::CertificateParams::new(vec!["c".to_owned()])
        .unwrap()
        .self_signed(&tls_key)
        .unwrap();
    let seed = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    profiles.push(oauth_profile(
        "o-pkj",
        &cb,
        OAuth2::private_key_jwt(&token_url, "c", &assertion_key.serialize_pem()),
    ));
    profiles.push(
        Profile::new("st-tls", &cb)
            .signing([format!("whsk_{seed}")])
            .tls(Tls {
                client_cert: Some(tls_cert.pem()),
                client_key: Some(tls_key.serialize_pem()),
                ca: None,
            }),
    );
    let key_lines: Vec<String> = [assertion_key.serialize_pem(), tls_key.serialize_pem()]
        .iter()
        .flat_map(|pem| {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let file = env.file(Retry::attempts(1), profiles);
    env.config(&file);
    let worker = Process::spawn(&file, "trace");
    worker.wait_ready().await;
    for p in [
        "o-form",
        "o-basic",
        "o-get",
        "o-fail",
        "st-basic",
        "st-bearer",
        "st-key",
        "o-pkj",
        "st-tls",
    ] {
        env.publish(Some(p), &format!("{p}-1"), b"{\"x\":1}").await;
    }
    receiver.wait_for(8, LIMIT).await;
    env.wait_dead(1, LIMIT).await;
    let logs = worker.logs();
    assert!(
        logs.len() > 10_000,
        "trace logging is on ({} bytes)",
        logs.len()
    );
    assert!(
        logs.contains("invalid_client"),
        "the auth server's error is logged"
    );
    let basic = |u: &str, p: &str| STANDARD.encode(format!("{u}:{p}"));
    // The broker password: lapin would dump it at TRACE inside the SASL PLAIN frame.
    let uri: lapin::uri::AMQPUri = amqp_url().parse().unwrap();
    let plain = format!(
        "\0{}\0{}",
        uri.authority.userinfo.username, uri.authority.userinfo.password
    );
    let plain_bytes = plain
        .bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        !logs.contains(&plain_bytes),
        "the broker password (SASL PLAIN bytes) is in the trace logs"
    );
    assert!(
        !logs.contains(&format!(":{}@", uri.authority.userinfo.password)),
        "the AMQP URL is in the logs"
    );
    for secret in [
        "SECRET",
        "tok-SECRET-from-auth-server",
        "c2lnbmluZy1TRUNSRVQta2V5LWJ5dGVz",
        &basic("u", "pw-SECRET-basic"),
        &basic("c", "cs-SECRET-basic"),
        "U0VDUkVU",
        &seed,
    ] {
        assert!(!logs.contains(secret), "{secret:?} found in the trace logs");
    }
    for line in &key_lines {
        assert!(
            !logs.contains(line.as_str()),
            "private key material found in the trace logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_server_down_then_slow_then_garbage_then_fine_everything_is_delivered() {
    let port = free_port(); // down: connection refused
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("authchaos");
    let a = OAuth2::new(&format!("http://127.0.0.1:{port}/t"), "c", "s");
    let mut file = env.file(
        Retry {
            // Enough attempts to outlast the auth back-off (1 s doubling after each of the
            // five failures): attempts within it fail at once.
            max_attempts: Some(200),
            ..Retry::backoff(ms(200), secs(1))
        },
        [oauth_profile("ch", &receiver.url("/"), a)],
    );
    // The auth server's slow answer (2 s) must time out.
    file.delivery.timeout = Some(ms(500).into());
    let worker = env.start(env.config(&file)).await;
    let n = 5;
    env.publish_many(n, |i| {
        (event_props(Some("ch"), &format!("ch-{i}")), b"{}".to_vec())
    })
    .await;
    wait_until(
        LIMIT,
        "token requests failing while the auth server is down",
        || async {
            worker.metrics().await.value(
                "callback_dispatcher_token_requests_total",
                &[("profile", "ch"), ("outcome", "failure")],
            ) >= 2.0
        },
    )
    .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = Server::start_on(listener, |n, _| match n {
        0 => Reply::json(200, json!({"access_token": "late", "expires_in": 60}))
            .after(Duration::from_secs(2)), // slower than the timeout
        1 => Reply::status(200).header("content-type", "application/json"), // empty, not JSON
        2 => Reply {
            status: 200,
            headers: vec![],
            body: "{\"access_token\": [garbage".into(),
            delay: Duration::ZERO,
        },
        _ => Reply::json(200, json!({"access_token": "good", "expires_in": 3600})),
    })
    .await;
    worker.wait_delivered("ch", n).await;
    let m = worker.metrics().await;
    let failures = m.value(
        "callback_dispatcher_token_requests_total",
        &[("profile", "ch"), ("outcome", "failure")],
    );
    println!(
        "auth chaos: {n} events delivered after {failures} failed token requests and 1 good one"
    );
    assert_eq!(
        m.value(
            "callback_dispatcher_token_requests_total",
            &[("profile", "ch"), ("outcome", "success")]
        ),
        1.0
    );
    assert!(
        failures >= 5.0,
        "down (2+), slow, empty, garbage: {failures}"
    );
    assert!(
        receiver
            .all()
            .iter()
            .all(|r| r.header("authorization").as_deref() == Some("Bearer good"))
    );
    assert!(
        auth.count() >= 4,
        "the auth server saw the slow, empty, garbage and good requests: {}",
        auth.count()
    );
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}
