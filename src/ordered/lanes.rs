//! The lanes of the partitions one session consumes: per (profile, key), whose head is being
//! processed, the events (`T`: deliveries) waiting behind it, and whether the lane is parked
//! (its events in its own queue, see [`super::park`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::LaneKey;

/// What to do with an event that reached its lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// The lane was idle: process it now (the caller becomes the lane's worker).
    Process(T),
    /// The lane is parked and nobody is moving its events: move it (the caller becomes the
    /// lane's mover).
    Move(T),
    /// It waits in the lane, behind its head or for the lane's mover.
    Queued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Events are processed here, one after the other.
    Direct,
    /// Events go to the lane's park queue; its drainer processes them from there.
    Parked,
    /// The park queue is empty and being deleted: arrivals wait here.
    Unparking,
}

#[derive(Debug)]
struct Lane<T> {
    waiting: VecDeque<T>,
    mode: Mode,
    /// Somebody is moving this parked lane's arrivals to its park queue.
    mover: bool,
    /// Leases (see [`super::park`]) held until the lane is unparked.
    leases: Vec<T>,
    /// Events moved to the park queue so far.
    moves: u64,
    /// The lane's worker is asking whether the key has a park queue.
    asking: bool,
}

impl<T> Lane<T> {
    fn new(mode: Mode) -> Self {
        Lane {
            waiting: VecDeque::new(),
            mode,
            mover: false,
            leases: Vec::new(),
            moves: 0,
            asking: false,
        }
    }
}

/// What a lease met in its lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Lease<T> {
    /// The lane is parked here: the lease is held until it is unparked.
    Held,
    /// The lane was idle: it is parked now, with the lease held; the caller drains it.
    Adopted,
    /// The lane is known not to be parked: the lease is stale (its park queue was emptied
    /// and deleted); ack it.
    Stale(T),
}

/// See the module doc.
#[derive(Debug)]
pub struct Lanes<T = lapin::message::Delivery>(Mutex<HashMap<LaneKey, Lane<T>>>);

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T> Lanes<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LaneKey, Lane<T>>> {
        self.0.lock().expect("lanes lock")
    }

    /// Take `delivery` into its lane.
    pub fn arrive(&self, lane: &LaneKey, delivery: T) -> Arrival<T> {
        let mut lanes = self.lock();
        let Some(l) = lanes.get_mut(lane) else {
            lanes.insert(lane.clone(), Lane::new(Mode::Direct));
            return Arrival::Process(delivery);
        };
        if l.mode == Mode::Parked && !l.mover {
            l.mover = true;
            return Arrival::Move(delivery);
        }
        l.waiting.push_back(delivery);
        Arrival::Queued
    }

    /// The lane's head was settled: its next event, or `None` (the lane is idle again).
    pub fn next(&self, lane: &LaneKey) -> Option<T> {
        let mut lanes = self.lock();
        let l = lanes.get_mut(lane)?;
        match l.waiting.pop_front() {
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
        self.lock()
            .remove(lane)
            .map(|l| l.waiting)
            .unwrap_or_default()
    }

    /// Events waiting in `lane` (behind its head, or to be moved).
    pub fn queued(&self, lane: &LaneKey) -> usize {
        self.lock().get(lane).map_or(0, |l| l.waiting.len())
    }

    /// Events waiting behind a head, in all lanes.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|l| l.waiting.len()).sum()
    }

    /// Park the lane, whose worker becomes its mover: what waited in it, in order, to be
    /// moved after the head.
    pub fn park(&self, lane: &LaneKey) -> VecDeque<T> {
        let mut lanes = self.lock();
        let l = lanes
            .entry(lane.clone())
            .or_insert_with(|| Lane::new(Mode::Parked));
        l.mode = Mode::Parked;
        l.mover = true;
        std::mem::take(&mut l.waiting)
    }

    /// The mover's next event, or `None`: it stops being the mover.
    pub fn next_to_move(&self, lane: &LaneKey) -> Option<T> {
        let mut lanes = self.lock();
        let l = lanes.get_mut(lane)?;
        let next = l.waiting.pop_front();
        if next.is_none() {
            l.mover = false;
        }
        next
    }

    /// One more event of `lane` is in its park queue.
    pub fn moved(&self, lane: &LaneKey) {
        if let Some(l) = self.lock().get_mut(lane) {
            l.moves += 1;
        }
    }

    /// How many events of `lane` were moved to its park queue so far.
    pub fn moves(&self, lane: &LaneKey) -> u64 {
        self.lock().get(lane).map_or(0, |l| l.moves)
    }

    /// A lease of `lane` arrived; `known`: an idle lane is known not to be parked (asked
    /// about, or unparked, in this session).
    pub fn lease(&self, lane: &LaneKey, lease: T, known: bool) -> Lease<T> {
        let mut lanes = self.lock();
        match lanes.get_mut(lane) {
            None if known => Lease::Stale(lease),
            None => {
                let mut l = Lane::new(Mode::Parked);
                l.leases.push(lease);
                lanes.insert(lane.clone(), l);
                Lease::Adopted
            }
            // Processed directly, and not asking about a park queue: none exists.
            Some(l) if l.mode == Mode::Direct && !l.asking => Lease::Stale(lease),
            Some(l) => {
                l.leases.push(lease);
                Lease::Held
            }
        }
    }

    /// The lane's worker asks whether the key has a park queue: leases are held meanwhile.
    pub fn asking(&self, lane: &LaneKey) {
        if let Some(l) = self.lock().get_mut(lane) {
            l.asking = true;
        }
    }

    /// The answer was no: the leases held meanwhile are stale.
    pub fn asked(&self, lane: &LaneKey) -> Vec<T> {
        self.lock()
            .get_mut(lane)
            .map(|l| {
                l.asking = false;
                std::mem::take(&mut l.leases)
            })
            .unwrap_or_default()
    }

    /// Every lane, emptied, with how many events waited in it (the session ended).
    pub fn clear(&self) -> Vec<(LaneKey, usize)> {
        self.lock()
            .drain()
            .map(|(k, l)| (k, l.waiting.len()))
            .collect()
    }

    /// The park queue's consumer has had everything moved to it up to `moves` events: `true`
    /// (now unparking) if nothing was moved since and nothing is on its way, so that the
    /// queue can be deleted; `false` otherwise.
    pub fn try_unpark(&self, lane: &LaneKey, moves: u64) -> bool {
        let mut lanes = self.lock();
        match lanes.get_mut(lane) {
            Some(l)
                if l.mode == Mode::Parked
                    && !l.mover
                    && l.waiting.is_empty()
                    && l.moves == moves =>
            {
                l.mode = Mode::Unparking;
                true
            }
            _ => false,
        }
    }

    /// The park queue is deleted: the lane is direct again. Its leases, to ack, and the
    /// next event to process (`None`: the lane is idle).
    pub fn unparked(&self, lane: &LaneKey) -> (Vec<T>, Option<T>) {
        let mut lanes = self.lock();
        let Some(l) = lanes.get_mut(lane) else {
            return (Vec::new(), None);
        };
        l.mode = Mode::Direct;
        let leases = std::mem::take(&mut l.leases);
        let next = l.waiting.pop_front();
        if next.is_none() {
            lanes.remove(lane);
        }
        (leases, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> LaneKey {
        ("p".to_owned(), k.to_owned())
    }

    #[test]
    fn a_lane_processes_its_head_and_keeps_the_rest_in_order() {
        let lanes = Lanes::default();
        let (a, b) = (key("A"), key("B"));
        assert_eq!(lanes.arrive(&a, 1), Arrival::Process(1));
        assert_eq!(lanes.arrive(&a, 2), Arrival::Queued);
        assert_eq!(
            lanes.arrive(&b, 10),
            Arrival::Process(10),
            "another key goes on"
        );
        assert_eq!(lanes.arrive(&a, 3), Arrival::Queued);
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(lanes.queued(&a), 2);
        assert_eq!(lanes.next(&a), Some(2));
        assert_eq!(lanes.next(&b), None, "B is idle again");
        assert_eq!(lanes.arrive(&b, 11), Arrival::Process(11));
        assert_eq!(lanes.arrive(&a, 4), Arrival::Queued);
        assert_eq!(lanes.abandon(&a), VecDeque::from([3, 4]));
        assert_eq!(
            lanes.arrive(&a, 3),
            Arrival::Process(3),
            "an abandoned lane starts again"
        );
    }

    #[test]
    fn a_parked_lane_moves_its_events_in_order_and_comes_back() {
        let lanes = Lanes::default();
        let a = key("A");
        assert_eq!(lanes.arrive(&a, 1), Arrival::Process(1));
        assert_eq!(lanes.arrive(&a, 2), Arrival::Queued);
        assert_eq!(lanes.arrive(&a, 3), Arrival::Queued);
        // The head's worker parks the lane and moves 1, then 2 and 3, then what arrives.
        assert_eq!(lanes.park(&a), VecDeque::from([2, 3]));
        assert_eq!(lanes.arrive(&a, 4), Arrival::Queued, "the mover is busy");
        assert!(!lanes.try_unpark(&a, 0), "4 is still to be moved");
        assert_eq!(lanes.next_to_move(&a), Some(4));
        let seen = lanes.moves(&a);
        lanes.moved(&a);
        assert_eq!(lanes.next_to_move(&a), None);
        assert!(
            !lanes.try_unpark(&a, seen),
            "4 was moved after what the drainer had"
        );
        assert_eq!(
            lanes.arrive(&a, 5),
            Arrival::Move(5),
            "nobody moves: the caller does"
        );
        assert_eq!(lanes.lease(&a, 100, true), Lease::Held);
        assert_eq!(lanes.next_to_move(&a), None);
        assert!(lanes.try_unpark(&a, lanes.moves(&a)));
        assert_eq!(
            lanes.arrive(&a, 6),
            Arrival::Queued,
            "waits while unparking"
        );
        assert_eq!(lanes.unparked(&a), (vec![100], Some(6)));
        assert_eq!(lanes.arrive(&a, 7), Arrival::Queued, "behind 6, direct");
        assert_eq!(lanes.lease(&a, 101, false), Lease::Stale(101));
        lanes.asking(&a);
        assert_eq!(
            lanes.lease(&a, 102, false),
            Lease::Held,
            "asked about: held"
        );
        assert_eq!(lanes.asked(&a), vec![102]);
        assert_eq!(lanes.lease(&a, 103, false), Lease::Stale(103));
        assert_eq!(lanes.next(&a), Some(7));
        assert_eq!(lanes.next(&a), None);
    }

    #[test]
    fn a_lease_for_an_idle_lane_parks_it() {
        let lanes = Lanes::default();
        let a = key("A");
        assert_eq!(
            lanes.lease(&a, 99, true),
            Lease::Stale(99),
            "known: not parked"
        );
        assert_eq!(lanes.lease(&a, 100, false), Lease::Adopted);
        assert_eq!(lanes.arrive(&a, 1), Arrival::Move(1));
        assert_eq!(lanes.next_to_move(&a), None);
        assert!(lanes.try_unpark(&a, 0));
        assert_eq!(lanes.unparked(&a), (vec![100], None));
        assert_eq!(lanes.arrive(&a, 2), Arrival::Process(2));
    }
}
