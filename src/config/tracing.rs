//! The optional `tracing` section (SPEC section 16): where spans go, under which service
//! name, and how many of the traces started here are kept.

use super::issues::{Issues, spanned};
use super::raw::RawTracing;

/// The default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "callback-dispatcher";

#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's base URL (spans go to `<otlp_endpoint>/v1/traces`); `None` = off.
    pub otlp_endpoint: Option<reqwest::Url>,
    pub service_name: String,
    /// Of the traces started here; a publisher's sampled flag is honoured.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    /// Where the spans are posted: the endpoint with `/v1/traces` after its path.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_ref()
            .map(|u| format!("{}/v1/traces", u.as_str().trim_end_matches('/')))
    }
}

pub(crate) fn validate(issues: &mut Issues, raw: &RawTracing) -> TracingConfig {
    let d = TracingConfig::default();
    let otlp_endpoint = match spanned(&raw.otlp_endpoint) {
        Some((text, _)) if text.trim().is_empty() => None,
        Some(v) => {
            let url = issues.url("tracing.otlp_endpoint", None, Some(v));
            if let (Some(u), Some((_, at))) = (&url, spanned(&raw.otlp_endpoint)) {
                if u.query().is_some() || u.fragment().is_some() {
                    issues.add(
                        "tracing.otlp_endpoint",
                        Some(&at),
                        "must be a base URL without a query or fragment (e.g. http://otel-collector:4318)",
                    );
                }
            }
            url
        }
        None => None,
    };
    let service_name = match &raw.service_name {
        None => d.service_name,
        Some(v) if v.value.trim().is_empty() || v.value.len() > 255 => {
            issues.add(
                "tracing.service_name",
                Some(&v.referenced),
                "must be 1 to 255 characters",
            );
            d.service_name
        }
        Some(v) => v.value.clone(),
    };
    let sample_ratio = match &raw.sample_ratio {
        None => d.sample_ratio,
        Some(v) if (0.0..=1.0).contains(&v.value) => v.value,
        Some(v) => {
            issues.add(
                "tracing.sample_ratio",
                Some(&v.referenced),
                "must be from 0.0 to 1.0",
            );
            d.sample_ratio
        }
    };
    TracingConfig {
        otlp_endpoint,
        service_name,
        sample_ratio,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const PROFILES: &str = "profiles:\n  - id: a\n    url: http://127.0.0.1:1/cb\n";

    fn parse(section: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(
            &format!("{section}\n{PROFILES}"),
            Path::new("test.yaml"),
            |_| None,
        )
    }

    #[test]
    fn absent_or_empty_is_off_with_the_defaults() {
        for text in ["", "tracing: {}", "tracing: {otlp_endpoint: \"\"}"] {
            let c = parse(text).unwrap();
            assert_eq!(c.tracing.otlp_endpoint, None, "{text}");
            assert_eq!(c.tracing.service_name, "callback-dispatcher");
            assert_eq!(c.tracing.sample_ratio, 1.0);
            assert_eq!(c.tracing.traces_url(), None);
        }
        let c = parse(
            "tracing: {otlp_endpoint: \"http://otel:4318/\", service_name: cbd, sample_ratio: 0.25}",
        )
        .unwrap();
        assert_eq!(
            c.tracing.traces_url().as_deref(),
            Some("http://otel:4318/v1/traces")
        );
        assert_eq!(c.tracing.service_name, "cbd");
        assert_eq!(c.tracing.sample_ratio, 0.25);
        assert!(!c.profiles.get("a").unwrap().traceparent);
    }

    #[test]
    fn bad_values_are_named() {
        for (text, path, what) in [
            (
                "tracing: {otlp_endpoint: \"otel:4318\"}",
                "tracing.otlp_endpoint",
                "http",
            ),
            (
                "tracing: {otlp_endpoint: \"http://otel:4318/?a=1\"}",
                "tracing.otlp_endpoint",
                "query",
            ),
            (
                "tracing: {sample_ratio: 1.5}",
                "tracing.sample_ratio",
                "0.0 to 1.0",
            ),
            (
                "tracing: {service_name: \"\"}",
                "tracing.service_name",
                "1 to 255",
            ),
            ("tracing: {endpoint: \"http://x\"}", "", "unknown field"),
        ] {
            let e = parse(text).expect_err(text);
            let all = e.to_string();
            assert!(
                e.issues
                    .iter()
                    .any(|i| i.path == path && i.message.contains(what))
                    || path.is_empty() && all.contains(what),
                "{text}: {all}"
            );
        }
    }

    #[test]
    fn a_profile_may_ask_for_traceparent() {
        let c = Config::from_yaml(
            "profiles:\n  - id: a\n    url: http://127.0.0.1:1/cb\n    traceparent: true\n",
            Path::new("test.yaml"),
            |_| None,
        )
        .unwrap();
        assert!(c.profiles.get("a").unwrap().traceparent);
        let e = Config::from_yaml(
            "profiles:\n  - id: a\n    url: http://127.0.0.1:1/cb\n    traceparent: maybe\n",
            Path::new("test.yaml"),
            |_| None,
        )
        .expect_err("not a boolean");
        let text = e.to_string();
        assert!(text.contains("4:18") && text.contains("boolean"), "{text}");
    }
}
