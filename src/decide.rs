//! Every event's fate, decided in one pure function.
//!
//! The pipeline gathers what happened into a [`Case`] (unreadable, unknown profile, too old,
//! deferred, attempted, interrupted by shutdown) and the event's [`Facts`]; [`decide`] turns
//! them into the one [`Settlement`] that `settle` carries out. Nothing else in the worker
//! decides between delivering, retrying, deferring and dead-lettering.

use std::time::Duration;

use crate::amqp::DeadReason;
use crate::event::Rejected;
use crate::metrics::{DeferReason, DeliveryOutcome};
use crate::retry::{RetryPlan, RetryPolicy};

/// Why an attempt failed in a way that another attempt may fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 408, 425, 429, 5xx, or a second 401.
    Status(u16),
    Timeout,
    /// No connection (refused, reset, TLS handshake).
    Connect,
    /// No token from the auth server.
    Auth,
}

/// What one attempt (authenticate, sign, send) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    /// 3xx or 4xx other than those retried: waiting will not help.
    Permanent {
        status: u16,
        error: String,
    },
    Retryable {
        failure: Failure,
        retry_after: Option<Duration>,
        error: String,
    },
    /// The network guard refused the callback URL's address.
    Blocked {
        error: String,
    },
}

/// Everything known about an event when its fate is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Case {
    /// The delivery could not be read as an event.
    Rejected(Rejected),
    /// It names a profile the configuration does not have.
    UnknownProfile(String),
    /// Older than `retry.max_age` before its attempt.
    Expired,
    /// It may not be attempted now (SPEC section 9).
    Deferred {
        reason: DeferReason,
        wait: Duration,
    },
    Attempted(AttemptResult),
    /// Shutdown came before its attempt: back to the queue as it was.
    Interrupted,
}

/// What the event carries from earlier attempts and deferrals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// `x-attempt`: attempts made before this delivery.
    pub attempts_before: u32,
    /// `x-deferrals`.
    pub deferrals_before: u32,
    /// Since the event happened (AMQP timestamp), else since its first attempt.
    pub age: Duration,
}

/// What to do with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Ack.
    Delivered { status: u16, attempts: u32 },
    /// Republish to a delay queue with `x-attempt = attempts`, confirm, ack.
    Retry {
        plan: RetryPlan,
        attempts: u32,
        error: String,
    },
    /// Republish to a delay queue with `x-deferrals = deferrals` and `x-attempt` unchanged,
    /// confirm, ack.
    Defer {
        plan: RetryPlan,
        reason: DeferReason,
        deferrals: u32,
    },
    /// Publish to the dead-letter queue with the reason, confirm, ack.
    DeadLetter {
        reason: DeadReason,
        status: Option<u16>,
        error: String,
        attempts: u32,
    },
    /// Nack with requeue: nothing happened to it.
    Requeue,
}

impl Settlement {
    /// Its `deliveries_total` outcome; deferrals and requeues are not deliveries.
    pub fn outcome(&self) -> Option<DeliveryOutcome> {
        match self {
            Self::Delivered { .. } => Some(DeliveryOutcome::Delivered),
            Self::Retry { .. } => Some(DeliveryOutcome::RetryScheduled),
            Self::DeadLetter { .. } => Some(DeliveryOutcome::DeadLettered),
            Self::Defer { .. } | Self::Requeue => None,
        }
    }
}

/// Decide the fate. `declared` are the delay queues' TTLs (ms); `unit` in `[0, 1)` picks the
/// jitter. Pure.
pub fn decide(
    case: Case,
    facts: Facts,
    policy: &RetryPolicy,
    declared: &[u64],
    unit: f64,
) -> Settlement {
    let attempts_before = facts.attempts_before;
    let dead = |reason, status, error| Settlement::DeadLetter {
        reason,
        status,
        error,
        attempts: attempts_before,
    };
    let expired_error = || {
        format!(
            "older than retry.max_age ({})",
            humantime::format_duration(policy.max_age)
        )
    };
    match case {
        Case::Rejected(r) => dead(r.reason, None, r.error),
        Case::UnknownProfile(id) => dead(
            DeadReason::UnknownProfile,
            None,
            format!("no profile {id:?} in the configuration"),
        ),
        Case::Interrupted => Settlement::Requeue,
        Case::Expired => dead(DeadReason::Expired, None, expired_error()),
        Case::Deferred { .. } if policy.expired(facts.age) => {
            dead(DeadReason::Expired, None, expired_error())
        }
        Case::Deferred { reason, wait } => Settlement::Defer {
            plan: policy.defer_plan(wait, declared),
            reason,
            deferrals: facts.deferrals_before.saturating_add(1),
        },
        Case::Attempted(result) => {
            let attempts = attempts_before.saturating_add(1);
            let dead = |reason, status, error| Settlement::DeadLetter {
                reason,
                status,
                error,
                attempts,
            };
            match result {
                AttemptResult::Delivered { status } => Settlement::Delivered { status, attempts },
                AttemptResult::Permanent { status, error } => {
                    dead(DeadReason::PermanentStatus, Some(status), error)
                }
                AttemptResult::Blocked { error } => {
                    dead(DeadReason::BlockedDestination, None, error)
                }
                AttemptResult::Retryable {
                    failure,
                    retry_after,
                    error,
                } => {
                    let status = match failure {
                        Failure::Status(s) => Some(s),
                        _ => None,
                    };
                    if attempts >= policy.max_attempts {
                        dead(DeadReason::MaxAttempts, status, error)
                    } else if policy.expired(facts.age) {
                        dead(DeadReason::Expired, status, error)
                    } else {
                        Settlement::Retry {
                            plan: policy.plan(attempts, retry_after, unit, declared),
                            attempts,
                            error,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_table() {
        let policy = RetryPolicy {
            max_attempts: 3,
            max_age: Duration::from_secs(60),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let declared = policy.delay_queue_ms();
        let s = Duration::from_secs;
        let facts = |attempts_before, deferrals_before, age| Facts {
            attempts_before,
            deferrals_before,
            age: s(age),
        };
        let retryable = |failure| {
            Case::Attempted(AttemptResult::Retryable {
                failure,
                retry_after: None,
                error: "boom".into(),
            })
        };
        let dead = |reason, status: Option<u16>, error: &str, attempts| Settlement::DeadLetter {
            reason,
            status,
            error: error.into(),
            attempts,
        };
        let plan = |queue_delay_ms, expiration_ms| RetryPlan {
            queue_delay_ms,
            expiration_ms,
        };
        let expired = "older than retry.max_age (1m)";
        let cases = [
            (
                Case::Attempted(AttemptResult::Delivered { status: 204 }),
                facts(0, 0, 1),
                Settlement::Delivered {
                    status: 204,
                    attempts: 1,
                },
            ),
            (
                Case::Attempted(AttemptResult::Delivered { status: 200 }),
                facts(2, 0, 600),
                Settlement::Delivered {
                    status: 200,
                    attempts: 3,
                },
            ),
            (
                Case::Attempted(AttemptResult::Permanent {
                    status: 400,
                    error: "bad".into(),
                }),
                facts(0, 0, 1),
                dead(DeadReason::PermanentStatus, Some(400), "bad", 1),
            ),
            (
                Case::Attempted(AttemptResult::Blocked {
                    error: "127.0.0.1 is loopback".into(),
                }),
                facts(0, 0, 1),
                dead(
                    DeadReason::BlockedDestination,
                    None,
                    "127.0.0.1 is loopback",
                    1,
                ),
            ),
            (
                retryable(Failure::Status(503)),
                facts(0, 0, 1),
                Settlement::Retry {
                    plan: plan(5000, 5000),
                    attempts: 1,
                    error: "boom".into(),
                },
            ),
            (
                retryable(Failure::Timeout),
                facts(1, 4, 1),
                Settlement::Retry {
                    plan: plan(15000, 15000),
                    attempts: 2,
                    error: "boom".into(),
                },
            ),
            (
                retryable(Failure::Status(503)),
                facts(2, 0, 1),
                dead(DeadReason::MaxAttempts, Some(503), "boom", 3),
            ),
            (
                retryable(Failure::Auth),
                facts(8, 0, 1),
                dead(DeadReason::MaxAttempts, None, "boom", 9),
            ),
            (
                retryable(Failure::Connect),
                facts(0, 0, 60),
                dead(DeadReason::Expired, None, "boom", 1),
            ),
            (
                Case::Expired,
                facts(0, 0, 61),
                dead(DeadReason::Expired, None, expired, 0),
            ),
            (
                Case::Deferred {
                    reason: DeferReason::RateLimit,
                    wait: s(3),
                },
                facts(1, 2, 10),
                Settlement::Defer {
                    plan: plan(5000, 3000),
                    reason: DeferReason::RateLimit,
                    deferrals: 3,
                },
            ),
            (
                Case::Deferred {
                    reason: DeferReason::CircuitOpen,
                    wait: s(3),
                },
                facts(1, 2, 60),
                dead(DeadReason::Expired, None, expired, 1),
            ),
            (
                Case::Rejected(Rejected {
                    reason: DeadReason::PayloadTooLarge,
                    error: "too big".into(),
                    profile: None,
                }),
                facts(2, 0, 1),
                dead(DeadReason::PayloadTooLarge, None, "too big", 2),
            ),
            (
                Case::UnknownProfile("nope".into()),
                facts(0, 0, 1),
                dead(
                    DeadReason::UnknownProfile,
                    None,
                    "no profile \"nope\" in the configuration",
                    0,
                ),
            ),
            (Case::Interrupted, facts(0, 0, 1000), Settlement::Requeue),
        ];
        for (case, facts, want) in cases {
            assert_eq!(
                decide(case.clone(), facts, &policy, &declared, 0.5),
                want,
                "{case:?} {facts:?}"
            );
        }
    }
}
