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
use crate::trace;

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

/// The query string of a GET or DELETE callback as it is sent, without the `?`: what the
/// signature covers in place of a body. The request line is built from the same URL text
/// (`Url::as_str`), so the bytes signed are the bytes sent; the profile URL's own query
/// parameters, if any, are part of it.
pub fn signed_query(url: &reqwest::Url) -> String {
    url.query().unwrap_or_default().to_owned()
}

/// Sign and send one attempt. Never fails: every outcome is an [`Answer`]. `blocked` is the
/// network guard's verdict on a literal host, found when the profile's runtime was built.
pub async fn send(
    client: &http::Client,
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
    let query: String;
    // What the signature's body part covers (SPEC section 6): the body, or for GET and
    // DELETE the query string exactly as it goes on the wire, without the `?`.
    let signed: &[u8] = if profile.sends_body() {
        let ct = HeaderValue::from_str(&event.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_TYPE, ct);
        &event.body
    } else {
        let params = query_params(&event.body);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        query = signed_query(&url);
        query.as_bytes()
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
        let signature = signer.sign(&event.id, ts, signed);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
        headers.insert(
            WEBHOOK_SIGNATURE,
            HeaderValue::try_from(signature).expect("base64 is header-safe"),
        );
    }
    // The HTTP client span of this attempt (none when tracing is off); its context goes to
    // the receiver only when the profile asks for it (SPEC section 16).
    let span = trace::http_span(&profile.method, &url);
    if profile.traceparent {
        span.send_context(&mut headers);
    }
    let mut req = reqwest::Request::new(profile.method.clone(), url);
    *req.headers_mut() = headers;
    *req.timeout_mut() = Some(timeout);
    if profile.sends_body() {
        *req.body_mut() = Some(event.body.clone().into());
    }
    let sent = answer(client, req, timeout).await;
    match &sent {
        Answer::Status { status, .. } => span.answered(*status),
        Answer::Unanswered { why, .. } => span.failed(match why {
            Unanswered::Timeout => "timeout",
            Unanswered::Connect => "connect_error",
            Unanswered::Blocked => "blocked_destination",
            Unanswered::Proxy => "proxy_error",
        }),
    }
    drop(span);
    (sent, started.elapsed())
}

/// The request's outcome as an [`Answer`].
async fn answer(client: &http::Client, req: reqwest::Request, timeout: Duration) -> Answer {
    match client.execute(req).await {
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
                let read = http::read_capped(resp, ERROR_SNIPPET);
                let bytes = tokio::time::timeout(timeout, read)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            Answer::Status {
                status,
                retry_after,
                snippet,
            }
        }
        Err(e) => match (e.blocked(), e.proxy()) {
            (Some(why), _) => Answer::Unanswered {
                why: Unanswered::Blocked,
                error: why,
            },
            (None, Some(failure)) => Answer::Unanswered {
                why: Unanswered::Proxy,
                error: failure,
            },
            (None, None) => Answer::Unanswered {
                why: if e.is_timeout() {
                    Unanswered::Timeout
                } else {
                    Unanswered::Connect
                },
                error: e.describe(),
            },
        },
    }
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

    /// One request as a receiver sees it on the wire: the request target and the headers.
    async fn receive_one(listener: tokio::net::TcpListener) -> (String, Vec<(String, String)>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended before its head");
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        (target, headers)
    }

    /// What a receiver does with a `v1` signature: HMAC over `id.timestamp.` and, for a GET
    /// or DELETE, the raw query string of the request target after the `?`.
    fn receiver_verifies(secret: &str, target: &str, headers: &[(String, String)]) -> bool {
        use base64::Engine;
        use hmac::{Hmac, KeyInit, Mac};
        let h = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{query}", h("webhook-id"), h("webhook-timestamp")).as_bytes());
        let want = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        h("webhook-signature").split(' ').any(|s| s == want)
    }

    #[tokio::test]
    async fn get_and_delete_sign_the_query_string_as_sent() {
        use crate::sign::{Signer, decode_secret};
        use secrecy::SecretString;
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let guard = crate::guard::Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let client = http::Client::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
            &guard,
            None,
            None,
        );
        // Characters that must be escaped, and a profile URL with its own query parameter.
        let body = br#"{"amount":1,"note":"a b&c=d/\u00e9+%","ok":true,"nested":{"x":1}}"#;
        for (method, base) in [
            (reqwest::Method::GET, "/cb"),
            (reqwest::Method::DELETE, "/cb?tenant=acme"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}{base}", listener.local_addr().unwrap());
            let profile = Profile {
                id: "acme".into(),
                url: reqwest::Url::parse(&url).unwrap(),
                method: method.clone(),
                headers: reqwest::header::HeaderMap::new(),
                timeout: None,
                concurrency: None,
                rate_limit: None,
                circuit_breaker: None,
                traceparent: false,
                tls: None,
                proxy: None,
                signer: Some(Signer::new(vec![
                    decode_secret(&SecretString::from(SECRET)).unwrap(),
                ])),
                auth: crate::auth::Auth::None,
            };
            let event = Event {
                id: "msg_1".into(),
                profile: "acme".into(),
                body: bytes::Bytes::from_static(body),
                content_type: "application/json".into(),
                attempts_before: 0,
                deferrals_before: 0,
                born: SystemTime::now(),
                first_attempt: SystemTime::now(),
            };
            let receiver = tokio::spawn(receive_one(listener));
            let (sent, _) = send(
                &client,
                &profile,
                &event,
                None,
                Duration::from_secs(5),
                None,
            )
            .await;
            assert!(
                matches!(sent, Answer::Status { status: 204, .. }),
                "{sent:?}"
            );
            let (target, headers) = receiver.await.unwrap();
            assert!(target.contains("amount=1"), "{method} {target}");
            assert!(
                target.contains("note=a+b%26c%3Dd%2F%C3%A9%2B%25"),
                "{target}"
            );
            assert_eq!(
                base.contains("tenant"),
                target.contains("tenant=acme&"),
                "{target}"
            );
            assert!(
                receiver_verifies(SECRET, &target, &headers),
                "{method} {target}"
            );
            // The data is signed: a changed amount does not verify.
            let forged = target.replace("amount=1", "amount=1000");
            assert!(!receiver_verifies(SECRET, &forged, &headers), "{forged}");
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
