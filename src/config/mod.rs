//! Configuration: YAML (SPEC section 3) -> validated runtime types, once, at start.
//!
//! Loading is three steps: `${VAR}` interpolation over the text (`env`), serde into the raw
//! structs (`raw`, `deny_unknown_fields`), and `validate`, which checks everything and
//! collects every problem, with its key path and line/column, before giving up. Secrets are
//! wrapped from the moment serde reads them and no error message quotes them.

mod env;
mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::profile::Profiles;
use crate::retry::RetryPolicy;

/// The default location when neither `--config` nor `$CALLBACK_DISPATCHER_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/dispatcher.yaml";

#[derive(Debug)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub delivery: DeliveryConfig,
    pub retry: RetryPolicy,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub profiles: Profiles,
}

#[derive(Debug)]
pub struct AmqpConfig {
    /// Holds the broker password: a secret.
    pub url: SecretString,
    pub queue: String,
    pub exchange: String,
    pub prefetch: u16,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub concurrency: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  {}", self.file.display())?;
            if let Some((line, col)) = issue.location {
                write!(f, ":{line}:{col}")?;
            }
            if issue.path.is_empty() {
                write!(f, ": {}", issue.message)?;
            } else {
                write!(f, ": {}: {}", issue.path, issue.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// The path `--config` falls back to: `$CALLBACK_DISPATCHER_CONFIG`, else the default.
    pub fn default_path() -> PathBuf {
        std::env::var_os("CALLBACK_DISPATCHER_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Read, interpolate from the process environment, parse and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            issues: vec![Issue {
                path: String::new(),
                location: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::from_yaml(&text, path, |name| std::env::var(name).ok())
    }

    /// Parse `text` as if read from `file`, with `lookup` standing in for the environment.
    pub fn from_yaml(
        text: &str,
        file: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |issues| ConfigError {
            file: file.to_owned(),
            issues,
        };
        let text = env::interpolate(text, lookup).map_err(|missing| {
            fail(missing
                .into_iter()
                .map(|(line, name)| Issue {
                    path: String::new(),
                    location: Some((line as u64, 1)),
                    message: format!("environment variable {name} is not set and has no default (use ${{{name}:-default}})"),
                })
                .collect())
        })?;
        let raw: raw::RawConfig =
            serde_saphyr::from_str(&text).map_err(|e| fail(vec![validate::parse_issue(&e)]))?;
        validate::validate(raw).map_err(fail)
    }

    /// A one-line summary for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let oauth = self
            .profiles
            .iter()
            .filter(|p| matches!(p.auth, crate::auth::Auth::OAuth2(_)))
            .count();
        format!(
            "ok: {} profile(s) ({} with oauth2), queue {}, exchange {}, {} delay queue(s), max {} attempt(s), metrics on {}",
            self.profiles.len(),
            oauth,
            self.amqp.queue,
            self.amqp.exchange,
            self.retry.delay_queue_ms().len(),
            self.retry.max_attempts,
            self.metrics.listen
        )
    }
}

#[cfg(test)]
mod tests;
