//! The `metrics` and `log` sections.

use std::net::SocketAddr;

use super::issues::{Issues, spanned};
use super::raw::{RawLog, RawMetrics};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

pub(crate) fn metrics(issues: &mut Issues, raw: &RawMetrics) -> MetricsConfig {
    let default = SocketAddr::from(([0, 0, 0, 0], 9464));
    MetricsConfig {
        listen: match &raw.listen {
            None => default,
            Some(v) => v.value.parse().unwrap_or_else(|_| {
                issues.add(
                    "metrics.listen",
                    Some(&v.referenced),
                    format!("{:?} is not an address:port such as 0.0.0.0:9464", v.value),
                );
                default
            }),
        },
    }
}

pub(crate) fn log(issues: &mut Issues, raw: &RawLog) -> LogConfig {
    LogConfig {
        format: issues.one_of(
            "log.format",
            spanned(&raw.format),
            &[("json", LogFormat::Json), ("text", LogFormat::Text)],
            LogFormat::Json,
        ),
    }
}
