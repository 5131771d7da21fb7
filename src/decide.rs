//! Every event's fate, decided in pure functions, and the enums that name the fates.
//!
//! The pipeline gathers what happened into a [`Case`] (unreadable, unknown profile, too old,
//! deferred, attempted, interrupted by shutdown) and the event's [`Facts`]; [`decide`] turns
//! them into the one [`Settlement`] that `settle` carries out. Nothing else in the worker
//! decides between delivering, retrying, deferring and dead-lettering.
//!
//! What an attempt's answer means is read here too, once: [`classify`] turns what came back
//! (an HTTP status with its `Retry-After`, or why nothing came back) into everything that
//! depends on it: the [`AttemptResult`] for `decide`, the endpoint's [`Health`] for its
//! breaker and the [`AttemptClass`] the metrics count. No other module reads a status code.
//!
//! Design decisions:
//! - This module sits at the bottom of the module graph: it imports only the pure delay math
//!   ([`crate::retry`]). Headers, logs, metrics and `dead-letters list` all name outcomes
//!   through the enums below (`as_str` and [`Label::parse`]), so a name is written once.
//! - The random number for jitter is an argument, so `decide` is deterministic and
//!   table-tested (`decide/tests.rs`).

use std::time::Duration;

use crate::retry::{RetryPlan, RetryPolicy};

mod classify;
pub use classify::{Answer, Reading, Unanswered, auth_failed, classify, proxy_failed};

/// How long an event waits after its proxy failed, before it is tried again.
pub const PROXY_WAIT: Duration = Duration::from_secs(5);

/// The name an outcome has in headers, log lines and metric labels.
pub trait Label: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn index(self) -> usize;
    /// The value named `name`, if any.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == name)
    }
}

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }
        impl $crate::decide::Label for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::decide::Label::as_str(*self))
            }
        }
    };
}
pub(crate) use label_enum;

label_enum!(
    /// Why an event was dead-lettered (`x-dead-reason`).
    DeadReason {
        UnknownProfile => "unknown_profile",
        /// No `profile` header, or one that is not a string.
        MissingProfile => "missing_profile",
        PermanentStatus => "permanent_status",
        MaxAttempts => "max_attempts",
        Expired => "expired",
        PayloadTooLarge => "payload_too_large",
        /// A `message_id` that cannot be sent as the `webhook-id` header.
        InvalidMessageId => "invalid_message_id",
        /// An `ordering_key` that is not a string of 1 to 128 bytes (SPEC section 15).
        InvalidOrderingKey => "invalid_ordering_key",
        /// The callback URL resolves to an address the network guard refuses (SPEC section 10).
        BlockedDestination => "blocked_destination",
    }
);
label_enum!(
    /// Why an event was put back without an attempt (`deferrals_total{reason}`).
    DeferReason {
        Concurrency => "concurrency", RateLimit => "rate_limit", CircuitOpen => "circuit_open",
        /// The proxy failed: the event was not attempted (SPEC section 17).
        Proxy => "proxy",
    }
);
label_enum!(
    /// A settled event's outcome (`deliveries_total{outcome}`).
    DeliveryOutcome { Delivered => "delivered", RetryScheduled => "retry_scheduled", DeadLettered => "dead_lettered" }
);
label_enum!(
    /// An attempt's result class (`delivery_attempts_total{result}`).
    AttemptClass {
        S2xx => "2xx", S3xx => "3xx", S4xx => "4xx", S5xx => "5xx",
        Timeout => "timeout", ConnectError => "connect_error", AuthFailed => "auth_failed",
    }
);
label_enum!(
    /// What the log line `event settled` calls a settlement (`outcome`).
    Fate {
        Delivered => "delivered", RetryScheduled => "retry_scheduled", DeadLettered => "dead_lettered",
        Deferred => "deferred", Requeued => "requeued",
    }
);

/// What an attempt says about the endpoint, for its circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    /// The attempt never reached the endpoint.
    Unknown,
}

/// An event that cannot be delivered as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: DeadReason,
    pub error: String,
    /// The profile it named, if it named one validly.
    pub profile: Option<String>,
}

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
    /// The proxy failed (unreachable, 407, its own answer to `CONNECT`): nothing reached the
    /// endpoint, so this was no attempt (SPEC section 17).
    ProxyFailed {
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
        /// The failed attempt's HTTP status, if it had one.
        status: Option<u16>,
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
    /// What the log line calls it.
    pub fn fate(&self) -> Fate {
        match self {
            Self::Delivered { .. } => Fate::Delivered,
            Self::Retry { .. } => Fate::RetryScheduled,
            Self::DeadLetter { .. } => Fate::DeadLettered,
            Self::Defer { .. } => Fate::Deferred,
            Self::Requeue => Fate::Requeued,
        }
    }

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
                // Not the customer's failure: no attempt spent, deferred like an event that
                // was not admitted.
                AttemptResult::ProxyFailed { .. } if policy.expired(facts.age) => {
                    Settlement::DeadLetter {
                        reason: DeadReason::Expired,
                        status: None,
                        error: expired_error(),
                        attempts: attempts_before,
                    }
                }
                AttemptResult::ProxyFailed { .. } => Settlement::Defer {
                    plan: policy.defer_plan(PROXY_WAIT, declared),
                    reason: DeferReason::Proxy,
                    deferrals: facts.deferrals_before.saturating_add(1),
                },
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
                            status,
                            error,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
