//! The optional `receipts` section: where receipts and operator events go, and how long the
//! delivery log keeps them (SPEC section 14).

use std::time::Duration;

use super::issues::{Issues, spanned};
use super::raw::{RawReceipts, S};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptsConfig {
    /// The durable topic exchange receipts and operator events are published to.
    pub exchange: String,
    /// With `log`: the stream queue `<exchange>.log` keeps every receipt this long.
    pub log: Option<Duration>,
}

impl ReceiptsConfig {
    /// The delivery log's stream queue.
    pub fn log_queue(&self) -> String {
        format!("{}.log", self.exchange)
    }
}

/// `None` when the section is absent or its `exchange` is empty (receipts off).
pub(crate) fn validate(
    issues: &mut Issues,
    raw: Option<&S<RawReceipts>>,
) -> Option<ReceiptsConfig> {
    let raw = raw?;
    let r = &raw.value;
    let exchange = r.exchange.as_ref().map(|e| e.value.trim().to_owned());
    let log = match spanned(&r.log) {
        Some((text, _)) if text.trim().is_empty() => None,
        Some(at) => Some(issues.duration_at("receipts.log", Some(at), Duration::ZERO)),
        None => None,
    };
    match exchange.filter(|e| !e.is_empty()) {
        None => {
            if log.is_some() {
                issues.add(
                    "receipts.log",
                    Some(&raw.referenced),
                    "needs receipts.exchange: the log is a stream bound to that exchange",
                );
            }
            None
        }
        Some(exchange) => {
            if exchange.len() > 200 || exchange.starts_with("amq.") {
                issues.add(
                    "receipts.exchange",
                    r.exchange.as_ref().map(|e| &e.referenced),
                    "must be 1 to 200 bytes and not start with amq.",
                );
            }
            Some(ReceiptsConfig {
                exchange,
                log: log.filter(|d| !d.is_zero()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

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
    fn receipts_are_off_without_an_exchange_and_the_log_needs_one() {
        assert!(parse("").unwrap().receipts.is_none());
        assert!(
            parse("receipts: {exchange: \"\"}")
                .unwrap()
                .receipts
                .is_none()
        );
        let r = parse("receipts: {exchange: dispatcher.receipts, log: 7d}")
            .unwrap()
            .receipts
            .unwrap();
        assert_eq!(r.exchange, "dispatcher.receipts");
        assert_eq!(r.log, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.log_queue(), "dispatcher.receipts.log");
        let err = parse("receipts: {log: 7d}").unwrap_err().to_string();
        assert!(err.contains("receipts.log"), "{err}");
        let err = parse("receipts: {exchange: amq.x, log: soon, extra: 1}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra"), "{err}");
        let err = parse("receipts: {exchange: amq.x, log: soon}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("receipts.exchange") && err.contains("receipts.log"),
            "{err}"
        );
    }
}
