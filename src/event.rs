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
mod tests;
