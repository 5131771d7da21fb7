//! Ordered delivery per key (SPEC section 15).
//!
//! Publishers send ordered events to `<exchange>.ordered`, a consistent-hash exchange that
//! hashes the `ordering_key` header onto N quorum queues `<queue>.ordered.<i>`, each with a
//! single active consumer: all events of a key are in one queue, in publish order, and one
//! replica at a time reads that queue.
//!
//! Design decisions:
//! - Within a partition, events are split into lanes by (profile, key) ([`Lanes`]). Only a
//!   lane's head is processed; the events behind it wait in memory, unacknowledged, and the
//!   next one starts when the head is settled (delivered or dead-lettered). Other lanes of
//!   the same partition go on meanwhile.
//! - A failed head is retried, and a deferred head waits (endpoint protection), **here**,
//!   unacknowledged, never through a delay queue: a republished event would go behind its
//!   key's later events. Each wait is capped at [`ORDERED_MAX_WAIT`] (15 minutes) because
//!   the broker closes a channel that holds a message unacknowledged past its consumer
//!   timeout (30 minutes by default). The attempts made are remembered by event id in
//!   [`Attempts`], in the process, so `max_attempts` holds even when a closed channel
//!   returns the event; `max_age` holds through the event's timestamp.
//! - Nothing of a key leaves its partition before its turn except to its own park queue
//!   (next point), so no crash can reorder it: after a kill -9, a lost connection, a broker
//!   restart or a failover, the broker returns the unacknowledged events to the partition's
//!   queue in their places and the next active consumer starts again from the oldest. A
//!   callback may be repeated (same `webhook-id`), but no event's first 2xx can precede
//!   that of an earlier event of its key.
//! - The memory bound and fairness: each partition's channel has a prefetch of
//!   `amqp.prefetch / N` (rounded up), so ordered events add at most about one
//!   `amqp.prefetch` of events in memory. A key whose head waits (back-off, deferral) holds
//!   at most its share of that window (`window / (waiting heads + 1)`, see
//!   [`park::share`]); beyond it the lane, head included, is parked in a queue of its own
//!   and read back one event at a time ([`park`] says how, and why that survives crashes),
//!   so the partition's other keys always keep a share of the window.
//! - Stopping hands a partition over by closing its channel, never by cancelling its
//!   consumer: on a cancel a quorum queue activates the next single active consumer (another
//!   replica) at once, while the cancelled one still holds its unacknowledged events, and
//!   the next one would be sent a key's later events first (tested in tests/ordered.rs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::amqp::headers;

pub mod lanes;
pub mod park;
mod parked;
pub mod partition;

pub use lanes::Lanes;

/// The longest an ordered event waits between two attempts (or for its turn at a deferral).
pub const ORDERED_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Remembered attempt counts beyond this many are forgotten (events another replica took
/// over and settled leave theirs behind).
const REMEMBERED: usize = 100_000;

/// How an ordered event's processing ended.
#[derive(Debug)]
pub enum OrderedEnd {
    /// Delivered or dead-lettered, and acked: its lane goes on.
    Settled,
    /// Left unacknowledged (shutdown, a lost channel, a refused settlement): the broker
    /// returns it and everything behind it; its lane stops here.
    Left,
    /// It was waiting, and its lane holds more than its share of the window: the event,
    /// unsettled and unacknowledged, to be parked with its lane ([`park`]).
    Park(Box<Delivery>),
}

/// What an ordered head's wait needs to know to give its lane up for parking.
pub struct Parking<'a> {
    pub window: &'a park::Window,
    pub lanes: &'a Lanes,
    pub lane: &'a LaneKey,
    /// The partition channel's acks: how many of its deliveries are open.
    pub acks: &'a crate::amqp::Acks,
}

impl Parking<'_> {
    /// The partition's window is full (the broker sends it nothing more) and the lane, its
    /// head included, holds more than its share of it.
    pub fn due(&self) -> bool {
        self.window.full(self.acks.open()) && self.window.over(1 + self.lanes.queued(self.lane))
    }
}

/// How a wait in place ended.
pub enum InPlace {
    Waited,
    /// Shutdown, or the session ended.
    Stopped,
    /// Its lane is due for parking ([`Parking::due`]).
    Park,
}

/// How often a waiting head checks whether its lane is due for parking.
const PARK_CHECK: Duration = Duration::from_millis(250);
/// How long a head waits before its lane may be parked: a deferral for a moment (a busy
/// slot) does not move a key to a queue of its own.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Wait until `until` in place; with `parking`, give up as soon as the lane is due for
/// parking, the head counted as waiting in its partition's window meanwhile.
pub async fn wait_in_place(
    until: Instant,
    parking: Option<&Parking<'_>>,
    stop: &CancellationToken,
) -> InPlace {
    let _waiting = parking.map(|p| p.window.wait());
    let waiting_since = Instant::now();
    loop {
        if waiting_since.elapsed() >= PARK_AFTER && parking.is_some_and(Parking::due) {
            return InPlace::Park;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return InPlace::Waited;
        }
        let step = if parking.is_some() {
            left.min(PARK_CHECK)
        } else {
            left
        };
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            () = stop.cancelled() => return InPlace::Stopped,
        }
    }
}

/// Attempts made on ordered events not yet settled, by event id, and until when a parked
/// head still waits for its back-off.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<String, (u32, Option<Instant>)>>);

impl Attempts {
    pub fn get(&self, id: &str) -> u32 {
        self.0
            .lock()
            .expect("attempts lock")
            .get(id)
            .map_or(0, |e| e.0)
    }

    pub fn set(&self, id: &str, attempts: u32) {
        let mut m = self.0.lock().expect("attempts lock");
        if m.len() >= REMEMBERED && !m.contains_key(id) {
            m.clear();
        }
        m.insert(id.to_owned(), (attempts, None));
    }

    /// A head parked in the middle of a wait: the rest of the wait, for when it comes back.
    pub fn hold_until(&self, id: &str, until: Instant) {
        let mut m = self.0.lock().expect("attempts lock");
        m.entry(id.to_owned()).or_default().1 = Some(until);
    }

    /// Until when the event still waits (once: it is forgotten here).
    pub fn until(&self, id: &str) -> Option<Instant> {
        let mut m = self.0.lock().expect("attempts lock");
        m.get_mut(id).and_then(|e| e.1.take())
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().expect("attempts lock").remove(id);
    }
}

/// A lane: the events of one (profile, key), in arrival order.
pub type LaneKey = (String, String);

/// The lane an ordered delivery belongs to. Events without a valid profile or key still
/// get a lane of their own kind, and are dead-lettered in turn by the pipeline.
pub fn lane_of(delivery: &Delivery) -> LaneKey {
    let h = delivery.properties.headers().as_ref();
    (
        headers::profile(h).unwrap_or_default(),
        headers::ordering_key(h).ok().flatten().unwrap_or_default(),
    )
}

/// The prefetch of each partition's channel: `prefetch / partitions`, rounded up.
pub fn partition_prefetch(prefetch: u16, partitions: u16) -> u16 {
    prefetch.div_ceil(partitions.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_shared_among_partitions() {
        assert_eq!(partition_prefetch(256, 8), 32);
        assert_eq!(partition_prefetch(256, 3), 86);
        assert_eq!(partition_prefetch(4, 8), 1);
        assert_eq!(partition_prefetch(1, 0), 1);
    }

    #[test]
    fn attempts_are_remembered_until_forgotten() {
        let a = Attempts::default();
        assert_eq!(a.get("e1"), 0);
        a.set("e1", 2);
        assert_eq!(a.get("e1"), 2);
        a.forget("e1");
        assert_eq!(a.get("e1"), 0);
    }
}
