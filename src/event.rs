//! The consume stage: an AMQP delivery read into an [`Event`] (SPEC section 5), or rejected
//! with the reason it will be dead-lettered for. Reading never fails the worker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::BasicProperties;
use sha2::{Digest, Sha256};

use crate::amqp::headers::{self, RetryState};
use crate::decide::DeadReason;
pub use crate::decide::Rejected;

/// The longest `message_id` accepted (SPEC section 5).
pub const MAX_MESSAGE_ID: usize = 256;
/// An AMQP `timestamp` above this is unix milliseconds, not seconds (10^11 s is the year
/// 5138; 10^11 ms is March 1973).
pub const MILLIS_ABOVE: u64 = 100_000_000_000;
/// A `timestamp` further ahead of the worker's clock than this is ignored: `max_age` counts
/// from the first attempt instead, so a publisher's clock cannot switch `max_age` off.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// One callback event, ready for the pipeline.
#[derive(Debug, Clone)]
pub struct Event {
    /// `message_id`, or one derived from the message (see [`derived_id`]), so a redelivery
    /// of the same message carries the same id.
    pub id: String,
    pub profile: String,
    pub body: Bytes,
    pub content_type: String,
    /// Attempts made before this one (`x-attempt`).
    pub attempts_before: u32,
    /// Times it was deferred before (`x-deferrals`).
    pub deferrals_before: u32,
    /// What `max_age` is measured from: the AMQP timestamp (see [`event_time`]), else the
    /// first attempt. Never later than the time the event was read.
    pub born: SystemTime,
    /// The first attempt, carried in `x-first-attempt` on every republish.
    pub first_attempt: SystemTime,
}

impl Event {
    /// How old the event is at `now`, for `max_age`. `born` is never after the time the
    /// event was read, so this is zero only for an event read at `now` or a clock that went
    /// back; it never makes an old event young.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.born).unwrap_or_default()
    }
}

/// Whether `id` may be a `message_id`: 1 to 256 printable ASCII characters, no spaces
/// (bytes `0x21..=0x7e`), so it is a valid `webhook-id` header and signs unambiguously.
pub fn valid_message_id(id: &str) -> bool {
    (1..=MAX_MESSAGE_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The id of an event published without `message_id`: `msg_` followed by the first 130 bits
/// of SHA-256 over the message, as 26 characters of lowercase RFC 4648 base32 (`a-z`, `2-7`,
/// no padding). What is hashed, every length a big-endian u64, so no two messages encode
/// alike:
///
/// ```text
/// len(profile) || profile (UTF-8)
/// 0x00                        when the message has no `timestamp` property, else
/// 0x01 || timestamp           the property's raw value, as it was published
/// len(body) || body
/// ```
///
/// The same message delivered again (after a crash, a lost connection, a failed ack) gets
/// the same id; two messages that differ in profile, timestamp or body get different ones.
pub fn derived_id(profile: &str, timestamp: Option<u64>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((profile.len() as u64).to_be_bytes());
    h.update(profile.as_bytes());
    match timestamp {
        None => h.update([0]),
        Some(ts) => {
            h.update([1]);
            h.update(ts.to_be_bytes());
        }
    }
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    let digest = h.finalize();
    let mut id = String::with_capacity(30);
    id.push_str("msg_");
    id.extend(base32_lower(&digest[..17]).chars().take(26));
    id
}

/// RFC 4648 base32 with the lowercase alphabet and no padding.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// When the event happened, from the AMQP `timestamp` property (SPEC section 5): unix
/// seconds, or unix milliseconds above [`MILLIS_ABOVE`]. `None` (count from the first
/// attempt) when there is none, when it is out of range, or when it is more than
/// [`FUTURE_TOLERANCE`] ahead of `now`; a time less far ahead counts as `now`.
pub fn event_time(timestamp: Option<u64>, now: SystemTime) -> Option<SystemTime> {
    let ts = timestamp?;
    let since_epoch = if ts > MILLIS_ABOVE {
        Duration::from_millis(ts)
    } else {
        Duration::from_secs(ts)
    };
    let at = UNIX_EPOCH.checked_add(since_epoch)?;
    match at.duration_since(now) {
        Ok(ahead) if ahead > FUTURE_TOLERANCE => None,
        Ok(_) => Some(now),
        Err(_) => Some(at),
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
    let born = event_time(*props.timestamp(), now).unwrap_or(first_attempt);
    // An empty `message_id` counts as none: some clients send an empty property for "unset".
    let id = match props.message_id().as_ref().map(|s| s.as_str()) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => derived_id(&profile, *props.timestamp(), &body),
    };
    // The id is both signed and sent as `webhook-id`.
    if !valid_message_id(&id) {
        return Err(Rejected {
            reason: DeadReason::InvalidMessageId,
            error: format!(
                "message_id must be 1 to {MAX_MESSAGE_ID} printable ASCII characters without spaces ({} bytes given)",
                id.len()
            ),
            profile: Some(profile),
        });
    }
    if let Err(error) = headers::ordering_key(headers) {
        return Err(Rejected {
            reason: DeadReason::InvalidOrderingKey,
            error,
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
    use crate::amqp::headers::{ATTEMPT, FIRST_ATTEMPT, PROFILE, text};
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

    #[test]
    fn base32_matches_rfc_4648_vectors_in_lowercase() {
        for (raw, want) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_lower(raw.as_bytes()), want, "{raw}");
        }
    }

    #[test]
    fn derived_id_is_stable_documented_and_unambiguous() {
        let body = br#"{"test": 2432232314}"#;
        // The vectors in docs/events.md, computed independently of this code.
        assert_eq!(
            derived_id("acme", Some(1614265330), body),
            "msg_yqu5ew7khim7afzbrfcev6llmc"
        );
        assert_eq!(
            derived_id("acme", None, body),
            "msg_jukisvtxlfcelmedhjhpgix5br"
        );
        let id = derived_id("acme", None, b"");
        assert_eq!(id.len(), 30);
        assert!(
            id[4..]
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
        );
        assert!(valid_message_id(&id));
        // Every field counts, absent differs from zero, and fields cannot run into each other.
        let ids = [
            derived_id("acme", None, b"x"),
            derived_id("acme", Some(0), b"x"),
            derived_id("acme", Some(1), b"x"),
            derived_id("acme", None, b"y"),
            derived_id("acm", None, b"ex"),
            derived_id("other", None, b"x"),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_redelivered_message_without_id_keeps_its_id() {
        let now = SystemTime::now();
        let p = props(&[(PROFILE, text("acme"))]).with_timestamp(1_700_000_000);
        let body = Bytes::from_static(b"{\"amount\":1}");
        let first = read(&p, body.clone(), 100, now).unwrap();
        // Redelivered later, after an attempt: the same id.
        let again = read(
            &p.clone().with_headers({
                let mut t = p.headers().clone().unwrap();
                t.insert(ATTEMPT.into(), AMQPValue::LongInt(3));
                t
            }),
            body.clone(),
            100,
            now + Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(first.id, derived_id("acme", Some(1_700_000_000), &body));
        let other = read(&p, Bytes::from_static(b"{\"amount\":2}"), 100, now).unwrap();
        assert_ne!(first.id, other.id);
        // An empty message_id counts as none.
        let empty = read(&p.clone().with_message_id("".into()), body, 100, now).unwrap();
        assert_eq!(empty.id, first.id);
    }

    #[test]
    fn message_id_table() {
        let now = SystemTime::now();
        // An AMQP short string holds at most 255 bytes: the 256-byte limit is checked alone.
        assert!(valid_message_id(&"a".repeat(256)));
        assert!(!valid_message_id(&"a".repeat(257)));
        assert!(!valid_message_id(""));
        let longest = "a".repeat(255);
        for (id, ok) in [
            ("evt-1", true),
            ("msg_p5jXN8AQM9LWM0D4loKWxJek", true),
            ("!~{}[]:;\"'<>?/\\|", true),
            (longest.as_str(), true),
            ("evt 1", false),
            (" evt", false),
            ("evt\t1", false),
            ("evt\r\n1", false),
            ("evt\u{7f}", false),
            ("evt\u{1b}[31m", false),
            ("caf\u{e9}", false),
            ("\u{a0}", false),
        ] {
            let p = props(&[(PROFILE, text("acme"))]).with_message_id(id.into());
            let got = read(&p, Bytes::new(), 10, now);
            match (ok, got) {
                (true, Ok(e)) => assert_eq!(e.id, id),
                (false, Err(r)) => {
                    assert_eq!(r.reason, DeadReason::InvalidMessageId, "{id:?}");
                    assert_eq!(r.profile.as_deref(), Some("acme"));
                    assert!(!r.error.contains(id), "the id is not echoed: {}", r.error);
                }
                (ok, got) => panic!("{id:?}: want ok={ok}, got {got:?}"),
            }
        }
    }

    #[test]
    fn timestamp_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let ms = |m: u64| UNIX_EPOCH + Duration::from_millis(m);
        for (ts, want) in [
            (None, None),
            (Some(0), Some(at(0))),
            (Some(1_749_999_000), Some(at(1_749_999_000))),
            // 10^11 itself is still seconds (year 5138: far in the future, so ignored).
            (Some(MILLIS_ABOVE), None),
            (Some(MILLIS_ABOVE + 1), Some(ms(MILLIS_ABOVE + 1))),
            (Some(1_749_999_000_123), Some(ms(1_749_999_000_123))),
            // Up to 5 minutes ahead counts as now; further ahead is ignored.
            (Some(1_750_000_300), Some(now)),
            (Some(1_750_000_301), None),
            (Some(1_750_000_300_000), Some(now)),
            (Some(1_750_000_300_001), None),
            (Some(4_000_000_000), None),
            (Some(u64::MAX), None),
        ] {
            assert_eq!(event_time(ts, now), want, "{ts:?}");
        }
    }

    #[test]
    fn max_age_applies_whatever_the_timestamp() {
        // Read an hour after the first attempt: a timestamp in milliseconds, in the future or
        // absurd never makes the event younger than that hour.
        let first = 1_750_000_000_000u64;
        let now = UNIX_EPOCH + Duration::from_millis(first) + Duration::from_secs(3600);
        let now_s = 1_750_003_600u64;
        let hour = Duration::from_secs(3600);
        for (ts, want) in [
            (None, hour),
            (Some(first), hour),
            (Some(now_s - 7200), 2 * hour),
            (Some((now_s - 7200) * 1000), 2 * hour),
            (Some(now_s + 3600), hour),
            (Some((now_s + 3600) * 1000), hour),
            (Some(now_s + 60), Duration::ZERO),
            (Some(u64::MAX), hour),
        ] {
            let mut p = props(&[
                (PROFILE, text("acme")),
                (FIRST_ATTEMPT, AMQPValue::LongLongInt(first as i64)),
            ]);
            if let Some(ts) = ts {
                p = p.with_timestamp(ts);
            }
            let e = read(&p, Bytes::new(), 10, now).unwrap();
            assert_eq!(e.age(now), want, "{ts:?}");
            assert!(e.born <= now);
        }
    }
}
