//! Running the pipeline: a supervisor that (re)connects with back-off, declares the topology,
//! consumes with bounded concurrency, and shuts down gracefully.
//!
//! Design decisions:
//! - Shutdown is an injected future (`run(config, shutdown)`), as in mini-redis: the binary
//!   passes SIGTERM/SIGINT, tests pass a oneshot.
//! - lapin's auto-recovery is not used. When the connection or channel dies, the session
//!   ends, readiness drops, and the supervisor opens a new connection with back-off. Tasks of
//!   the dead channel finish on their own; their acks fail and the broker redelivers their
//!   events (at-least-once, same `webhook-id`).
//! - In-flight deliveries are tracked with a `TaskTracker` and bounded by a semaphore of
//!   `delivery.concurrency` permits; `amqp.prefetch` bounds what the broker sends ahead.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, Health};
use crate::settle::Settler;
use crate::topology::TopologyError;
use crate::{Dispatcher, broker};

/// Run the worker until `shutdown` completes. Binds `metrics.listen` first.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Worker::bind(config).await?.run(shutdown).await
}

/// A worker whose HTTP listener is bound but which is not consuming yet.
pub struct Worker {
    supervisor: Supervisor,
    listener: tokio::net::TcpListener,
}

/// Owns the connection loop; `Worker::run` hands it the listener-free part of itself.
struct Supervisor {
    dispatcher: Arc<Dispatcher>,
    health: Arc<Health>,
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

impl Worker {
    pub async fn bind(config: Config) -> anyhow::Result<Worker> {
        let listener = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        Ok(Worker {
            supervisor: Supervisor {
                dispatcher: Arc::new(Dispatcher::new(config, Arc::new(Metrics::new()))),
                health: Arc::new(Health::default()),
            },
            listener,
        })
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
        } = self;
        let server_stop = CancellationToken::new();
        let app = server::router(
            supervisor.dispatcher.metrics.clone(),
            supervisor.health.clone(),
        );
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(server_stop.clone().cancelled_owned())
                .into_future(),
        );
        let result = supervisor.supervise(shutdown).await;
        server_stop.cancel();
        let _ = server.await;
        tracing::info!("stopped");
        result
    }
}

impl Supervisor {
    /// Connect, run a session, and on loss reconnect with back-off, until shutdown.
    async fn supervise(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let d = &self.dispatcher;
        tracing::info!(summary = %d.config.summary(), broker = %broker::redacted(&d.config.amqp.url), "starting");

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
                c = broker::connect(&d.config.amqp.url, "callback-dispatcher") => c,
            };
            let failure = match connected {
                Err(e) => format!("cannot connect: {e}"),
                Ok(conn) => match self.session(&conn, &mut shutdown).await {
                    Ok(End::Shutdown) => break Ok(()),
                    // The connection is not closed here: lapin closes it once the last channel
                    // handle is gone, so in-flight deliveries on a still-healthy channel (a
                    // cancelled consumer) can settle first.
                    Ok(End::Lost(why)) => {
                        delays = backoff();
                        why
                    }
                    Err(SessionError::Topology(e)) if e.is_conflict() => {
                        break Err(anyhow::Error::new(e));
                    }
                    Err(e) => {
                        let _ = conn.close(200, "session failed".into()).await;
                        e.to_string()
                    }
                },
            };
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            tracing::warn!(error = %failure, retry_in_ms = wait.as_millis() as u64, broker = %broker::redacted(&d.config.amqp.url), "broker unavailable; reconnecting");
            tokio::select! {
                biased;
                () = shutdown.as_mut() => break Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection's life: declare, consume, dispatch, until shutdown or loss.
    async fn session<F: Future<Output = ()>>(
        &self,
        conn: &Connection,
        shutdown: &mut Pin<&mut F>,
    ) -> Result<End, SessionError> {
        let d = &self.dispatcher;
        let consumer_channel = conn.create_channel().await?;
        d.topology.declare(&consumer_channel).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        consumer_channel
            .basic_qos(d.config.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("callback-dispatcher-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = consumer_channel
            .basic_consume(
                d.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        d.metrics.amqp_connected.set(1);
        self.health.set_consuming(true);
        tracing::info!(queue = %d.topology.queue, prefetch = d.config.amqp.prefetch, concurrency = d.config.delivery.concurrency, "consuming");

        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(d.config.delivery.concurrency));
        let end = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.as_mut() => break End::Shutdown,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break End::Lost(format!("consumer: {e}")),
                None => break End::Lost("consumer cancelled by the broker".into()),
            };
            let permit = tokio::select! {
                biased;
                () = shutdown.as_mut() => break End::Shutdown,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let (d, publisher) = (d.clone(), publisher.clone());
            let inflight = Inflight::new(&d.metrics);
            tracker.spawn(async move {
                let settler = Settler {
                    publisher: &publisher,
                    topology: &d.topology,
                };
                d.handle(&settler, delivery).await;
                drop((permit, inflight));
            });
        };
        self.health.set_consuming(false);
        d.metrics.amqp_connected.set(0);
        tracker.close();
        if let End::Shutdown = end {
            self.drain(conn, &consumer_channel, &publisher, &tag, &tracker)
                .await;
        }
        Ok(end)
    }

    /// Stop consuming, give in-flight deliveries up to `delivery.timeout` to settle, close.
    /// Whatever has not settled by then returns to the queue when the channel closes.
    async fn drain(
        &self,
        conn: &Connection,
        consumer: &Channel,
        publisher: &Channel,
        tag: &str,
        tracker: &TaskTracker,
    ) {
        let limit = self.dispatcher.config.delivery.timeout;
        let _ = consumer
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await;
        tracing::info!(
            in_flight = tracker.len(),
            limit_ms = limit.as_millis() as u64,
            "shutting down: settling deliveries in flight"
        );
        if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
            tracing::warn!(
                unsettled = tracker.len(),
                "shutdown limit reached; unsettled events return to the queue"
            );
        }
        let _ = consumer.close(200, "shutdown".into()).await;
        let _ = publisher.close(200, "shutdown".into()).await;
        let _ = conn.close(200, "shutdown".into()).await;
    }
}
