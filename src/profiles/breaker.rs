//! A profile's circuit breaker (SPEC section 9): a pure state machine, driven by the clock
//! it is given, table-tested.
//!
//! Design decisions:
//! - Only the endpoint's own failures count: timeouts, connection errors, 5xx and 429. Any
//!   other answer (2xx, 3xx, 4xx) means the endpoint is up. An attempt that never reached it
//!   (an auth failure, a refused address) says nothing either way.
//! - While open, nothing is attempted. After `open_for`, exactly one event is let through as
//!   a probe; its result alone closes or re-opens the breaker. A probe that ends without a
//!   verdict hands the probe to the next event.
//! - Results of attempts that started before the breaker opened are ignored once it is open:
//!   only the probe decides.
//! - With `cluster.redis` (SPEC section 13) the deployment's breaker is the one that counts:
//!   [`Breaker::adopt`] takes the shared state when its epoch is news, and
//!   [`Breaker::taken`] the deployment's word on who probes. The local count still runs, for
//!   when the store is away.

use std::time::{Duration, Instant};

pub use crate::cluster::{BreakerState, ProbeAnswer};
use crate::config::BreakerSettings;
pub use crate::decide::Health;

/// While another replica's probe is out, look again at most this often.
pub const PROBE_RECHECK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// May an event be attempted now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Yes, as the one probe.
    Probe,
    /// No: open for this much longer.
    Open(Duration),
    /// No: a probe is out.
    Probing,
}

/// A change worth a log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Reopened,
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    /// The deployment's epoch this replica last took in (SPEC section 13).
    epoch: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed { failures: 0 },
            epoch: 0,
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// Open or probing: the `circuit_open` gauge's value.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Take in the deployment's breaker if its epoch is news. A probe of this replica's that
    /// is out keeps its say: its result will be shared.
    pub fn adopt(&mut self, shared: BreakerState, now: Instant) -> Change {
        if self.settings.failures == 0 || shared.epoch <= self.epoch {
            return Change::None;
        }
        self.epoch = shared.epoch;
        match (self.state, shared.open) {
            (State::Probing, _) => Change::None,
            (State::Closed { .. }, None) => {
                self.state = State::Closed { failures: 0 };
                Change::None
            }
            (State::Open { .. }, None) => {
                self.state = State::Closed { failures: 0 };
                Change::Closed
            }
            (State::Closed { .. }, Some(left)) => {
                self.state = State::Open { until: now + left };
                Change::Opened
            }
            (State::Open { .. }, Some(left)) => {
                self.state = State::Open { until: now + left };
                Change::None
            }
        }
    }

    /// After [`Breaker::admit`] said [`Admit::Probe`]: the deployment's answer to "may this
    /// replica probe?". Unless the probe is ours, the breaker is closed or open again here
    /// and the caller asks `admit` once more.
    pub fn taken(&mut self, answer: ProbeAnswer, now: Instant) -> Change {
        if self.state != State::Probing {
            return Change::None;
        }
        match answer {
            ProbeAnswer::Yours => Change::None,
            ProbeAnswer::Elsewhere(left) => {
                self.state = State::Open {
                    until: now + left.clamp(Duration::from_millis(10), PROBE_RECHECK),
                };
                Change::None
            }
            ProbeAnswer::State(shared) => {
                self.epoch = self.epoch.max(shared.epoch);
                match shared.open {
                    None => {
                        self.state = State::Closed { failures: 0 };
                        Change::Closed
                    }
                    Some(left) => {
                        self.state = State::Open { until: now + left };
                        Change::None
                    }
                }
            }
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Go,
            State::Open { until } if now >= until => {
                self.state = State::Probing;
                Admit::Probe
            }
            State::Open { until } => Admit::Open(until - now),
            State::Probing => Admit::Probing,
        }
    }

    /// Record an attempt's result; `probe` says whether it was the probe.
    pub fn record(&mut self, probe: bool, health: Health, now: Instant) -> Change {
        if self.settings.failures == 0 {
            return Change::None;
        }
        let open = State::Open {
            until: now + self.settings.open_for,
        };
        match (self.state, health, probe) {
            (State::Closed { failures }, Health::Down, _) => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failures {
                    self.state = open;
                    Change::Opened
                } else {
                    self.state = State::Closed { failures };
                    Change::None
                }
            }
            (State::Closed { .. }, Health::Up, _) => {
                self.state = State::Closed { failures: 0 };
                Change::None
            }
            (State::Probing, Health::Up, true) => {
                self.state = State::Closed { failures: 0 };
                Change::Closed
            }
            (State::Probing, Health::Down, true) => {
                self.state = open;
                Change::Reopened
            }
            (State::Probing, Health::Unknown, true) => {
                self.state = State::Open { until: now };
                Change::None
            }
            _ => Change::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_table() {
        use Admit::*;
        use Health::*;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let settings = BreakerSettings {
            failures: 3,
            open_for: s(30),
        };
        // Steps: (at, what, expected). `what` is an admit or a record (probe, health).
        enum Step {
            A(Admit),
            R(bool, Health, Change),
            Gauge(bool),
        }
        use Step::*;
        let steps = [
            (0, A(Go)),
            (0, R(false, Down, Change::None)),
            (0, R(false, Down, Change::None)),
            (0, R(false, Up, Change::None)), // a success resets the count
            (0, R(false, Down, Change::None)),
            (0, R(false, Unknown, Change::None)), // an auth failure says nothing
            (0, R(false, Down, Change::None)),
            (1, R(false, Down, Change::Opened)), // third in a row
            (1, Gauge(true)),
            (2, A(Open(s(29)))),
            (5, R(false, Up, Change::None)), // a late success does not close it
            (30, A(Open(s(1)))),
            (31, A(Probe)),
            (31, A(Probing)), // one probe at a time
            (32, R(true, Down, Change::Reopened)),
            (33, A(Open(s(29)))),
            (62, A(Probe)),
            (62, R(true, Unknown, Change::None)), // no verdict: the next event probes
            (62, A(Probe)),
            (63, R(true, Up, Change::Closed)),
            (63, Gauge(false)),
            (63, A(Go)),
        ];
        let mut b = Breaker::new(settings);
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = t0 + s(at);
            match step {
                A(want) => assert_eq!(b.admit(now), want, "step {i}"),
                R(probe, health, want) => {
                    assert_eq!(b.record(probe, health, now), want, "step {i}")
                }
                Gauge(open) => assert_eq!(b.is_open(), open, "step {i}"),
            }
        }
    }

    #[test]
    fn the_deployments_breaker_table() {
        use Admit::*;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let open = |epoch, left| BreakerState {
            epoch,
            open: Some(left),
        };
        let closed = |epoch| BreakerState { epoch, open: None };
        enum Step {
            A(Admit),
            Adopt(BreakerState, Change),
            Taken(ProbeAnswer, Change),
            R(bool, Health, Change),
        }
        use Step::*;
        let steps = [
            (0, R(false, Health::Down, Change::None)),
            // Another replica's failures opened it: news, so it is open here too.
            (0, Adopt(open(1, s(30)), Change::Opened)),
            (1, A(Open(s(29)))),
            // The same epoch again (the next heartbeat) changes nothing.
            (1, Adopt(open(1, s(29)), Change::None)),
            (2, Adopt(closed(0), Change::None)), // older news
            (30, A(Probe)),
            // Another replica holds the probe: look again shortly.
            (30, Taken(ProbeAnswer::Elsewhere(s(20)), Change::None)),
            (30, A(Open(PROBE_RECHECK))),
            (31, A(Probe)),
            // Its probe failed meanwhile: open again, for the time the deployment says.
            (31, Taken(ProbeAnswer::State(open(2, s(29))), Change::None)),
            (32, A(Open(s(28)))),
            (60, A(Probe)),
            (60, Taken(ProbeAnswer::Yours, Change::None)),
            (60, A(Probing)),
            // A heartbeat while this replica's probe is out does not take its say.
            (60, Adopt(open(3, s(0)), Change::None)),
            (61, R(true, Health::Up, Change::Closed)),
            (61, A(Go)),
            // Closed elsewhere, by another replica's probe, while open here.
            (62, Adopt(open(5, s(30)), Change::Opened)),
            (63, Adopt(closed(6), Change::Closed)),
            (63, A(Go)),
            // A probe due here, but another replica's probe closed it already.
            (64, Adopt(open(7, ms(0)), Change::Opened)),
            (64, A(Probe)),
            (64, Taken(ProbeAnswer::State(closed(8)), Change::Closed)),
            (64, A(Go)),
        ];
        let mut b = Breaker::new(BreakerSettings {
            failures: 3,
            open_for: s(30),
        });
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = t0 + s(at);
            match step {
                A(want) => assert_eq!(b.admit(now), want, "step {i}"),
                Adopt(shared, want) => assert_eq!(b.adopt(shared, now), want, "step {i}"),
                Taken(answer, want) => assert_eq!(b.taken(answer, now), want, "step {i}"),
                R(probe, health, want) => {
                    assert_eq!(b.record(probe, health, now), want, "step {i}")
                }
            }
        }
        // A breaker that is off takes in nothing.
        let mut off = Breaker::new(BreakerSettings {
            failures: 0,
            open_for: s(30),
        });
        assert_eq!(off.adopt(open(9, s(30)), t0), Change::None);
        assert_eq!(off.admit(t0), Go);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerSettings {
            failures: 0,
            open_for: Duration::from_secs(30),
        });
        for _ in 0..100 {
            assert_eq!(b.record(false, Health::Down, t0), Change::None);
        }
        assert_eq!(b.admit(t0), Admit::Go);
    }
}
