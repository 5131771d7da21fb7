//! One callback profile: where its callbacks go, how they are signed and authenticated, and
//! how hard its endpoint may be pushed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;

use super::delivery::{self, BreakerSettings};
use super::issues::{Issues, spanned};
use super::proxy::{self, Proxy};
use super::raw::{RawProfile, S};
use super::tls::{self, Tls};
use super::{DeliveryConfig, auth};
use crate::auth::Auth;
use crate::sign::{self, Signer};

/// One validated callback profile (its settings; `profiles::Endpoint` is its runtime).
#[derive(Debug)]
pub struct Profile {
    pub id: Arc<str>,
    pub url: reqwest::Url,
    pub method: Method,
    pub headers: HeaderMap,
    /// Overrides `delivery.timeout`.
    pub timeout: Option<Duration>,
    /// Overrides `delivery.per_profile_concurrency`.
    pub concurrency: Option<usize>,
    pub rate_limit: Option<RateLimit>,
    /// Overrides `delivery.circuit_breaker`.
    pub circuit_breaker: Option<BreakerSettings>,
    /// Send W3C `traceparent`/`tracestate` with this profile's callbacks (SPEC section 16).
    pub traceparent: bool,
    pub tls: Option<Tls>,
    /// Overrides `delivery.proxy`: `Some(None)` (`proxy: ""`) is direct.
    pub proxy: Option<Option<Proxy>>,
    pub signer: Option<Signer>,
    pub auth: Auth,
}

impl Profile {
    /// The proxy its callback and token requests go through: its own `proxy`, else
    /// `delivery.proxy`; `None` = direct.
    pub fn proxy<'a>(&'a self, delivery: &'a DeliveryConfig) -> Option<&'a Proxy> {
        match &self.proxy {
            Some(own) => own.as_ref(),
            None => delivery.proxy.as_ref(),
        }
    }

    /// GET and DELETE send no body: the event's top-level scalars become query parameters.
    pub fn sends_body(&self) -> bool {
        !matches!(self.method, Method::GET | Method::DELETE)
    }
}

/// `rate_limit: N/s | N/m`: at most `count` attempts per second or minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(text: &str) -> Option<RateLimit> {
        let (n, unit) = text.split_once('/')?;
        let count: u32 = n.trim().parse().ok().filter(|&n| n > 0)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return None,
        };
        Some(RateLimit { count, per })
    }

    /// The bucket's size: one second's worth of attempts, at least 1 (SPEC section 9).
    pub fn burst(&self) -> u32 {
        let per_second = u64::from(self.count) * 1000 / self.per.as_millis().max(1) as u64;
        per_second.clamp(1, u64::from(u32::MAX)) as u32
    }

    /// The time one attempt's token takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

/// All profiles, looked up by id in O(1) whatever their number, in file order for listings.
#[derive(Debug, Default)]
pub struct Profiles {
    list: Vec<Arc<Profile>>,
    by_id: HashMap<Arc<str>, usize>,
}

impl Profiles {
    pub fn new(list: Vec<Profile>) -> Self {
        let list: Vec<Arc<Profile>> = list.into_iter().map(Arc::new).collect();
        let by_id = list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        Self { list, by_id }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Profile>> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.list.iter()
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(crate) fn validate(
    issues: &mut Issues,
    seen: &mut HashSet<String>,
    i: usize,
    spanned_profile: &S<RawProfile>,
    delivery: &DeliveryConfig,
) -> Option<Profile> {
    let p = &spanned_profile.value;
    let at = Some(&spanned_profile.referenced);
    let path = format!("profiles[{i}]");
    let before = issues.count();
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
    let url = issues.url(&format!("{path}.url"), at, spanned(&p.url));
    let method = issues.method(
        &format!("{path}.method"),
        spanned(&p.method),
        &[
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::GET,
            Method::DELETE,
        ],
    );
    let raw_headers = p
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let headers = issues.headers(&format!("{path}.headers"), at, &raw_headers, false);
    let timeout = p
        .timeout
        .as_ref()
        .map(|_| issues.duration(&format!("{path}.timeout"), &p.timeout, delivery.timeout));
    let concurrency = p
        .concurrency
        .as_ref()
        .map(|_| issues.positive(&format!("{path}.concurrency"), &p.concurrency, 1) as usize);
    let rate_limit = p.rate_limit.as_ref().and_then(|v| {
        let parsed = RateLimit::parse(&v.value);
        if parsed.is_none() {
            issues.add(
                format!("{path}.rate_limit"),
                Some(&v.referenced),
                format!(
                    "{:?} is not N/s or N/m with N at least 1 (e.g. 50/s, 600/m)",
                    v.value
                ),
            );
        }
        parsed
    });
    let circuit_breaker = p.circuit_breaker.as_ref().map(|b| {
        delivery::breaker(
            issues,
            &format!("{path}.circuit_breaker"),
            Some(b),
            delivery.circuit_breaker,
        )
    });
    let tls = p
        .tls
        .as_ref()
        .and_then(|t| tls::validate(issues, &format!("{path}.tls"), t));
    let proxy = p
        .proxy
        .as_ref()
        .map(|v| proxy::proxy(issues, &format!("{path}.proxy"), at, v));
    let signer = p.signing.as_ref().map(|s| {
        let sat = Some(&s.referenced);
        if s.value.secrets.is_empty() {
            issues.add(
                format!("{path}.signing.secrets"),
                sat,
                "is empty: list at least one secret, or leave signing out",
            );
        }
        let keys: Vec<_> = s
            .value
            .secrets
            .iter()
            .enumerate()
            .filter_map(|(k, secret)| {
                sign::decode_secret(&secret.0)
                    .map_err(|e| {
                        issues.add(format!("{path}.signing.secrets[{k}]"), sat, e.to_string())
                    })
                    .ok()
            })
            .collect();
        Signer::new(keys)
    });
    let auth = p.auth.as_ref().map_or(Auth::None, |a| {
        auth::validate(issues, &format!("{path}.auth"), a)
    });
    if issues.count() > before {
        return None;
    }
    Some(Profile {
        id: id.into(),
        url: url?,
        method,
        headers,
        timeout,
        concurrency,
        rate_limit,
        circuit_breaker,
        traceparent: p.traceparent.as_ref().is_some_and(|v| v.value),
        tls,
        proxy,
        signer,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_table() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("50/s", Some((50, s(1), 50, Duration::from_millis(20)))),
            (
                " 600 / m ",
                Some((600, s(60), 10, Duration::from_millis(100))),
            ),
            ("30/m", Some((30, s(60), 1, s(2)))),
            ("1/s", Some((1, s(1), 1, s(1)))),
            ("0/s", None),
            ("5/h", None),
            ("5", None),
            ("-1/s", None),
            ("x/s", None),
        ] {
            let got = RateLimit::parse(text).map(|r| (r.count, r.per, r.burst(), r.interval()));
            assert_eq!(got, want, "{text:?}");
        }
    }
}
