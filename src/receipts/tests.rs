use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::decide::DeadReason;
use crate::retry::RetryPlan;

fn at() -> SystemTime {
    // 2026-12-02T10:00:00.123Z
    UNIX_EPOCH + Duration::from_millis(1_796_205_600_123)
}

fn receipt(s: &Settlement) -> Option<Receipt> {
    Receipt::of(s, "evt-1", Some("acme"), Duration::from_millis(41), at())
}

#[test]
fn each_settlement_has_its_receipt_and_deferrals_none() {
    let plan = RetryPlan {
        queue_delay_ms: 5000,
        expiration_ms: 4500,
    };
    let cases = [
        (
            Settlement::Delivered {
                status: 204,
                attempts: 2,
            },
            Some((
                "delivery.succeeded",
                2,
                Some(204),
                None,
                None,
                None,
                "acme.delivery.succeeded",
            )),
        ),
        (
            Settlement::Retry {
                plan,
                attempts: 1,
                status: Some(503),
                error: "HTTP 503".into(),
            },
            Some((
                "delivery.retrying",
                1,
                Some(503),
                Some("HTTP 503"),
                None,
                Some("2026-12-02T10:00:04.623Z"),
                "acme.delivery.retrying",
            )),
        ),
        (
            Settlement::DeadLetter {
                reason: DeadReason::Expired,
                status: None,
                error: "older than retry.max_age (48h)".into(),
                attempts: 0,
            },
            Some((
                "delivery.dead_lettered",
                0,
                None,
                Some("older than retry.max_age (48h)"),
                Some("expired"),
                None,
                "acme.delivery.dead_lettered",
            )),
        ),
        (
            Settlement::Defer {
                plan,
                reason: crate::decide::DeferReason::RateLimit,
                deferrals: 1,
            },
            None,
        ),
        (Settlement::Requeue, None),
    ];
    for (settlement, want) in cases {
        let got = receipt(&settlement);
        let got = got.as_ref().map(|r| {
            (
                r.kind,
                r.attempt,
                r.status,
                r.error.as_deref(),
                r.reason,
                r.next_attempt_at.as_deref(),
                r.routing_key(),
            )
        });
        let want = want.map(|(k, a, s, e, r, n, key)| (k, a, s, e, r, n, key.to_owned()));
        assert_eq!(got, want, "{settlement:?}");
    }
}

#[test]
fn the_body_has_the_spec_fields_and_the_id_names_the_attempt() {
    let r = receipt(&Settlement::Delivered {
        status: 204,
        attempts: 2,
    })
    .unwrap();
    assert_eq!(r.amqp_id(), "evt-1.2");
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "delivery.succeeded", "message_id": "evt-1", "profile": "acme",
            "attempt": 2, "status": 204, "error": null, "duration_ms": 41, "reason": null,
            "next_attempt_at": null, "at": "2026-12-02T10:00:00.123Z"})
    );
    let none = Receipt::of(
        &Settlement::DeadLetter {
            reason: DeadReason::MissingProfile,
            status: None,
            error: "no profile header".into(),
            attempts: 0,
        },
        "m",
        None,
        Duration::ZERO,
        at(),
    )
    .unwrap();
    assert_eq!(none.routing_key(), "(none).delivery.dead_lettered");
}

#[tokio::test]
async fn notices_are_dropped_quietly_until_started() {
    let n = Notices::default();
    n.tell(NoticeType::ReloadSucceeded, None, None);
}
