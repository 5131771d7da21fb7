//! The per-event hot path, piece by piece: a cached token (lookup + header value), signing
//! (v1 HMAC and v1a ed25519), response classification, the gate (admit + finish), the fate
//! decision, the retry plan, and profile lookup among 10 vs 10,000 profiles (the per-event
//! cost must not grow with the profile count).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callback_dispatcher::config::Config;
use callback_dispatcher::decide::{Answer, AttemptResult, Case, Facts, Health, classify, decide};
use callback_dispatcher::metrics::Metrics;
use callback_dispatcher::profiles::{Registry, Window};
use callback_dispatcher::retry::RetryPolicy;
use callback_dispatcher::sign::{Signer, decode_secret};
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

fn config_with(n: usize, auth_url: &str) -> Config {
    let mut yaml = String::from("delivery: {allow_networks: [127.0.0.0/8]}\nprofiles:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - id: p{i}\n    url: http://127.0.0.1:9/cb\n    auth: {{type: oauth2, url: \"{auth_url}\", client_id: c, client_secret: s}}\n"
        ));
    }
    Config::from_yaml(&yaml, Path::new("bench.yaml"), |_| None).unwrap()
}

/// A token server: the first request fills the cache, the bench measures hits.
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

fn secret(s: &str) -> callback_dispatcher::sign::Key {
    decode_secret(&SecretString::from(s)).unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = token_server(&rt);

    let config = config_with(1, &url);
    let registry = rt.block_on(async { Registry::new(&config, Arc::new(Metrics::new())) });
    let snapshot = registry.load();
    let endpoint = snapshot.endpoint("p0").unwrap().clone();
    rt.block_on(endpoint.credential(std::time::Duration::from_secs(1)))
        .unwrap();
    c.bench_function("cached token: lookup + Authorization value", |b| {
        b.to_async(&rt).iter(|| async {
            let cred = endpoint
                .credential(std::time::Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap();
            black_box(cred.value)
        })
    });

    let window = Arc::new(Window::new(256));
    let stop = CancellationToken::new();
    c.bench_function("gate: hold + admit + finish (no limits reached)", |b| {
        b.to_async(&rt).iter(|| async {
            let _hold = endpoint.gate.hold(&window);
            let pass = endpoint.gate.admit(&window, &stop).await.unwrap();
            black_box(pass.finish(Health::Up))
        })
    });

    let body = vec![b'x'; 1024];
    for (name, key) in [
        (
            "sign 1 KiB body (v1, HMAC)",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        (
            "sign 1 KiB body (v1a, ed25519)",
            "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ),
    ] {
        let signer = Signer::new(vec![secret(key)]);
        c.bench_function(name, |b| {
            b.iter(|| {
                signer.sign(
                    black_box("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                    black_box(1614265330),
                    black_box(&body),
                )
            })
        });
    }

    c.bench_function("classify answer", |b| {
        b.iter(|| {
            classify(black_box(Answer::Status {
                status: 503,
                retry_after: None,
                snippet: String::new(),
            }))
        })
    });

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
    let facts = Facts {
        attempts_before: 0,
        deferrals_before: 0,
        age: Duration::from_secs(1),
    };
    c.bench_function("decide (delivered)", |b| {
        b.iter(|| {
            decide(
                black_box(Case::Attempted(AttemptResult::Delivered { status: 204 })),
                facts,
                &policy,
                &declared,
                0.5,
            )
        })
    });

    let small =
        rt.block_on(async { Registry::new(&config_with(10, &url), Arc::new(Metrics::new())) });
    let large =
        rt.block_on(async { Registry::new(&config_with(10_000, &url), Arc::new(Metrics::new())) });
    let mut group = c.benchmark_group("profile lookup");
    group.bench_function("10 profiles", |b| {
        b.iter(|| small.load().endpoint(black_box("p7")).is_some())
    });
    group.bench_function("10000 profiles", |b| {
        b.iter(|| large.load().endpoint(black_box("p7777")).is_some())
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
