//! The tasks of parking ([`super::park`]): asking whether a key is parked, parking a lane,
//! moving its arrivals to its park queue, and draining that queue one event at a time.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;

use super::LaneKey;
use super::park;
use super::partition::{Feed, Part};
use crate::amqp::Acks;

/// How long a park queue's consumer waits for an event before it sends a probe.
const IDLE: Duration = Duration::from_millis(50);

/// Whether a key's first event of a session belongs behind a park queue.
pub enum Asked {
    /// No park queue: process it.
    Direct(Box<Delivery>),
    /// It went to the key's park queue, behind the key's earlier events, and was acked.
    Parked,
    /// The broker did not answer: the event stays unacknowledged.
    Failed,
}

impl Feed {
    /// The event is published, `mandatory`, to its key's park queue: routed, the key was
    /// parked (by an earlier consumer) and the event now waits behind its earlier events.
    pub(super) async fn ask(&self, part: &Part, lane: &LaneKey, delivery: Delivery) -> Asked {
        let queue = park::queue(&self.out.topology, part.index, lane);
        let asked = park::moved(
            &self.out.publisher,
            &queue,
            &delivery.data,
            delivery.properties.clone(),
        )
        .await;
        match asked {
            Ok(false) => Asked::Direct(Box::new(delivery)),
            Ok(true) => {
                self.ack(part, &delivery).await;
                Asked::Parked
            }
            Err(e) => {
                self.fail(part, &format!("could not ask whether a key is parked: {e}"));
                Asked::Failed
            }
        }
    }

    /// Park `lane`: with `head` (a waiting head, unsettled), publish the lease and declare
    /// the park queue first; then move the head and what waits behind it, start draining,
    /// and move what arrives until nothing is left to move.
    pub(super) async fn park(
        self: Arc<Self>,
        part: Arc<Part>,
        lane: LaneKey,
        head: Option<Delivery>,
    ) {
        if self.stopped() {
            // Its events stay unacknowledged and go back with the channel.
            return;
        }
        let queue = park::queue(&self.out.topology, part.index, &lane);
        // Parked first: the lease may come back at once, and must find the lane parked.
        let rest = part.lanes.park(&lane);
        self.waiting(&lane).sub(rest.len() as i64);
        if head.is_some() {
            let out = &self.out;
            // The lease, then the queue: from now on the partition leads to the park queue,
            // whatever happens next.
            let ready = match park::lease(&out.publisher, &out.topology, part.index, &lane).await {
                Ok(()) => park::declare(&part.park_channel, &out.topology, part.index, &queue)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = ready {
                return self.fail(&part, &format!("could not park a key: {e}"));
            }
            tracing::info!(partition = part.index, profile = %lane.0, queue = %queue, "a waiting key holds more than its share of the window: parked");
        }
        for d in head.into_iter().chain(rest) {
            if !self.move_one(&part, &lane, &queue, d).await {
                return;
            }
        }
        let (me, p) = (self.clone(), part.clone());
        self.tracker.spawn(me.drain(p, lane.clone()));
        self.move_arrivals(&part, &lane, &queue).await;
    }

    /// A parked lane's arrival, when nobody was moving: move it and what follows.
    pub(super) async fn mover(self: Arc<Self>, part: Arc<Part>, lane: LaneKey, first: Delivery) {
        let queue = park::queue(&self.out.topology, part.index, &lane);
        if self.move_one(&part, &lane, &queue, first).await {
            self.move_arrivals(&part, &lane, &queue).await;
        }
    }

    async fn move_arrivals(&self, part: &Part, lane: &LaneKey, queue: &str) {
        while let Some(d) = part.lanes.next_to_move(lane) {
            self.waiting(lane).dec();
            if !self.move_one(part, lane, queue, d).await {
                return;
            }
        }
    }

    /// Publish `d` to the park queue, confirmed, then ack it on the partition. `false` when
    /// it could not be moved (shutdown, or the broker refused): it stays unacknowledged, and
    /// so does everything after it, until the channel closes.
    async fn move_one(&self, part: &Part, lane: &LaneKey, queue: &str, d: Delivery) -> bool {
        if self.stopped() {
            return false;
        }
        match park::moved(&self.out.publisher, queue, &d.data, d.properties.clone()).await {
            Ok(true) => {
                self.ack(part, &d).await;
                part.lanes.moved(lane);
                true
            }
            Ok(false) => {
                self.fail(part, &format!("park queue {queue} is gone"));
                false
            }
            Err(e) => {
                self.fail(
                    part,
                    &format!("could not move an event to park queue {queue}: {e}"),
                );
                false
            }
        }
    }

    /// Process the park queue's events one at a time. Once nothing arrives for a moment, a
    /// probe is sent through the queue: when it comes back, every event moved before it has
    /// been processed; if nothing was moved since and nothing is on its way, the queue is
    /// deleted, the lane's leases are acked and the lane is processed directly again.
    pub(super) async fn drain(self: Arc<Self>, part: Arc<Part>, lane: LaneKey) {
        let (d, out) = (&self.dispatcher, &self.out);
        let queue = park::queue(&out.topology, part.index, &lane);
        let mut consumer = match park::consume(&part.park_channel, &queue).await {
            Ok(c) => c,
            Err(e) => {
                return self.fail(&part, &format!("could not consume park queue {queue}: {e}"));
            }
        };
        // The probe on its way through the queue: its id, and the moves it comes after.
        let mut probe: Option<(String, u64)> = None;
        loop {
            let next = tokio::select! {
                biased;
                () = self.over.cancelled() => return part.keep(consumer),
                next = consumer.next() => next,
                () = tokio::time::sleep(IDLE), if probe.is_none() => {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    let moves = part.lanes.moves(&lane);
                    if let Err(e) = park::probe(&out.publisher, &queue, &id).await {
                        self.fail(&part, &format!("could not probe park queue {queue}: {e}"));
                        return part.keep(consumer);
                    }
                    probe = Some((id, moves));
                    continue;
                }
            };
            let Some(Ok(delivery)) = next else {
                if !self.stopped() {
                    self.fail(&part, &format!("the consumer of park queue {queue} ended"));
                }
                return;
            };
            part.park_acks.received(delivery.delivery_tag);
            if park::is_marked(&delivery.properties, park::PROBE) {
                self.ack_with(&part.park_acks, &delivery).await;
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str());
                let Some((_, moves)) = probe.take_if(|(ours, _)| Some(ours.as_str()) == id) else {
                    continue;
                };
                if part.lanes.try_unpark(&lane, moves) {
                    return self.unpark(&part, lane, &queue, consumer.tag()).await;
                }
                continue;
            }
            d.metrics.inflight.inc();
            let settler = out.settler(&d.settle_backoff, &d.shutdown, &part.park_acks);
            let end = d
                .handle_ordered(&settler, delivery, &self.memory, None, &self.over)
                .await;
            d.metrics.inflight.dec();
            if !matches!(end, super::OrderedEnd::Settled) {
                // Left unacknowledged (shutdown, a refused settlement): it goes back to the
                // park queue's head when the channel closes.
                if !self.stopped() {
                    self.fail(
                        &part,
                        &format!("an event of park queue {queue} was not settled"),
                    );
                }
                return part.keep(consumer);
            }
        }
    }

    /// Everything of the lane that was parked has been processed: stop consuming (nothing
    /// is held), delete the queue, ack the leases, go on directly.
    async fn unpark(
        self: &Arc<Self>,
        part: &Arc<Part>,
        lane: LaneKey,
        queue: &str,
        tag: lapin::types::ShortString,
    ) {
        let ch = &part.park_channel;
        let _ = ch
            .basic_cancel(tag, lapin::options::BasicCancelOptions::default())
            .await;
        if let Err(e) = park::delete(ch, queue).await {
            return self.fail(part, &format!("could not delete park queue {queue}: {e}"));
        }
        part.know(&lane);
        let (leases, next) = part.lanes.unparked(&lane);
        for lease in &leases {
            self.ack(part, lease).await;
        }
        if let Some(head) = next {
            self.waiting(&lane).dec();
            self.spawn_lane(part, lane, head);
        }
    }

    /// Ack a delivery of the partition's channel that needs no settlement (moved, a lease).
    pub(super) async fn ack(&self, part: &Part, delivery: &Delivery) {
        self.ack_with(&part.acks, delivery).await;
    }

    /// Ack a delivery of the channel of `acks`. A failed ack fails with its channel: the
    /// broker then returns the delivery.
    async fn ack_with(&self, acks: &Acks, delivery: &Delivery) {
        let d = &self.dispatcher;
        let settler = self.out.settler(&d.settle_backoff, &d.shutdown, acks);
        if let Err(e) = settler.ack(delivery).await {
            tracing::warn!(error = %e, "ack failed");
        }
    }
}
