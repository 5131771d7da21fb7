//! Configuration: YAML (SPEC section 3) -> validated runtime types, once, at start or reload.
//!
//! Loading is three steps: `${VAR}` interpolation over the text (`env`), serde into the raw
//! structs (`raw`, `deny_unknown_fields`), and one validation per section beside its type
//! (`amqp`, `delivery`, `retry`, `telemetry`, `token_cache`, `cluster`, `receipts`, `profile` with its `auth` and
//! `tls`), which check everything and collect every problem with its key path and
//! line/column before giving up. Secrets are wrapped from the moment serde reads them and no
//! error message quotes them.

mod amqp;
mod auth;
mod cluster;
mod delivery;
mod env;
mod issues;
mod profile;
mod proxy;
mod raw;
mod receipts;
mod retry;
mod telemetry;
mod tls;
mod token_cache;
mod tracing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use self::tracing::TracingConfig;
pub use amqp::AmqpConfig;
pub use cluster::{ClusterConfig, DEFAULT_KEY_PREFIX};
pub use delivery::{BreakerSettings, DeliveryConfig};
pub use issues::{ConfigError, Issue};
pub use profile::{Profile, Profiles, RateLimit};
pub use proxy::{NoProxy, Proxy};
pub use receipts::ReceiptsConfig;
pub use telemetry::{LogConfig, LogFormat, MetricsConfig};
pub use tls::Tls;
pub use token_cache::TokenCacheConfig;

use crate::guard::Guard;
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
    pub tracing: TracingConfig,
    pub token_cache: Option<TokenCacheConfig>,
    pub cluster: Option<ClusterConfig>,
    pub receipts: Option<ReceiptsConfig>,
    pub profiles: Profiles,
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
            serde_saphyr::from_str(&text).map_err(|e| fail(vec![issues::parse_issue(&e)]))?;
        validate(raw).map_err(fail)
    }

    /// A one-line summary for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let oauth = self
            .profiles
            .iter()
            .filter(|p| p.auth.oauth2().is_some())
            .count();
        format!(
            "ok: {} profile(s) ({} with oauth2), queue {}, exchange {}, {} delay queue(s), max {} attempt(s), metrics on {}{}{}{}",
            self.profiles.len(),
            oauth,
            self.amqp.queue,
            self.amqp.exchange,
            self.retry.delay_queue_ms().len(),
            self.retry.max_attempts,
            self.metrics.listen,
            if self.token_cache.is_some() {
                ", shared token cache on"
            } else {
                ""
            },
            if self.cluster.is_some() {
                ", cluster on"
            } else {
                ""
            },
            match &self.receipts {
                Some(r) if r.log.is_some() => ", receipts and delivery log on",
                Some(_) => ", receipts on",
                None => "",
            }
        )
    }

    /// Valid but probably wrong: callback or auth URLs whose literal host the network guard
    /// will refuse (SPEC section 10).
    pub fn warnings(&self) -> Vec<String> {
        let guard = Guard::new(self.delivery.allow_networks.clone());
        let mut out = Vec::new();
        for (i, p) in self.profiles.iter().enumerate() {
            let urls = [
                ("url", Some(&p.url), "every callback"),
                (
                    "auth.url",
                    p.auth.oauth2().map(|o| &o.url),
                    "every token request",
                ),
            ];
            for (key, url, what) in urls {
                if let Some(Err(blocked)) = url.map(|u| guard.check_literal(u)) {
                    out.push(format!(
                        "profiles[{i}].{key}: {blocked}; {what} to it will be refused"
                    ));
                }
            }
        }
        out
    }
}

fn validate(raw: raw::RawConfig) -> Result<Config, Vec<Issue>> {
    let mut issues = issues::Issues::default();
    let amqp = amqp::validate(&mut issues, &raw.amqp);
    let delivery = delivery::validate(&mut issues, &raw.delivery);
    let retry = retry::validate(&mut issues, &raw.retry);
    let metrics = telemetry::metrics(&mut issues, &raw.metrics);
    let log = telemetry::log(&mut issues, &raw.log);
    let tracing = tracing::validate(&mut issues, &raw.tracing);
    let token_cache = token_cache::validate(&mut issues, raw.token_cache.as_ref());
    let cluster = cluster::validate(&mut issues, raw.cluster.as_ref());
    let receipts = receipts::validate(&mut issues, raw.receipts.as_ref());
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
                .filter_map(|(i, p)| profile::validate(&mut issues, &mut seen, i, p, &delivery))
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
            tracing,
            token_cache,
            cluster,
            receipts,
            profiles: Profiles::new(profiles),
        })
    } else {
        Err(issues.0)
    }
}

#[cfg(test)]
mod tests;
