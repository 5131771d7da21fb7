//! The per-event hot path, piece by piece: a cached token (lookup + header value), signing,
//! response classification, the retry plan, and profile lookup among 10 vs 10,000 profiles
//! (the per-event cost must not grow with the profile count).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callback_dispatcher::auth::Authenticator;
use callback_dispatcher::config::Config;
use callback_dispatcher::metrics::Metrics;
use callback_dispatcher::retry::RetryPolicy;
use callback_dispatcher::send::classify;
use callback_dispatcher::sign::{Signer, decode_secret};
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretString;

fn config_with(n: usize, auth_url: &str) -> Config {
    let mut yaml = String::from("profiles:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - id: p{i}\n    url: http://127.0.0.1:9/cb\n    auth: {{type: oauth2, url: \"{auth_url}\", client_id: c, client_secret: s}}\n"
        ));
    }
    Config::from_yaml(&yaml, Path::new("bench.yaml"), |_| None).unwrap()
}

/// A one-shot token server: the first request fills the cache, the bench measures hits.
fn token_server(rt: &tokio::runtime::Runtime) -> String {
    rt.block_on(async {
        let app = axum::Router::new()
            .fallback(|| async { r#"{"access_token":"bench-token","expires_in":3600}"# });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}/token")
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = token_server(&rt);

    let config = config_with(1, &url);
    let profile = config.profiles.get("p0").unwrap().clone();
    let client = callback_dispatcher::http::client(Duration::from_secs(1), Duration::from_secs(5));
    let auth = Authenticator::new(client, Arc::new(Metrics::new()));
    rt.block_on(auth.credential(&profile)).unwrap();
    c.bench_function("cached token: lookup + Authorization value", |b| {
        b.to_async(&rt).iter(|| async {
            let cred = auth.credential(black_box(&profile)).await.unwrap().unwrap();
            black_box(cred.value)
        })
    });

    let signer = Signer::new(vec![
        decode_secret(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap(),
    ]);
    let body = vec![b'x'; 1024];
    c.bench_function("sign 1 KiB body (1 secret)", |b| {
        b.iter(|| {
            signer.sign(
                black_box("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                black_box(1614265330),
                black_box(&body),
            )
        })
    });

    c.bench_function("classify status", |b| b.iter(|| classify(black_box(503))));

    let policy = RetryPolicy::default();
    let declared = policy.delay_queue_ms();
    c.bench_function("retry plan with Retry-After", |b| {
        b.iter(|| {
            policy.plan(
                black_box(3),
                black_box(Some(Duration::from_secs(100))),
                black_box(0.5),
                &declared,
            )
        })
    });

    let small = config_with(10, &url);
    let large = config_with(10_000, &url);
    let mut group = c.benchmark_group("profile lookup");
    group.bench_function("10 profiles", |b| {
        b.iter(|| small.profiles.get(black_box("p7")).is_some())
    });
    group.bench_function("10000 profiles", |b| {
        b.iter(|| large.profiles.get(black_box("p7777")).is_some())
    });
    group.finish();

    c.bench_function("load and validate 10000 profiles", |b| {
        let mut yaml = String::from("profiles:\n");
        for i in 0..10_000 {
            yaml.push_str(&format!("  - id: p{i}\n    url: http://127.0.0.1:9/cb\n    signing: {{secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}}\n"));
        }
        b.iter(|| Config::from_yaml(black_box(&yaml), Path::new("b.yaml"), |_| None).unwrap())
    });
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(hot_path);
