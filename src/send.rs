//! The sign and send stages: one HTTP request to the customer's callback URL, signed, and
//! what came back as an [`Answer`]. What the answer means is read in one place,
//! [`crate::decide::classify`] (like Vector's `RetryLogic`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use crate::auth::Credential;
use crate::config::Profile;
use crate::decide::{Answer, Unanswered};
use crate::event::Event;
use crate::http;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// How much of a failed callback's response is read, for `x-last-error`.
const ERROR_SNIPPET: usize = 256;

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

/// Sign and send one attempt. Never fails: every outcome is an [`Answer`]. `blocked` is the
/// network guard's verdict on a literal host, found when the profile's runtime was built.
pub async fn send(
    client: &reqwest::Client,
    profile: &Profile,
    event: &Event,
    credential: Option<&Credential>,
    timeout: Duration,
    blocked: Option<&str>,
) -> (Answer, Duration) {
    let started = Instant::now();
    if let Some(why) = blocked {
        let sent = Answer::Unanswered {
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
            Answer::Status {
                status,
                retry_after,
                snippet,
            }
        }
        Err(e) => match http::blocked(&e) {
            Some(why) => Answer::Unanswered {
                why: Unanswered::Blocked,
                error: why,
            },
            None => Answer::Unanswered {
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
