//! The table of fates, and the table of what an attempt's answer means.
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
                status: Some(503),
                error: "boom".into(),
            },
        ),
        (
            retryable(Failure::Timeout),
            facts(1, 4, 1),
            Settlement::Retry {
                plan: plan(15000, 15000),
                attempts: 2,
                status: None,
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
        // The proxy failed: deferred, no attempt spent, whatever attempts are left.
        (
            Case::Attempted(AttemptResult::ProxyFailed {
                error: "proxy http://egress:3128 is unreachable".into(),
            }),
            facts(2, 0, 10),
            Settlement::Defer {
                plan: plan(5000, 5000),
                reason: DeferReason::Proxy,
                deferrals: 1,
            },
        ),
        (
            Case::Attempted(AttemptResult::ProxyFailed { error: "x".into() }),
            facts(0, 7, 1),
            Settlement::Defer {
                plan: plan(5000, 5000),
                reason: DeferReason::Proxy,
                deferrals: 8,
            },
        ),
        // ... until the event is too old.
        (
            Case::Attempted(AttemptResult::ProxyFailed { error: "x".into() }),
            facts(1, 3, 61),
            dead(DeadReason::Expired, None, expired, 1),
        ),
    ];
    for (case, facts, want) in cases {
        assert_eq!(
            decide(case.clone(), facts, &policy, &declared, 0.5),
            want,
            "{case:?} {facts:?}"
        );
    }
}

#[test]
fn classify_table() {
    use AttemptClass as C;
    use Health::*;
    // status -> (what decide gets, refresh, health, metric class)
    let answered = |status| Answer::Status {
        status,
        retry_after: Some(Duration::from_secs(7)),
        snippet: " busy \n".into(),
    };
    let retry = |status| {
        (
            AttemptResult::Retryable {
                failure: Failure::Status(status),
                retry_after: Some(Duration::from_secs(7)),
                error: format!("HTTP {status}: busy"),
            },
            status == 401,
        )
    };
    let permanent = |status| {
        (
            AttemptResult::Permanent {
                status,
                error: format!("HTTP {status}: busy"),
            },
            false,
        )
    };
    let delivered = |status| (AttemptResult::Delivered { status }, false);
    let cases = [
        (200, delivered(200), Up, C::S2xx),
        (204, delivered(204), Up, C::S2xx),
        (299, delivered(299), Up, C::S2xx),
        (100, permanent(100), Up, C::S4xx),
        (301, permanent(301), Up, C::S3xx),
        (302, permanent(302), Up, C::S3xx),
        (400, permanent(400), Up, C::S4xx),
        (401, retry(401), Up, C::S4xx),
        (403, permanent(403), Up, C::S4xx),
        (404, permanent(404), Up, C::S4xx),
        (408, retry(408), Up, C::S4xx),
        (410, permanent(410), Up, C::S4xx),
        (425, retry(425), Up, C::S4xx),
        (429, retry(429), Down, C::S4xx),
        (500, retry(500), Down, C::S5xx),
        (503, retry(503), Down, C::S5xx),
        (599, retry(599), Down, C::S5xx),
    ];
    for (status, (result, refresh), health, class) in cases {
        let want = Reading {
            result,
            refresh,
            health,
            class,
        };
        assert_eq!(classify(answered(status)), want, "{status}");
    }
    let unanswered = |why| Answer::Unanswered {
        why,
        error: "e".into(),
    };
    let failed = |failure| AttemptResult::Retryable {
        failure,
        retry_after: None,
        error: "e".into(),
    };
    for (why, result, health, class) in [
        (
            Unanswered::Timeout,
            failed(Failure::Timeout),
            Down,
            C::Timeout,
        ),
        (
            Unanswered::Connect,
            failed(Failure::Connect),
            Down,
            C::ConnectError,
        ),
        (
            Unanswered::Blocked,
            AttemptResult::Blocked { error: "e".into() },
            Unknown,
            C::ConnectError,
        ),
        // Says nothing about the endpoint: the breaker does not count it.
        (
            Unanswered::Proxy,
            AttemptResult::ProxyFailed { error: "e".into() },
            Unknown,
            C::ConnectError,
        ),
    ] {
        let want = Reading {
            result,
            refresh: false,
            health,
            class,
        };
        assert_eq!(classify(unanswered(why)), want, "{why:?}");
    }
    let auth = auth_failed("auth_failed: x".into(), Down);
    assert_eq!(
        (auth.class, auth.health, auth.refresh),
        (C::AuthFailed, Down, false)
    );
}

#[test]
fn names_parse_back() {
    for r in DeadReason::ALL {
        assert_eq!(DeadReason::parse(r.as_str()), Some(*r));
    }
    assert_eq!(DeadReason::parse("nope"), None);
    assert_eq!(DeliveryOutcome::RetryScheduled.as_str(), "retry_scheduled");
    assert_eq!(
        Settlement::Requeue.fate().as_str(),
        "requeued",
        "the log line's outcome"
    );
}
