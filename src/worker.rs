//! Running the pipeline: a supervisor that (re)connects with back-off, declares the topology,
//! consumes, hands every delivery to the pipeline, and shuts down gracefully.
//!
//! Design decisions:
//! - Shutdown is an injected future (`run(config, shutdown)`), as in mini-redis: the binary
//!   passes SIGTERM/SIGINT, tests pass a oneshot.
//! - Two connections per session: one consumes (and acks), one publishes retries, deferrals
//!   and dead letters with confirms. A broker in a memory or disk alarm blocks connections
//!   that publish; with its own connection the consumer can still ack what was delivered, and
//!   a shutdown never waits on a blocked socket (every close is bounded).
//! - lapin's auto-recovery is not used. When a connection or channel dies the session ends,
//!   readiness drops, and the supervisor reconnects with back-off. Tasks of the dead channel
//!   finish on their own; their acks fail and the broker redelivers their events
//!   (at-least-once, same `webhook-id`).
//! - One task per delivery, at most `amqp.prefetch` of them (the broker sends no more). A
//!   task waits for its profile's turn inside the pipeline, never in the consumer loop, so
//!   one profile's backlog cannot stop the others' events from being read.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::Connection;
use tokio_util::sync::CancellationToken;

mod drain;
mod session;

use crate::amqp::{self, Topology, TopologyError};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::ordered::Attempts;
use crate::profiles::{Registry, Window};
use crate::receipts::Receipts;
use crate::reload::Reloader;
use crate::server::{self, Health};
use crate::settle::SettleBackoff;

/// The longest any close waits for the broker's answer.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// The longest a connect, or a session's setup (channels, declarations, consume), may wait
/// for the broker: then the attempt fails and the supervisor tries again (SPEC section 8).
pub const BROKER_LIMIT: Duration = Duration::from_secs(10);

/// Run the worker until `shutdown` completes. Binds `metrics.listen` first.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Worker::bind(config).await?.run(shutdown).await
}

/// A worker whose HTTP listener is bound but which is not consuming yet.
pub struct Worker {
    supervisor: Supervisor,
    listener: tokio::net::TcpListener,
    watch: Option<PathBuf>,
}

struct Supervisor {
    dispatcher: Arc<Dispatcher>,
    /// With `receipts.exchange` (SPEC section 14).
    receipts: Option<Arc<Receipts>>,
    /// Attempts on ordered events, kept across sessions (SPEC section 15).
    ordered_attempts: Arc<Attempts>,
    health: Arc<Health>,
    /// The configuration the worker started with (its `amqp` section is the one in force).
    base: Config,
    topology: Topology,
}

enum End {
    Shutdown,
    Lost(String),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not answer within {limit}s while {0}", limit = BROKER_LIMIT.as_secs())]
    Timeout(&'static str),
}

/// Counts a delivery in the in-flight gauge for as long as it lives.
struct Inflight(Arc<Metrics>);

impl Inflight {
    fn new(m: &Arc<Metrics>) -> Self {
        m.inflight.inc();
        Self(m.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// Connect within [`BROKER_LIMIT`].
async fn connect(url: &secrecy::SecretString, name: &str) -> Result<Connection, String> {
    match tokio::time::timeout(BROKER_LIMIT, amqp::connect(url, name)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}s (connection {name:?})",
            BROKER_LIMIT.as_secs()
        )),
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> Option<T> {
    let out = tokio::time::timeout(CLOSE_LIMIT, f).await.ok();
    if out.is_none() {
        tracing::warn!(
            what,
            "the broker did not answer in time; going on without it"
        );
    }
    out
}

impl Worker {
    pub async fn bind(config: Config) -> anyhow::Result<Worker> {
        let listener = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let metrics = Arc::new(Metrics::new());
        let receipts = config.receipts.as_ref().map(|r| {
            Arc::new(Receipts::new(
                r.exchange.clone(),
                metrics.receipts_failed.clone(),
            ))
        });
        let dispatcher = Dispatcher {
            registry: Arc::new(Registry::new(&config, metrics.clone())),
            window: Arc::new(Window::new(usize::from(config.amqp.prefetch))),
            shutdown: CancellationToken::new(),
            settle_backoff: SettleBackoff::new(metrics.settle_failures.clone()),
            metrics,
        };
        Ok(Worker {
            supervisor: Supervisor {
                dispatcher: Arc::new(dispatcher),
                receipts,
                ordered_attempts: Arc::default(),
                health: Arc::new(Health::default()),
                topology: Topology::new(&config.amqp),
                base: config,
            },
            listener,
            watch: None,
        })
    }

    /// Reload the configuration from `path` on SIGHUP and when its content changes.
    pub fn watch(mut self, path: PathBuf) -> Self {
        self.watch = Some(path);
        self
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.supervisor.dispatcher.metrics.clone()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Worker {
            supervisor,
            listener,
            watch,
        } = self;
        let stop = CancellationToken::new();
        let app = server::router(
            supervisor.dispatcher.metrics.clone(),
            supervisor.health.clone(),
        );
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        // With `cluster.redis`: announced before consuming, so the first events take their
        // share; leaves the cluster once the deliveries have settled.
        let cluster = supervisor
            .dispatcher
            .registry
            .start_cluster(stop.clone())
            .await;
        let notices = supervisor
            .receipts
            .as_ref()
            .map(|r| r.start(&supervisor.dispatcher.metrics.notices, stop.clone()));
        let reloader = watch.map(|path| {
            let reloader = Reloader::new(
                path,
                &supervisor.base,
                supervisor.dispatcher.registry.clone(),
                supervisor.dispatcher.metrics.clone(),
                supervisor.topology.clone(),
            );
            tokio::spawn(reloader.run(stop.clone()))
        });
        let result = supervisor.supervise(shutdown).await;
        stop.cancel();
        let _ = server.await;
        if let Some(r) = reloader {
            let _ = r.await;
        }
        if let Some(c) = cluster {
            let _ = c.await;
        }
        if let Some(n) = notices {
            let _ = n.await;
        }
        tracing::info!("stopped");
        result
    }
}

impl Supervisor {
    /// Connect, run a session, and on loss reconnect with back-off, until shutdown.
    async fn supervise(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let url = &self.base.amqp.url;
        tracing::info!(summary = %self.base.summary(), broker = %amqp::redacted(url), "starting");
        let mut shutdown = std::pin::pin!(shutdown);
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        loop {
            let connected = tokio::select! {
                biased;
                () = shutdown.as_mut() => break Ok(()),
                c = async {
                    let consumer = connect(url, "callback-dispatcher").await?;
                    match connect(url, "callback-dispatcher publisher").await {
                        Ok(publisher) => Ok((consumer, publisher)),
                        Err(e) => {
                            bounded("closing", consumer.close(200, "connect failed".into())).await;
                            Err(e)
                        }
                    }
                } => c,
            };
            let failure = match connected {
                Err(e) => format!("cannot connect: {e}"),
                Ok((consumer, publisher)) => {
                    match self.session(&consumer, &publisher, &mut shutdown).await {
                        Ok(End::Shutdown) => break Ok(()),
                        // The consumer connection is not closed here: lapin closes it once the
                        // last channel handle is gone, so in-flight deliveries on a still-healthy
                        // channel (a cancelled consumer) can settle first.
                        Ok(End::Lost(why)) => {
                            delays = backoff();
                            why
                        }
                        Err(SessionError::Topology(e)) if e.is_conflict() => {
                            break Err(anyhow::Error::new(e));
                        }
                        Err(e) => {
                            bounded("closing", consumer.close(200, "session failed".into())).await;
                            bounded("closing", publisher.close(200, "session failed".into())).await;
                            e.to_string()
                        }
                    }
                }
            };
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            tracing::warn!(error = %failure, retry_in_ms = wait.as_millis() as u64, broker = %amqp::redacted(url), "broker unavailable; reconnecting");
            tokio::select! {
                biased;
                () = shutdown.as_mut() => break Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT: what the binary hands [`Worker::run`].
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
