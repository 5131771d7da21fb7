//! How long an event would wait for one of its profile's slots, and the bookings of the
//! events deferred for one (pure functions, table-tested in `tests.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::micros;

/// How a profile's attempts are going.
#[derive(Debug, Default)]
pub struct Stats {
    pub(super) in_hand: AtomicUsize,
    pub(super) waiting: AtomicUsize,
    pub(super) rate_waiting: AtomicUsize,
    pub(super) in_flight: AtomicUsize,
    /// Moving average of attempt durations, microseconds.
    pub(super) average_us: AtomicU64,
    /// When an attempt last finished, or the first one started after none were out.
    pub(super) progress_at_us: AtomicU64,
    /// Counted in [`Window`]'s `saturated`: it deferred an event within its share, last at
    /// `saturated_at_us`.
    pub(super) saturated: AtomicBool,
    pub(super) saturated_at_us: AtomicU64,
    /// Until when the events deferred so far for a slot have booked the profile's slots.
    pub(super) booked_until_us: AtomicU64,
}

impl Stats {
    /// The typical attempt time as things stand.
    pub(super) fn typical(&self, now: Instant) -> Duration {
        let average = Duration::from_micros(self.average_us.load(Ordering::Relaxed));
        let stalled = if self.in_flight.load(Ordering::Relaxed) > 0 {
            Duration::from_micros(
                micros(now).saturating_sub(self.progress_at_us.load(Ordering::Relaxed)),
            )
        } else {
            Duration::ZERO
        };
        average.max(stalled)
    }
}

/// The expected wait for a slot when `ahead` events wait before this one for `slots` slots
/// of attempts that take `typical` each. Pure.
pub fn expected_wait(typical: Duration, ahead: usize, slots: usize) -> Duration {
    let rounds = ahead / slots.max(1) + 1;
    typical.saturating_mul(rounds as u32)
}

/// A deferral for a concurrency slot, booked behind the ones before it: the event's turn
/// comes no sooner than its own expected wait and after every event deferred before it, each
/// of which holds a slot for `typical` (so `slots` of them per `typical`). Returns the wait
/// and the new end of the bookings. Pure.
///
/// Without it, every event of a slow profile's backlog would be deferred for the same short
/// wait, come back together and be deferred again, over and over: each event is now
/// deferred about once, for the wait its place in the whole backlog implies.
pub fn book(
    now_us: u64,
    booked_until_us: u64,
    wait: Duration,
    typical: Duration,
    slots: usize,
) -> (Duration, u64) {
    let own = now_us.saturating_add(wait.as_micros() as u64);
    let start = own.max(booked_until_us);
    let each = (typical.as_micros() as u64) / (slots.max(1) as u64);
    (
        Duration::from_micros(start - now_us),
        start.saturating_add(each),
    )
}
