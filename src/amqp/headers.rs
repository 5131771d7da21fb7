//! The header codec: the message headers this worker reads and writes (SPEC section 5), as
//! typed values ([`RetryState`], [`DeadInfo`], the profile). Every other module reads and
//! writes them through this one. Reading never fails: a header of the wrong type is treated
//! as absent or clamped, never trusted and never fatal.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::decide::{DeadReason, Label};

/// The profile id the event names (publisher-set, required).
pub const PROFILE: &str = "profile";
/// Events of one profile with the same key are delivered in order (SPEC section 15).
pub const ORDERING_KEY: &str = "ordering_key";
/// The longest `ordering_key`, in bytes.
pub const MAX_ORDERING_KEY: usize = 128;
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

/// The worker's own state on an event, carried in its headers from one delivery to the
/// next: retries and deferrals keep no state in the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryState {
    /// `x-attempt`: attempts made so far.
    pub attempts: u32,
    /// `x-deferrals`: times deferred without an attempt.
    pub deferrals: u32,
    /// `x-first-attempt`: unix milliseconds of the first attempt, for events without an
    /// AMQP timestamp.
    pub first_attempt_ms: Option<u64>,
}

impl RetryState {
    /// Never fails: a header of the wrong type or sign is absent or clamped.
    pub fn read(h: Option<&FieldTable>) -> Self {
        Self {
            attempts: count(h, ATTEMPT),
            deferrals: count(h, DEFERRALS),
            first_attempt_ms: get(h, FIRST_ATTEMPT)
                .and_then(as_int)
                .and_then(|ms| u64::try_from(ms).ok()),
        }
    }

    /// Into `h`: each field that is set (a zero count is left out, as a publisher sends it).
    pub fn write(&self, h: &mut FieldTable) {
        for (name, n) in [(ATTEMPT, self.attempts), (DEFERRALS, self.deferrals)] {
            if n > 0 {
                h.insert(name.into(), count_value(n));
            }
        }
        if let Some(ms) = self.first_attempt_ms {
            h.insert(FIRST_ATTEMPT.into(), AMQPValue::LongLongInt(clamp_i64(ms)));
        }
    }
}

/// What a dead letter carries besides the event (SPEC section 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadInfo {
    /// `x-dead-reason`; `None` when missing or not one this version knows.
    pub reason: Option<DeadReason>,
    /// `x-last-status`: the last HTTP status, if the endpoint answered.
    pub status: Option<u16>,
    /// `x-last-error`.
    pub error: String,
    /// `x-attempt`.
    pub attempts: u32,
    /// `x-dead-at`: unix milliseconds.
    pub dead_at_ms: Option<u64>,
}

impl DeadInfo {
    pub fn read(h: Option<&FieldTable>) -> Self {
        Self {
            reason: get(h, DEAD_REASON)
                .and_then(as_text)
                .and_then(DeadReason::parse),
            status: get(h, LAST_STATUS)
                .and_then(as_int)
                .and_then(|n| u16::try_from(n).ok()),
            error: get(h, LAST_ERROR)
                .and_then(as_text)
                .unwrap_or_default()
                .to_owned(),
            attempts: count(h, ATTEMPT),
            dead_at_ms: get(h, DEAD_AT)
                .and_then(as_int)
                .and_then(|ms| u64::try_from(ms).ok()),
        }
    }

    pub fn write(&self, h: &mut FieldTable) {
        if let Some(reason) = self.reason {
            h.insert(DEAD_REASON.into(), text(reason.as_str()));
        }
        if let Some(status) = self.status {
            h.insert(LAST_STATUS.into(), AMQPValue::LongInt(i32::from(status)));
        }
        h.insert(LAST_ERROR.into(), text(&self.error));
        h.insert(ATTEMPT.into(), count_value(self.attempts));
        if let Some(ms) = self.dead_at_ms {
            h.insert(DEAD_AT.into(), AMQPValue::LongLongInt(clamp_i64(ms)));
        }
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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

/// The event's `ordering_key`: `Ok(None)` without one, `Err` with a reason when it is not a
/// string of 1 to [`MAX_ORDERING_KEY`] bytes.
pub fn ordering_key(headers: Option<&FieldTable>) -> Result<Option<String>, String> {
    match get(headers, ORDERING_KEY) {
        None => Ok(None),
        Some(v) => match as_text(v) {
            Some(s) if !s.is_empty() && s.len() <= MAX_ORDERING_KEY => Ok(Some(s.to_owned())),
            Some(_) => Err(format!(
                "the `ordering_key` header must be 1 to {MAX_ORDERING_KEY} bytes"
            )),
            None => Err(format!(
                "the `ordering_key` header must be a string, not {}",
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
    fn retry_state_and_dead_info_round_trip() {
        let state = RetryState {
            attempts: 3,
            deferrals: 0,
            first_attempt_ms: Some(1_700_000_000_000),
        };
        let mut t = FieldTable::default();
        state.write(&mut t);
        assert!(
            get(Some(&t), DEFERRALS).is_none(),
            "a zero count is left out"
        );
        assert_eq!(RetryState::read(Some(&t)), state);
        let dead = DeadInfo {
            reason: Some(DeadReason::PermanentStatus),
            status: Some(410),
            error: "HTTP 410: gone".into(),
            attempts: 2,
            dead_at_ms: Some(5),
        };
        let mut t = FieldTable::default();
        dead.write(&mut t);
        assert_eq!(DeadInfo::read(Some(&t)), dead);
        let odd = table(&[
            (DEAD_REASON, text("from_the_future")),
            (LAST_STATUS, text("x")),
        ]);
        let read = DeadInfo::read(Some(&odd));
        assert_eq!((read.reason, read.status), (None, None));
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
