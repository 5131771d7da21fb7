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
