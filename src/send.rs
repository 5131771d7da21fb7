//! The sign and send stages: one HTTP request to the customer's callback URL, and the
//! classification of its answer into an action (like Vector's `RetryLogic`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use crate::auth::Credential;
use crate::config::Profile;
use crate::event::Event;
use crate::http;
use crate::metrics::AttemptClass;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// How much of a failed callback's response is read, for `x-last-error`.
const ERROR_SNIPPET: usize = 256;

/// What the callback URL's answer means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 408, 425, 429, 5xx, timeouts, connection errors.
    Retry,
    /// 401: refresh the token and resend once (SPEC section 4).
    Unauthorized,
    /// Any other 3xx or 4xx.
    Permanent,
}

/// What an HTTP status means: for the event, and as the metrics count it. The one place
/// where status codes are read.
pub fn classify(status: u16) -> (Verdict, AttemptClass) {
    let verdict = match status {
        200..=299 => Verdict::Delivered,
        401 => Verdict::Unauthorized,
        408 | 425 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    };
    let class = match status {
        200..=299 => AttemptClass::S2xx,
        300..=399 => AttemptClass::S3xx,
        500..=599 => AttemptClass::S5xx,
        _ => AttemptClass::S4xx,
    };
    (verdict, class)
}

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    Timeout,
    /// Refused, reset, unreachable, or the TLS handshake failed.
    Connect,
    /// The network guard refused the address: nothing was sent.
    Blocked,
}

/// One HTTP attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the body for non-2xx answers, for `x-last-error`.
        snippet: String,
    },
    Failed {
        why: Unanswered,
        error: String,
    },
}

impl Sent {
    /// Its `delivery_attempts_total{result}`; a refused address counts as a connect error.
    pub fn class(&self) -> AttemptClass {
        match self {
            Sent::Answered { status, .. } => classify(*status).1,
            Sent::Failed {
                why: Unanswered::Timeout,
                ..
            } => AttemptClass::Timeout,
            Sent::Failed { .. } => AttemptClass::ConnectError,
        }
    }
}

/// `Retry-After` in seconds or as an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// GET and DELETE: the body's top-level scalar fields as query parameters.
pub fn query_params(body: &[u8]) -> Vec<(String, String)> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect()
}

/// Sign and send one attempt. Never fails: every outcome is a [`Sent`]. `blocked` is the
/// network guard's verdict on a literal host, found when the profile's runtime was built.
pub async fn send(
    client: &reqwest::Client,
    profile: &Profile,
    event: &Event,
    credential: Option<&Credential>,
    timeout: Duration,
    blocked: Option<&str>,
) -> (Sent, Duration) {
    let started = Instant::now();
    if let Some(why) = blocked {
        let sent = Sent::Failed {
            why: Unanswered::Blocked,
            error: why.to_owned(),
        };
        return (sent, started.elapsed());
    }
    // One map, insert semantics: the event's Content-Type, the credential and the signature
    // replace a profile header of the same name instead of being sent twice. The request is
    // built directly (no builder): this runs for every event.
    let mut headers = profile.headers.clone();
    let mut url = profile.url.clone();
    let body: &[u8] = if profile.sends_body() {
        let ct = HeaderValue::from_str(&event.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_TYPE, ct);
        &event.body
    } else {
        let params = query_params(&event.body);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        b""
    };
    if let Some(c) = credential {
        headers.insert(c.header.clone(), c.value.clone());
    }
    let id = HeaderValue::from_str(&event.id).expect("event::read accepts only header-safe ids");
    headers.insert(WEBHOOK_ID, id);
    if let Some(signer) = &profile.signer {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let signature = signer.sign(&event.id, ts, body);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
        headers.insert(
            WEBHOOK_SIGNATURE,
            HeaderValue::try_from(signature).expect("base64 is header-safe"),
        );
    }
    let mut req = reqwest::Request::new(profile.method.clone(), url);
    *req.headers_mut() = headers;
    *req.timeout_mut() = Some(timeout);
    if profile.sends_body() {
        *req.body_mut() = Some(event.body.clone().into());
    }
    let sent = match client.execute(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let snippet = if (200..300).contains(&status) {
                String::new()
            } else {
                let bytes = http::read_capped(resp, ERROR_SNIPPET)
                    .await
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            Sent::Answered {
                status,
                retry_after,
                snippet,
            }
        }
        Err(e) => match http::blocked(&e) {
            Some(why) => Sent::Failed {
                why: Unanswered::Blocked,
                error: why,
            },
            None => Sent::Failed {
                why: if e.is_timeout() {
                    Unanswered::Timeout
                } else {
                    Unanswered::Connect
                },
                error: http::describe(e),
            },
        },
    };
    (sent, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use Verdict::*;
        for (status, want) in [
            (200, Delivered),
            (204, Delivered),
            (299, Delivered),
            (301, Permanent),
            (302, Permanent),
            (400, Permanent),
            (401, Unauthorized),
            (403, Permanent),
            (404, Permanent),
            (408, Retry),
            (410, Permanent),
            (425, Retry),
            (429, Retry),
            (500, Retry),
            (503, Retry),
            (599, Retry),
        ] {
            assert_eq!(classify(status).0, want, "{status}");
        }
    }

    #[test]
    fn metric_class_table() {
        use AttemptClass::*;
        for (status, want) in [
            (204, S2xx),
            (302, S3xx),
            (404, S4xx),
            (429, S4xx),
            (503, S5xx),
            (100, S4xx),
        ] {
            assert_eq!(classify(status).1, want, "{status}");
        }
    }

    #[test]
    fn retry_after_table() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        for (raw, want) in [
            ("120", Some(120)),
            (" 5 ", Some(5)),
            ("Wed, 21 Oct 2015 07:29:00 GMT", Some(60)),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(0)),
            ("soon", None),
            ("-1", None),
        ] {
            assert_eq!(
                parse_retry_after(raw, now),
                want.map(Duration::from_secs),
                "{raw}"
            );
        }
    }

    #[test]
    fn query_params_take_top_level_scalars() {
        let got = query_params(br#"{"a":"x y","n":1.5,"b":true,"z":null,"o":{"k":1},"l":[1]}"#);
        assert_eq!(
            got,
            vec![
                ("a".into(), "x y".into()),
                ("b".into(), "true".into()),
                ("n".into(), "1.5".into())
            ]
        );
        assert!(query_params(b"not json").is_empty());
        assert!(query_params(b"[1,2]").is_empty());
    }
}
