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
//! - Nothing of a key is ever taken off its queue before its turn, so no crash can reorder
//!   it: after a kill -9, a lost connection, a broker restart or a failover, the broker
//!   returns the unacknowledged events to the partition's queue in their places and the next
//!   active consumer starts again from the oldest. A callback may be repeated (same
//!   `webhook-id`), but no event's first 2xx can precede that of an earlier event of its key.
//! - The memory bound: each partition's channel has a prefetch of `amqp.prefetch / N`
//!   (rounded up), so ordered events add at most about one `amqp.prefetch` of events in
//!   memory. The limit of this design: a key whose head keeps failing holds its later events
//!   in that window; when they fill a partition's whole window, the other keys of that
//!   partition wait too until the head settles. More partitions make that rarer; see
//!   docs/events.md.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use lapin::message::Delivery;

use crate::amqp::headers;

pub mod partition;

/// The longest an ordered event waits between two attempts (or for its turn at a deferral).
pub const ORDERED_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Remembered attempt counts beyond this many are forgotten (events another replica took
/// over and settled leave theirs behind).
const REMEMBERED: usize = 100_000;

/// How an ordered event's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedEnd {
    /// Delivered or dead-lettered, and acked: its lane goes on.
    Settled,
    /// Left unacknowledged (shutdown, a lost channel, a refused settlement): the broker
    /// returns it and everything behind it; its lane stops here.
    Left,
}

/// Attempts made on ordered events not yet settled, by event id.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<String, u32>>);

impl Attempts {
    pub fn get(&self, id: &str) -> u32 {
        self.0
            .lock()
            .expect("attempts lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn set(&self, id: &str, attempts: u32) {
        let mut m = self.0.lock().expect("attempts lock");
        if m.len() >= REMEMBERED && !m.contains_key(id) {
            m.clear();
        }
        m.insert(id.to_owned(), attempts);
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

/// The lanes of the partitions one session consumes: whose head is being processed, and
/// the events (`T`: deliveries) waiting behind it.
#[derive(Debug)]
pub struct Lanes<T = Delivery>(Mutex<HashMap<LaneKey, VecDeque<T>>>);

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T> Lanes<T> {
    /// Take `delivery` into its lane: `Some` when the lane was idle (the caller processes
    /// it now), `None` when it waits behind the lane's head.
    pub fn arrive(&self, lane: &LaneKey, delivery: T) -> Option<T> {
        let mut lanes = self.0.lock().expect("lanes lock");
        match lanes.get_mut(lane) {
            Some(waiting) => {
                waiting.push_back(delivery);
                None
            }
            None => {
                lanes.insert(lane.clone(), VecDeque::new());
                Some(delivery)
            }
        }
    }

    /// The lane's head was settled: its next event, or `None` (the lane is idle again).
    pub fn next(&self, lane: &LaneKey) -> Option<T> {
        let mut lanes = self.0.lock().expect("lanes lock");
        let waiting = lanes.get_mut(lane)?;
        match waiting.pop_front() {
            Some(d) => Some(d),
            None => {
                lanes.remove(lane);
                None
            }
        }
    }

    /// The lane stopped with its head unsettled: what waited behind it, in order, to go
    /// back to the broker after the head.
    pub fn abandon(&self, lane: &LaneKey) -> VecDeque<T> {
        self.0
            .lock()
            .expect("lanes lock")
            .remove(lane)
            .unwrap_or_default()
    }

    /// Events waiting behind a head, in all lanes.
    pub fn waiting(&self) -> usize {
        self.0
            .lock()
            .expect("lanes lock")
            .values()
            .map(VecDeque::len)
            .sum()
    }
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
    fn a_lane_processes_its_head_and_keeps_the_rest_in_order() {
        let lanes = Lanes::default();
        let (a, b) = (
            ("p".to_owned(), "A".to_owned()),
            ("p".to_owned(), "B".to_owned()),
        );
        // (lane, event) arriving -> processed now?
        assert_eq!(lanes.arrive(&a, 1), Some(1));
        assert_eq!(lanes.arrive(&a, 2), None);
        assert_eq!(lanes.arrive(&b, 10), Some(10), "another key goes on");
        assert_eq!(lanes.arrive(&a, 3), None);
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(lanes.next(&a), Some(2));
        assert_eq!(lanes.next(&b), None, "B is idle again");
        assert_eq!(lanes.arrive(&b, 11), Some(11));
        assert_eq!(lanes.arrive(&a, 4), None);
        assert_eq!(lanes.abandon(&a), VecDeque::from([3, 4]));
        assert_eq!(
            lanes.arrive(&a, 3),
            Some(3),
            "an abandoned lane starts again"
        );
        assert_eq!(lanes.waiting(), 0);
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
