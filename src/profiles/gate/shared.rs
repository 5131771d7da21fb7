//! What a profile's gate shares with the other replicas through the cluster (SPEC section
//! 13): the deployment's breaker, taken in from heartbeats and told each attempt's result
//! that matters to it, in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Gate, ProbeGuard};
use crate::cluster::Cluster;
use crate::metrics::ProfileMetrics;
use crate::profiles::breaker::{BreakerState, Change, Health};
use crate::profiles::endpoint::{By, announce};

/// What a profile's gate shares with the other replicas (SPEC section 13).
#[derive(Clone)]
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub profile: Arc<str>,
    /// How long the deployment's probe is this replica's at most: the attempt's timeout and
    /// a margin. If the replica dies meanwhile, another may probe after it.
    pub probe_lease: Duration,
    /// For breaker changes learnt from the other replicas.
    pub metrics: Arc<ProfileMetrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(super) struct Reporting {
    pub(super) out: AtomicUsize,
    pub(super) done: tokio::sync::Notify,
}

impl Reporting {
    /// Until no report is out, or the longest a report may take.
    pub(super) async fn settled(&self) {
        if self.out.load(Ordering::Acquire) == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + crate::cluster::CALL_TIMEOUT;
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.out.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                () = done => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

impl Gate {
    /// `open_for` is over: is the deployment's one probe this replica's? Without a cluster,
    /// or when the store does not answer, it is. When another replica's, the breaker has
    /// taken that in (and said so) before this returns.
    pub(super) async fn probe_is_ours(&self) -> bool {
        let Some(shared) = self.shared_up() else {
            return true;
        };
        let mut local = ProbeGuard(Some((&*self.breaker, None)));
        let answer = shared
            .cluster
            .take_probe(&shared.profile, shared.probe_lease)
            .await;
        local.0 = None;
        let Some(answer) = answer else {
            return true; // the store went away: this replica's own probe
        };
        let (change, open) = {
            let mut b = self.breaker.lock().expect("breaker lock");
            (b.taken(answer, Instant::now()), b.is_open())
        };
        announce(
            &shared.profile,
            &shared.metrics,
            change,
            open,
            By::AnotherReplica,
            "",
        );
        answer == crate::cluster::ProbeAnswer::Yours
    }

    /// Take in the deployment's breaker (from a heartbeat); a change to log and show.
    pub fn adopt(&self, shared: BreakerState) -> (Change, bool) {
        let mut b = self.breaker.lock().expect("breaker lock");
        (b.adopt(shared, Instant::now()), b.is_open())
    }

    /// Tell the other replicas what an attempt showed, in the background: a probe's result;
    /// a failure (`opened_here`: this replica's own count opened its breaker); the first
    /// success after this replica's failures. Nothing for other results, nothing without a
    /// cluster or a breaker.
    pub fn share_result(&self, probe: bool, health: Health, opened_here: bool, last_error: &str) {
        let Some(shared) = self.shared_up() else {
            return;
        };
        let settings = self.breaker.lock().expect("breaker lock").settings();
        if settings.failures == 0 || health == Health::Unknown && !probe {
            return;
        }
        if !probe {
            let down = health == Health::Down;
            if !down && !self.reported_down.swap(false, Ordering::AcqRel) {
                return; // the usual case: a success after successes
            }
            if down {
                self.reported_down.store(true, Ordering::Release);
            }
        }
        let (shared, breaker) = (shared.clone(), self.breaker.clone());
        let last_error = last_error.to_owned();
        let reporting = (!probe && health == Health::Down).then(|| {
            self.reporting.out.fetch_add(1, Ordering::AcqRel);
            self.reporting.clone()
        });
        tokio::spawn(async move {
            let (state, by) = if probe {
                let state = shared
                    .cluster
                    .probe_result(&shared.profile, health, settings.open_for)
                    .await;
                (state, By::AnotherReplica)
            } else {
                let report = shared
                    .cluster
                    .report(&shared.profile, health, settings, opened_here)
                    .await;
                let by = match report {
                    Some(r) if r.opened => By::ThisReplica,
                    _ => By::AnotherReplica,
                };
                (report.map(|r| r.state), by)
            };
            if let Some(state) = state {
                let (change, open) = {
                    let mut b = breaker.lock().expect("breaker lock");
                    (b.adopt(state, Instant::now()), b.is_open())
                };
                announce(
                    &shared.profile,
                    &shared.metrics,
                    change,
                    open,
                    by,
                    &last_error,
                );
            }
            if let Some(r) = reporting {
                r.out.fetch_sub(1, Ordering::AcqRel);
                r.done.notify_waiters();
            }
        });
    }
}
