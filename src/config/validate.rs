//! Raw structs -> runtime types. Every check runs; every problem is collected.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde_saphyr::{Location, Spanned};

use super::raw::{RawAuth, RawConfig, RawProfile, RawSecret, S};
use super::{AmqpConfig, Config, DeliveryConfig, Issue, LogConfig, LogFormat, MetricsConfig};
use crate::auth::Auth;
use crate::auth::oauth2::{ClientAuth, OAuth2};
use crate::auth::token::{ExpirationFormat, FieldPath, ResponseShape};
use crate::profile::{Profile, Profiles};
use crate::retry::RetryPolicy;
use crate::sign::{self, Signer};

/// x-message-ttl is a 32-bit signed number of milliseconds on some brokers: stay below.
const MAX_DELAY_LIMIT: Duration = Duration::from_secs(24 * 24 * 3600);

pub(crate) fn parse_issue(e: &serde_saphyr::Error) -> Issue {
    let location = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    let message = e.without_snippet().to_string();
    Issue {
        path: String::new(),
        location,
        message,
    }
}

fn loc(l: &Location) -> Option<(u64, u64)> {
    (l.line() > 0).then(|| (l.line(), l.column()))
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, at: Option<&Location>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            location: at.and_then(loc),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, v: &Option<S<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.value.trim()) {
            Ok(d) if d.is_zero() => {
                self.add(path, Some(&v.referenced), "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.add(
                    path,
                    Some(&v.referenced),
                    format!(
                        "{:?} is not a duration ({e}); use e.g. 500ms, 30s, 5m, 2h",
                        v.value
                    ),
                );
                default
            }
        }
    }

    fn headers(
        &mut self,
        path: &str,
        at: Option<&Location>,
        raw: &BTreeMap<String, String>,
    ) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (name, value) in raw {
            let key = format!("{path}.{name}");
            match (HeaderName::from_str(name), HeaderValue::from_str(value)) {
                (Ok(n), Ok(v)) => {
                    out.insert(n, v);
                }
                (Err(_), _) => self.add(key, at, "is not a valid HTTP header name"),
                (_, Err(_)) => self.add(key, at, "value is not a valid HTTP header value"),
            }
        }
        out
    }

    fn url(
        &mut self,
        path: &str,
        at: Option<&Location>,
        v: &Option<S<String>>,
    ) -> Option<reqwest::Url> {
        let Some(v) = v else {
            self.add(path, at, "is required");
            return None;
        };
        match reqwest::Url::parse(&v.value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.add(
                    path,
                    Some(&v.referenced),
                    "must be an http:// or https:// URL with a host",
                );
                None
            }
            Err(e) => {
                self.add(path, Some(&v.referenced), format!("is not a URL ({e})"));
                None
            }
        }
    }

    fn field_path(
        &mut self,
        path: &str,
        v: &Option<S<String>>,
        default: Option<&str>,
    ) -> Option<FieldPath> {
        let (text, at) = match v {
            Some(v) => (v.value.as_str(), Some(&v.referenced)),
            None => (default?, None),
        };
        match FieldPath::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.add(
                    path,
                    at,
                    format!("{text:?} is not a JSONPath (RFC 9535): {e}"),
                );
                None
            }
        }
    }
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, Vec<Issue>> {
    let mut issues = Issues::default();
    let amqp = amqp(&mut issues, &raw);
    let d = &raw.delivery;
    let delivery = DeliveryConfig {
        concurrency: positive(&mut issues, "delivery.concurrency", &d.concurrency, 256) as usize,
        timeout: issues.duration("delivery.timeout", &d.timeout, Duration::from_secs(15)),
        connect_timeout: issues.duration(
            "delivery.connect_timeout",
            &d.connect_timeout,
            Duration::from_secs(5),
        ),
        max_body_bytes: match &d.max_body_bytes {
            None => 1_048_576,
            Some(v) if v.value == 0 || v.value > 128 * 1024 * 1024 => {
                issues.add(
                    "delivery.max_body_bytes",
                    Some(&v.referenced),
                    "must be from 1 to 134217728 (the broker's own limit)",
                );
                1_048_576
            }
            Some(v) => v.value as usize,
        },
    };
    let retry = retry(&mut issues, &raw);
    let metrics = MetricsConfig {
        listen: match &raw.metrics.listen {
            None => SocketAddr::from(([0, 0, 0, 0], 9464)),
            Some(v) => v.value.parse().unwrap_or_else(|_| {
                issues.add(
                    "metrics.listen",
                    Some(&v.referenced),
                    format!("{:?} is not an address:port such as 0.0.0.0:9464", v.value),
                );
                SocketAddr::from(([0, 0, 0, 0], 9464))
            }),
        },
    };
    let log = LogConfig {
        format: match raw.log.format.as_ref().map(|v| (v.value.as_str(), v)) {
            None | Some(("json", _)) => LogFormat::Json,
            Some(("text", _)) => LogFormat::Text,
            Some((other, v)) => {
                issues.add(
                    "log.format",
                    Some(&v.referenced),
                    format!("{other:?} is not one of json, text"),
                );
                LogFormat::Json
            }
        },
    };
    let profiles = match &raw.profiles {
        None => {
            issues.add(
                "profiles",
                None,
                "is required: list at least one callback profile",
            );
            Vec::new()
        }
        Some(list) => {
            if list.is_empty() {
                issues.add(
                    "profiles",
                    None,
                    "is empty: list at least one callback profile",
                );
            }
            let mut seen = HashSet::new();
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| profile(&mut issues, &mut seen, i, p))
                .collect()
        }
    };
    if issues.0.is_empty() {
        Ok(Config {
            amqp,
            delivery,
            retry,
            metrics,
            log,
            profiles: Profiles::new(profiles),
        })
    } else {
        Err(issues.0)
    }
}

fn positive(issues: &mut Issues, path: &str, v: &Option<S<u32>>, default: u32) -> u32 {
    match v {
        None => default,
        Some(v) if v.value == 0 => {
            issues.add(path, Some(&v.referenced), "must be at least 1");
            default
        }
        Some(v) => v.value,
    }
}

fn amqp(issues: &mut Issues, raw: &RawConfig) -> AmqpConfig {
    let a = &raw.amqp;
    let url = a
        .url
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if lapin::uri::AMQPUri::from_str(url.expose_secret()).is_err() {
        // The URL holds the broker password: say what is wrong, never what it is.
        issues.add("amqp.url", None, "is not an amqp:// or amqps:// URI");
    }
    let name = |issues: &mut Issues, path: &str, v: &Option<S<String>>| -> String {
        let Some(v) = v else {
            return "callbacks".into();
        };
        // Room for the longest derived name, `<queue>.delay.<ms>`, within AMQP's 255 bytes.
        if v.value.is_empty() || v.value.len() > 200 || v.value.starts_with("amq.") {
            issues.add(
                path,
                Some(&v.referenced),
                "must be 1 to 200 bytes and not start with amq.",
            );
        }
        v.value.clone()
    };
    let prefetch = match &a.prefetch {
        None => 256,
        Some(v) if v.value == 0 || v.value > u32::from(u16::MAX) => {
            issues.add(
                "amqp.prefetch",
                Some(&v.referenced),
                "must be from 1 to 65535",
            );
            256
        }
        Some(v) => v.value as u16,
    };
    AmqpConfig {
        url,
        queue: name(issues, "amqp.queue", &a.queue),
        exchange: name(issues, "amqp.exchange", &a.exchange),
        prefetch,
    }
}

fn retry(issues: &mut Issues, raw: &RawConfig) -> RetryPolicy {
    let r = &raw.retry;
    let d = RetryPolicy::default();
    let max_attempts = positive(
        issues,
        "retry.max_attempts",
        &r.max_attempts,
        d.max_attempts,
    );
    let initial_delay = issues.duration("retry.initial_delay", &r.initial_delay, d.initial_delay);
    let max_delay = issues.duration("retry.max_delay", &r.max_delay, d.max_delay);
    let multiplier = match &r.multiplier {
        None => d.multiplier,
        Some(v) if v.value.is_finite() && v.value >= 1.0 => v.value,
        Some(v) => {
            issues.add(
                "retry.multiplier",
                Some(&v.referenced),
                "must be a number of at least 1.0",
            );
            d.multiplier
        }
    };
    let jitter = match &r.jitter {
        None => d.jitter,
        Some(v) if (0.0..1.0).contains(&v.value) => v.value,
        Some(v) => {
            issues.add(
                "retry.jitter",
                Some(&v.referenced),
                "must be at least 0 and below 1",
            );
            d.jitter
        }
    };
    let at = |v: &Option<S<String>>| v.as_ref().map(|v| v.referenced);
    if initial_delay < Duration::from_millis(1) {
        issues.add(
            "retry.initial_delay",
            at(&r.initial_delay).as_ref(),
            "must be at least 1ms",
        );
    }
    if max_delay < initial_delay {
        issues.add(
            "retry.max_delay",
            at(&r.max_delay).as_ref(),
            "must not be shorter than retry.initial_delay",
        );
    }
    if max_delay > MAX_DELAY_LIMIT {
        issues.add(
            "retry.max_delay",
            at(&r.max_delay).as_ref(),
            "must be at most 24 days (the broker's TTL limit)",
        );
    }
    RetryPolicy {
        max_attempts,
        initial_delay,
        multiplier,
        max_delay,
        jitter,
        max_age: issues.duration("retry.max_age", &r.max_age, d.max_age),
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn profile(
    issues: &mut Issues,
    seen: &mut HashSet<String>,
    i: usize,
    spanned: &Spanned<RawProfile>,
) -> Option<Profile> {
    let p = &spanned.value;
    let at = Some(&spanned.referenced);
    let path = format!("profiles[{i}]");
    let before = issues.0.len();
    let id = match &p.id {
        None => {
            issues.add(format!("{path}.id"), at, "is required");
            String::new()
        }
        Some(v) if !valid_id(&v.value) => {
            issues.add(
                format!("{path}.id"),
                Some(&v.referenced),
                format!("{:?} must be 1 to 64 of A-Z a-z 0-9 _ . -", v.value),
            );
            v.value.clone()
        }
        Some(v) => {
            if !seen.insert(v.value.clone()) {
                issues.add(
                    format!("{path}.id"),
                    Some(&v.referenced),
                    format!("{:?} is used by an earlier profile", v.value),
                );
            }
            v.value.clone()
        }
    };
    let url = issues.url(&format!("{path}.url"), at, &p.url);
    let method = match p.method.as_ref().map(|m| (m.value.to_ascii_uppercase(), m)) {
        None => Method::POST,
        Some((m, _)) if ["POST", "PUT", "PATCH", "GET", "DELETE"].contains(&m.as_str()) => {
            Method::from_str(&m).expect("listed methods parse")
        }
        Some((_, v)) => {
            issues.add(
                format!("{path}.method"),
                Some(&v.referenced),
                format!("{:?} is not one of POST, PUT, PATCH, GET, DELETE", v.value),
            );
            Method::POST
        }
    };
    let headers = issues.headers(&format!("{path}.headers"), at, &p.headers);
    let timeout = p.timeout.as_ref().map(|_| {
        issues.duration(
            &format!("{path}.timeout"),
            &p.timeout,
            Duration::from_secs(15),
        )
    });
    let signer = p.signing.as_ref().map(|s| {
        if s.secrets.is_empty() {
            issues.add(
                format!("{path}.signing.secrets"),
                at,
                "is empty: list at least one secret, or leave signing out",
            );
        }
        let keys: Vec<_> = s
            .secrets
            .iter()
            .enumerate()
            .filter_map(|(k, secret)| {
                sign::decode_secret(&secret.0)
                    .map_err(|e| {
                        issues.add(format!("{path}.signing.secrets[{k}]"), at, e.to_string())
                    })
                    .ok()
            })
            .collect();
        Signer::new(keys)
    });
    let auth = match &p.auth {
        None => Auth::None,
        Some(a) => auth(issues, &format!("{path}.auth"), &a.value, &a.referenced),
    };
    if issues.0.len() > before {
        return None;
    }
    Some(Profile {
        id: id.into(),
        url: url?,
        method,
        headers,
        timeout,
        signer,
        auth,
    })
}

/// Keys of `RawAuth` that belong to one type only, to report strays.
const OAUTH2_KEYS: &[&str] = &[
    "grant_type",
    "method",
    "url",
    "client_id",
    "client_secret",
    "client_auth",
    "scope",
    "params",
    "headers",
    "token_field_path",
    "expiration_field_path",
    "expiration_format",
    "token_type_field_path",
    "auth_algorithm",
    "refresh_before_expiry",
];

fn present_keys(a: &RawAuth) -> Vec<&'static str> {
    let flags = [
        ("grant_type", a.grant_type.is_some()),
        ("method", a.method.is_some()),
        ("url", a.url.is_some()),
        ("client_id", a.client_id.is_some()),
        ("client_secret", a.client_secret.is_some()),
        ("client_auth", a.client_auth.is_some()),
        ("scope", a.scope.is_some()),
        ("params", !a.params.is_empty()),
        ("headers", !a.headers.is_empty()),
        ("token_field_path", a.token_field_path.is_some()),
        ("expiration_field_path", a.expiration_field_path.is_some()),
        ("expiration_format", a.expiration_format.is_some()),
        ("token_type_field_path", a.token_type_field_path.is_some()),
        ("auth_algorithm", a.auth_algorithm.is_some()),
        ("refresh_before_expiry", a.refresh_before_expiry.is_some()),
        ("username", a.username.is_some()),
        ("password", a.password.is_some()),
        ("token", a.token.is_some()),
        ("header", a.header.is_some()),
        ("value", a.value.is_some()),
    ];
    flags
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
}

fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn auth(issues: &mut Issues, path: &str, a: &RawAuth, at: &Location) -> Auth {
    let kind = a.kind.as_ref().map_or("none", |k| k.value.as_str());
    let allowed: &[&str] = match kind {
        "none" => &[],
        "basic" => &["username", "password"],
        "bearer" => &["token"],
        "api_key" => &["header", "value"],
        "oauth2" => OAUTH2_KEYS,
        other => {
            let kat = a.kind.as_ref().map(|k| k.referenced);
            issues.add(
                format!("{path}.type"),
                kat.as_ref(),
                format!("{other:?} is not one of none, basic, bearer, api_key, oauth2"),
            );
            return Auth::None;
        }
    };
    for key in present_keys(a).into_iter().filter(|k| !allowed.contains(k)) {
        issues.add(
            format!("{path}.{key}"),
            Some(at),
            format!("does not apply to auth type {kind}"),
        );
    }
    let required = |issues: &mut Issues, key: &str, v: Option<&RawSecret>| -> Option<String> {
        match v {
            Some(s) => Some(s.0.expose_secret().to_owned()),
            None => {
                issues.add(
                    format!("{path}.{key}"),
                    Some(at),
                    format!("is required for auth type {kind}"),
                );
                None
            }
        }
    };
    let bad_value = |issues: &mut Issues, key: &str| {
        issues.add(
            format!("{path}.{key}"),
            Some(at),
            "holds characters not allowed in an HTTP header",
        );
    };
    match kind {
        "basic" => {
            let user = a.username.clone();
            if user.is_none() {
                issues.add(
                    format!("{path}.username"),
                    Some(at),
                    "is required for auth type basic",
                );
            }
            let password = required(issues, "password", a.password.as_ref());
            let (Some(user), Some(password)) = (user, password) else {
                return Auth::None;
            };
            use base64::Engine;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Auth::Static {
                header: AUTHORIZATION,
                value: sensitive(&format!("Basic {encoded}")).expect("base64 is header-safe"),
            }
        }
        "bearer" => match required(issues, "token", a.token.as_ref()) {
            None => Auth::None,
            Some(t) => match sensitive(&format!("Bearer {t}")) {
                Some(value) => Auth::Static {
                    header: AUTHORIZATION,
                    value,
                },
                None => {
                    bad_value(issues, "token");
                    Auth::None
                }
            },
        },
        "api_key" => {
            let header = match &a.header {
                None => Some(AUTHORIZATION),
                Some(h) => HeaderName::from_str(&h.value).ok().or_else(|| {
                    issues.add(
                        format!("{path}.header"),
                        Some(&h.referenced),
                        "is not a valid HTTP header name",
                    );
                    None
                }),
            };
            let value = required(issues, "value", a.value.as_ref()).and_then(|v| {
                sensitive(&v).or_else(|| {
                    bad_value(issues, "value");
                    None
                })
            });
            match (header, value) {
                (Some(header), Some(value)) => Auth::Static { header, value },
                _ => Auth::None,
            }
        }
        "oauth2" => oauth2(issues, path, a, at).map_or(Auth::None, |o| Auth::OAuth2(Box::new(o))),
        _ => Auth::None,
    }
}

fn oauth2(issues: &mut Issues, path: &str, a: &RawAuth, at: &Location) -> Option<OAuth2> {
    let p = |k: &str| format!("{path}.{k}");
    if let Some(g) = &a.grant_type {
        let reason = match g.value.as_str() {
            "client_credentials" => None,
            "authorization_code" | "pkce" | "device_code" => Some(format!(
                "{:?} is not supported: it needs a user to sign in interactively through a redirect URL, which a background worker cannot do; use client_credentials",
                g.value
            )),
            "refresh_token" => Some("\"refresh_token\" is not supported: a worker obtains tokens with client_credentials and fetches a new one on expiry; use client_credentials".into()),
            other => Some(format!("{other:?} is not supported; the only grant is client_credentials")),
        };
        if let Some(reason) = reason {
            issues.add(p("grant_type"), Some(&g.referenced), reason);
        }
    }
    let method = match a.method.as_ref().map(|m| (m.value.to_ascii_uppercase(), m)) {
        None => Method::POST,
        Some((m, _)) if ["GET", "POST", "PUT"].contains(&m.as_str()) => {
            Method::from_str(&m).expect("listed methods parse")
        }
        Some((_, v)) => {
            issues.add(
                p("method"),
                Some(&v.referenced),
                format!("{:?} is not one of GET, POST, PUT", v.value),
            );
            Method::POST
        }
    };
    let url = issues.url(&p("url"), Some(at), &a.url);
    if a.client_id.is_none() {
        issues.add(p("client_id"), Some(at), "is required for auth type oauth2");
    }
    if a.client_secret.is_none() {
        issues.add(
            p("client_secret"),
            Some(at),
            "is required for auth type oauth2",
        );
    }
    let client_auth = match a.client_auth.as_ref().map(|c| (c.value.as_str(), c)) {
        None | Some(("request_body", _)) => ClientAuth::RequestBody,
        Some(("basic_header", _)) => ClientAuth::BasicHeader,
        Some(("json_body", _)) => ClientAuth::JsonBody,
        Some((other, v)) => {
            issues.add(
                p("client_auth"),
                Some(&v.referenced),
                format!("{other:?} is not one of request_body, basic_header, json_body"),
            );
            ClientAuth::RequestBody
        }
    };
    let token_path = issues.field_path(
        &p("token_field_path"),
        &a.token_field_path,
        Some("$.access_token"),
    );
    let expiration = issues.field_path(
        &p("expiration_field_path"),
        &a.expiration_field_path,
        Some("$.expires_in"),
    );
    let token_type = issues.field_path(
        &p("token_type_field_path"),
        &a.token_type_field_path,
        Some("$.token_type"),
    );
    let expiration_format = match &a.expiration_format {
        None => ExpirationFormat::Auto,
        Some(v) => ExpirationFormat::parse(&v.value).unwrap_or_else(|| {
            issues.add(
                p("expiration_format"),
                Some(&v.referenced),
                format!(
                    "{:?} is not one of auto, seconds, unix_seconds, unix_millis, rfc3339",
                    v.value
                ),
            );
            ExpirationFormat::Auto
        }),
    };
    let refresh_before_expiry = issues.duration(
        &p("refresh_before_expiry"),
        &a.refresh_before_expiry,
        Duration::from_secs(30),
    );
    let headers = issues.headers(&p("headers"), Some(at), &a.headers);
    let algorithm = a.auth_algorithm.as_ref().map(|v| v.value.clone());
    Some(OAuth2 {
        method,
        url: url?,
        client_id: a.client_id.as_ref()?.value.clone(),
        client_secret: a.client_secret.as_ref()?.0.clone(),
        client_auth,
        scope: a.scope.clone(),
        params: a
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        headers,
        shape: ResponseShape {
            token: token_path?,
            expiration,
            expiration_format,
            token_type,
            algorithm,
        },
        refresh_before_expiry,
    })
}
