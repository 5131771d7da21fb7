//! One test's corner of the real broker: unique queue names, its configuration (which
//! records every delay queue it declares), publishing with confirms, the dead-letter queue,
//! and clean-up when dropped, even after a panic.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::config::{Amqp, Delivery, LogSection, MetricsSection, Span};
use super::{ConfigFile, Profile, Retry, amqp_url, ms, secs};

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

    /// The file every test starts from: this test's queue, prefetch and concurrency 64,
    /// timeouts of 5 s and 1 s, loopback allowed, metrics on a free port, text logs; then
    /// `retry` and the profiles.
    pub fn file(&self, retry: Retry, profiles: impl IntoIterator<Item = Profile>) -> ConfigFile {
        ConfigFile {
            amqp: Amqp {
                url: Some(amqp_url()),
                queue: Some(self.queue.clone()),
                exchange: Some(self.queue.clone()),
                prefetch: Some(64),
                partitions: None,
            },
            delivery: Delivery {
                concurrency: Some(64),
                timeout: Some(Span::Is(secs(5))),
                connect_timeout: Some(Span::Is(ms(1000))),
                allow_networks: Some(vec!["127.0.0.0/8".into(), "::1/128".into()]),
                ..Delivery::default()
            },
            retry,
            metrics: MetricsSection {
                listen: Some("127.0.0.1:0".into()),
            },
            log: LogSection {
                format: Some("text".into()),
            },
            tracing: None,
            token_cache: None,
            receipts: None,
            profiles: profiles.into_iter().collect(),
        }
    }

    /// The file loaded as the worker loads it; its queues are deleted with this `Env`.
    pub fn config(&self, file: &ConfigFile) -> Config {
        self.config_text(&file.to_yaml())
    }

    /// Configuration text (JSON or YAML a test wrote itself) loaded as the worker loads it;
    /// its queues are deleted with this `Env`.
    pub fn config_text(&self, yaml: &str) -> Config {
        let config = Config::from_yaml(yaml, Path::new("test.yaml"), |_| None)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let mut t = self.topology.lock().unwrap();
        let mut delays = t.take().map(|(_, d)| d).unwrap_or_default();
        delays.extend(config.retry.delay_queue_ms());
        delays.sort_unstable();
        delays.dedup();
        *t = Some((Topology::new(&config.amqp), delays));
        config
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

    /// The work queue's (messages ready, consumers), from a passive declare.
    pub async fn queue_counts(&self) -> (u32, u32) {
        self.counts_of(&self.queue.clone()).await
    }

    /// Ordered partition `i`'s (messages ready, consumers).
    pub async fn partition_counts(&self, i: u16) -> (u32, u32) {
        self.counts_of(&format!("{}.ordered.{i}", self.queue)).await
    }

    async fn counts_of(&self, queue: &str) -> (u32, u32) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        conn.close(200, "".into()).await.unwrap();
        (q.message_count(), q.consumer_count())
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
                if topology.partitions > 0 {
                    for exchange in [topology.ordered_exchange(), topology.park_exchange()] {
                        let _ = ch
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
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
