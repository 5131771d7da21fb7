//! What an admitted event holds: its place in the window ([`Hold`]), its leave to attempt
//! ([`Pass`]), and the guards that give back what an event that is not attempted took.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Shared, Stats};
use crate::profiles::breaker::{Breaker, Change, Health};
use crate::profiles::slots::Slot;
use crate::profiles::window::{Window, micros};

/// An event of this profile held in memory (from consume to settlement), for the fair share.
pub struct Hold {
    pub(super) stats: Arc<Stats>,
    pub(super) window: Arc<Window>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.stats.in_hand.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.window.active.fetch_sub(1, Ordering::AcqRel);
            if self.stats.saturated.swap(false, Ordering::AcqRel) {
                self.window.saturated.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Leave to attempt: a concurrency slot (and the probe, if it is one) until `finish`.
pub struct Pass {
    pub(super) _slot: Slot,
    pub(super) probe: bool,
    pub(super) started: Instant,
    pub(super) stats: Arc<Stats>,
    pub(super) breaker: Arc<Mutex<Breaker>>,
    pub(super) shared: Option<Shared>,
    pub(super) finished: bool,
}

impl Pass {
    /// Whether this attempt is its breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The attempt is over: teach the statistics and the breaker. Returns a breaker change
    /// worth logging, and whether the breaker is open now.
    pub fn finish(mut self, health: Health) -> (Change, bool) {
        self.finished = true;
        let now = Instant::now();
        let took = now - self.started;
        let s = &self.stats;
        let old = s.average_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            took.as_micros() as u64
        } else {
            (old * 4 + took.as_micros() as u64) / 5
        };
        s.average_us.store(new, Ordering::Relaxed);
        s.progress_at_us.store(micros(now), Ordering::Relaxed);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut b = self.breaker.lock().expect("breaker lock");
        (b.record(self.probe, health, now), b.is_open())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            if self.probe {
                hand_back_probe(&self.breaker, self.shared.as_ref());
            }
        }
    }
}

/// A probe that will not be attempted after all: the next event (here or, with a cluster,
/// on any replica) probes instead.
pub(super) fn hand_back_probe(breaker: &Mutex<Breaker>, shared: Option<&Shared>) {
    let settings = {
        let mut b = breaker.lock().expect("breaker lock");
        b.record(true, Health::Unknown, Instant::now());
        b.settings()
    };
    if let Some(s) = shared.filter(|s| s.cluster.is_up()) {
        let s = s.clone();
        tokio::spawn(async move {
            s.cluster
                .probe_result(&s.profile, Health::Unknown, settings.open_for)
                .await;
        });
    }
}

/// One more in a counter for as long as it lives.
pub(super) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(super) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands the probe back if the event is not attempted after all.
pub(super) struct ProbeGuard<'a>(pub(super) Option<(&'a Mutex<Breaker>, Option<&'a Shared>)>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some((breaker, shared)) = self.0 {
            hand_back_probe(breaker, shared);
        }
    }
}
