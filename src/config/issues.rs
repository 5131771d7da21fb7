//! Problems found in a configuration file, collected so that every one is reported at once,
//! and the small checks that several sections share.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_saphyr::Location;

use super::raw::S;

/// The longest duration any key accepts: 100 years (of 365.25 days, as humantime counts a
/// `y`). Long enough for any setting that means "practically never", short enough that
/// adding it to any clock reading never overflows (a panic, not an error, in Rust).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `profiles[2].auth.token_field_path`; empty for the file as a whole.
    pub path: String,
    /// 1-based line and column, where the YAML gives one.
    pub location: Option<(u64, u64)>,
    pub message: String,
}

/// Every problem found, for one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl ConfigError {
    /// Each problem as one line, `file:line:col: path: message`, as `check-config` prints it.
    pub fn lines(&self) -> Vec<String> {
        self.issues
            .iter()
            .map(|issue| {
                let mut line = self.file.display().to_string();
                if let Some((l, c)) = issue.location {
                    line.push_str(&format!(":{l}:{c}"));
                }
                if issue.path.is_empty() {
                    line.push_str(&format!(": {}", issue.message));
                } else {
                    line.push_str(&format!(": {}: {}", issue.path, issue.message));
                }
                line
            })
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for line in self.lines() {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

pub(crate) fn parse_issue(e: &serde_saphyr::Error) -> Issue {
    let location = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    // The location is given once, before the message: not again at its end.
    let mut message = e.without_snippet().to_string();
    if let Some(at) = message.rfind(" at line ")
        && message[at..].contains(", column ")
    {
        message.truncate(at);
    }
    Issue {
        path: String::new(),
        location,
        message,
    }
}

fn loc(l: &Location) -> Option<(u64, u64)> {
    (l.line() > 0).then(|| (l.line(), l.column()))
}

/// The problems found so far.
#[derive(Default)]
pub(crate) struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn add(
        &mut self,
        path: impl Into<String>,
        at: Option<&Location>,
        message: impl Into<String>,
    ) {
        self.0.push(Issue {
            path: path.into(),
            location: at.and_then(loc),
            message: message.into(),
        });
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// A humantime duration longer than zero and at most [`MAX_DURATION`], else `default`
    /// (and an issue if it was set).
    pub fn duration(&mut self, path: &str, v: &Option<S<String>>, default: Duration) -> Duration {
        self.duration_at(path, spanned(v), default)
    }

    pub fn duration_at(
        &mut self,
        path: &str,
        v: Option<(&str, Location)>,
        default: Duration,
    ) -> Duration {
        let Some((text, at)) = v else { return default };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.add(path, Some(&at), "must be longer than zero");
                default
            }
            Ok(d) if d > MAX_DURATION => {
                self.add(path, Some(&at), "must be at most 100 years");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.add(
                    path,
                    Some(&at),
                    format!(
                        "{text:?} is not a duration ({e}); use e.g. 500ms, 30s, 5m, 2h (at most 100 years)"
                    ),
                );
                default
            }
        }
    }

    /// A whole number of at least 1, else `default`.
    pub fn positive(&mut self, path: &str, v: &Option<S<u32>>, default: u32) -> u32 {
        match v {
            None => default,
            Some(v) if v.value == 0 => {
                self.add(path, Some(&v.referenced), "must be at least 1");
                default
            }
            Some(v) => v.value,
        }
    }

    /// HTTP headers; `sensitive` marks the values so that no `Debug` shows them.
    pub fn headers(
        &mut self,
        path: &str,
        at: Option<&Location>,
        raw: &BTreeMap<String, String>,
        sensitive: bool,
    ) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (name, value) in raw {
            let key = format!("{path}.{name}");
            match (HeaderName::from_str(name), HeaderValue::from_str(value)) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(sensitive);
                    out.insert(n, v);
                }
                (Err(_), _) => self.add(key, at, "is not a valid HTTP header name"),
                (_, Err(_)) => self.add(key, at, "value is not a valid HTTP header value"),
            }
        }
        out
    }

    /// An http:// or https:// URL with a host.
    pub fn url(
        &mut self,
        path: &str,
        at: Option<&Location>,
        v: Option<(&str, Location)>,
    ) -> Option<reqwest::Url> {
        let Some((text, vat)) = v else {
            self.add(path, at, "is required");
            return None;
        };
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.add(
                    path,
                    Some(&vat),
                    "must be an http:// or https:// URL with a host",
                );
                None
            }
            Err(e) => {
                self.add(path, Some(&vat), format!("is not a URL ({e})"));
                None
            }
        }
    }

    /// One of `allowed` (compared as written), else `default`.
    pub fn one_of<T: Copy>(
        &mut self,
        path: &str,
        v: Option<(&str, Location)>,
        allowed: &[(&str, T)],
        default: T,
    ) -> T {
        let Some((text, at)) = v else { return default };
        match allowed.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => *value,
            None => {
                let names: Vec<_> = allowed.iter().map(|(n, _)| *n).collect();
                self.add(
                    path,
                    Some(&at),
                    format!("{text:?} is not one of {}", names.join(", ")),
                );
                default
            }
        }
    }
}

impl Issues {
    /// An HTTP method among `allowed` (any case), else POST.
    pub fn method(
        &mut self,
        path: &str,
        v: Option<(&str, Location)>,
        allowed: &[reqwest::Method],
    ) -> reqwest::Method {
        let Some((text, at)) = v else {
            return reqwest::Method::POST;
        };
        let upper = text.to_ascii_uppercase();
        match allowed.iter().find(|m| m.as_str() == upper) {
            Some(m) => m.clone(),
            None => {
                let names: Vec<_> = allowed.iter().map(|m| m.as_str()).collect();
                self.add(
                    path,
                    Some(&at),
                    format!("{text:?} is not one of {}", names.join(", ")),
                );
                reqwest::Method::POST
            }
        }
    }
}

/// A spanned string as the checks above take it.
pub(crate) fn spanned(v: &Option<S<String>>) -> Option<(&str, Location)> {
    v.as_ref().map(|v| (v.value.as_str(), v.referenced))
}
