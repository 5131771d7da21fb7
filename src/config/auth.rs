//! A profile's `auth` block, one validation per type. Each type takes the keys it knows
//! through [`Fields`]; whatever key is left over is reported as not belonging to that type,
//! with the keys it does have. Adding a type or a key means adding code here, beside the
//! others, and nowhere else.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_saphyr::Location;
use sha2::{Digest, Sha256};

use super::issues::Issues;
use super::raw::{RawAuth, RawValue, S};
use super::tls::pem_or_file;
use crate::auth::assertion::{self, Assertion};
use crate::auth::oauth2::Fingerprint;
use crate::auth::token::{ExpirationFormat, FieldPath, ResponseShape};
use crate::auth::{Auth, ClientAuth, OAuth2, Placement};

/// The keys of one auth block, handed out one by one.
struct Fields<'a> {
    raw: &'a RawAuth,
    path: &'a str,
    at: Location,
    kind: &'a str,
    taken: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, key: &'static str) -> Option<&'a S<RawValue>> {
        if !self.taken.contains(&key) {
            self.taken.push(key);
        }
        self.raw.get(key)
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn scalar(
        &mut self,
        issues: &mut Issues,
        key: &'static str,
    ) -> Option<(&'a SecretString, Location)> {
        let v = self.get(key)?;
        match &v.value {
            RawValue::Scalar(s) => Some((s, v.referenced)),
            RawValue::Map(_) => {
                issues.add(
                    self.key(key),
                    Some(&v.referenced),
                    "must be a single value, not a map",
                );
                None
            }
            RawValue::Other(what) => {
                issues.add(
                    self.key(key),
                    Some(&v.referenced),
                    format!("must be a single value, not {what}"),
                );
                None
            }
        }
    }

    /// A value that is not secret (a URL, an id, a path expression).
    fn text(&mut self, issues: &mut Issues, key: &'static str) -> Option<(&'a str, Location)> {
        self.scalar(issues, key)
            .map(|(s, at)| (s.expose_secret(), at))
    }

    fn secret(&mut self, issues: &mut Issues, key: &'static str) -> Option<SecretString> {
        self.scalar(issues, key).map(|(s, _)| s.clone())
    }

    fn map(&mut self, issues: &mut Issues, key: &'static str) -> BTreeMap<String, String> {
        match self.get(key).map(|v| (&v.value, v.referenced)) {
            None => BTreeMap::new(),
            Some((RawValue::Map(m), _)) => m.clone(),
            Some((_, at)) => {
                issues.add(self.key(key), Some(&at), "must be a map of names to values");
                BTreeMap::new()
            }
        }
    }

    fn required<T>(&self, issues: &mut Issues, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() && !self.raw.contains_key(key) {
            issues.add(
                self.key(key),
                Some(&self.at),
                format!("is required for auth type {}", self.kind),
            );
        }
        v
    }

    /// Say that `key`, if set, does not go with the rest of the block.
    fn refuse(&mut self, issues: &mut Issues, key: &'static str, why: &str) {
        if let Some(v) = self.get(key) {
            issues.add(self.key(key), Some(&v.referenced), why.to_owned());
        }
    }

    /// Every key no one took.
    fn finish(self, issues: &mut Issues) {
        for (key, v) in self.raw {
            if key != "type" && !self.taken.contains(&key.as_str()) {
                let keys = if self.taken.is_empty() {
                    "it takes no other key".to_owned()
                } else {
                    format!("its keys: {}", self.taken.join(", "))
                };
                issues.add(
                    self.key(key),
                    Some(&v.referenced),
                    format!("is not a key of auth type {} ({keys})", self.kind),
                );
            }
        }
    }
}

fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

pub(crate) fn validate(issues: &mut Issues, path: &str, raw: &S<RawAuth>) -> Auth {
    let kind = match raw.value.get("type").map(|v| (&v.value, v.referenced)) {
        None => "none",
        Some((RawValue::Scalar(s), at)) => match s.expose_secret() {
            k @ ("none" | "basic" | "bearer" | "api_key" | "oauth2") => k,
            other => {
                issues.add(
                    format!("{path}.type"),
                    Some(&at),
                    format!("{other:?} is not one of none, basic, bearer, api_key, oauth2"),
                );
                return Auth::None;
            }
        },
        Some((_, at)) => {
            issues.add(
                format!("{path}.type"),
                Some(&at),
                "must be one of none, basic, bearer, api_key, oauth2",
            );
            return Auth::None;
        }
    };
    let mut f = Fields {
        raw: &raw.value,
        path,
        at: raw.referenced,
        kind,
        taken: Vec::new(),
    };
    let auth = match kind {
        "basic" => basic(issues, &mut f),
        "bearer" => bearer(issues, &mut f),
        "api_key" => api_key(issues, &mut f),
        "oauth2" => oauth2(issues, &mut f).map(|o| Auth::OAuth2(Box::new(o))),
        _ => Some(Auth::None),
    };
    f.finish(issues);
    auth.unwrap_or(Auth::None)
}

/// `basic`: `Authorization: Basic base64(username:password)`.
fn basic(issues: &mut Issues, f: &mut Fields) -> Option<Auth> {
    let user = f.text(issues, "username");
    let user = f.required(issues, "username", user);
    let password = f.secret(issues, "password");
    let password = f.required(issues, "password", password);
    let (user, password) = (user?.0, password?);
    let encoded = STANDARD.encode(format!("{user}:{}", password.expose_secret()));
    Some(Auth::Static {
        header: AUTHORIZATION,
        value: sensitive(&format!("Basic {encoded}")).expect("base64 is header-safe"),
    })
}

/// `bearer`: a fixed token.
fn bearer(issues: &mut Issues, f: &mut Fields) -> Option<Auth> {
    let token = f.secret(issues, "token");
    let token = f.required(issues, "token", token)?;
    let value = sensitive(&format!("Bearer {}", token.expose_secret()));
    if value.is_none() {
        issues.add(
            f.key("token"),
            Some(&f.at),
            "holds characters not allowed in an HTTP header",
        );
    }
    Some(Auth::Static {
        header: AUTHORIZATION,
        value: value?,
    })
}

/// `api_key`: a fixed value in a header of the profile's choice.
fn api_key(issues: &mut Issues, f: &mut Fields) -> Option<Auth> {
    let header = match f.text(issues, "header") {
        None => Some(AUTHORIZATION),
        Some((h, at)) => HeaderName::from_str(h).ok().or_else(|| {
            issues.add(
                f.key("header"),
                Some(&at),
                "is not a valid HTTP header name",
            );
            None
        }),
    };
    let value = f.secret(issues, "value");
    let value = f.required(issues, "value", value)?;
    let value = sensitive(value.expose_secret());
    if value.is_none() {
        issues.add(
            f.key("value"),
            Some(&f.at),
            "holds characters not allowed in an HTTP header",
        );
    }
    Some(Auth::Static {
        header: header?,
        value: value?,
    })
}

/// `oauth2`: Advanced Authentication (SPEC section 4).
fn oauth2(issues: &mut Issues, f: &mut Fields) -> Option<OAuth2> {
    let before = issues.count();
    if let Some((grant, at)) = f.text(issues, "grant_type") {
        let reason = match grant {
            "client_credentials" => None,
            "authorization_code" | "pkce" | "device_code" => Some(format!(
                "{grant:?} is not supported: it needs a user to sign in interactively through a redirect URL, which a background worker cannot do; use client_credentials"
            )),
            "refresh_token" => Some("\"refresh_token\" is not supported: a worker obtains tokens with client_credentials and fetches a new one on expiry; use client_credentials".into()),
            other => Some(format!("{other:?} is not supported; the only grant is client_credentials")),
        };
        if let Some(reason) = reason {
            issues.add(f.key("grant_type"), Some(&at), reason);
        }
    }
    let method = f.text(issues, "method");
    let method = issues.method(
        &f.key("method"),
        method,
        &[Method::GET, Method::POST, Method::PUT],
    );
    let url = f.text(issues, "url");
    let url = issues.url(&f.key("url"), Some(&f.at), url);
    let client_id = f.text(issues, "client_id");
    let client_id = f
        .required(issues, "client_id", client_id)
        .map(|(s, _)| s.to_owned());
    let client_auth = client_auth(issues, f);
    let scope = f.text(issues, "scope").map(|(s, _)| s.to_owned());
    let params = f.map(issues, "params").into_iter().collect();
    let raw_headers = f.map(issues, "headers");
    let headers = issues.headers(&f.key("headers"), Some(&f.at), &raw_headers, true);
    let mut path = |issues: &mut Issues, key: &'static str, default: &str| {
        let (text, at) = f
            .text(issues, key)
            .map_or((default, None), |(t, at)| (t, Some(at)));
        FieldPath::parse(text)
            .map_err(|e| {
                issues.add(
                    f.key(key),
                    at.as_ref(),
                    format!("{text:?} is not a JSONPath (RFC 9535): {e}"),
                );
            })
            .ok()
    };
    let token = path(issues, "token_field_path", "$.access_token");
    let expiration = path(issues, "expiration_field_path", "$.expires_in");
    let token_type = path(issues, "token_type_field_path", "$.token_type");
    let format = f.text(issues, "expiration_format");
    let expiration_format = issues.one_of(
        &f.key("expiration_format"),
        format,
        &[
            ("auto", ExpirationFormat::Auto),
            ("seconds", ExpirationFormat::Seconds),
            ("unix_seconds", ExpirationFormat::UnixSeconds),
            ("unix_millis", ExpirationFormat::UnixMillis),
            ("rfc3339", ExpirationFormat::Rfc3339),
        ],
        ExpirationFormat::Auto,
    );
    let algorithm = f.text(issues, "auth_algorithm").map(|(s, _)| s.to_owned());
    let refresh = f.text(issues, "refresh_before_expiry");
    let refresh_before_expiry = issues.duration_at(
        &f.key("refresh_before_expiry"),
        refresh,
        Duration::from_secs(30),
    );
    if issues.count() > before {
        return None;
    }
    Some(OAuth2 {
        method,
        url: url?,
        client_id: client_id?,
        fingerprint: fingerprint(f.raw, &client_auth),
        client_auth: client_auth?,
        scope,
        params,
        headers,
        shape: ResponseShape {
            token: token?,
            expiration,
            expiration_format,
            token_type,
            algorithm,
        },
        refresh_before_expiry,
    })
}

/// `client_auth` and the keys that go with its choice.
fn client_auth(issues: &mut Issues, f: &mut Fields) -> Option<ClientAuth> {
    let chosen = f.text(issues, "client_auth");
    let placement = issues.one_of(
        &f.key("client_auth"),
        chosen,
        &[
            ("request_body", Some(Placement::Form)),
            ("basic_header", Some(Placement::Basic)),
            ("json_body", Some(Placement::Json)),
            ("private_key_jwt", None),
        ],
        Some(Placement::Form),
    );
    let secret = f.secret(issues, "client_secret");
    let key = f.scalar(issues, "private_key");
    let algorithm = f.text(issues, "assertion_algorithm");
    let key_id = f.text(issues, "key_id").map(|(s, _)| s.to_owned());
    let audience = f.text(issues, "audience").map(|(s, _)| s.to_owned());
    match placement {
        Some(placement) => {
            for k in ["private_key", "assertion_algorithm", "key_id", "audience"] {
                f.refuse(issues, k, "applies only with client_auth: private_key_jwt");
            }
            let secret = f.required(issues, "client_secret", secret)?;
            Some(ClientAuth::Secret { secret, placement })
        }
        None => {
            f.refuse(
                issues,
                "client_secret",
                "does not apply with client_auth: private_key_jwt (the signed assertion replaces the secret)",
            );
            let algorithm = algorithm.map(|(name, at)| {
                issues.one_of(
                    &f.key("assertion_algorithm"),
                    Some((name, at)),
                    &assertion::ALGORITHMS.map(|(n, a)| (n, Some(a))),
                    None,
                )
            });
            let (pem, _) = f.required(issues, "private_key", key)?;
            let path = f.key("private_key");
            let pem = pem_or_file(issues, &path, Some(&f.at), pem.expose_secret(), true)?;
            match Assertion::new(&pem, algorithm.flatten(), key_id, audience) {
                Ok(a) => Some(ClientAuth::PrivateKeyJwt(a)),
                Err(e) => {
                    issues.add(path, Some(&f.at), format!("{e} (the key is not shown)"));
                    None
                }
            }
        }
    }
}

/// A digest of every key and value of the block, and of a private key read from a file, so
/// that a reload can tell whether a profile's tokens still hold.
fn fingerprint(raw: &RawAuth, client_auth: &Option<ClientAuth>) -> Fingerprint {
    let mut hash = Sha256::new();
    for (key, v) in raw {
        hash.update(key.as_bytes());
        hash.update([0]);
        match &v.value {
            RawValue::Scalar(s) => hash.update(s.expose_secret().as_bytes()),
            RawValue::Map(m) => {
                for (k, v) in m {
                    hash.update(k.as_bytes());
                    hash.update([1]);
                    hash.update(v.as_bytes());
                    hash.update([2]);
                }
            }
            RawValue::Other(what) => hash.update(what.as_bytes()),
        }
        hash.update([0]);
    }
    if let Some(ClientAuth::PrivateKeyJwt(a)) = client_auth {
        hash.update(a.key_digest());
    }
    Fingerprint(hash.finalize().into())
}
