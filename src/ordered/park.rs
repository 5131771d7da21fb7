//! Parking: a waiting key's events leave the partition's window for a queue of their own.
//!
//! A key whose head waits (a retry's back-off, a deferral) keeps its later events in memory,
//! unacknowledged, in the partition's prefetch window. When the head has waited a second,
//! the window is full ([`Window::full`]: the broker sends the partition nothing more) and
//! the lane holds more than its fair share of it ([`Window::over`]), the whole lane, head
//! included, is moved to its **park queue**
//! `<queue>.ordered.<i>.parked.<hash of profile and key>` (quorum, durable), and the key's
//! later arrivals follow it there, each published with a confirm before it is acked on the
//! partition. The partition's consumer reads a park queue one event at a time
//! (`basic.get`), so a parked key holds one event of memory; when the queue is empty and
//! nothing is on its way to it, it is deleted and the key is direct again.
//!
//! Design decisions:
//! - **One queue per key.** Keys sharing a park queue would wait behind each other's heads,
//!   which is what parking is meant to stop.
//! - **Head included.** Nothing of a parked key that this consumer has seen stays on the
//!   partition, so after a crash everything of the key still on the partition is newer than
//!   its park queue (or a copy already moved, repeated later with the same `webhook-id`).
//! - **The next consumer finds park queues by asking the broker, not its own memory.** At the
//!   first delivery of a session each partition sends a probe to the direct exchange
//!   `<exchange>.ordered.parked`, where every park queue is bound with its partition's
//!   number: a probe that comes back unroutable means the partition has no parked key, and
//!   nothing more is asked. Otherwise each key's first event of the session is itself
//!   published, `mandatory`, to the key's park queue: routed, the key is parked (the event
//!   went behind the others); returned, the key is direct. The answer depends only on the
//!   queue's existence, never on what a dead consumer still held, so there is no race with
//!   the broker returning that consumer's messages.
//! - **A lease on the partition** finds a parked key that gets no new event. Parking first
//!   publishes a lease (headers `profile`, `ordering_key`, `x-parked`) to the partition
//!   queue; the consumer holds it unacknowledged until the key is unparked. After a crash it
//!   comes back, and whoever consumes the partition then drains the key's park queue. A
//!   lease whose key is being processed directly is stale (its queue was deleted) and is
//!   acked.
//! - Probes that land in park queues are acked and skipped by their drainers.

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use super::LaneKey;
use crate::amqp::headers::{ORDERING_KEY, text};
use crate::amqp::{PublishError, Topology, publish_confirmed};

/// The header that marks a lease.
pub const LEASE: &str = "x-parked";
/// The header that marks a probe.
pub const PROBE: &str = "x-park-probe";

/// A partition's prefetch window and how many of its heads wait.
#[derive(Debug)]
pub struct Window {
    size: usize,
    waiting: AtomicUsize,
}

/// A head counted as waiting until dropped.
pub struct Waiting<'a>(&'a Window);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Window {
    pub fn new(size: u16) -> Self {
        Window {
            size: usize::from(size),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Count a head as waiting while the guard lives.
    pub fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    /// Whether `open` deliveries fill the window.
    pub fn full(&self, open: usize) -> bool {
        open >= self.size
    }

    /// Whether a waiting lane holding `held` events (its head included) holds more than its
    /// share.
    pub fn over(&self, held: usize) -> bool {
        held > share(self.size, self.waiting.load(Ordering::Relaxed))
    }
}

/// A waiting key's share of a window of `size`, with `waiting` heads waiting (this one
/// included): what is left when every waiting key and the keys that flow get as much, and
/// at least the head itself. The keys that flow always keep `size / (waiting + 1)`.
pub fn share(size: usize, waiting: usize) -> usize {
    (size / (waiting.max(1) + 1)).max(1)
}

/// The park queue of `lane` in partition `i`.
pub fn queue(topology: &Topology, i: u16, lane: &LaneKey) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(lane.0.as_bytes());
    h.update([0]);
    h.update(lane.1.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.parked.{hex}", topology.partition_queue(i))
}

fn lane_headers(lane: &LaneKey, mark: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("profile".into(), text(&lane.0));
    h.insert(ORDERING_KEY.into(), text(&lane.1));
    h.insert(mark.into(), AMQPValue::Boolean(true));
    h
}

/// Whether a delivery is a lease (or a probe).
pub fn is_marked(props: &BasicProperties, mark: &str) -> bool {
    props
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(mark))
}

/// Does partition `i` have a parked key? (A probe comes back unroutable when none.)
pub async fn any_parked(
    publisher: &Channel,
    topology: &Topology,
    i: u16,
) -> Result<bool, PublishError> {
    let props = BasicProperties::default()
        .with_headers(lane_headers(&(String::new(), String::new()), PROBE));
    match publish_confirmed(
        publisher,
        &topology.park_exchange(),
        &i.to_string(),
        b"",
        props,
    )
    .await
    {
        Ok(()) => Ok(true),
        Err(PublishError::Unroutable(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Publish the lease of `lane` to partition `i`'s queue.
pub async fn lease(
    publisher: &Channel,
    topology: &Topology,
    i: u16,
    lane: &LaneKey,
) -> Result<(), PublishError> {
    let props = BasicProperties::default().with_headers(lane_headers(lane, LEASE));
    publish_confirmed(publisher, "", &topology.partition_queue(i), b"", props).await
}

/// Declare `lane`'s park queue and bind it with its partition's number.
pub async fn declare(
    channel: &Channel,
    topology: &Topology,
    i: u16,
    queue: &str,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    // The next consumer gets nothing before a dead one's unacknowledged event is back.
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            topology.park_exchange().as_str().into(),
            i.to_string().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Publish an event to a park queue: `Ok(true)` once confirmed there, `Ok(false)` when the
/// queue does not exist (the publish came back).
pub async fn moved(
    publisher: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<bool, PublishError> {
    match publish_confirmed(publisher, "", queue, body, props).await {
        Ok(()) => Ok(true),
        Err(PublishError::Unroutable(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Consume a park queue (one event at a time: the channel's prefetch is 1). With its single
/// active consumer, this one gets nothing while a consumer that went before still holds an
/// event: the broker gives that event back first.
pub async fn consume(channel: &Channel, queue: &str) -> Result<lapin::Consumer, lapin::Error> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Publish a probe with id `id` to a park queue: when it comes back to its consumer, that
/// consumer has had everything published to the queue before it.
pub async fn probe(publisher: &Channel, queue: &str, id: &str) -> Result<bool, PublishError> {
    let props = BasicProperties::default()
        .with_message_id(id.into())
        .with_headers(lane_headers(&(String::new(), String::new()), PROBE));
    moved(publisher, queue, b"", props).await
}

/// Delete an emptied park queue.
pub async fn delete(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        // Not `if_empty`: quorum queues refuse it, and with a connection error. Nothing is
        // in the queue by then (see `drain`'s probe).
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_key_gets_a_share_and_the_flowing_keys_keep_one() {
        // (window, waiting heads) -> share of each waiting key
        for (size, waiting, want) in [
            (32, 1, 16),
            (32, 3, 8),
            (32, 40, 1),
            (4, 1, 2),
            (1, 1, 1),
            (32, 0, 16),
        ] {
            assert_eq!(share(size, waiting), want, "{size} / {waiting}");
            // What the waiting keys hold at most leaves the flowing keys a share too.
            if waiting > 0 && want > 1 {
                assert!(size - waiting.max(1) * want >= want, "{size} / {waiting}");
            }
        }
        let w = Window::new(32);
        assert!(!w.full(31) && w.full(32));
        let g = w.wait();
        assert!(!w.over(16) && w.over(17));
        let g2 = w.wait();
        assert!(w.over(11), "a second waiting head shrinks the share to 10");
        drop((g, g2));
        assert!(!w.over(16));
    }

    #[test]
    fn each_key_has_its_own_park_queue_in_its_partition() {
        let t = Topology {
            exchange: "x".into(),
            queue: "q".into(),
            dead_queue: "q.dead".into(),
            partitions: 4,
        };
        let a = queue(&t, 2, &("p".into(), "A".into()));
        assert!(a.starts_with("q.ordered.2.parked."), "{a}");
        assert_eq!(a.len(), "q.ordered.2.parked.".len() + 16);
        assert_eq!(a, queue(&t, 2, &("p".into(), "A".into())));
        assert_ne!(a, queue(&t, 2, &("p".into(), "B".into())));
        assert_ne!(
            queue(&t, 2, &("pA".into(), String::new())),
            queue(&t, 2, &("p".into(), "A".into()))
        );
    }
}
