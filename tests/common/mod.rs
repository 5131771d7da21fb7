//! Shared test harness: real RabbitMQ (AMQP_URL, default local guest), real HTTP servers on
//! 127.0.0.1 port 0, unique queue names per test, clean-up on drop (even after a panic).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Poll `check` every 20 ms until it is true; panic with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- HTTP servers

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(usize, &Recorded) -> Reply + Send + Sync;

/// An HTTP server on 127.0.0.1:0 that records every request and answers from a script:
/// `script(n, request)` where n counts requests from 0.
#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Requests being answered now, and the most there ever were at once.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub async fn start(
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            script,
        )
        .await
    }

    pub async fn start_on(
        listener: tokio::net::TcpListener,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let (app, server) = Self::app(listener.local_addr().unwrap(), "http", script);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    /// The same over TLS: `config` holds the server's certificate and, if it wants one, how
    /// it verifies a client certificate. Handshakes that fail are dropped.
    pub async fn start_tls(
        config: rustls::ServerConfig,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (app, server) = Self::app(listener.local_addr().unwrap(), "https", script);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        server
    }

    fn app(
        addr: SocketAddr,
        scheme: &'static str,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> (axum::Router, Server) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let recs = requests.clone();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight: Arc<AtomicUsize> = Arc::default();
        let (inf, maxf) = (in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (recs, script) = (recs.clone(), script.clone());
            let (inf, maxf) = (inf.clone(), maxf.clone());
            async move {
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                maxf.fetch_max(now, Ordering::SeqCst);
                struct Done(Arc<AtomicUsize>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _done = Done(inf);
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let rec = Recorded {
                    method: parts.method,
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                    at: Instant::now(),
                };
                let n = {
                    let mut r = recs.lock().unwrap();
                    r.push(rec.clone());
                    r.len() - 1
                };
                let reply = script(n, &rec);
                if !reply.delay.is_zero() {
                    tokio::time::sleep(reply.delay).await;
                }
                let mut resp = axum::response::Response::new(axum::body::Body::from(reply.body));
                *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                for (k, v) in reply.headers {
                    resp.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                resp
            }
        });
        (
            app,
            Server {
                addr,
                scheme,
                requests,
                in_flight,
                max_in_flight,
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn now_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn most_in_flight(&self) -> usize {
        self.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        wait_until(
            limit,
            &format!("{n} request(s) at {}", self.addr),
            || async { self.count() >= n },
        )
        .await;
        self.all()
    }
}

// ---------------------------------------------------------------- the worker, in process

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

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.metrics_addr))
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
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

/// Samples of a Prometheus text exposition: (name, sorted labels) -> value.
/// One sample: name, sorted labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), vec![]),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels: Vec<(String, String)> = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').expect("label");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (n.to_owned(), labels)
                }
            };
            out.push((name, labels, value.parse().expect("numeric sample")));
        }
        Metrics(out)
    }

    /// The value of `name` with exactly these labels, 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map_or(0.0, |(_, _, v)| *v)
    }

    /// `deliveries_total{profile, outcome}`.
    pub fn deliveries(&self, profile: &str, outcome: &str) -> f64 {
        self.value(
            "callback_dispatcher_deliveries_total",
            &[("profile", profile), ("outcome", outcome)],
        )
    }

    /// `delivery_attempts_total{profile, result}`.
    pub fn attempts(&self, profile: &str, result: &str) -> f64 {
        self.value(
            "callback_dispatcher_delivery_attempts_total",
            &[("profile", profile), ("result", result)],
        )
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.0.iter().map(|(n, _, _)| n.clone()).collect();
        n.dedup();
        n
    }
}

// ---------------------------------------------------------------- broker side

/// One test's queues: unique names, deleted when dropped.
pub struct Env {
    pub queue: String,
    /// The names, and every delay (ms) any of the test's configurations declares.
    pub topology: Mutex<Option<(Topology, Vec<u64>)>>,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Env {
            queue: format!("cdtest.{tag}.{}", &id[..8]),
            topology: Mutex::new(None),
        }
    }

    /// A full config: `retry` and `extra` sections as YAML, then the profiles.
    pub fn yaml(&self, retry: &str, profiles: &str) -> String {
        format!(
            "amqp:\n  url: \"{}\"\n  queue: {q}\n  exchange: {q}\n  prefetch: 64\ndelivery:\n  concurrency: 64\n  timeout: 5s\n  connect_timeout: 1s\n  allow_networks: [127.0.0.0/8, \"::1/128\"]\nretry:\n{retry}\nmetrics:\n  listen: 127.0.0.1:0\nlog:\n  format: text\nprofiles:\n{profiles}",
            amqp_url(),
            q = self.queue
        )
    }

    pub fn config(&self, yaml: &str) -> Config {
        let config = Config::from_yaml(yaml, Path::new("test.yaml"), |_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut t = self.topology.lock().unwrap();
        let mut delays = t.take().map(|(_, d)| d).unwrap_or_default();
        delays.extend(config.retry.delay_queue_ms());
        delays.sort_unstable();
        delays.dedup();
        *t = Some((Topology::new(&config.amqp), delays));
        config
    }

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
        wait_until(Duration::from_secs(20), "worker ready", || async {
            running.get("/readyz").await.0 == 200
        })
        .await;
        running
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap()
    }

    /// Publish events to the work exchange with confirms. `build` sets properties per event.
    pub async fn publish_many(
        &self,
        n: usize,
        build: impl Fn(usize) -> (BasicProperties, Vec<u8>),
    ) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let topology = self.topology.lock().unwrap().clone();
        if let Some((t, delays)) = topology {
            t.declare(&ch, &delays).await.unwrap(); // as a publisher would; idempotent
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut pending = Vec::new();
        for i in 0..n {
            let (props, body) = build(i);
            pending.push(
                ch.basic_publish(
                    self.queue.as_str().into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props.with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            assert_eq!(p.await.unwrap(), lapin::Confirmation::Ack(None));
        }
        conn.close(200, "".into()).await.unwrap();
    }

    pub async fn publish(&self, profile: Option<&str>, id: &str, body: &[u8]) {
        let props = event_props(profile, id);
        let body = body.to_vec();
        self.publish_many(1, move |_| (props.clone(), body.clone()))
            .await;
    }

    /// Take every message off the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<lapin::message::Delivery> {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                format!("{}.dead", self.queue).as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
            out.push(m.delivery);
        }
        conn.close(200, "".into()).await.unwrap();
        out
    }

    /// Wait until `n` dead letters arrived, and take them.
    pub async fn wait_dead(&self, n: usize, limit: Duration) -> Vec<lapin::message::Delivery> {
        let mut got = Vec::new();
        let deadline = Instant::now() + limit;
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} dead letters, have {}",
                got.len()
            );
            got.extend(self.dead_letters().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        got
    }

    fn cleanup_blocking(&self) {
        let Some((topology, delays)) = self.topology.lock().unwrap().take() else {
            return;
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                let ch = conn.create_channel().await.unwrap();
                for q in topology.queues(&delays) {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = ch
                    .exchange_delete(
                        topology.exchange.as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await;
                let _ = conn.close(200, "".into()).await;
            });
        })
        .join()
        .unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup_blocking();
    }
}

pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub fn event_props(profile: Option<&str>, id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(p) = profile {
        headers.insert("profile".into(), text(p));
    }
    BasicProperties::default()
        .with_message_id(id.into())
        .with_headers(headers)
}

pub fn header_text(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn header_int(d: &lapin::message::Delivery, name: &str) -> Option<i64> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// A Standard Webhooks check written independently of the crate: HMAC-SHA256 over
/// `{id}.{ts}.{body}` with the base64 key after `whsec_`.
pub fn verify_signature(secret: &str, r: &Recorded) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let id = r.header("webhook-id").unwrap();
    let ts = r.header("webhook-timestamp").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    r.header("webhook-signature")
        .unwrap()
        .split(' ')
        .any(|s| s == format!("v1,{want}"))
}

// ---------------------------------------------------------------- the worker as a process

/// The YAML with `metrics.listen: 127.0.0.1:0` moved to `port`.
pub fn with_listen(yaml: &str, port: u16) -> String {
    yaml.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Process {
    pub child: std::process::Child,
    pub metrics_port: u16,
    pub log: std::path::PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Process {
    /// Run `callback-dispatcher run` with this YAML (its `metrics.listen` is replaced).
    pub fn spawn(yaml: &str, rust_log: &str) -> Process {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::spawn_in(dir, yaml, rust_log)
    }

    pub fn spawn_in(dir: Arc<tempfile::TempDir>, yaml: &str, rust_log: &str) -> Process {
        let port = free_port();
        let config = dir.path().join("dispatcher.yaml");
        std::fs::write(&config, with_listen(yaml, port)).unwrap();
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
        wait_until(Duration::from_secs(30), "worker process ready", || async {
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

// ---------------------------------------------------------------- Redis

/// A `redis-server` of the test's own on a free port, nothing kept on disk; killed when
/// dropped (scripts/ensure-test-tools.sh installs it).
pub struct RedisServer {
    pub child: std::process::Child,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/ensure-test-tools.sh installs it)");
        let server = RedisServer { child, port };
        wait_until(Duration::from_secs(10), "redis-server answers", || async {
            server.connection().await.is_some()
        })
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(conn)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
