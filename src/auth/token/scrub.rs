//! Scrubbing what an auth server answers: a text that holds a secret, an assertion or a
//! token is never repeated (SPEC section 4).

use std::fmt;

use super::FieldPath;
use serde_json::Value;

/// What replaces a text from the auth server that holds a secret or a token.
pub const REDACTED: &str = "[redacted]";

/// The values that must never be repeated from an auth server's answer (SPEC section 4):
/// the client secret in every form it travelled in, the client assertion, and any token
/// the answer carries. A text that holds one of them is replaced as a whole by
/// [`REDACTED`]; it is checked before it is clipped, so a clipped half of a secret cannot
/// slip through. `Debug` shows only how many values it holds.
#[derive(Clone, Default)]
pub struct Scrub {
    values: Vec<String>,
}

impl fmt::Debug for Scrub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrub({} values)", self.values.len())
    }
}

impl Scrub {
    /// Add `value` (ignored when empty) and the forms a server may echo it in: form- and
    /// percent-encoded, JSON-escaped.
    pub fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        let form: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let json = serde_json::to_string(value).unwrap_or_default();
        let json = json.trim_matches('"');
        for v in [
            value.to_owned(),
            form.replace('+', "%20"),
            form,
            json.to_owned(),
        ] {
            if !v.is_empty() && !self.values.contains(&v) {
                self.values.push(v);
            }
        }
    }

    /// This scrub and the tokens `body` carries: the string at the token path and at the
    /// usual token fields, whatever the status.
    pub fn with_tokens_of(&self, body: &Value, token: &FieldPath) -> Scrub {
        let mut out = self.clone();
        let found = token.first(body).into_iter().chain(
            ["access_token", "id_token", "refresh_token"]
                .iter()
                .filter_map(|k| body.get(*k)),
        );
        for v in found {
            if let Value::String(s) = v {
                out.add(s);
            }
        }
        out
    }

    /// Whether `text` holds one of the values.
    pub fn holds(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.as_str()))
    }

    /// `text` as it may be shown: [`REDACTED`] when it holds a value, else clipped to `max`
    /// characters.
    pub fn field(&self, text: &str, max: usize) -> String {
        if self.holds(text) {
            REDACTED.to_owned()
        } else {
            clip(text, max)
        }
    }
}

/// RFC 6749 5.2 `error` and `error_description`, when the body carries them, scrubbed.
pub fn rfc6749_error(body: &Value, scrub: &Scrub) -> (Option<String>, Option<String>) {
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .map(|s| scrub.field(s, 200))
    };
    (field("error"), field("error_description"))
}

pub(super) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
