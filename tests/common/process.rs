//! The worker under test: in this process ([`Running`], started by [`Env::start`]) or as a
//! child process of the binary ([`Process`]), with its `/metrics` and health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callback_dispatcher::config::Config;

use super::{ConfigFile, Env, Metrics, free_port, wait_until};

pub struct Running {
    pub metrics_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.join.await.unwrap()
    }

    /// GET from the worker's HTTP listener. A request whose connection fails is sent again
    /// (up to 5 times, 100 ms apart): on a machine running several test processes a fresh
    /// loopback connection has been seen to close before the request went out ("connection
    /// was not ready"), and what the tests assert is the answer, not the scrape.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.metrics_addr);
        let mut tries = 0;
        loop {
            tries += 1;
            match reqwest::get(&url).await {
                Ok(resp) => return (resp.status().as_u16(), resp.text().await.unwrap()),
                Err(e) if tries < 5 && !e.is_status() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("GET {url} failed {tries} times: {e}"),
            }
        }
    }

    /// Wait until `deliveries_total{profile, outcome="delivered"}` reaches `n`.
    pub async fn wait_delivered(&self, profile: &str, n: usize) {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} delivered for {profile}"),
            || async {
                self.metrics().await.value(
                    "callback_dispatcher_deliveries_total",
                    &[("profile", profile), ("outcome", "delivered")],
                ) == n as f64
            },
        )
        .await;
    }

    /// The Prometheus exposition, parsed.
    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.get("/metrics").await.1)
    }
}

impl Env {
    /// Start the worker in this process; returns once it is consuming.
    pub async fn start(&self, config: Config) -> Running {
        let worker = callback_dispatcher::Worker::bind(config).await.unwrap();
        let metrics_addr = worker.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        let running = Running {
            metrics_addr,
            stop: Some(tx),
            join,
        };
        wait_until(Duration::from_secs(60), "worker ready", || async {
            running.get("/readyz").await.0 == 200
        })
        .await;
        running
    }
}

/// `callback-dispatcher run` as a child process, killed when dropped; its log is kept in
/// a temporary directory.
pub struct Process {
    pub child: std::process::Child,
    pub metrics_port: u16,
    pub log: std::path::PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Process {
    /// Run `callback-dispatcher run` with this file, its `metrics.listen` moved to a free port.
    pub fn spawn(file: &ConfigFile, rust_log: &str) -> Process {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let port = free_port();
        let config = dir.path().join("dispatcher.yaml");
        std::fs::write(&config, file.listening_on(port).to_yaml()).unwrap();
        Self::spawn_at(dir, config, port, rust_log)
    }

    /// Run `callback-dispatcher run --config <config>`, whose `metrics.listen` is on `port`.
    pub fn spawn_at(
        dir: Arc<tempfile::TempDir>,
        config: std::path::PathBuf,
        port: u16,
        rust_log: &str,
    ) -> Process {
        let log = dir.path().join(format!("worker-{port}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process {
            child,
            metrics_port: port,
            log,
            _dir: dir,
        }
    }

    /// The exposition from `/metrics`, parsed (empty if it does not answer).
    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(
            &self
                .get("/metrics")
                .await
                .map(|(_, t)| t)
                .unwrap_or_default(),
        )
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.metrics_port))
            .await
            .ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?))
    }

    pub async fn wait_ready(&self) {
        wait_until(Duration::from_secs(60), "worker process ready", || async {
            matches!(self.get("/readyz").await, Some((200, _)))
        })
        .await;
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
