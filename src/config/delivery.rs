//! The `delivery` section: how many attempts at once, how long each may take, which networks
//! callbacks may reach, and the circuit breaker every profile gets unless it sets its own.

use std::time::Duration;

use ipnet::IpNet;

use super::issues::Issues;
use super::proxy::{self, NoProxy, Proxy};
use super::raw::{RawBreaker, RawDelivery, S};

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Attempts in flight at once, across all profiles.
    pub concurrency: usize,
    /// Attempts in flight at once for one profile, unless the profile sets `concurrency`.
    pub per_profile_concurrency: usize,
    /// Networks callbacks and auth requests may reach although the network guard blocks them.
    pub allow_networks: Vec<IpNet>,
    pub circuit_breaker: BreakerSettings,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
    /// The HTTP CONNECT proxy for callback and auth URLs (SPEC section 17); `None` = direct.
    pub proxy: Option<Proxy>,
    /// Hosts and networks reached without the proxy.
    pub no_proxy: NoProxy,
}

/// When a profile's circuit breaker opens, and for how long (SPEC section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed attempts that open it; 0 turns it off.
    pub failures: u32,
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 20,
            open_for: Duration::from_secs(30),
        }
    }
}

pub(crate) fn validate(issues: &mut Issues, d: &RawDelivery) -> DeliveryConfig {
    let concurrency = issues.positive("delivery.concurrency", &d.concurrency, 256) as usize;
    let per_profile_concurrency = match &d.per_profile_concurrency {
        None => (concurrency / 4).max(1),
        Some(_) => issues.positive(
            "delivery.per_profile_concurrency",
            &d.per_profile_concurrency,
            1,
        ) as usize,
    };
    let allow_networks = d
        .allow_networks
        .iter()
        .enumerate()
        .filter_map(|(i, v)| network(issues, &format!("delivery.allow_networks[{i}]"), v))
        .collect();
    DeliveryConfig {
        concurrency,
        per_profile_concurrency,
        allow_networks,
        circuit_breaker: breaker(
            issues,
            "delivery.circuit_breaker",
            d.circuit_breaker.as_ref(),
            BreakerSettings::default(),
        ),
        timeout: issues.duration("delivery.timeout", &d.timeout, Duration::from_secs(15)),
        connect_timeout: issues.duration(
            "delivery.connect_timeout",
            &d.connect_timeout,
            Duration::from_secs(5),
        ),
        max_body_bytes: match &d.max_body_bytes {
            None => 1_048_576,
            Some(v) if v.value == 0 || v.value > 128 * 1024 * 1024 => {
                issues.add(
                    "delivery.max_body_bytes",
                    Some(&v.referenced),
                    "must be from 1 to 134217728 (the broker's own limit)",
                );
                1_048_576
            }
            Some(v) => v.value as usize,
        },
        proxy: d
            .proxy
            .as_ref()
            .and_then(|p| proxy::proxy(issues, "delivery.proxy", None, p)),
        no_proxy: proxy::no_proxy(issues, &d.no_proxy),
    }
}

/// A CIDR (`10.20.0.0/16`, `::1/128`) or a single address.
fn network(issues: &mut Issues, path: &str, v: &S<String>) -> Option<IpNet> {
    let text = v.value.trim();
    let parsed = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from));
    if parsed.is_none() {
        issues.add(
            path,
            Some(&v.referenced),
            format!("{text:?} is not a CIDR such as 10.20.0.0/16 or ::1/128"),
        );
    }
    parsed.map(|n| n.trunc())
}

/// A `circuit_breaker` block, each key falling back to `base`.
pub(crate) fn breaker(
    issues: &mut Issues,
    path: &str,
    raw: Option<&S<RawBreaker>>,
    base: BreakerSettings,
) -> BreakerSettings {
    let Some(raw) = raw else { return base };
    let b = &raw.value;
    BreakerSettings {
        failures: b.failures.as_ref().map_or(base.failures, |v| v.value),
        open_for: issues.duration(&format!("{path}.open_for"), &b.open_for, base.open_for),
    }
}
