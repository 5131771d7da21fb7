//! The consume stage: an AMQP delivery read into an [`Event`] (SPEC section 5), or rejected
//! with the reason it will be dead-lettered for. Reading never fails the worker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::settle::DeadReason;

pub const HEADER_PROFILE: &str = "profile";
pub const HEADER_ATTEMPT: &str = "x-attempt";
/// Set by the worker on republish when the event has no AMQP timestamp: unix milliseconds of
/// the first attempt, so `max_age` survives retries without any state in the process.
pub const HEADER_FIRST_ATTEMPT: &str = "x-first-attempt";

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
    /// What `max_age` is measured from: the AMQP timestamp, else the first attempt.
    pub born: SystemTime,
    /// The first attempt, carried in `x-first-attempt` when there is no timestamp.
    pub first_attempt: SystemTime,
}

/// An event that cannot be delivered as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: DeadReason,
    pub error: String,
    /// The profile it named, if it named one validly.
    pub profile: Option<String>,
}

fn as_text(v: &AMQPValue) -> Option<&str> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn as_int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i128::from(*n),
        AMQPValue::ShortShortUInt(n) => i128::from(*n),
        AMQPValue::ShortInt(n) => i128::from(*n),
        AMQPValue::ShortUInt(n) => i128::from(*n),
        AMQPValue::LongInt(n) => i128::from(*n),
        AMQPValue::LongUInt(n) => i128::from(*n),
        AMQPValue::LongLongInt(n) => i128::from(*n),
        AMQPValue::Timestamp(n) => i128::from(*n),
        other => as_text(other)?.trim().parse().ok()?,
    })
}

/// A header, by name.
pub fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(name)
}

/// `x-attempt` as a count: integers of any AMQP width or numeric strings; a negative,
/// non-numeric or absurd value is clamped rather than trusted or fatal.
pub fn attempts(headers: Option<&FieldTable>) -> u32 {
    header(headers, HEADER_ATTEMPT)
        .and_then(as_int)
        .map_or(0, |n| n.clamp(0, i128::from(u32::MAX)) as u32)
}

/// The profile id the event names; a readable reason when it names none.
pub fn profile_of(headers: Option<&FieldTable>) -> Result<String, String> {
    match header(headers, HEADER_PROFILE) {
        None => Err("the event has no `profile` header".into()),
        Some(v) => match as_text(v) {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Some(_) => Err("the `profile` header is empty".into()),
            None => Err(format!(
                "the `profile` header must be a string, not {}",
                type_name(v)
            )),
        },
    }
}

fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "a boolean",
        AMQPValue::FieldArray(_) => "an array",
        AMQPValue::FieldTable(_) => "a table",
        AMQPValue::ByteArray(_) => "a byte array",
        AMQPValue::Void => "void",
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => "a number",
        AMQPValue::LongString(_) => "a non-UTF-8 string",
        _ => "an integer",
    }
}

/// Read a delivery's properties and body into an event.
pub fn read(
    props: &BasicProperties,
    body: Bytes,
    max_body: usize,
    now: SystemTime,
) -> Result<Event, Rejected> {
    let headers = props.headers().as_ref();
    let profile = profile_of(headers).map_err(|error| Rejected {
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
    let first_attempt = header(headers, HEADER_FIRST_ATTEMPT)
        .and_then(as_int)
        .and_then(|ms| u64::try_from(ms).ok())
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
        attempts_before: attempts(headers),
        born,
        first_attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default().with_headers(t)
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn attempt_header_table() {
        let cases = [
            (None, 0),
            (Some(AMQPValue::LongInt(3)), 3),
            (Some(AMQPValue::LongLongInt(7)), 7),
            (Some(AMQPValue::ShortShortUInt(2)), 2),
            (Some(text("4")), 4),
            (Some(text("four")), 0),
            (Some(AMQPValue::LongInt(-5)), 0),
            (Some(AMQPValue::LongLongInt(i64::MAX)), u32::MAX),
            (Some(AMQPValue::Boolean(true)), 0),
        ];
        for (value, want) in cases {
            let p = match &value {
                Some(v) => props(&[(HEADER_ATTEMPT, v.clone())]),
                None => props(&[]),
            };
            assert_eq!(attempts(p.headers().as_ref()), want, "{value:?}");
        }
    }

    #[test]
    fn profile_header_table() {
        let now = SystemTime::now();
        let cases: Vec<(BasicProperties, Result<&str, DeadReason>)> = vec![
            (props(&[(HEADER_PROFILE, text("acme"))]), Ok("acme")),
            (
                props(&[(HEADER_PROFILE, AMQPValue::ShortString("acme".into()))]),
                Ok("acme"),
            ),
            (props(&[]), Err(DeadReason::MissingProfile)),
            (BasicProperties::default(), Err(DeadReason::MissingProfile)),
            (
                props(&[(HEADER_PROFILE, AMQPValue::LongInt(5))]),
                Err(DeadReason::MissingProfile),
            ),
            (
                props(&[(HEADER_PROFILE, text(" "))]),
                Err(DeadReason::MissingProfile),
            ),
            (
                props(&[(
                    HEADER_PROFILE,
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
        let p = props(&[(HEADER_PROFILE, text("acme"))]);
        let e = read(&p, Bytes::from_static(b"0123456789"), 10, now).unwrap();
        assert_eq!(e.content_type, "application/json");
        assert!(e.id.starts_with("msg_"));
        assert_eq!((e.born, e.first_attempt, e.attempts_before), (now, now, 0));
        let big = read(&p, Bytes::from_static(b"0123456789X"), 10, now).unwrap_err();
        assert_eq!(big.reason, DeadReason::PayloadTooLarge);
        assert_eq!(big.profile.as_deref(), Some("acme"));

        let p = props(&[
            (HEADER_PROFILE, text("acme")),
            (HEADER_FIRST_ATTEMPT, AMQPValue::LongLongInt(999_000_000)),
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
