//! What an attempt's answer means: the one place where status codes are read (SPEC
//! sections 4, 6 and 9), pure and table-tested in `decide/tests.rs`.

use std::time::Duration;

use super::{AttemptClass, AttemptResult, Failure, Health};

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    Timeout,
    /// Refused, reset, unreachable, or the TLS handshake failed.
    Connect,
    /// The network guard refused the address: nothing was sent.
    Blocked,
    /// The proxy failed before the endpoint was reached (SPEC section 17).
    Proxy,
}

/// What came back from one HTTP attempt, before it means anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the body for non-2xx answers, for `x-last-error`.
        snippet: String,
    },
    Unanswered {
        why: Unanswered,
        error: String,
    },
}

/// Everything an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// For [`decide`].
    pub result: AttemptResult,
    /// A 401: drop the token, fetch a new one and resend once (SPEC section 4); when that is
    /// not possible (no token, or already resent), `result` stands.
    pub refresh: bool,
    /// For the profile's breaker.
    pub health: Health,
    /// For `delivery_attempts_total{result}`.
    pub class: AttemptClass,
}

/// What an answer means: the one place where status codes are read. Pure.
pub fn classify(answer: Answer) -> Reading {
    let (status, retry_after, snippet) = match answer {
        Answer::Status {
            status,
            retry_after,
            snippet,
        } => (status, retry_after, snippet),
        Answer::Unanswered { why, error } => {
            let (result, class) = match why {
                Unanswered::Proxy => return proxy_failed(error),
                Unanswered::Blocked => {
                    (AttemptResult::Blocked { error }, AttemptClass::ConnectError)
                }
                Unanswered::Timeout => (
                    retryable(Failure::Timeout, None, error),
                    AttemptClass::Timeout,
                ),
                Unanswered::Connect => (
                    retryable(Failure::Connect, None, error),
                    AttemptClass::ConnectError,
                ),
            };
            let health = match why {
                Unanswered::Blocked | Unanswered::Proxy => Health::Unknown,
                Unanswered::Timeout | Unanswered::Connect => Health::Down,
            };
            return Reading {
                result,
                refresh: false,
                health,
                class,
            };
        }
    };
    let class = match status {
        200..=299 => AttemptClass::S2xx,
        300..=399 => AttemptClass::S3xx,
        500..=599 => AttemptClass::S5xx,
        _ => AttemptClass::S4xx,
    };
    let error = || format!("HTTP {status}: {}", snippet.trim());
    let (result, refresh) = match status {
        200..=299 => (AttemptResult::Delivered { status }, false),
        401 => (
            retryable(Failure::Status(status), retry_after, error()),
            true,
        ),
        408 | 425 | 429 | 500..=599 => (
            retryable(Failure::Status(status), retry_after, error()),
            false,
        ),
        _ => (
            AttemptResult::Permanent {
                status,
                error: error(),
            },
            false,
        ),
    };
    let health = match status {
        429 | 500..=599 => Health::Down,
        _ => Health::Up,
    };
    Reading {
        result,
        refresh,
        health,
        class,
    }
}

/// A failed token request: no attempt was made. `health` is what the auth server's failure
/// says about the profile (SPEC section 4: timeouts, connection errors, 5xx and 429 count).
pub fn auth_failed(error: String, health: Health) -> Reading {
    Reading {
        result: retryable(Failure::Auth, None, error),
        refresh: false,
        health,
        class: AttemptClass::AuthFailed,
    }
}

/// The proxy failed: no attempt, nothing said about the endpoint. `class` is not counted
/// (the failure is counted in `proxy_errors_total` instead).
pub fn proxy_failed(error: String) -> Reading {
    Reading {
        result: AttemptResult::ProxyFailed { error },
        refresh: false,
        health: Health::Unknown,
        class: AttemptClass::ConnectError,
    }
}

pub(super) fn retryable(
    failure: Failure,
    retry_after: Option<Duration>,
    error: String,
) -> AttemptResult {
    AttemptResult::Retryable {
        failure,
        retry_after,
        error,
    }
}
