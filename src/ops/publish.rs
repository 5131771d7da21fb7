//! `publish`: send events the way SPEC section 5 asks publishers to: to the exchange with the
//! queue's routing key, persistent, with `profile`, `message_id`, `content_type` and
//! `timestamp`, mandatory, and confirmed by the broker. With `--ordering-key`, to the
//! ordered exchange with the `ordering_key` header (SPEC section 15): one at a time on one
//! channel, in order, each confirmed, which is what a publisher must do to keep order.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::amqp::{self, Topology, headers};
use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Request {
    pub profile: String,
    pub body: Vec<u8>,
    /// With `count > 1`, each copy gets `<id>-<n>`.
    pub message_id: Option<String>,
    pub content_type: String,
    pub count: u32,
    /// An ordered event (SPEC section 15): published to `<exchange>.ordered` with this
    /// `ordering_key` header.
    pub ordering_key: Option<String>,
    /// Sent as the `traceparent` header (SPEC section 16).
    pub traceparent: Option<String>,
}

/// Publish and wait for every confirm; returns the message ids.
pub async fn publish(config: &Config, req: &Request) -> anyhow::Result<Vec<String>> {
    if config.profiles.get(&req.profile).is_none() {
        bail!(
            "no profile {:?} in the configuration; the worker would dead-letter it (unknown_profile)",
            req.profile
        );
    }
    if let Some(tp) = &req.traceparent {
        use opentelemetry::trace::TraceContextExt;
        let mut h = FieldTable::default();
        h.insert(
            crate::trace::TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(tp.as_str())),
        );
        if !crate::trace::extract(Some(&h))
            .span()
            .span_context()
            .is_valid()
        {
            bail!(
                "--traceparent {tp:?} is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
            );
        }
    }
    let conn = amqp::connect(&config.amqp.url, "callback-dispatcher publish")
        .await
        .with_context(|| format!("connecting to {}", amqp::redacted(&config.amqp.url)))?;
    let channel = conn.create_channel().await?;
    let topology = Topology::new(&config.amqp);
    topology
        .declare(&channel, &config.retry.delay_queue_ms())
        .await?;
    topology.declare_ordered(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let base = req
        .message_id
        .clone()
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut headers = FieldTable::default();
    headers.insert(
        headers::PROFILE.into(),
        AMQPValue::LongString(LongString::from(req.profile.as_str())),
    );
    // Ordered events go to the consistent-hash exchange, which routes on the header alone.
    let (exchange, routing_key) = match &req.ordering_key {
        None => (topology.exchange.clone(), topology.queue.clone()),
        Some(key) => {
            if config.amqp.partitions == 0 {
                bail!(
                    "--ordering-key needs amqp.partitions: the configuration has no ordered partitions"
                );
            }
            if key.is_empty() || key.len() > headers::MAX_ORDERING_KEY {
                bail!(
                    "--ordering-key must be 1 to {} bytes",
                    headers::MAX_ORDERING_KEY
                );
            }
            headers.insert(
                headers::ORDERING_KEY.into(),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
            (topology.ordered_exchange(), String::new())
        }
    };
    if let Some(tp) = &req.traceparent {
        headers.insert(
            crate::trace::TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(tp.as_str())),
        );
    }
    let mut ids = Vec::with_capacity(req.count as usize);
    let mut pending = Vec::with_capacity(req.count as usize);
    for n in 1..=req.count.max(1) {
        let id = if req.count > 1 {
            format!("{base}-{n}")
        } else {
            base.clone()
        };
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_content_type(req.content_type.as_str().into())
            .with_timestamp(now)
            .with_headers(headers.clone());
        pending.push(
            amqp::publish_mandatory(&channel, &exchange, &routing_key, &req.body, props).await?,
        );
        ids.push(id);
    }
    for confirm in pending {
        amqp::confirmed(confirm, &exchange).await?;
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(ids)
}

/// The body from `file`, else from standard input.
pub fn read_body(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    match file {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display())),
        None => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .context("reading standard input")?;
            Ok(b)
        }
    }
}

/// `publish` as the command prints it.
pub async fn run(config: &Config, req: &Request) -> anyhow::Result<String> {
    let ids = publish(config, req).await?;
    Ok(match ids.as_slice() {
        [one] => format!("published {one}\n"),
        many => format!(
            "published {} events ({} .. {})\n",
            many.len(),
            many[0],
            many[many.len() - 1]
        ),
    })
}
