//! The `amqp` section.

use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

use super::issues::Issues;
use super::raw::{RawAmqp, S};

/// The most ordered-delivery partitions: each is a queue and a consumer.
pub const MAX_PARTITIONS: u32 = 1024;

#[derive(Debug)]
pub struct AmqpConfig {
    /// Holds the broker password: a secret.
    pub url: SecretString,
    pub queue: String,
    pub exchange: String,
    pub prefetch: u16,
    /// Ordered-delivery partitions (SPEC section 15); 0 = none.
    pub partitions: u16,
}

impl AmqpConfig {
    /// Whether a reload could apply `other` (it cannot: changing the broker needs a restart).
    pub fn same_as(&self, other: &AmqpConfig) -> bool {
        self.url.expose_secret() == other.url.expose_secret()
            && (&self.queue, &self.exchange, self.prefetch, self.partitions)
                == (
                    &other.queue,
                    &other.exchange,
                    other.prefetch,
                    other.partitions,
                )
    }
}

pub(crate) fn validate(issues: &mut Issues, a: &RawAmqp) -> AmqpConfig {
    let url = a
        .url
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if lapin::uri::AMQPUri::from_str(url.expose_secret()).is_err() {
        // The URL holds the broker password: say what is wrong, never what it is.
        issues.add("amqp.url", None, "is not an amqp:// or amqps:// URI");
    }
    let prefetch = match &a.prefetch {
        None => 256,
        Some(v) if v.value == 0 || v.value > u32::from(u16::MAX) => {
            issues.add(
                "amqp.prefetch",
                Some(&v.referenced),
                "must be from 1 to 65535",
            );
            256
        }
        Some(v) => v.value as u16,
    };
    let partitions = match &a.partitions {
        None => 0,
        Some(v) if v.value > MAX_PARTITIONS => {
            issues.add(
                "amqp.partitions",
                Some(&v.referenced),
                format!("must be from 0 to {MAX_PARTITIONS}"),
            );
            0
        }
        Some(v) => v.value as u16,
    };
    AmqpConfig {
        url,
        queue: name(issues, "amqp.queue", &a.queue),
        exchange: name(issues, "amqp.exchange", &a.exchange),
        prefetch,
        partitions,
    }
}

fn name(issues: &mut Issues, path: &str, v: &Option<S<String>>) -> String {
    let Some(v) = v else {
        return "callbacks".into();
    };
    // Room for the longest derived name, `<queue>.delay.<ms>`, within AMQP's 255 bytes.
    if v.value.is_empty() || v.value.len() > 200 || v.value.starts_with("amq.") {
        issues.add(
            path,
            Some(&v.referenced),
            "must be 1 to 200 bytes and not start with amq.",
        );
    }
    v.value.clone()
}
