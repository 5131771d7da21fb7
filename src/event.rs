//! The consume stage: an AMQP delivery read into an [`Event`] (SPEC section 5), or rejected
//! with the reason it will be dead-lettered for. Reading never fails the worker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::BasicProperties;

use crate::amqp::headers::{self, RetryState};
use crate::decide::DeadReason;
pub use crate::decide::Rejected;

/// One callback event, ready for the pipeline.
#[derive(Debug, Clone)]
pub struct Event {
    /// `message_id`, or one assigned now and kept across retries.
    pub id: String,
    pub profile: String,
    pub body: Bytes,
    pub content_type: String,
    /// Attempts made before this one (`x-attempt`).
    pub attempts_before: u32,
    /// Times it was deferred before (`x-deferrals`).
    pub deferrals_before: u32,
    /// What `max_age` is measured from: the AMQP timestamp, else the first attempt.
    pub born: SystemTime,
    /// The first attempt, carried in `x-first-attempt` when there is no timestamp.
    pub first_attempt: SystemTime,
}

/// Read a delivery's properties and body into an event.
pub fn read(
    props: &BasicProperties,
    body: Bytes,
    max_body: usize,
    now: SystemTime,
) -> Result<Event, Rejected> {
    let headers = props.headers().as_ref();
    let profile = headers::profile(headers).map_err(|error| Rejected {
        reason: DeadReason::MissingProfile,
        error,
        profile: None,
    })?;
    if body.len() > max_body {
        return Err(Rejected {
            reason: DeadReason::PayloadTooLarge,
            error: format!(
                "body of {} bytes exceeds delivery.max_body_bytes ({max_body})",
                body.len()
            ),
            profile: Some(profile),
        });
    }
    let state = RetryState::read(headers);
    let first_attempt = state
        .first_attempt_ms
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .filter(|t| *t <= now)
        .unwrap_or(now);
    let born = props
        .timestamp()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .unwrap_or(first_attempt);
    let id = props
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    // The id is both signed and sent as `webhook-id`: it must be a valid header value.
    if reqwest::header::HeaderValue::from_str(&id).is_err() {
        return Err(Rejected {
            reason: DeadReason::InvalidMessageId,
            error: "message_id holds characters not allowed in the webhook-id header".into(),
            profile: Some(profile),
        });
    }
    let content_type = props
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "application/json".to_owned());
    Ok(Event {
        id,
        profile,
        body,
        content_type,
        attempts_before: state.attempts,
        deferrals_before: state.deferrals,
        born,
        first_attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::{FIRST_ATTEMPT, PROFILE, text};
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default().with_headers(t)
    }

    #[test]
    fn profile_header_table() {
        let now = SystemTime::now();
        let cases: Vec<(BasicProperties, Result<&str, DeadReason>)> = vec![
            (props(&[(PROFILE, text("acme"))]), Ok("acme")),
            (
                props(&[(PROFILE, AMQPValue::ShortString("acme".into()))]),
                Ok("acme"),
            ),
            (props(&[]), Err(DeadReason::MissingProfile)),
            (BasicProperties::default(), Err(DeadReason::MissingProfile)),
            (
                props(&[(PROFILE, AMQPValue::LongInt(5))]),
                Err(DeadReason::MissingProfile),
            ),
            (
                props(&[(PROFILE, text(" "))]),
                Err(DeadReason::MissingProfile),
            ),
            (
                props(&[(
                    PROFILE,
                    AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
                )]),
                Err(DeadReason::MissingProfile),
            ),
        ];
        for (p, want) in cases {
            let got = read(&p, Bytes::from_static(b"{}"), 10, now)
                .map(|e| e.profile)
                .map_err(|r| r.reason);
            assert_eq!(got, want.map(str::to_owned), "{p:?}");
        }
    }

    #[test]
    fn defaults_and_limits() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let p = props(&[(PROFILE, text("acme"))]);
        let e = read(&p, Bytes::from_static(b"0123456789"), 10, now).unwrap();
        assert_eq!(e.content_type, "application/json");
        assert!(e.id.starts_with("msg_"));
        assert_eq!((e.born, e.first_attempt, e.attempts_before), (now, now, 0));
        assert_eq!(e.deferrals_before, 0);
        let big = read(&p, Bytes::from_static(b"0123456789X"), 10, now).unwrap_err();
        assert_eq!(big.reason, DeadReason::PayloadTooLarge);
        assert_eq!(big.profile.as_deref(), Some("acme"));

        let p = props(&[
            (PROFILE, text("acme")),
            (FIRST_ATTEMPT, AMQPValue::LongLongInt(999_000_000)),
        ])
        .with_message_id("evt-1".into())
        .with_content_type("text/plain".into());
        let e = read(&p, Bytes::new(), 10, now).unwrap();
        assert_eq!(
            (e.id.as_str(), e.content_type.as_str()),
            ("evt-1", "text/plain")
        );
        assert_eq!(e.born, UNIX_EPOCH + Duration::from_secs(999_000));
        let bad_id = p.clone().with_message_id("evt\r\n1".into());
        let rejected = read(&bad_id, Bytes::new(), 10, now).unwrap_err();
        assert_eq!(rejected.reason, DeadReason::InvalidMessageId);
        let e = read(&p.with_timestamp(5), Bytes::new(), 10, now).unwrap();
        assert_eq!(e.born, UNIX_EPOCH + Duration::from_secs(5));
    }
}
