//! Endpoint protection (SPEC section 9): whether one of a profile's events may be attempted
//! now, may wait for a moment in memory, or must be deferred.
//!
//! Design decisions:
//! - The checks run in this order: a concurrency slot (which may mean waiting), the breaker
//!   (which may have opened meanwhile), then the rate limit (taking a rate token only for an
//!   attempt that will happen).
//! - An event waits in memory only when the expected wait is under a second, and only while
//!   its profile holds no more than its fair share of the prefetch window (`prefetch /
//!   profiles with events in hand`) unless the wait is very short ([`SHORT_WAIT`]): a fast
//!   endpoint's events turn over in milliseconds, and deferring them because a quiet profile
//!   has one event in hand would only churn. A waiting event looks at its expected wait
//!   again every [`RECHECK`] and never waits past the second. Otherwise it is deferred with
//!   the expected wait (at least 1 s), which picks its delay queue.
//! - The expected wait for a concurrency slot is the profile's typical attempt time times its
//!   place in line. The typical time is the larger of a moving average of finished attempts
//!   and how long the profile has gone without finishing any while attempts were out: a
//!   newly hanging endpoint is recognised within a fraction of a second, before any of its
//!   attempts has timed out.
//! - A profile that has to defer an event although it is within its fair share cannot use
//!   more of the window, so for a second it does not count when the window is divided (see
//!   [`super::window`]): a hanging profile's unused share goes to the others instead of making
//!   a busy healthy profile churn through delay queues.
//! - Each component (semaphore, bucket, breaker, statistics) sits behind its own `Arc`, so a
//!   reload keeps whichever ones' settings did not change.
//! - With `cluster.redis` (SPEC section 13, [`crate::cluster`]): the slots are fitted to this
//!   replica's share before each admission; the rate limit is the deployment's (one call per
//!   attempt, which books a turn within the wait allowed here), or while the store is away a
//!   bucket of the limit divided by the last known replica count; when the breaker's
//!   `open_for` is over the deployment decides who probes; each attempt's result that matters
//!   to the shared breaker is reported in the background ([`Gate::share_result`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::breaker::{Admit, Breaker};
use super::slots::Slots;
use super::window::{RECENT, Window, micros};
use crate::cluster::RateAnswer;
use crate::config::{BreakerSettings, RateLimit};
use crate::decide::DeferReason;

/// The longest an event waits in memory before it is deferred.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// A wait this short may be waited in memory even beyond the profile's fair share.
pub const SHORT_WAIT: Duration = Duration::from_millis(50);
/// How often a waiting event looks again at its expected wait.
const RECHECK: Duration = Duration::from_millis(20);

type Bucket = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::QuantaClock,
>;

/// Why an event is not attempted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Defer {
        reason: DeferReason,
        wait: Duration,
    },
    /// The worker is shutting down: the event goes back to the queue untouched.
    Shutdown,
}

fn new_bucket(interval: Duration, burst: u32) -> Arc<Bucket> {
    let burst = std::num::NonZeroU32::new(burst.max(1)).expect("at least 1");
    let quota = Quota::with_period(interval)
        .expect("a rate limit's interval is positive")
        .allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

/// One profile's protection.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Slots>,
    limit: usize,
    rate: Option<(RateLimit, Arc<Bucket>)>,
    /// While the cluster store is away: a bucket of the rate divided among the replicas, and
    /// the count it was made for.
    alone: Mutex<Option<(usize, Duration, Arc<Bucket>)>>,
    breaker: Arc<Mutex<Breaker>>,
    /// This replica reported a failure to the shared breaker since it last reported a success.
    reported_down: Arc<std::sync::atomic::AtomicBool>,
    /// Failure reports whose answer has not come back yet: the next admission waits for them
    /// (at most the call timeout), so that a breaker the deployment opened stops this replica
    /// before its next attempt.
    reporting: Arc<Reporting>,
    stats: Arc<Stats>,
    shared: Option<Shared>,
}

impl Gate {
    /// A gate for these settings, keeping the parts of `previous` whose settings are equal;
    /// `shared` with `cluster.redis`.
    pub fn new(
        limit: usize,
        rate: Option<RateLimit>,
        breaker: BreakerSettings,
        previous: Option<&Gate>,
        shared: Option<Shared>,
    ) -> Gate {
        let share = |limit| {
            shared
                .as_ref()
                .map_or(limit, |s| s.cluster.concurrency(limit))
        };
        let slots = match previous {
            Some(p) if p.limit == limit => p.slots.clone(),
            _ => Slots::new(share(limit)),
        };
        let rate = rate.map(|r| match previous.and_then(|p| p.rate.as_ref()) {
            Some((old, bucket)) if *old == r => (r, bucket.clone()),
            _ => (r, new_bucket(r.interval(), r.burst())),
        });
        let (breaker, reported_down) = match previous {
            Some(p) if p.breaker.lock().expect("breaker lock").settings() == breaker => {
                (p.breaker.clone(), p.reported_down.clone())
            }
            _ => (Arc::new(Mutex::new(Breaker::new(breaker))), Arc::default()),
        };
        let reporting = previous.map_or_else(Arc::default, |p| p.reporting.clone());
        let stats = previous.map_or_else(Arc::default, |p| p.stats.clone());
        Gate {
            slots,
            limit,
            rate,
            alone: Mutex::new(None),
            breaker,
            reported_down,
            reporting,
            stats,
            shared,
        }
    }

    /// The shared part, while the cluster store answers.
    fn shared_up(&self) -> Option<&Shared> {
        self.shared.as_ref().filter(|s| s.cluster.is_up())
    }

    /// Fit the slots to this replica's share of the profile's concurrency.
    fn fit(&self) {
        if let Some(s) = &self.shared {
            self.slots.fit(s.cluster.concurrency(self.limit));
        }
    }

    /// Attempts in flight this replica allows now.
    pub fn slots(&self) -> usize {
        self.fit();
        self.slots.size()
    }

    /// The bucket of this replica alone: the profile's, or while the cluster store is away
    /// the profile's divided by the last known replica count.
    fn own_bucket(&self, limit: RateLimit, bucket: &Arc<Bucket>) -> (Duration, Arc<Bucket>) {
        let Some(shared) = &self.shared else {
            return (limit.interval(), bucket.clone());
        };
        let replicas = shared.cluster.membership().replicas;
        let mut alone = self.alone.lock().expect("bucket lock");
        match &*alone {
            Some((n, interval, b)) if *n == replicas => (*interval, b.clone()),
            _ => {
                let (interval, burst) = shared.cluster.divided_rate(limit);
                let b = new_bucket(interval, burst);
                *alone = Some((replicas, interval, b.clone()));
                (interval, b)
            }
        }
    }

    pub fn hold(&self, window: &Arc<Window>) -> Hold {
        if self.stats.in_hand.fetch_add(1, Ordering::AcqRel) == 0 {
            window.active.fetch_add(1, Ordering::AcqRel);
        }
        Hold {
            stats: self.stats.clone(),
            window: window.clone(),
        }
    }

    /// How much longer an event that started waiting at `since` may wait in memory: up to
    /// [`MAX_WAIT`] while its profile is within its fair share of the window, else up to
    /// [`SHORT_WAIT`] (a fast endpoint's events turn over in milliseconds and hold the window
    /// no longer than if they had gone at once; deferring them would only churn).
    fn left(&self, window: &Window, since: tokio::time::Instant) -> Duration {
        let within = self.stats.in_hand.load(Ordering::Relaxed) <= window.share();
        let budget = if within { MAX_WAIT } else { SHORT_WAIT };
        (since + budget).saturating_duration_since(tokio::time::Instant::now())
    }

    /// How long an event that starts waiting now (for its profile's token) may wait in
    /// memory, by the same rule as for a slot.
    pub fn patience(&self, window: &Window) -> Duration {
        self.left(window, tokio::time::Instant::now())
    }

    /// Book a deferred event's turn for a slot behind those deferred before it ([`book`]).
    fn book(&self, wait: Duration, typical: Duration) -> Duration {
        let now = micros(Instant::now());
        let slots = self.slots();
        let mut booked = self.stats.booked_until_us.load(Ordering::Relaxed);
        loop {
            let (wait, until) = book(now, booked, wait, typical, slots);
            match self.stats.booked_until_us.compare_exchange_weak(
                booked,
                until,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return wait,
                Err(current) => booked = current,
            }
        }
    }

    /// An event is deferred: if its profile is within its share, it cannot use more of the
    /// window and stops counting for the fair share (until [`Gate::counts_again`]).
    fn saturate(&self, window: &Window) {
        if self.stats.in_hand.load(Ordering::Relaxed) <= window.share() {
            self.stats
                .saturated_at_us
                .store(micros(Instant::now()), Ordering::Relaxed);
            if !self.stats.saturated.swap(true, Ordering::AcqRel) {
                window.saturated.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// An attempt goes ahead: a profile that has deferred nothing within its share for a
    /// second counts for the fair share again (as it does once it holds no events).
    fn counts_again(&self, window: &Window, now: Instant) {
        let since = micros(now).saturating_sub(self.stats.saturated_at_us.load(Ordering::Relaxed));
        if since > RECENT.as_micros() as u64 && self.stats.saturated.swap(false, Ordering::AcqRel) {
            window.saturated.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Wait (within the rules above) for leave to attempt, or say why not.
    pub async fn admit(
        &self,
        window: &Window,
        shutdown: &CancellationToken,
    ) -> Result<Pass, Refusal> {
        let since = tokio::time::Instant::now();
        let may_wait = |wait: Duration| wait < self.left(window, since);
        let defer = |reason, wait: Duration| {
            self.saturate(window);
            Refusal::Defer {
                reason,
                wait: wait.max(MAX_WAIT),
            }
        };
        let sleep = |wait: Duration| async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => Ok(()),
                () = shutdown.cancelled() => Err(Refusal::Shutdown),
            }
        };

        // 1. A concurrency slot, waiting for it while the expected wait allows.
        self.fit();
        let slot = match self.slots.try_acquire() {
            Some(slot) => slot,
            None => {
                let _counted = Counted::new(&self.stats.waiting);
                let acquire = self.slots.clone().acquire();
                tokio::pin!(acquire); // keeps this event's place in line across rechecks
                loop {
                    // A slot handed over while this event was not looking is its own: an
                    // event is never deferred once it has one (on a starved machine the
                    // handover and the event's next look can be far apart).
                    if let Some(slot) = (&mut acquire).now_or_never() {
                        break slot;
                    }
                    let ahead = self.stats.waiting.load(Ordering::Relaxed).saturating_sub(1);
                    let typical = self.stats.typical(Instant::now());
                    let wait = expected_wait(typical, ahead, self.slots());
                    if !may_wait(wait) {
                        return Err(defer(DeferReason::Concurrency, self.book(wait, typical)));
                    }
                    let look_again =
                        tokio::time::Instant::now() + self.left(window, since).min(RECHECK);
                    tokio::select! {
                        slot = &mut acquire => break slot,
                        () = tokio::time::sleep_until(look_again) => {}
                        () = shutdown.cancelled() => return Err(Refusal::Shutdown),
                    }
                }
            }
        };

        // 2. The breaker, once the slot is ours: it may have opened while we waited, or in the
        //    deployment, as the answer to a failure report still out may say.
        self.reporting.settled().await;
        let probe = loop {
            let admit = self
                .breaker
                .lock()
                .expect("breaker lock")
                .admit(Instant::now());
            match admit {
                Admit::Go => break false,
                Admit::Probe if self.probe_is_ours().await => break true,
                Admit::Probe => {} // another replica probes: look at the breaker again
                Admit::Open(left) if may_wait(left) => sleep(left).await?,
                Admit::Open(left) => return Err(defer(DeferReason::CircuitOpen, left)),
                Admit::Probing => {
                    let wait = self.stats.typical(Instant::now());
                    return Err(defer(DeferReason::CircuitOpen, wait));
                }
            }
        };
        let mut probe_guard = ProbeGuard(probe.then_some((&*self.breaker, self.shared.as_ref())));

        // 3. The rate limit: the deployment's, else this replica's own.
        if let Some((limit, bucket)) = &self.rate {
            let booked = match self.shared_up() {
                Some(s) => {
                    s.cluster
                        .rate(&s.profile, *limit, self.left(window, since))
                        .await
                }
                None => None,
            };
            match booked {
                Some(RateAnswer::Booked(wait)) if wait.is_zero() => {}
                Some(RateAnswer::Booked(wait)) => sleep(wait).await?,
                Some(RateAnswer::Over(wait)) => return Err(defer(DeferReason::RateLimit, wait)),
                None => {
                    let (interval, bucket) = self.own_bucket(*limit, bucket);
                    while let Err(not_until) = bucket.check() {
                        let behind = self.stats.rate_waiting.load(Ordering::Relaxed) as u32;
                        let wait = not_until
                            .wait_time_from(governor::clock::Clock::now(bucket.clock()))
                            + interval * behind;
                        if !may_wait(wait) {
                            return Err(defer(DeferReason::RateLimit, wait));
                        }
                        let _counted = Counted::new(&self.stats.rate_waiting);
                        sleep(wait).await?;
                    }
                }
            }
        }

        probe_guard.0 = None; // it is the attempt's now: `Pass` hands it back
        let now = Instant::now();
        self.counts_again(window, now);
        if self.stats.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.stats
                .progress_at_us
                .store(micros(now), Ordering::Relaxed);
        }
        Ok(Pass {
            _slot: slot,
            probe,
            started: now,
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
            shared: self.shared.clone(),
            finished: false,
        })
    }
}

mod pass;
mod shared;
mod wait;

use pass::{Counted, ProbeGuard};
pub use pass::{Hold, Pass};

use shared::Reporting;
pub use shared::Shared;
pub use wait::{Stats, book, expected_wait};

#[cfg(test)]
mod tests;
