//! How long `deliveries --message-id` takes to find one event's history in a big delivery
//! log: fills a fresh `receipts.log` stream with N receipts (default 1,000,000; the event
//! looked for has one near the start and one near the end), then times the lookup, and
//! deletes the stream. `cargo run --release --example log_lookup [N]`.

use std::time::{Duration, Instant};

use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use callback_dispatcher::ops::deliveries::{Query, read};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let yaml = format!(
        "amqp: {{url: \"{url}\", queue: lookup.{tag}}}\nreceipts: {{exchange: lookup.{tag}.receipts, log: 1h}}\nprofiles: [{{id: acme, url: \"http://127.0.0.1:9/\"}}]\n"
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("lookup.yaml"), |_| None)?;
    let receipts = config.receipts.clone().expect("receipts configured");
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Topology::declare_receipts(&ch, &receipts).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let wanted = "evt-wanted";
    let filled = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let id = if i == 10 || i == n - 10 {
            wanted.to_owned()
        } else {
            format!("evt-{i}")
        };
        let attempt = if i == 10 { 1 } else { 2 };
        let kind = if i == 10 {
            "delivery.retrying"
        } else {
            "delivery.succeeded"
        };
        let body = format!(
            r#"{{"type":"{kind}","message_id":"{id}","profile":"acme","attempt":{attempt},"status":204,"error":null,"duration_ms":3,"reason":null,"next_attempt_at":null,"at":"2026-12-02T10:00:00.000Z"}}"#
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(format!("{id}.{attempt}").into())
            .with_timestamp(now)
            .with_delivery_mode(2);
        pending.push(
            ch.basic_publish(
                receipts.exchange.as_str().into(),
                format!("acme.{kind}").as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await?,
        );
        if pending.len() == 10_000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    println!(
        "filled the log with {n} receipts in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let q = Query {
        message_id: Some(wanted.into()),
        profile: None,
        kind: None,
        since: Duration::from_secs(3600),
        limit: 1000,
        json: true,
    };
    let looked = Instant::now();
    let found = read(&config, &q).await?;
    let took = looked.elapsed().as_secs_f64();
    println!(
        "found {} receipts of {wanted} among {n} in {took:.1} s ({:.0} receipts scanned per second, of which 1 s is the end-of-log wait)",
        found.len(),
        n as f64 / (took - 1.0).max(0.001)
    );
    assert_eq!(found.len(), 2, "{found:?}");
    ch.queue_delete(
        receipts.log_queue().as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    ch.exchange_delete(
        receipts.exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
