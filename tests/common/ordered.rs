//! Ordered delivery's load (SPEC section 15): events of several keys published in order to
//! `<exchange>.ordered`, and, per key, the order of their first successful deliveries.

use std::collections::{HashMap, HashSet};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;

use super::{ConfigFile, Env, Profile, Retry, Server, text};

/// Publish `events` (key, id) to the ordered exchange, in order, on one channel, with
/// confirms: what SPEC section 15 asks of a publisher.
pub async fn publish_ordered(env: &Env, profile: &str, events: &[(String, String)]) {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("{}.ordered", env.queue);
    let mut pending = Vec::new();
    for (key, id) in events {
        let mut headers = FieldTable::default();
        headers.insert("profile".into(), text(profile));
        headers.insert("ordering_key".into(), text(key));
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        pending.push(
            ch.basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"{}",
                props,
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

/// `<key>-<nn>`, interleaved key by key: A-00, B-00, C-00, A-01, ...
pub fn ordered_events(keys: &[&str], per_key: usize) -> Vec<(String, String)> {
    (0..per_key)
        .flat_map(|i| {
            keys.iter()
                .map(move |k| (k.to_string(), format!("{k}-{i:02}")))
        })
        .collect()
}

/// Per key, the ids in the order of their first 2xx; and every id received.
pub fn first_successes(receiver: &Server) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    for r in receiver.all() {
        let id = r.header("webhook-id").unwrap();
        all.push(id.clone());
        if (200..300).contains(&r.status) && seen.insert(id.clone()) {
            let key = id.split('-').next().unwrap().to_owned();
            order.entry(key).or_default().push(id);
        }
    }
    (order, all)
}

/// The test's file with `amqp.partitions`.
pub fn ordered_file(env: &Env, partitions: u32, retry: Retry, profile: Profile) -> ConfigFile {
    let mut file = env.file(retry, [profile]);
    file.amqp.partitions = Some(partitions);
    file
}

/// Whether `key`'s park queue (profile `profile`, partition `i`) exists, from a passive
/// declare on a channel of its own.
pub async fn park_queue_exists(env: &Env, i: u16, profile: &str, key: &str) -> bool {
    park_queue_ready(env, i, profile, key).await.is_some()
}

/// The messages ready in `key`'s park queue, if it exists.
pub async fn park_queue_ready(env: &Env, i: u16, profile: &str, key: &str) -> Option<u32> {
    let topology = callback_dispatcher::amqp::Topology {
        exchange: env.queue.clone(),
        queue: env.queue.clone(),
        dead_queue: format!("{}.dead", env.queue),
        partitions: i + 1,
    };
    let queue =
        callback_dispatcher::ordered::park::queue(&topology, i, &(profile.into(), key.into()));
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "".into()).await;
    declared.ok().map(|q| q.message_count())
}
