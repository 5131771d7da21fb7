use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::profiles::Registry;

#[test]
fn backoff_doubles_from_one_second_to_one_minute() {
    let s = Duration::from_secs;
    let got: Vec<Duration> = (1..=9).map(backoff).collect();
    assert_eq!(
        got,
        [s(1), s(2), s(4), s(8), s(16), s(32), s(60), s(60), s(60)]
    );
    assert_eq!(backoff(u32::MAX), s(60));
}

/// An auth server on 127.0.0.1 that counts requests and answers `status` after `delay`.
async fn auth_server(status: u16, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                r#"{"error":"temporarily_unavailable"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn registry(auth_url: &str, timeout: &str) -> Registry {
    let config = serde_json::json!({
        "delivery": {"allow_networks": ["127.0.0.0/8"]},
        "profiles": [{
            "id": "p", "url": "http://127.0.0.1:1/cb", "timeout": timeout,
            "auth": {"type": "oauth2", "url": auth_url, "client_id": "id",
                     "client_secret": "cs-unit-secret"}
        }]
    });
    let config = Config::from_yaml(
        &serde_json::to_string(&config).unwrap(),
        std::path::Path::new("test.yaml"),
        |_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Registry::new(&config, Arc::new(Metrics::new()))
}

fn failed(r: Result<Option<crate::auth::Credential>, TokenError>) -> (bool, String) {
    match r {
        Err(TokenError::Failed { error, requested }) => (requested, error.to_string()),
        Err(other) => panic!("not a failure: {other:?}"),
        Ok(_) => panic!("a token"),
    }
}

#[tokio::test]
async fn a_failed_request_backs_off_and_only_its_caller_counts_it() {
    let (url, hits) = auth_server(503, Duration::ZERO).await;
    let registry = registry(&url, "2s");
    let snapshot = registry.load();
    let ep = snapshot.endpoint("p").unwrap();
    let patience = Duration::from_secs(1);

    let (requested, error) = failed(ep.credential(patience).await);
    assert!(requested, "the caller that made the request is told so");
    assert!(error.contains("503"), "{error}");
    // During the back-off: the same error at once, without a request.
    for _ in 0..20 {
        let (requested, again) = failed(ep.credential(patience).await);
        assert!(!requested);
        assert_eq!(again, error);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // After 1 s, one new request; then 2 s without one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(failed(ep.credential(patience).await).0);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        !failed(ep.credential(patience).await).0,
        "second back-off is 2 s"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(failed(ep.credential(patience).await).0);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_caller_waits_for_another_callers_request_only_as_long_as_it_may() {
    let (url, hits) = auth_server(200, Duration::from_secs(3600)).await;
    let registry = Arc::new(registry(&url, "2s"));
    let first = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let snapshot = registry.load();
            let ep = snapshot.endpoint("p").unwrap();
            failed(ep.credential(Duration::from_secs(5)).await)
        })
    };
    while hits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot = registry.load();
    let ep = snapshot.endpoint("p").unwrap();
    let started = Instant::now();
    match ep.credential(Duration::from_millis(100)).await {
        Err(TokenError::Busy { left }) => {
            assert!(left <= Duration::from_secs(2) && left > Duration::from_secs(1));
        }
        other => panic!("expected Busy, got {:?}", other.err()),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    // The request times out after the profile's timeout: a transport failure.
    let (requested, error) = first.await.unwrap();
    assert!(requested);
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
