//! What sharing through `cluster.redis` costs an attempt (SPEC section 13): the gate of a
//! rate-limited profile (one GCRA round trip to a local redis-server) beside the same gate
//! of a profile without `rate_limit` (no call) and without a cluster. Needs `redis-server`
//! on the PATH (scripts/ensure-test-tools.sh); without it, it says so and measures nothing.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callback_dispatcher::config::Config;
use callback_dispatcher::decide::Health;
use callback_dispatcher::metrics::Metrics;
use callback_dispatcher::profiles::{Registry, Window};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn benches(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(child) = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("no redis-server on the PATH: nothing measured");
        return;
    };
    let _redis = RedisServer(child);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = |cluster: bool| {
        let yaml = format!(
            "{{\"delivery\": {{\"allow_networks\": [\"127.0.0.0/8\"]}}, {}\"profiles\": [\
             {{\"id\": \"limited\", \"url\": \"http://127.0.0.1:9/\", \"rate_limit\": \"1000000/s\"}},\
             {{\"id\": \"plain\", \"url\": \"http://127.0.0.1:9/\"}}]}}",
            if cluster {
                format!("\"cluster\": {{\"redis\": \"redis://127.0.0.1:{port}/0\"}}, ")
            } else {
                String::new()
            }
        );
        Config::from_yaml(&yaml, Path::new("bench.yaml"), |_| None).unwrap()
    };
    let shared = rt.block_on(async {
        let registry = Arc::new(Registry::new(&config(true), Arc::new(Metrics::new())));
        let cluster = registry.cluster().unwrap().clone();
        for _ in 0..50 {
            if cluster.beat().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(cluster.is_up(), "redis-server answers");
        registry
    });
    let alone = rt.block_on(async { Registry::new(&config(false), Arc::new(Metrics::new())) });
    let window = Arc::new(Window::new(256));
    let stop = CancellationToken::new();
    let mut group = c.benchmark_group("gate: hold + admit + finish");
    for (name, registry, profile) in [
        (
            "rate-limited, cluster (one Redis round trip)",
            &*shared,
            "limited",
        ),
        ("rate-limited, no cluster", &alone, "limited"),
        ("no rate_limit, cluster (no call)", &*shared, "plain"),
        ("no rate_limit, no cluster", &alone, "plain"),
    ] {
        let endpoint = registry.load().endpoint(profile).unwrap().clone();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let _hold = endpoint.gate.hold(&window);
                let pass = endpoint.gate.admit(&window, &stop).await.unwrap();
                black_box(pass.finish(Health::Up))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = cluster;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(cluster);
