//! The message headers this worker reads and writes (SPEC section 5), and the reasons a
//! dead letter carries. Reading never fails: a header of the wrong type is treated as
//! absent or clamped, never trusted and never fatal.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// The profile id the event names (publisher-set, required).
pub const PROFILE: &str = "profile";
/// Attempts made so far (worker-set on republish).
pub const ATTEMPT: &str = "x-attempt";
/// Times the event was deferred without an attempt (worker-set, SPEC section 9).
pub const DEFERRALS: &str = "x-deferrals";
/// Unix milliseconds of the first attempt, set on every republish, so `max_age` survives
/// retries without any state in the process when the event has no usable AMQP timestamp.
pub const FIRST_ATTEMPT: &str = "x-first-attempt";
pub const DEAD_REASON: &str = "x-dead-reason";
pub const LAST_STATUS: &str = "x-last-status";
pub const LAST_ERROR: &str = "x-last-error";
/// Unix milliseconds when the event was dead-lettered, for `dead-letters list`.
pub const DEAD_AT: &str = "x-dead-at";

/// What a worker adds to an event; removed again when a dead letter is replayed.
pub const RETRY_STATE: [&str; 7] = [
    ATTEMPT,
    DEFERRALS,
    FIRST_ATTEMPT,
    DEAD_REASON,
    LAST_STATUS,
    LAST_ERROR,
    DEAD_AT,
];

/// Why an event was dead-lettered (`x-dead-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    UnknownProfile,
    /// No `profile` header, or one that is not a string.
    MissingProfile,
    PermanentStatus,
    MaxAttempts,
    Expired,
    PayloadTooLarge,
    /// A `message_id` that cannot be sent as the `webhook-id` header.
    InvalidMessageId,
    /// The callback URL resolves to an address the network guard refuses (SPEC section 10).
    BlockedDestination,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownProfile => "unknown_profile",
            Self::MissingProfile => "missing_profile",
            Self::PermanentStatus => "permanent_status",
            Self::MaxAttempts => "max_attempts",
            Self::Expired => "expired",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidMessageId => "invalid_message_id",
            Self::BlockedDestination => "blocked_destination",
        }
    }
}

pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub fn as_text(v: &AMQPValue) -> Option<&str> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Integers of any AMQP width, or numeric strings.
pub fn as_int(v: &AMQPValue) -> Option<i128> {
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
pub fn get<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(name)
}

/// A counter header (`x-attempt`, `x-deferrals`): a negative, non-numeric or absurd value is
/// clamped rather than trusted or fatal.
pub fn count(headers: Option<&FieldTable>, name: &str) -> u32 {
    get(headers, name)
        .and_then(as_int)
        .map_or(0, |n| n.clamp(0, i128::from(u32::MAX)) as u32)
}

/// A count as an AMQP value (a signed 32-bit int, what most clients read back).
pub fn count_value(n: u32) -> AMQPValue {
    AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The profile id the event names; a readable reason when it names none.
pub fn profile(headers: Option<&FieldTable>) -> Result<String, String> {
    match get(headers, PROFILE) {
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

/// The event's headers without the broker's dead-letter trail (`x-death`, ...) and without
/// the names in `also_drop`.
pub fn copy(props: &BasicProperties, also_drop: &[&str]) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in props.headers().iter().flat_map(|h| h.inner()) {
        let name = k.as_str();
        let broker_trail = ["x-death", "x-first-death", "x-last-death"]
            .iter()
            .any(|p| name.starts_with(p));
        if !broker_trail && !also_drop.contains(&name) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    #[test]
    fn count_header_table() {
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
            let t = match &value {
                Some(v) => table(&[(ATTEMPT, v.clone())]),
                None => table(&[]),
            };
            assert_eq!(count(Some(&t), ATTEMPT), want, "{value:?}");
        }
        assert_eq!(count_value(u32::MAX), AMQPValue::LongInt(i32::MAX));
    }

    #[test]
    fn copy_drops_the_broker_trail_and_named_headers() {
        let props = BasicProperties::default().with_headers(table(&[
            (PROFILE, text("a")),
            ("x-death", text("trail")),
            ("x-first-death-reason", text("expired")),
            (ATTEMPT, AMQPValue::LongInt(2)),
        ]));
        let kept = copy(&props, &[ATTEMPT]);
        let names: Vec<_> = kept.inner().keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, vec![PROFILE]);
    }
}
