//! Consuming the partitions: one channel per partition queue, with its share of the
//! prefetch window, whose deliveries go to their lanes ([`super::Lanes`]); a lane that holds
//! more than its share while its head waits is parked ([`super::park`], the tasks in
//! `parked.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lanes::{Arrival, Lease};
use super::park::{self, Window};
use super::parked::Asked;
use super::{Attempts, LaneKey, Lanes, OrderedEnd, Parking, lane_of, partition_prefetch};
use crate::amqp::{Acks, Topology};
use crate::dispatch::Dispatcher;
use crate::settle::Outlet;

/// Known lanes beyond this many are forgotten (and asked about again).
const KNOWN: usize = 100_000;

/// A partition being consumed: its number, channel (closed at shutdown), tag and prefetch,
/// and the channel its park queues are read on (one event at a time).
pub struct Partition {
    pub index: u16,
    pub channel: Channel,
    pub tag: String,
    pub consumer: Consumer,
    pub prefetch: u16,
    pub park_channel: Channel,
}

/// Open a channel per partition on `conn` and consume each queue. With the queues' single
/// active consumer, only one replica at a time receives a partition's events; the others
/// wait as standbys and take over when it goes.
pub async fn open(
    conn: &Connection,
    topology: &Topology,
    prefetch: u16,
    tag: &str,
) -> Result<Opened, lapin::Error> {
    let mut out = Opened(Vec::with_capacity(usize::from(topology.partitions)));
    let prefetch = partition_prefetch(prefetch, topology.partitions);
    for i in 0..topology.partitions {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
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
        let park_channel = conn.create_channel().await?;
        park_channel
            .basic_qos(1, BasicQosOptions::default())
            .await?;
        out.0.push(Partition {
            index: i,
            channel,
            tag,
            consumer,
            prefetch,
            park_channel,
        });
    }
    Ok(out)
}

/// Partitions being consumed, whose consumers must not be dropped while their channels are
/// open: dropping one cancels it, and a cancel hands the partition to another replica while
/// this channel still holds events sent ahead (see the module doc). A setup that fails or is
/// abandoned (its time limit, shutdown) drops this instead: it closes the channels, so the
/// broker takes the events back in place first, and forgets the consumers.
pub struct Opened(Vec<Partition>);

impl Opened {
    /// The partitions, for the session to consume.
    pub fn take(mut self) -> Vec<Partition> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            let Partition {
                channel,
                park_channel,
                consumer,
                ..
            } = p;
            std::mem::forget(consumer);
            tokio::spawn(async move {
                let _ = channel.close(200, "setup abandoned".into()).await;
                let _ = park_channel.close(200, "setup abandoned".into()).await;
            });
        }
    }
}

/// One partition as this session consumes it.
pub struct Part {
    pub index: u16,
    pub channel: Channel,
    /// The channel's acks (see [`crate::amqp::acks`]).
    pub acks: Arc<Acks>,
    pub window: Window,
    /// Where park queues are declared, read and deleted, with its acks (never batched).
    pub park_channel: Channel,
    pub park_acks: Acks,
    /// Whether the partition may have parked keys: asked at its first delivery.
    parked_somewhere: AtomicBool,
    /// Lanes known not to be parked: asked about, or unparked, in this session.
    known: Mutex<HashSet<LaneKey>>,
    /// This partition's lanes (its own: a lane's acks belong to its partition's channel).
    pub lanes: Lanes,
    /// Park queue consumers that stopped while they may hold an event: kept until the
    /// channel closes, since dropping one would cancel it (and hand its queue over).
    pub(super) kept: Mutex<Vec<Consumer>>,
}

impl Part {
    pub fn new(p: &Partition, acks: Arc<Acks>) -> Self {
        Part {
            index: p.index,
            channel: p.channel.clone(),
            acks,
            window: Window::new(p.prefetch),
            park_channel: p.park_channel.clone(),
            park_acks: Acks::singles(),
            parked_somewhere: AtomicBool::new(true),
            known: Mutex::default(),
            lanes: Lanes::default(),
            kept: Mutex::default(),
        }
    }

    /// Whether `lane`'s park queue must be asked about before its events are processed.
    pub(super) fn must_ask(&self, lane: &LaneKey) -> bool {
        self.parked_somewhere.load(Ordering::Relaxed)
            && !self.known.lock().expect("known lock").contains(lane)
    }

    /// `lane` is not parked, and only this session could park it now.
    pub(super) fn know(&self, lane: &LaneKey) {
        if !self.parked_somewhere.load(Ordering::Relaxed) {
            return;
        }
        let mut known = self.known.lock().expect("known lock");
        if known.len() >= KNOWN {
            known.clear();
        }
        known.insert(lane.clone());
    }
}

/// Everything a partition's lanes need.
pub struct Feed {
    pub dispatcher: Arc<Dispatcher>,
    pub out: Arc<Outlet>,
    pub memory: Arc<Attempts>,
    pub tracker: TaskTracker,
    /// A child of the dispatcher's shutdown token, cancelled too when the session ends and by
    /// a partition's task that cannot go on without risking its keys' order (the session then
    /// ends as lost, and its channels' closing gives every unsettled event back to the
    /// broker, in its place).
    pub over: CancellationToken,
}

impl Feed {
    /// Hand each delivery of `consumer` to its lane until the consumer ends (its channel
    /// closed at shutdown, or lost); an idle lane's head starts a task on the tracker.
    ///
    /// At shutdown the consumer is not cancelled (see [`crate::worker`]'s drain): what still
    /// arrives is held here, unacknowledged and untouched, until the channel closes and the
    /// broker takes it back in its place.
    pub async fn run(self: Arc<Self>, part: Arc<Part>, mut consumer: Consumer) {
        let mut held = Vec::new();
        let mut asked = false;
        // The consumer is dropped only once its channel is closed: dropping it cancels it,
        // and a cancel hands the partition to the next replica while this one still holds
        // events (see the module doc).
        loop {
            let Some(Ok(delivery)) = consumer.next().await else {
                if !self.stopped() {
                    self.fail(&part, "its consumer ended");
                }
                break;
            };
            // Open until settled, so that no `multiple` ack ever covers it.
            part.acks.received(delivery.delivery_tag);
            if !asked && !self.stopped() {
                // This session consumes the partition now: does it have parked keys? An
                // error counts as yes (each key is then asked about).
                asked = true;
                let out = &self.out;
                let any = park::any_parked(&out.publisher, &out.topology, part.index).await;
                if let Err(e) = &any {
                    tracing::warn!(partition = part.index, error = %e, "could not ask for parked keys; asking key by key");
                }
                part.parked_somewhere
                    .store(any.unwrap_or(true), Ordering::Relaxed);
            }
            // Checked after every wait: nothing starts once the session is over.
            if self.stopped() {
                held.push(delivery);
                continue;
            }
            let lane = lane_of(&delivery);
            if park::is_marked(&delivery.properties, park::LEASE) {
                let known = !part.must_ask(&lane);
                match part.lanes.lease(&lane, delivery, known) {
                    Lease::Held => {}
                    Lease::Stale(lease) => self.ack(&part, &lease).await,
                    Lease::Adopted => {
                        // Declared before anything of the key can be moved to it.
                        let out = &self.out;
                        let queue = park::queue(&out.topology, part.index, &lane);
                        match park::declare(&part.park_channel, &out.topology, part.index, &queue)
                            .await
                        {
                            Ok(()) if self.stopped() => {}
                            Ok(()) => {
                                let (me, part) = (self.clone(), part.clone());
                                self.tracker.spawn(me.drain(part, lane));
                            }
                            Err(e) => self
                                .fail(&part, &format!("could not declare park queue {queue}: {e}")),
                        }
                    }
                }
                continue;
            }
            match part.lanes.arrive(&lane, delivery) {
                Arrival::Process(head) => self.spawn_lane(&part, lane, head),
                Arrival::Move(first) => {
                    let (me, part) = (self.clone(), part.clone());
                    self.tracker.spawn(me.mover(part, lane, first));
                }
                Arrival::Queued => self.waiting(&lane).inc(),
            }
        }
    }

    pub(super) fn spawn_lane(self: &Arc<Self>, part: &Arc<Part>, lane: LaneKey, head: Delivery) {
        let (me, part) = (self.clone(), part.clone());
        self.tracker.spawn(me.lane(part, lane, head));
    }

    /// Process a lane's events one after the other, each once the one before is settled;
    /// park the lane when its waiting head holds more than its share of the window.
    async fn lane(self: Arc<Self>, part: Arc<Part>, lane: LaneKey, head: Delivery) {
        let d = &self.dispatcher;
        let mut next = Some(head);
        while let Some(delivery) = next.take() {
            if self.stopped() {
                // The session is over: this event and the rest stay unacknowledged and go
                // back, in their places, with the channel.
                let rest = part.lanes.abandon(&lane);
                self.waiting(&lane).sub(rest.len() as i64);
                return;
            }
            if part.must_ask(&lane) {
                part.lanes.asking(&lane);
                // The key's first event in this session, in a partition with parked keys.
                match self.ask(&part, &lane, delivery).await {
                    Asked::Direct(delivery) => {
                        part.know(&lane);
                        for lease in part.lanes.asked(&lane) {
                            self.ack(&part, &lease).await;
                        }
                        next = Some(*delivery);
                        continue;
                    }
                    Asked::Parked => return self.park(part, lane, None).await,
                    // Nothing of the key may go before the answer; the session ends.
                    Asked::Failed => return,
                }
            }
            d.metrics.inflight.inc();
            let settler = self.out.settler(&d.settle_backoff, &d.shutdown, &part.acks);
            let parking = Parking {
                window: &part.window,
                lanes: &part.lanes,
                lane: &lane,
                acks: &part.acks,
            };
            let end = d
                .handle_ordered(&settler, delivery, &self.memory, Some(&parking), &self.over)
                .await;
            d.metrics.inflight.dec();
            match end {
                OrderedEnd::Settled if self.stopped() => {
                    // The rest stays unacknowledged and returns, in its place, when the
                    // channel closes.
                    let rest = part.lanes.abandon(&lane);
                    self.waiting(&lane).sub(rest.len() as i64);
                }
                OrderedEnd::Settled => {
                    next = part.lanes.next(&lane);
                    if next.is_some() {
                        self.waiting(&lane).dec();
                    }
                }
                OrderedEnd::Park(head) => return self.park(part, lane, Some(*head)).await,
                OrderedEnd::Left => {
                    // Behind an unsettled head: back to the broker in order, after it. A
                    // refused settlement has nacked the head already, so nacks keep the order.
                    // At shutdown (or with the channel gone) the head is still held: a nack
                    // now would put the rest ahead of it, so they stay unacknowledged and
                    // return with it, in their places, when the channel closes.
                    let rest = part.lanes.abandon(&lane);
                    self.waiting(&lane).sub(rest.len() as i64);
                    if self.stopped() {
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
                            part.acks.released(d.delivery_tag);
                        }
                    }
                }
            }
        }
    }

    /// Shutdown, or the session is over (`over` is a child of shutdown): nothing more is
    /// started.
    pub(super) fn stopped(&self) -> bool {
        self.over.is_cancelled()
    }

    /// A partition's task cannot go on without risking its keys' order: end the session.
    pub(super) fn fail(&self, part: &Part, why: &str) {
        tracing::error!(
            partition = part.index,
            "ordered delivery: {why}; the session ends and every unsettled event goes back to the broker in its place"
        );
        self.over.cancel();
    }

    /// The session ended: what still waited in the lanes of `parts` no longer counts.
    pub fn clear(&self, parts: &[Arc<Part>]) {
        for part in parts {
            for (lane, n) in part.lanes.clear() {
                self.waiting(&lane).sub(n as i64);
            }
        }
    }

    /// `ordered_waiting{profile}` of the lane's profile (`(none)` for one not configured).
    pub(super) fn waiting(&self, lane: &LaneKey) -> IntGauge {
        let d = &self.dispatcher;
        match d.registry.load().endpoint(&lane.0) {
            Some(ep) => ep.metrics.ordered_waiting().clone(),
            None => d.metrics.unprofiled_waiting(),
        }
    }
}

impl Part {
    /// Keep a park queue's consumer until the channel closes (see [`Part::kept`]).
    pub(super) fn keep(&self, consumer: Consumer) {
        self.kept.lock().expect("kept lock").push(consumer);
    }
}
