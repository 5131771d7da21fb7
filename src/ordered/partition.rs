//! Consuming the partitions: one channel per partition queue, with its share of the
//! prefetch window, whose deliveries go to their lanes ([`super::Lanes`]).

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use prometheus::IntGauge;
use tokio_util::task::TaskTracker;

use super::{Attempts, LaneKey, Lanes, OrderedEnd, lane_of, partition_prefetch};
use crate::amqp::{Acks, Topology};
use crate::dispatch::Dispatcher;
use crate::settle::Outlet;

/// A partition being consumed: its channel (cancelled and closed at shutdown) and tag.
pub struct Partition {
    pub channel: Channel,
    pub tag: String,
    pub consumer: Consumer,
}

/// Open a channel per partition on `conn` and consume each queue. With the queues' single
/// active consumer, only one replica at a time receives a partition's events; the others
/// wait as standbys and take over when it goes.
pub async fn open(
    conn: &Connection,
    topology: &Topology,
    prefetch: u16,
    tag: &str,
) -> Result<Vec<Partition>, lapin::Error> {
    let mut out = Vec::with_capacity(usize::from(topology.partitions));
    for i in 0..topology.partitions {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(
                partition_prefetch(prefetch, topology.partitions),
                BasicQosOptions::default(),
            )
            .await?;
        let tag = format!("{tag}-p{i}");
        let consumer = channel
            .basic_consume(
                topology.partition_queue(i).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        out.push(Partition {
            channel,
            tag,
            consumer,
        });
    }
    Ok(out)
}

/// Everything a partition's lanes need.
pub struct Feed {
    pub dispatcher: Arc<Dispatcher>,
    pub out: Arc<Outlet>,
    pub lanes: Arc<Lanes>,
    pub memory: Arc<Attempts>,
    pub tracker: TaskTracker,
}

impl Feed {
    /// Hand each delivery of `consumer` to its lane until the consumer ends (cancelled at
    /// shutdown, or its channel lost); an idle lane's head starts a task on the tracker.
    /// `acks` batches the acks of the partition's channel (see [`crate::amqp::acks`]).
    ///
    /// At shutdown the consumer is not cancelled (see [`crate::worker`]'s drain): what still
    /// arrives is held here, unacknowledged and untouched, until the channel closes and the
    /// broker takes it back in its place.
    pub async fn run(self: Arc<Self>, mut consumer: Consumer, acks: Arc<Acks>) {
        let mut held = Vec::new();
        while let Some(Ok(delivery)) = consumer.next().await {
            // Open until settled, so that no `multiple` ack ever covers it.
            acks.received(delivery.delivery_tag);
            if self.dispatcher.shutdown.is_cancelled() {
                held.push(delivery);
                continue;
            }
            let lane = lane_of(&delivery);
            if let Some(head) = self.lanes.arrive(&lane, delivery) {
                let (me, acks) = (self.clone(), acks.clone());
                self.tracker
                    .spawn(async move { me.lane(lane, head, &acks).await });
            } else {
                self.waiting(&lane).inc();
            }
        }
    }

    /// Process a lane's events one after the other, each once the one before is settled.
    async fn lane(&self, lane: LaneKey, head: lapin::message::Delivery, acks: &Acks) {
        let d = &self.dispatcher;
        let mut next = Some(head);
        while let Some(delivery) = next.take() {
            d.metrics.inflight.inc();
            let settler = self.out.settler(&d.settle_backoff, &d.shutdown, acks);
            let end = d.handle_ordered(&settler, delivery, &self.memory).await;
            d.metrics.inflight.dec();
            match end {
                OrderedEnd::Settled if d.shutdown.is_cancelled() => {
                    // The rest stays unacknowledged and returns, in its place, when the
                    // channel closes.
                    let rest = self.lanes.abandon(&lane);
                    self.waiting(&lane).sub(rest.len() as i64);
                }
                OrderedEnd::Settled => {
                    next = self.lanes.next(&lane);
                    if next.is_some() {
                        self.waiting(&lane).dec();
                    }
                }
                OrderedEnd::Left => {
                    // Behind an unsettled head: back to the broker in order, after it. A
                    // refused settlement has nacked the head already, so nacks keep the order.
                    // At shutdown (or with the channel gone) the head is still held: a nack
                    // now would put the rest ahead of it, so they stay unacknowledged and
                    // return with it, in their places, when the channel closes.
                    let rest = self.lanes.abandon(&lane);
                    self.waiting(&lane).sub(rest.len() as i64);
                    if d.shutdown.is_cancelled() {
                        continue;
                    }
                    for d in rest {
                        let sent = d
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                        if sent.is_ok() {
                            acks.released(d.delivery_tag);
                        }
                    }
                }
            }
        }
    }

    /// `ordered_waiting{profile}` of the lane's profile (`(none)` for one not configured).
    fn waiting(&self, lane: &LaneKey) -> IntGauge {
        let d = &self.dispatcher;
        match d.registry.load().endpoint(&lane.0) {
            Some(ep) => ep.metrics.ordered_waiting().clone(),
            None => d.metrics.unprofiled_waiting(),
        }
    }
}
