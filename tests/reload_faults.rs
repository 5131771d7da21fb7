//! Reloading under faults (SPEC sections 8 and 11): a configuration file written in steps is
//! applied only once its content is stable, and a reload whose broker connection hangs is
//! bounded and never delays shutdown. The worker runs in process against the real broker
//! (through a TCP relay the test can freeze, for the hanging case).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn config(env: &Env, url: &str, initial_delay: &str, profiles: usize, callback: &str) -> String {
    let profiles: Vec<Value> = (0..profiles)
        .map(|i| json!({"id": format!("p{i}"), "url": callback}))
        .collect();
    serde_json::to_string(&json!({
        "amqp": {"url": url, "queue": env.queue, "exchange": env.queue, "prefetch": 16},
        "delivery": {"timeout": "3s", "connect_timeout": "1s", "allow_networks": ["127.0.0.0/8"]},
        "retry": {"initial_delay": initial_delay, "max_attempts": 3},
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"format": "text"},
        "profiles": profiles,
    }))
    .unwrap()
}

struct Watched {
    metrics: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Watched {
    /// The worker in process, watching `path` (which holds `text`).
    async fn start(env: &Env, path: &Path, text: &str) -> Watched {
        std::fs::write(path, text).unwrap();
        let worker = callback_dispatcher::Worker::bind(env.config_text(text))
            .await
            .unwrap()
            .watch(path.to_path_buf());
        let metrics = worker.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        let w = Watched {
            metrics,
            stop: Some(tx),
            join,
        };
        wait_until(Duration::from_secs(20), "worker ready", || async {
            reqwest::get(format!("http://{}/readyz", w.metrics))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        w
    }

    async fn reloads(&self, outcome: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Metrics::parse(&text).value(
            "callback_dispatcher_config_reloads_total",
            &[("outcome", outcome)],
        )
    }

    /// Shut down; how long it took.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.join)
            .await
            .expect("shutdown finished")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_in_steps_is_applied_only_once_it_is_complete() {
    let callback = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("reloadsteps");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatcher.json");
    let cb = callback.url("/");
    let worker = Watched::start(&env, &path, &config(&env, &amqp_url(), "5s", 1, &cb)).await;

    // A writer that takes its time: each step parses (profiles cut off) and lasts less than
    // one check interval (2 s); together they span more than one, so a check reads at least
    // one of them.
    for profiles in 2..=4 {
        std::fs::write(&path, config(&env, &amqp_url(), "5s", profiles, &cb)).unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    std::fs::write(&path, config(&env, &amqp_url(), "5s", 5, &cb)).unwrap();
    let written = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the complete file applied",
        || async { worker.reloads("success").await >= 1.0 },
    )
    .await;
    eprintln!(
        "reload: the complete file applied {:?} after its last write",
        written.elapsed()
    );
    // Watch two more check intervals: nothing else is applied, and the complete file is in
    // force (its last profile delivers).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            worker.reloads("success").await,
            1.0,
            "a half-written file was applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.reloads("failure").await, 0.0);
    env.publish(Some("p4"), "steps-p4", b"{}").await;
    callback.wait_for(1, Duration::from_secs(20)).await;
    worker.stop().await;
}

/// A TCP relay to the broker. While `freeze` is set, it accepts new connections and never
/// answers them (a broker that hangs); connections made before go on working.
struct Relay {
    port: u16,
    freeze: Arc<AtomicBool>,
    frozen: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let freeze = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicUsize::new(0));
        let (f, n) = (freeze.clone(), frozen.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if f.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    held.push(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay {
            port,
            freeze,
            frozen,
        }
    }
}

/// The broker URL through the relay on `port`, and the broker's own address.
fn relayed(port: u16) -> (String, String) {
    let uri: lapin::uri::AMQPUri = amqp_url().parse().unwrap();
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    (
        format!(
            "amqp://{}:{}@127.0.0.1:{port}/{vhost}",
            uri.authority.userinfo.username, uri.authority.userinfo.password
        ),
        format!("{}:{}", uri.authority.host, uri.authority.port),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_broker_hangs_is_bounded_and_never_delays_shutdown() {
    let callback = Server::start(|_, _| Reply::status(204)).await;
    let (_, upstream) = relayed(0);
    let relay = Relay::start(upstream).await;
    let (url, _) = relayed(relay.port);
    let env = Env::new("reloadhang");
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("dispatcher.json");
    let cb = callback.url("/");
    let worker = Watched::start(&env, &path, &config(&env, &url, "5s", 1, &cb)).await;

    // The broker stops answering new connections; a reload that adds delay queues needs one.
    relay.freeze.store(true, Ordering::SeqCst);
    let changed = config(&env, &url, "7s", 1, &cb);
    env.config_text(&changed); // its delay queues are cleaned up if they ever appear
    std::fs::write(&path, &changed).unwrap();
    wait_until(Duration::from_secs(15), "the reload's connect", || async {
        relay.frozen.load(Ordering::SeqCst) >= 1
    })
    .await;
    let hung = Instant::now();
    wait_until(
        Duration::from_secs(40),
        "the hanging reload to fail",
        || async { worker.reloads("failure").await >= 1.0 },
    )
    .await;
    eprintln!(
        "reload: a reload whose broker hangs failed after {:?}",
        hung.elapsed()
    );
    assert_eq!(worker.reloads("success").await, 0.0);

    // Another reload hangs; shutdown comes in the middle of it.
    let again = config(&env, &url, "9s", 1, &cb);
    env.config_text(&again);
    std::fs::write(&path, &again).unwrap();
    wait_until(
        Duration::from_secs(15),
        "the second reload's connect",
        || async { relay.frozen.load(Ordering::SeqCst) >= 2 },
    )
    .await;
    let took = worker.stop().await;
    eprintln!("reload: shutdown during a hanging reload took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited for the reload: {took:?}"
    );
}
