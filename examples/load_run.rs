//! End-to-end load run: N events queued, then the worker started against a local receiver
//! answering 200 after `DELAY_MS` (default 1); prints the throughput from the first to the
//! last delivery. `cargo run --release --example load_run -- [N] [DELAY_MS]`. Uses its own
//! queue names and deletes them afterwards.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let delay_ms: u64 = args.next().map_or(Ok(1), |a| a.parse())?;
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let received = Arc::new(AtomicUsize::new(0));
    let r2 = received.clone();
    let app = axum::Router::new().fallback(move || {
        let r = r2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            r.fetch_add(1, Ordering::Relaxed);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let queue = format!("load.{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let yaml = format!(
        "amqp: {{url: \"{amqp}\", queue: {queue}, exchange: {queue}}}\nmetrics: {{listen: \"127.0.0.1:0\"}}\nlog: {{format: text}}\nprofiles:\n  - id: load\n    url: \"http://{addr}/cb\"\n    signing: {{secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}}\n"
    );
    let config = Config::from_yaml(&yaml, Path::new("load.yaml"), |_| None)?;
    let topology = Topology::new(&config.amqp);
    let delays = config.retry.delay_queue_ms();

    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch, &delays).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut headers = FieldTable::default();
    headers.insert(
        "profile".into(),
        AMQPValue::LongString(LongString::from("load")),
    );
    let t0 = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let props = BasicProperties::default()
            .with_message_id(format!("load-{i}").into())
            .with_delivery_mode(2)
            .with_headers(headers.clone());
        pending.push(
            ch.basic_publish(
                queue.as_str().into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                br#"{"event":"load"}"#,
                props,
            )
            .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    println!("published {n} events (confirmed) in {:.2?}", t0.elapsed());

    let worker = callback_dispatcher::Worker::bind(config).await?;
    let metrics = worker.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let t1 = Instant::now();
    let delivered = || {
        metrics
            .deliveries
            .with_label_values(&["load", "delivered"])
            .get() as usize
    };
    while delivered() < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t1.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {} of {n} delivered after 10 minutes", delivered());
        }
    }
    let took = t1.elapsed();
    println!(
        "delivered {n} signed callbacks (receiver {delay_ms} ms per request) in {took:.2?}: {:.0} events/s; receiver saw {} requests",
        n as f64 / took.as_secs_f64(),
        received.load(Ordering::Relaxed)
    );
    let _ = stop.send(());
    run.await??;
    for q in topology.queues(&delays) {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    ch.exchange_delete(
        topology.exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
