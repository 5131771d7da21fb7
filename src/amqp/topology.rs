//! The broker objects the worker relies on, declared idempotently at every (re)connect:
//! the exchange, the quorum work queue, one delay queue per declared delay and the
//! dead-letter queue (SPEC section 5).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ErrorKind, ExchangeKind};

use super::headers::{ORDERING_KEY, text};
use crate::config::{AmqpConfig, ReceiptsConfig};

/// The exchange type of ordered delivery, from `rabbitmq_consistent_hash_exchange`.
pub const ORDERED_KIND: &str = "x-consistent-hash";

/// The names, derived from the `amqp` section alone. The delay queues' TTLs come from the
/// `retry` section, which a reload may change, so they are passed in where needed.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_queue: String,
    /// Ordered-delivery partitions (SPEC section 15); 0 = none.
    pub partitions: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The object exists with other arguments; redeclaring cannot fix that.
    #[error(
        "{what} `{name}` already exists with other arguments ({detail}). The worker will not change it: \
         drain and delete it (rabbitmqctl delete_queue {name}), or configure another amqp.queue / amqp.exchange name"
    )]
    Conflict {
        what: &'static str,
        name: String,
        detail: String,
    },
    /// The broker lacks a plugin the configuration needs.
    #[error(
        "the broker does not know the exchange type `{kind}` that amqp.partitions needs: enable the plugin \
         (rabbitmq-plugins enable {plugin}) or set amqp.partitions: 0"
    )]
    MissingPlugin {
        kind: &'static str,
        plugin: &'static str,
    },
    #[error("declaring {what} `{name}`: {source}")]
    Broker {
        what: &'static str,
        name: String,
        source: lapin::Error,
    },
}

impl TopologyError {
    /// A conflict needs an operator; anything else may pass with a reconnect.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::MissingPlugin { .. })
    }
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// A durable exchange of this kind.
async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), TopologyError> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(wrap("exchange", name))
}

fn wrap(what: &'static str, name: &str) -> impl FnOnce(lapin::Error) -> TopologyError {
    let name = name.to_owned();
    move |source: lapin::Error| match source.kind() {
        ErrorKind::ProtocolError(e)
            if e.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
        {
            TopologyError::Conflict {
                what,
                name,
                detail: e.get_message().to_string(),
            }
        }
        _ => TopologyError::Broker { what, name, source },
    }
}

impl Topology {
    pub fn new(amqp: &AmqpConfig) -> Self {
        Self {
            exchange: amqp.exchange.clone(),
            queue: amqp.queue.clone(),
            dead_queue: format!("{}.dead", amqp.queue),
            partitions: amqp.partitions,
        }
    }

    /// The consistent-hash exchange ordered events are published to.
    pub fn ordered_exchange(&self) -> String {
        format!("{}.ordered", self.exchange)
    }

    /// The direct exchange every park queue is bound to with its partition's number
    /// (see [`crate::ordered::park`]).
    pub fn park_exchange(&self) -> String {
        format!("{}.ordered.parked", self.exchange)
    }

    /// Partition `i`'s queue.
    pub fn partition_queue(&self, i: u16) -> String {
        format!("{}.ordered.{i}", self.queue)
    }

    pub fn delay_queue(&self, ms: u64) -> String {
        format!("{}.delay.{ms}", self.queue)
    }

    /// Every queue this topology owns with these delays, for clean-up and listings.
    pub fn queues(&self, delays_ms: &[u64]) -> Vec<String> {
        let mut all = vec![self.queue.clone(), self.dead_queue.clone()];
        all.extend(delays_ms.iter().map(|&ms| self.delay_queue(ms)));
        all.extend((0..self.partitions).map(|i| self.partition_queue(i)));
        all
    }

    /// The exchange, the work queue and its binding, the dead-letter queue and the delay
    /// queues for `delays_ms`.
    pub async fn declare(&self, channel: &Channel, delays_ms: &[u64]) -> Result<(), TopologyError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_exchange(channel, &self.exchange, ExchangeKind::Direct).await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable,
                args(&[("x-queue-type", text("quorum"))]),
            )
            .await
            .map_err(wrap("queue", &self.queue))?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                self.queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(wrap("binding of queue", &self.queue))?;
        // A classic queue: `dead-letters list` requeues what it reads, and a classic queue puts
        // requeued messages back in their original place.
        channel
            .queue_declare(
                self.dead_queue.as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(wrap("queue", &self.dead_queue))?;
        self.declare_delays(channel, delays_ms).await
    }

    /// With `amqp.partitions`: the consistent-hash exchange hashing the `ordering_key`
    /// header and one quorum queue per partition with a single active consumer, bound with
    /// equal weight (SPEC section 15); and the exchange of the park queues.
    pub async fn declare_ordered(&self, channel: &Channel) -> Result<(), TopologyError> {
        if self.partitions == 0 {
            return Ok(());
        }
        let exchange = self.ordered_exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Custom(ORDERED_KIND.into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args(&[("hash-header", text(ORDERING_KEY))]),
            )
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::ProtocolError(p)
                    if p.kind() == &AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID) =>
                {
                    TopologyError::MissingPlugin {
                        kind: ORDERED_KIND,
                        plugin: "rabbitmq_consistent_hash_exchange",
                    }
                }
                _ => wrap("exchange", &exchange)(e),
            })?;
        declare_exchange(channel, &self.park_exchange(), ExchangeKind::Direct).await?;
        for i in 0..self.partitions {
            let queue = self.partition_queue(i);
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args(&[
                        ("x-queue-type", text("quorum")),
                        ("x-single-active-consumer", AMQPValue::Boolean(true)),
                    ]),
                )
                .await
                .map_err(wrap("queue", &queue))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(wrap("binding of queue", &queue))?;
        }
        Ok(())
    }

    /// The receipts exchange (topic, durable) and, with `receipts.log`, the stream queue
    /// `<exchange>.log` bound to it with `#` (SPEC section 14).
    pub async fn declare_receipts(
        channel: &Channel,
        receipts: &ReceiptsConfig,
    ) -> Result<(), TopologyError> {
        let exchange = receipts.exchange.as_str();
        declare_exchange(channel, exchange, ExchangeKind::Topic).await?;
        let Some(keep) = receipts.log else {
            return Ok(());
        };
        let log = receipts.log_queue();
        channel
            .queue_declare(
                log.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args(&[
                    ("x-queue-type", text("stream")),
                    ("x-max-age", text(&format!("{}s", keep.as_secs().max(1)))),
                ]),
            )
            .await
            .map_err(wrap("stream queue", &log))?;
        channel
            .queue_bind(
                log.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(wrap("binding of stream queue", &log))
    }

    /// The delay queues alone: at start, and before a reload that adds delays takes effect.
    pub async fn declare_delays(
        &self,
        channel: &Channel,
        delays_ms: &[u64],
    ) -> Result<(), TopologyError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for &ms in delays_ms {
            let name = self.delay_queue(ms);
            let arguments = args(&[
                ("x-message-ttl", AMQPValue::LongLongInt(ms as i64)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&self.queue)),
            ]);
            channel
                .queue_declare(name.as_str().into(), durable, arguments)
                .await
                .map_err(wrap("queue", &name))?;
        }
        Ok(())
    }
}
