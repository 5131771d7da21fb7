//! Reading a token out of an auth server's answer: pure functions, table-tested.
//!
//! Customers' servers differ in where the token sits, whether numbers are strings, whether
//! the expiry is relative or absolute and which scheme they want. Everything here is driven
//! by the profile's JSONPaths and `expiration_format`; nothing is guessed beyond SPEC
//! section 4's `auto` rule and the JWT `exp` fallback.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonpath_rust::parser::model::JpQuery;
use secrecy::SecretString;
use serde_json::Value;

/// Used when neither the response nor the JWT says when the token expires.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// A token is never reused for longer than this, whatever its server says.
pub const MAX_REUSE: Duration = Duration::from_secs(24 * 3600);

/// A JSONPath (RFC 9535) parsed once at config load.
#[derive(Clone)]
pub struct FieldPath {
    text: String,
    query: JpQuery,
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let query = jsonpath_rust::parser::parse_json_path(text).map_err(|e| e.to_string())?;
        Ok(Self {
            text: text.to_owned(),
            query,
        })
    }

    /// The first value the path selects, if any.
    pub fn first<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        jsonpath_rust::query::js_path_process(&self.query, value)
            .ok()?
            .into_iter()
            .next()
            .map(|r| r.val())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpirationFormat {
    Auto,
    Seconds,
    UnixSeconds,
    UnixMillis,
    Rfc3339,
}

impl ExpirationFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "seconds" => Self::Seconds,
            "unix_seconds" => Self::UnixSeconds,
            "unix_millis" => Self::UnixMillis,
            "rfc3339" => Self::Rfc3339,
            _ => return None,
        })
    }
}

/// Where the token, its expiry and its scheme sit in the response.
#[derive(Debug, Clone)]
pub struct ResponseShape {
    pub token: FieldPath,
    pub expiration: Option<FieldPath>,
    pub expiration_format: ExpirationFormat,
    pub token_type: Option<FieldPath>,
    /// The JWT header `alg` the token must carry, if set.
    pub algorithm: Option<String>,
}

/// What was read from a good response.
pub struct Extracted {
    pub token: SecretString,
    pub scheme: String,
    pub expires_at: SystemTime,
}

/// Why a 2xx response gave no usable token. The token itself is never part of it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("response is not JSON")]
    NotJson,
    #[error("no token at {path}{}", describe_server_error(.error, .description))]
    NoToken {
        path: String,
        error: Option<String>,
        description: Option<String>,
    },
    #[error("the value at {path} is {found}, not a string")]
    TokenNotString { path: String, found: &'static str },
    #[error("bad expiry at {path}: {reason}")]
    BadExpiry { path: String, reason: String },
    #[error("token is not a JWT, but auth_algorithm requires {expected}")]
    NotJwt { expected: String },
    #[error("token JWT alg is {found}, auth_algorithm requires {expected}")]
    WrongAlgorithm { expected: String, found: String },
    #[error("the value at {path} is a string holding the token, not a scheme")]
    TokenTypeIsToken { path: String },
}

pub(crate) fn describe_server_error(
    error: &Option<String>,
    description: &Option<String>,
) -> String {
    match (error, description) {
        (None, None) => String::new(),
        (e, d) => format!(
            " (error: {}, error_description: {})",
            e.as_deref().unwrap_or("-"),
            d.as_deref().unwrap_or("-")
        ),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Read token, scheme and expiry from a 2xx body.
pub fn extract(
    body: &[u8],
    shape: &ResponseShape,
    now: SystemTime,
) -> Result<Extracted, ExtractError> {
    extract_with(body, shape, now, &Scrub::default())
}

/// [`extract`], with the values no error text may repeat (the tokens of `body` are added).
/// An error about the value at a configured path names the path and the value's JSON type,
/// never the value.
pub fn extract_with(
    body: &[u8],
    shape: &ResponseShape,
    now: SystemTime,
    scrub: &Scrub,
) -> Result<Extracted, ExtractError> {
    let json: Value = serde_json::from_slice(body).map_err(|_| ExtractError::NotJson)?;
    let scrub = scrub.with_tokens_of(&json, &shape.token);
    let token = match shape.token.first(&json) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | Some(Value::Null) | None => {
            let (error, description) = rfc6749_error(&json, &scrub);
            return Err(ExtractError::NoToken {
                path: shape.token.to_string(),
                error,
                description,
            });
        }
        Some(other) => {
            return Err(ExtractError::TokenNotString {
                path: shape.token.to_string(),
                found: kind(other),
            });
        }
    };
    let jwt = Jwt::read(&token);
    if let Some(expected) = &shape.algorithm {
        match jwt.as_ref().and_then(|j| j.alg.clone()) {
            None => {
                return Err(ExtractError::NotJwt {
                    expected: expected.clone(),
                });
            }
            Some(found) if &found != expected => {
                return Err(ExtractError::WrongAlgorithm {
                    expected: expected.clone(),
                    found: scrub.field(&found, 20),
                });
            }
            Some(_) => {}
        }
    }
    let from_path = shape
        .expiration
        .as_ref()
        .and_then(|p| p.first(&json).filter(|v| !v.is_null()).map(|v| (p, v)));
    let expires_at = match from_path {
        Some((path, value)) => {
            parse_expiry(value, shape.expiration_format, now).map_err(|reason| {
                ExtractError::BadExpiry {
                    path: path.to_string(),
                    reason,
                }
            })?
        }
        None => match jwt.and_then(|j| j.exp) {
            Some(exp) => unix_seconds(exp as f64).ok_or_else(|| ExtractError::BadExpiry {
                path: "JWT exp".into(),
                reason: "a number out of range".into(),
            })?,
            None => now + DEFAULT_LIFETIME,
        },
    };
    if expires_at <= now {
        return Err(ExtractError::BadExpiry {
            path: from_path.map_or_else(|| "JWT exp".into(), |(p, _)| p.to_string()),
            reason: "the token has already expired".into(),
        });
    }
    let scheme = shape
        .token_type
        .as_ref()
        .and_then(|p| p.first(&json).and_then(Value::as_str).map(|v| (p, v)));
    let scheme = match scheme {
        // The scheme is logged and shown: it must not be the token.
        Some((path, value)) if scrub.holds(value) => {
            return Err(ExtractError::TokenTypeIsToken {
                path: path.to_string(),
            });
        }
        Some((_, value)) => normalize_scheme(value),
        None => "Bearer".to_owned(),
    };
    Ok(Extracted {
        token: SecretString::from(token),
        scheme,
        expires_at,
    })
}

/// `bearer` in any case is sent as `Bearer`; other schemes as the server spelled them. An
/// empty or unusable scheme falls back to `Bearer`.
pub fn normalize_scheme(raw: &str) -> String {
    let s = raw.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("bearer") || !s.bytes().all(is_token_char) {
        "Bearer".to_owned()
    } else {
        s.to_owned()
    }
}

/// RFC 7230 `tchar`: what an HTTP auth scheme may be made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The parts of a JWT this worker looks at. The signature is not verified: the token is
/// the customer's own, opaque to us; `auth_algorithm` only guards against a wrong kind.
#[derive(Debug, Default, PartialEq)]
pub struct Jwt {
    pub alg: Option<String>,
    pub exp: Option<i64>,
}

impl Jwt {
    /// `None` when the token is not three base64url JSON-object segments.
    pub fn read(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode = |seg: &str| -> Option<Value> {
            let bytes = URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()?;
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(Value::is_object)
        };
        let header = decode(h)?;
        let claims = decode(p)?;
        Some(Jwt {
            alg: header.get("alg").and_then(Value::as_str).map(str::to_owned),
            exp: claims
                .get("exp")
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))),
        })
    }
}

/// RFC 6749 2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`. The encoding keeps
/// `A-Z a-z 0-9 - . _ *` and percent-encodes every other byte, a space as `%20`: servers that
/// percent-decode without form rules (Authlib, for one) read a `+` as a plus.
pub fn basic_credentials(client_id: &str, client_secret: &str) -> String {
    // form_urlencoded keeps exactly that set and writes a space as `+`; a literal `+` comes
    // out as `%2B`, so every `+` left is a space.
    let enc = |s: &str| {
        form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(client_secret)))
    )
}

/// How long a token may be reused: until `margin` before it expires, or half its lifetime
/// when that is under twice the margin; never more than [`MAX_REUSE`].
pub fn reuse_for(lifetime: Duration, margin: Duration) -> Duration {
    let reuse = if lifetime < margin.saturating_mul(2) {
        lifetime / 2
    } else {
        lifetime - margin
    };
    reuse.min(MAX_REUSE)
}

mod expiry;
mod scrub;

use expiry::unix_seconds;
pub use expiry::{parse_expiry, parse_rfc3339};
pub use scrub::{REDACTED, Scrub, rfc6749_error};

#[cfg(test)]
mod tests;
