//! Egress through a real forward proxy (tinyproxy) on 127.0.0.1 (SPEC section 17):
//! callbacks and token requests are tunnelled with `CONNECT` to the address the worker
//! vetted, a blocked destination never reaches the proxy, `no_proxy` and a profile's
//! `proxy: ""` go direct, a stopped proxy defers events without spending attempts or
//! opening the breaker, and the proxy's credentials never show.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use common::*;
use rcgen::KeyPair;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);

/// `127.0.0.1:port` of a server, as a proxy's `CONNECT` names it.
fn target(s: &Server) -> String {
    s.addr.to_string()
}

async fn token_server() -> Server {
    Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("tok-{n}"), "expires_in": 3600}),
        )
    })
    .await
}

fn proxy_errors(m: &Metrics, profile: &str) -> f64 {
    m.value(
        "callback_dispatcher_proxy_errors_total",
        &[("profile", profile)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_and_token_requests_are_tunnelled_to_the_vetted_address() {
    let proxy = Tinyproxy::start(None).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let auth = token_server().await;
    // A host name: the worker resolves it, and the proxy is asked for the address.
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let env = Env::new("proxy-via");
    let mut file = env.file(
        Retry::attempts(3),
        [Profile::new("via", &url).auth(OAuth2::new(&auth.url("/token"), "c", "s"))],
    );
    file.delivery.proxy = Some(proxy.url());
    let worker = env.start(env.config(&file)).await;
    for i in 0..3 {
        env.publish(Some("via"), &format!("via-{i}"), b"{}").await;
    }
    worker.wait_delivered("via", 3).await;
    for r in receiver.all() {
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer tok-0"));
        assert_eq!(
            r.header("host"),
            Some(format!("localhost:{}", receiver.addr.port())),
            "Host is the URL's"
        );
    }
    proxy.wait_connect(&target(&receiver)).await;
    proxy.wait_connect(&target(&auth)).await;
    assert!(
        proxy
            .connects()
            .iter()
            .all(|t| t.parse::<std::net::SocketAddr>().is_ok()),
        "only vetted addresses, never a name: {:?}",
        proxy.connects()
    );
    assert_eq!(proxy_errors(&worker.metrics().await, "via"), 0.0);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_a_blocked_address_never_reaches_the_proxy() {
    let proxy = Tinyproxy::start(None).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("proxy-blocked");
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let mut file = env.file(Retry::attempts(3), [Profile::new("blocked", &url)]);
    file.delivery.proxy = Some(proxy.url());
    file.delivery.allow_networks = None; // loopback stays blocked
    let worker = env.start(env.config(&file)).await;
    env.publish(Some("blocked"), "blocked-1", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("blocked_destination")
    );
    let error = header_text(&dead[0], "x-last-error").unwrap();
    assert!(error.contains("loopback"), "{error}");
    assert_eq!(receiver.count(), 0);
    assert!(
        proxy.requests().is_empty(),
        "the proxy heard of it: {:?}",
        proxy.requests()
    );
    assert_eq!(proxy_errors(&worker.metrics().await, "blocked"), 0.0);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_and_networks_and_an_empty_profile_proxy_go_direct() {
    let proxy = Tinyproxy::start(None).await;
    let by_name = Server::start(|_, _| Reply::status(204)).await;
    let other_loopback = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let by_network = Server::start_on(other_loopback, |_, _| Reply::status(204)).await;
    let own = Server::start(|_, _| Reply::status(204)).await;
    let via = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("proxy-direct");
    let mut file = env.file(
        Retry::attempts(3),
        [
            Profile::new(
                "named",
                &format!("http://localhost:{}/", by_name.addr.port()),
            ),
            Profile::new("network", &by_network.url("/")),
            Profile::new("own", &own.url("/")).proxy(""),
            Profile::new("via", &via.url("/")),
        ],
    );
    file.delivery.proxy = Some(proxy.url());
    file.delivery.no_proxy = Some(vec!["localhost".into(), "127.0.0.2/32".into()]);
    let worker = env.start(env.config(&file)).await;
    for p in ["named", "network", "own", "via"] {
        env.publish(Some(p), &format!("{p}-1"), b"{}").await;
    }
    for p in ["named", "network", "own", "via"] {
        worker.wait_delivered(p, 1).await;
    }
    proxy.wait_connect(&target(&via)).await;
    let through: BTreeSet<String> = proxy.connects().into_iter().collect();
    assert_eq!(
        through,
        BTreeSet::from([target(&via)]),
        "only `via` used it"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_proxy_defers_events_until_it_is_back() {
    let port = free_port();
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("proxy-down");
    // A breaker that opens on the first failure it counts: a proxy failure must not count.
    let profile =
        Profile::new("down", &receiver.url("/hook")).breaker(Breaker::opens_after(1, secs(600)));
    let mut file = env.file(Retry::backoff(ms(200), secs(1)), [profile]);
    file.delivery.proxy = Some(format!("http://127.0.0.1:{port}"));
    let worker = env.start(env.config(&file)).await;
    let ids: Vec<String> = (0..5).map(|i| format!("down-{i}")).collect();
    for id in &ids {
        env.publish(Some("down"), id, b"{}").await;
    }
    wait_until(LIMIT, "every event deferred for the proxy", || async {
        let m = worker.metrics().await;
        proxy_errors(&m, "down") >= 10.0
    })
    .await;
    let m = worker.metrics().await;
    // Counted as the proxy's failure, not as one of SPEC section 9's deferrals.
    for reason in ["concurrency", "rate_limit", "circuit_open", "proxy"] {
        assert_eq!(
            m.value(
                "callback_dispatcher_deferrals_total",
                &[("profile", "down"), ("reason", reason)],
            ),
            0.0,
            "{reason}"
        );
    }
    assert_eq!(receiver.count(), 0);
    assert_eq!(m.attempts("down", "connect_error"), 0.0, "no attempt spent");
    assert_eq!(
        m.value("callback_dispatcher_circuit_open", &[("profile", "down")]),
        0.0,
        "the breaker did not count it"
    );
    let proxy = Tinyproxy::start_on(port, None).await;
    let got = receiver.wait_for(5, LIMIT).await;
    let seen: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(seen, ids.iter().cloned().collect::<BTreeSet<_>>());
    worker.wait_delivered("down", 5).await;
    let m = worker.metrics().await;
    assert_eq!(m.attempts("down", "2xx"), 5.0, "one attempt each");
    assert!(env.dead_letters().await.is_empty());
    proxy.wait_connect(&target(&receiver)).await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_never_appear_in_logs_metrics_or_errors() {
    const GOOD: &str = "s3cr3t-Pa55";
    const BAD: &str = "wr0ng-Pa55";
    let proxy = Tinyproxy::start(Some(("proxyuser", GOOD))).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("proxy-creds");
    let file = env.file(
        Retry::backoff(ms(200), secs(1)),
        [
            Profile::new("good", &receiver.url("/good")).proxy(&proxy.url_with("proxyuser", GOOD)),
            Profile::new("bad", &receiver.url("/bad")).proxy(&proxy.url_with("proxyuser", BAD)),
        ],
    );
    let config = env.config(&file);
    let debug = format!("{config:?}");
    let worker = Process::spawn(&file, "debug");
    worker.wait_ready().await;
    env.publish(Some("good"), "good-1", b"{}").await;
    env.publish(Some("bad"), "bad-1", b"{}").await;
    wait_until(
        LIMIT,
        "good delivered, bad refused by the proxy",
        || async {
            let m = worker.metrics().await;
            m.deliveries("good", "delivered") == 1.0 && proxy_errors(&m, "bad") >= 2.0
        },
    )
    .await;
    proxy.wait_connect(&target(&receiver)).await;
    let logs = worker.logs();
    assert!(
        logs.lines().any(|l| l.contains("proxy failed")
            && l.contains("bad")
            && l.contains(&proxy.url())
            && l.contains("refused the credentials")),
        "a warning names the profile and the proxy: {logs}"
    );
    let metrics = worker.get("/metrics").await.unwrap().1;
    // A configuration the loader refuses must not quote the value either.
    let mut refused = file.clone();
    refused.delivery.proxy = Some(format!("https://proxyuser:{GOOD}@127.0.0.1:1/x"));
    let error = callback_dispatcher::config::Config::from_yaml(
        &refused.to_yaml(),
        std::path::Path::new("t.yaml"),
        |_| None,
    )
    .expect_err("an https proxy is refused");
    let error = format!("{error} {error:?}");
    assert!(error.contains("delivery.proxy"), "{error}");
    let b64 =
        |pass: &str| base64::engine::general_purpose::STANDARD.encode(format!("proxyuser:{pass}"));
    for secret in [GOOD.to_owned(), BAD.to_owned(), b64(GOOD), b64(BAD)] {
        for (what, text) in [
            ("the log", &logs),
            ("/metrics", &metrics),
            ("the config's Debug", &debug),
            ("the config error", &error),
        ] {
            assert!(!text.contains(&secret), "{what} shows a credential");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_private_key_jwt_work_through_the_proxy() {
    let proxy = Tinyproxy::start(None).await;
    let pki = pki();
    let receiver = Server::start_tls(mtls_config(&pki), |_, _| Reply::status(200)).await;
    let auth = Server::start_tls(mtls_config(&pki), |n, r| {
        let form: Vec<(String, String)> = form_urlencoded::parse(&r.body).into_owned().collect();
        let assertion = form
            .iter()
            .find(|(k, _)| k == "client_assertion")
            .map(|(_, v)| v.split('.').count());
        if assertion != Some(3) {
            return Reply::json(401, json!({"error": "invalid_client"}));
        }
        Reply::json(
            200,
            json!({"access_token": format!("pkj-{n}"), "expires_in": 3600}),
        )
    })
    .await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tls = Tls {
        client_cert: Some(pki.client.0.clone()),
        client_key: Some(pki.client.1.clone()),
        ca: Some(pki.ca_pem.clone()),
    };
    let env = Env::new("proxy-mtls");
    let mut file = env.file(
        Retry::attempts(3),
        [Profile::new("mtls", &receiver.url("/hook"))
            .tls(tls)
            .auth(OAuth2::private_key_jwt(
                &auth.url("/token"),
                "pk-client",
                &key.serialize_pem(),
            ))],
    );
    file.delivery.proxy = Some(proxy.url());
    let worker = env.start(env.config(&file)).await;
    env.publish(Some("mtls"), "mtls-1", b"{}").await;
    env.publish(Some("mtls"), "mtls-2", b"{}").await;
    worker.wait_delivered("mtls", 2).await;
    for r in receiver.all() {
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer pkj-0"));
    }
    proxy.wait_connect(&target(&receiver)).await;
    proxy.wait_connect(&target(&auth)).await;
    worker.stop().await.unwrap();
}
