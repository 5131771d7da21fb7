//! When a token expires: the configured expiry value read as seconds, unix seconds or
//! milliseconds, or an RFC 3339 time (`expiration_format`, `auto` by SPEC section 4's rule).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;

/// The expiry value at the configured path, as an absolute time. The error says what kind
/// of value it is and why it does not do, never the value: a misconfigured path may point
/// at the token.
pub fn parse_expiry(
    value: &Value,
    format: ExpirationFormat,
    now: SystemTime,
) -> Result<SystemTime, String> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        other => {
            return Err(format!(
                "expected a number or a string, found {}",
                kind(other)
            ));
        }
    };
    let text = value.as_str().map(str::trim);
    let format = match (format, number) {
        (ExpirationFormat::Auto, Some(n)) if n < 1e9 => ExpirationFormat::Seconds,
        (ExpirationFormat::Auto, Some(n)) if n <= 1e12 => ExpirationFormat::UnixSeconds,
        (ExpirationFormat::Auto, Some(_)) => ExpirationFormat::UnixMillis,
        (ExpirationFormat::Auto, None) => ExpirationFormat::Rfc3339,
        (f, _) => f,
    };
    let what = kind(value);
    let out_of_range = || format!("{what} out of range");
    match (format, number) {
        (ExpirationFormat::Rfc3339, _) => match text {
            Some(t) => {
                parse_rfc3339(t).ok_or_else(|| format!("{what} that is not an RFC 3339 time"))
            }
            None => Err(format!("expected an RFC 3339 string, found {what}")),
        },
        (_, None) => Err(format!("{what} that is not a number")),
        (ExpirationFormat::Seconds, Some(n)) => {
            if n <= 0.0 {
                return Err(format!("{what}, a lifetime that is not positive"));
            }
            if n < 1.0 {
                return Err(format!("{what}, a lifetime under one second"));
            }
            Duration::try_from_secs_f64(n)
                .ok()
                .and_then(|d| now.checked_add(d))
                .ok_or_else(out_of_range)
        }
        (ExpirationFormat::UnixSeconds, Some(n)) => unix_seconds(n).ok_or_else(out_of_range),
        (ExpirationFormat::UnixMillis, Some(n)) => {
            unix_seconds(n / 1000.0).ok_or_else(out_of_range)
        }
        (ExpirationFormat::Auto, Some(_)) => unreachable!("auto resolved above"),
    }
}

pub(super) fn unix_seconds(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

/// RFC 3339 with `Z` or a numeric offset (`2026-11-23T14:00:00+02:00`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let (base, offset_secs): (&str, i64) = if let Some(b) = text.strip_suffix(['Z', 'z']) {
        (b, 0)
    } else {
        let split = text.len().checked_sub(6)?;
        let (b, off) = text.split_at_checked(split)?;
        let sign = match off.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        (b, sign * (h * 3600 + m * 60))
    };
    if !base.contains(['T', 't']) {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    if offset_secs >= 0 {
        local.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        local.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    }
}
