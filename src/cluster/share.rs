//! What one replica may do of a profile's limits: pure, table-tested.

use std::time::Duration;

use crate::config::RateLimit;

/// This replica's share of `limit` attempts in flight when `replicas` replicas are live and
/// it is the `rank`-th of them (0-based, in the order of their ids): an equal share, the
/// remainder going one each to the first ranks, so that the shares add up to `limit`; at
/// least 1. No replicas is read as one.
pub fn concurrency(limit: usize, replicas: usize, rank: usize) -> usize {
    let n = replicas.max(1);
    (limit / n + usize::from(rank % n < limit % n)).max(1)
}

/// A rate limit divided among `replicas`, for a replica that goes on alone: the interval
/// between its attempts and its burst (one second's worth of its part, at least 1).
pub fn rate(limit: RateLimit, replicas: usize) -> (Duration, u32) {
    let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
    (
        limit.interval().saturating_mul(n),
        (limit.burst() / n).max(1),
    )
}

/// How much the shared limiter holds back the end of a burst: attempts are booked this much
/// later than GCRA alone would, so that network jitter between replicas and the endpoint
/// cannot make the endpoint see more than the limit plus its burst in a second.
pub const JITTER_MARGIN: Duration = Duration::from_millis(20);

/// GCRA's tolerance for a rate limit: how far ahead of its turn an attempt may go, the burst
/// less one interval and less [`JITTER_MARGIN`] (never below zero).
pub fn tolerance(limit: RateLimit) -> Duration {
    let burst = limit
        .interval()
        .saturating_mul(limit.burst().saturating_sub(1));
    burst.saturating_sub(JITTER_MARGIN.min(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_shares_add_up_to_the_limit_and_are_at_least_one() {
        for (limit, replicas, want) in [
            (8, 1, vec![8]),
            (8, 0, vec![8]), // no replicas seen is read as this one alone
            (4, 2, vec![2, 2]),
            (4, 3, vec![2, 1, 1]),
            (3, 3, vec![1, 1, 1]),
            (10, 4, vec![3, 3, 2, 2]),
            (2, 3, vec![1, 1, 1]), // at least one each, even past the limit
            (1, 2, vec![1, 1]),
        ] {
            let got: Vec<usize> = (0..replicas.max(1))
                .map(|rank| concurrency(limit, replicas, rank))
                .collect();
            assert_eq!(got, want, "{limit} among {replicas}");
        }
        for limit in 1..40 {
            for replicas in 1..=limit {
                let sum: usize = (0..replicas)
                    .map(|rank| concurrency(limit, replicas, rank))
                    .sum();
                assert_eq!(sum, limit, "{limit} among {replicas}");
            }
        }
    }

    #[test]
    fn gcra_tolerance_keeps_a_margin() {
        let ms = Duration::from_millis;
        for (limit, want) in [
            ("10/s", ms(880)), // 9 intervals of 100 ms, less 20 ms
            ("5/s", ms(780)),
            ("1/s", ms(0)), // a burst of one: no tolerance at all
            ("60/m", ms(0)),
            ("2/s", ms(480)),
            ("1000/s", ms(979)),
        ] {
            assert_eq!(tolerance(RateLimit::parse(limit).unwrap()), want, "{limit}");
        }
    }

    #[test]
    fn a_rate_divided_among_replicas() {
        let ms = Duration::from_millis;
        for (limit, replicas, interval, burst) in [
            ("10/s", 1, ms(100), 10),
            ("10/s", 2, ms(200), 5),
            ("10/s", 3, ms(300), 3),
            ("10/s", 0, ms(100), 10),
            ("5/s", 10, ms(2000), 1), // a burst of at least one
            ("60/m", 2, ms(2000), 1),
            ("600/m", 4, ms(400), 2),
        ] {
            let r = RateLimit::parse(limit).unwrap();
            assert_eq!(rate(r, replicas), (interval, burst), "{limit} / {replicas}");
        }
    }
}
