//! The bare baseline the load run compares the worker against: consume, POST the body, ack.
//! Nothing else: no profiles, auth, signing, retries, metrics or logs. Same libraries (lapin,
//! reqwest with rustls, tokio) and the same prefetch and concurrency as the worker is given.
//!
//! `bare_consumer AMQP_URL QUEUE TARGET_URL PREFETCH CONCURRENCY`; stops on SIGTERM.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, target, prefetch, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: bare_consumer AMQP_URL QUEUE TARGET_URL PREFETCH CONCURRENCY");
    };
    let (prefetch, concurrency): (u16, usize) = (prefetch.parse()?, concurrency.parse()?);
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let client = reqwest::Client::new();
    let target: Arc<str> = target.as_str().into();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let delivery = tokio::select! {
            _ = term.recv() => break,
            d = consumer.next() => match d {
                Some(Ok(d)) => d,
                _ => break,
            },
        };
        let permit = permits.clone().acquire_owned().await?;
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let ok = client
                .post(&*target)
                .header("content-type", "application/json")
                .body(delivery.data.clone())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            drop(permit);
        });
    }
    Ok(())
}
