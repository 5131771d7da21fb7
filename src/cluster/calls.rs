//! The calls a profile's gate makes through the cluster: its share of the deployment's rate
//! limit, and the deployment's circuit breaker (failures, the one probe, its result).

use std::time::Duration;

use super::{BreakerState, Cluster, ProbeAnswer, RateAnswer, Report, share};
use crate::config::{BreakerSettings, RateLimit};
use crate::decide::Health;

impl Cluster {
    /// One attempt of a rate-limited profile: booked now or within `max_wait`, or over.
    /// `None`: the store is away; the caller goes on alone ([`Cluster::divided_rate`]).
    pub async fn rate(
        &self,
        profile: &str,
        limit: RateLimit,
        max_wait: Duration,
    ) -> Option<RateAnswer> {
        if !self.is_up() {
            return None;
        }
        let key = self.key("rate", profile);
        let mut invocation = self.scripts.rate.key(&key);
        invocation
            .arg(limit.interval().as_micros() as u64)
            .arg(share::tolerance(limit).as_micros() as u64)
            .arg(max_wait.as_micros() as u64);
        match self.invoke(&invocation).await {
            Ok(reply) => Some(RateAnswer::from_reply(reply)),
            Err(e) => {
                self.failed("rate limit", &e);
                None
            }
        }
    }

    /// A non-probe attempt's result: a failure, or the first success after this replica's
    /// failures. `force`: this replica's own count opened its breaker.
    pub async fn report(
        &self,
        profile: &str,
        health: Health,
        settings: BreakerSettings,
        force: bool,
    ) -> Option<Report> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self.scripts.report.key(format!("{}:breakers", self.prefix));
        invocation
            .key(self.key("breaker", &format!("{profile}:failures")))
            .arg(profile)
            .arg(if health == Health::Up { "up" } else { "down" })
            .arg(settings.failures)
            .arg(settings.open_for.as_millis() as u64)
            .arg(if force { "1" } else { "0" });
        match self.invoke::<(i64, i64, i64, i64)>(&invocation).await {
            Ok((epoch, open, left, flag)) => Some(Report {
                state: BreakerState::from_reply(epoch, open, left),
                opened: flag == 1,
            }),
            Err(e) => {
                self.failed("circuit breaker", &e);
                None
            }
        }
    }

    /// Ask to be the deployment's one probe, holding it for at most `lease`.
    pub async fn take_probe(&self, profile: &str, lease: Duration) -> Option<ProbeAnswer> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self
            .scripts
            .take_probe
            .key(format!("{}:breakers", self.prefix));
        invocation
            .key(self.key("breaker", &format!("{profile}:probe")))
            .arg(profile)
            .arg(lease.as_millis().max(1) as u64)
            .arg(&self.id);
        match self.invoke(&invocation).await {
            Ok(reply) => Some(ProbeAnswer::from_reply(reply)),
            Err(e) => {
                self.failed("circuit breaker probe", &e);
                None
            }
        }
    }

    /// The probe's result (`Unknown`: it was not attempted after all; the probe is free).
    pub async fn probe_result(
        &self,
        profile: &str,
        health: Health,
        open_for: Duration,
    ) -> Option<BreakerState> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self
            .scripts
            .probe_result
            .key(format!("{}:breakers", self.prefix));
        invocation
            .key(self.key("breaker", &format!("{profile}:probe")))
            .key(self.key("breaker", &format!("{profile}:failures")))
            .arg(profile)
            .arg(match health {
                Health::Up => "up",
                Health::Down => "down",
                Health::Unknown => "unknown",
            })
            .arg(open_for.as_millis() as u64)
            .arg(&self.id);
        match self.invoke::<(i64, i64, i64, i64)>(&invocation).await {
            Ok((epoch, open, left, _)) => Some(BreakerState::from_reply(epoch, open, left)),
            Err(e) => {
                self.failed("circuit breaker probe result", &e);
                None
            }
        }
    }
}
