//! The retry schedule: pure functions, no I/O.
//!
//! Design decisions:
//! - A retry is a republish to a delay queue named by its delay (`<queue>.delay.<ms>`), whose
//!   fixed `x-message-ttl` dead-letters the event back to the work queue. The attempt count
//!   travels in the `x-attempt` header; nothing about retries is kept in process memory.
//! - The broker expires messages only at the head of a queue, so no message may be meant to
//!   wait longer than its queue's TTL: jitter only shortens a delay (per-message `expiration`
//!   in `[d * (1 - jitter), d]`), and a `Retry-After` goes to the smallest declared queue
//!   whose TTL covers it, with its exact wait as the message's `expiration`.
//! - The nominal delay `d_k = min(initial_delay * multiplier^(k-1), max_delay)` is computed in
//!   floating point and clamped, so a huge `k`, an overflowing power or a NaN all give
//!   `max_delay` instead of a panic.
//! - The set of queues is derived from the policy alone, so every replica declares the same
//!   ones and a delay queue's name is enough to know its TTL.

use std::time::Duration;

/// The fixed `Retry-After` ladder of SPEC section 5; rungs above `max_delay` are not declared.
pub const RETRY_AFTER_LADDER_SECS: [u64; 14] = [
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400,
];

/// The validated `retry` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    /// Fraction in `[0, 1)` by which a back-off delay may be shortened at random.
    pub jitter: f64,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_delay: Duration::from_secs(5),
            multiplier: 3.0,
            max_delay: Duration::from_secs(6 * 3600),
            jitter: 0.2,
            max_age: Duration::from_secs(48 * 3600),
        }
    }
}

/// Where and for how long one retry waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    /// The TTL of the delay queue, which is also its name's suffix.
    pub queue_delay_ms: u64,
    /// The message's own `expiration`; never above `queue_delay_ms`.
    pub expiration_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RetryPolicy {
    /// `d_k` in milliseconds for back-off step `k` (1 = before the 2nd attempt).
    pub fn nominal_delay_ms(&self, step: u32) -> u64 {
        let max = millis(self.max_delay);
        let exponent = i32::try_from(step.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = millis(self.initial_delay) as f64 * self.multiplier.powi(exponent);
        if ms.is_nan() || ms >= max as f64 {
            max
        } else if ms <= 0.0 {
            0
        } else {
            ms.round() as u64
        }
    }

    /// Every delay queue's TTL in milliseconds, ascending, without repeats: the back-off
    /// steps `1 ..= max_attempts - 1` and the `Retry-After` ladder up to `max_delay`.
    pub fn delay_queue_ms(&self) -> Vec<u64> {
        let max = millis(self.max_delay);
        let mut all: Vec<u64> = RETRY_AFTER_LADDER_SECS
            .iter()
            .map(|s| s * 1000)
            .filter(|&ms| ms <= max)
            .collect();
        for step in 1..self.max_attempts {
            let d = self.nominal_delay_ms(step);
            all.push(d);
            if d == max {
                break; // every later step is capped to the same queue
            }
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The retry after `attempts_made` failed attempts. `retry_after` is the receiver's
    /// `Retry-After`, if any; `unit` is a random number in `[0, 1)` choosing the jitter.
    pub fn plan(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        unit: f64,
        declared: &[u64],
    ) -> RetryPlan {
        let d = self.nominal_delay_ms(attempts_made.max(1));
        let fraction = (self.jitter * unit.clamp(0.0, 1.0)).clamp(0.0, 1.0);
        let jittered = d - ((d as f64 * fraction).floor() as u64).min(d);
        let wanted = retry_after.map(|ra| millis(ra).min(millis(self.max_delay)));
        match wanted {
            Some(ra) if ra > d => covering(ra, declared),
            Some(ra) => RetryPlan {
                queue_delay_ms: d,
                expiration_ms: jittered.max(ra),
            },
            None => RetryPlan {
                queue_delay_ms: d,
                expiration_ms: jittered,
            },
        }
    }
}

impl RetryPolicy {
    /// Whether an event of this age is past `max_age`.
    pub fn expired(&self, age: Duration) -> bool {
        age >= self.max_age
    }

    /// Where a deferred event waits (SPEC section 9): the smallest declared delay that covers
    /// the expected wait, which is at least 1 s and at most `max_delay`; it comes back after
    /// exactly that wait.
    pub fn defer_plan(&self, wait: Duration, declared: &[u64]) -> RetryPlan {
        let wait = millis(wait).max(1000).min(millis(self.max_delay));
        covering(wait, declared)
    }
}

/// The smallest declared queue whose TTL covers `ms` (else the longest), with `ms` itself as
/// the message's expiration: a message never waits longer than its queue's TTL.
fn covering(ms: u64, declared: &[u64]) -> RetryPlan {
    let queue = declared
        .iter()
        .copied()
        .find(|&q| q >= ms)
        .or_else(|| declared.last().copied())
        .unwrap_or(ms);
    RetryPlan {
        queue_delay_ms: queue,
        expiration_ms: ms.min(queue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, initial_ms: u64, multiplier: f64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_millis(initial_ms),
            multiplier,
            max_delay: Duration::from_millis(max_ms),
            jitter: 0.2,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn nominal_delay_table() {
        let six_h = 6 * 3_600_000;
        let cases = [
            // (policy, step, expected ms)
            (policy(10, 5000, 3.0, six_h), 1, 5000),
            (policy(10, 5000, 3.0, six_h), 2, 15000),
            (policy(10, 5000, 3.0, six_h), 3, 45000),
            (policy(10, 5000, 3.0, six_h), 8, 10_935_000),
            (policy(10, 5000, 3.0, six_h), 9, six_h), // 32_805_000 capped
            (policy(10, 5000, 3.0, six_h), 0, 5000),  // step 0 treated as 1
            (policy(10, 5000, 3.0, six_h), u32::MAX, six_h), // overflow -> cap
            (policy(10, 5000, 1e308, six_h), 3, six_h), // infinite power -> cap
            (policy(10, 5000, f64::NAN, six_h), 2, six_h), // NaN factor -> cap
            (policy(10, 5000, 1.0, six_h), 50, 5000), // constant back-off
            (policy(10, 250, 1.5, 1000), 2, 375),
            (policy(10, 250, 1.5, 1000), 5, 1000),
        ];
        for (p, step, want) in cases {
            assert_eq!(p.nominal_delay_ms(step), want, "{p:?} step {step}");
        }
    }

    #[test]
    fn declared_queues_default_policy() {
        let p = RetryPolicy::default();
        let got = p.delay_queue_ms();
        // back-off: 5s 15s 45s 135s 405s 1215s 3645s 10935s 21600s (capped);
        // ladder up to 6h: 1s 5s 15s 30s 1m 2m 5m 10m 30m 1h 2h 6h.
        let want = vec![
            1_000, 5_000, 15_000, 30_000, 45_000, 60_000, 120_000, 135_000, 300_000, 405_000,
            600_000, 1_215_000, 1_800_000, 3_600_000, 3_645_000, 7_200_000, 10_935_000, 21_600_000,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn declared_queues_stop_at_the_cap_for_huge_max_attempts() {
        let p = policy(u32::MAX, 1000, 2.0, 8000);
        assert_eq!(p.delay_queue_ms(), vec![1000, 2000, 4000, 5000, 8000]);
    }

    #[test]
    fn single_attempt_declares_only_the_ladder() {
        let p = policy(1, 1000, 2.0, 30_000);
        assert_eq!(p.delay_queue_ms(), vec![1000, 5000, 15_000, 30_000]);
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_bounds() {
        let p = RetryPolicy::default();
        let declared = p.delay_queue_ms();
        for attempts in 1..p.max_attempts {
            let d = p.nominal_delay_ms(attempts);
            for unit in [0.0, 0.25, 0.5, 0.999_999, 1.0, -3.0, 7.0, f64::NAN] {
                let plan = p.plan(attempts, None, unit, &declared);
                assert_eq!(plan.queue_delay_ms, d);
                assert!(plan.expiration_ms <= d, "{plan:?}");
                let floor = (d as f64 * (1.0 - p.jitter)).floor() as u64;
                assert!(plan.expiration_ms >= floor, "{plan:?} below {floor}");
                assert!(declared.contains(&plan.queue_delay_ms));
            }
        }
    }

    #[test]
    fn retry_after_table() {
        let p = RetryPolicy::default();
        let declared = p.delay_queue_ms();
        let s = Duration::from_secs;
        let cases = [
            // (attempts made, Retry-After, unit, queue ms, expiration ms)
            (1, Some(s(1)), 0.0, 5_000, 5_000), // shorter than back-off: back-off wins
            (1, Some(s(4)), 0.99, 5_000, 4_010), // jitter never goes below Retry-After
            (1, Some(s(20)), 0.5, 30_000, 20_000), // smallest covering queue, exact wait
            (1, Some(s(60)), 0.5, 60_000, 60_000),
            (2, Some(s(100)), 0.0, 120_000, 100_000),
            (1, Some(s(86_400)), 0.0, 21_600_000, 21_600_000), // capped at max_delay
            (1, Some(Duration::MAX), 0.0, 21_600_000, 21_600_000),
        ];
        for (attempts, ra, unit, queue, exp) in cases {
            let plan = p.plan(attempts, ra, unit, &declared);
            assert_eq!(
                plan,
                RetryPlan {
                    queue_delay_ms: queue,
                    expiration_ms: exp
                },
                "attempts {attempts} retry-after {ra:?}"
            );
            assert!(declared.contains(&plan.queue_delay_ms));
        }
    }

    #[test]
    fn defer_plan_table() {
        let p = RetryPolicy::default(); // queues: 1s 5s 15s 30s 45s 1m ... 6h
        let declared = p.delay_queue_ms();
        let ms = Duration::from_millis;
        for (wait, queue, expiration) in [
            (ms(0), 1_000, 1_000), // at least 1 s
            (ms(300), 1_000, 1_000),
            (ms(1_000), 1_000, 1_000),
            (ms(1_200), 5_000, 1_200), // smallest covering queue, exact wait
            (ms(4_500), 5_000, 4_500),
            (ms(31_000), 45_000, 31_000),
            (Duration::from_secs(7 * 3600), 21_600_000, 21_600_000), // capped at max_delay
        ] {
            let plan = p.defer_plan(wait, &declared);
            assert_eq!(
                (plan.queue_delay_ms, plan.expiration_ms),
                (queue, expiration),
                "{wait:?}"
            );
            assert!(declared.contains(&plan.queue_delay_ms));
        }
        // max_delay under a second: the longest queue there is.
        let short = policy(3, 100, 2.0, 400);
        let declared = short.delay_queue_ms();
        assert_eq!(declared, vec![100, 200]);
        assert_eq!(
            short.defer_plan(ms(5_000), &declared),
            RetryPlan {
                queue_delay_ms: 200,
                expiration_ms: 200
            }
        );
    }

    #[test]
    fn retry_after_beyond_every_queue_uses_the_longest() {
        // max_delay 45s: ladder 1s 5s 15s 30s, back-off 10s 20s 40s 45s.
        let p = policy(10, 10_000, 2.0, 45_000);
        let declared = p.delay_queue_ms();
        assert_eq!(
            declared,
            vec![1000, 5000, 10_000, 15_000, 20_000, 30_000, 40_000, 45_000]
        );
        let plan = p.plan(1, Some(Duration::from_secs(44)), 0.0, &declared);
        assert_eq!(plan.queue_delay_ms, 45_000);
        assert_eq!(plan.expiration_ms, 44_000);
    }
}
