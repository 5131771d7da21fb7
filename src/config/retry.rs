//! The `retry` section, validated into the pure [`RetryPolicy`].

use std::time::Duration;

use super::issues::Issues;
use super::raw::{RawRetry, S};
use crate::retry::RetryPolicy;

/// x-message-ttl is a 32-bit signed number of milliseconds on some brokers: stay below.
const MAX_DELAY_LIMIT: Duration = Duration::from_secs(24 * 24 * 3600);
/// Each back-off step may declare a delay queue: more attempts than this would only declare
/// (and compute, at every start and reload) absurd numbers of queues.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;

pub(crate) fn validate(issues: &mut Issues, r: &RawRetry) -> RetryPolicy {
    let d = RetryPolicy::default();
    let mut max_attempts = issues.positive("retry.max_attempts", &r.max_attempts, d.max_attempts);
    if max_attempts > MAX_ATTEMPTS_LIMIT {
        issues.add(
            "retry.max_attempts",
            r.max_attempts.as_ref().map(|v| &v.referenced),
            format!("must be at most {MAX_ATTEMPTS_LIMIT}"),
        );
        max_attempts = d.max_attempts;
    }
    let initial_delay = issues.duration("retry.initial_delay", &r.initial_delay, d.initial_delay);
    let max_delay = issues.duration("retry.max_delay", &r.max_delay, d.max_delay);
    let multiplier = match &r.multiplier {
        None => d.multiplier,
        Some(v) if v.value.is_finite() && v.value >= 1.0 => v.value,
        Some(v) => {
            issues.add(
                "retry.multiplier",
                Some(&v.referenced),
                "must be a number of at least 1.0",
            );
            d.multiplier
        }
    };
    let jitter = match &r.jitter {
        None => d.jitter,
        Some(v) if (0.0..1.0).contains(&v.value) => v.value,
        Some(v) => {
            issues.add(
                "retry.jitter",
                Some(&v.referenced),
                "must be at least 0 and below 1",
            );
            d.jitter
        }
    };
    let at = |v: &Option<S<String>>| v.as_ref().map(|v| v.referenced);
    if initial_delay < Duration::from_millis(1) {
        issues.add(
            "retry.initial_delay",
            at(&r.initial_delay).as_ref(),
            "must be at least 1ms",
        );
    }
    if max_delay < initial_delay {
        issues.add(
            "retry.max_delay",
            at(&r.max_delay).as_ref(),
            "must not be shorter than retry.initial_delay",
        );
    }
    if max_delay > MAX_DELAY_LIMIT {
        issues.add(
            "retry.max_delay",
            at(&r.max_delay).as_ref(),
            "must be at most 24 days (the broker's TTL limit)",
        );
    }
    RetryPolicy {
        max_attempts,
        initial_delay,
        multiplier,
        max_delay,
        jitter,
        max_age: issues.duration("retry.max_age", &r.max_age, d.max_age),
    }
}
