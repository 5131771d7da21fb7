//! The optional `cluster` section: a Redis through which replicas share their count, the
//! profiles' rate limits, concurrency and circuit breakers (SPEC section 13).

use secrecy::{ExposeSecret, SecretString};

use super::issues::Issues;
use super::raw::{RawCluster, S};

/// The default start of every key the cluster writes.
pub const DEFAULT_KEY_PREFIX: &str = "callback-dispatcher";

pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`: may hold a password.
    pub redis: SecretString,
    pub key_prefix: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `None` when the section is absent or its `redis` is empty (so one file serves with and
/// without Redis: `redis: "${REDIS_URL:-}"`).
pub(crate) fn validate(issues: &mut Issues, raw: Option<&S<RawCluster>>) -> Option<ClusterConfig> {
    let raw = raw?;
    let c = &raw.value;
    let key_prefix = match &c.key_prefix {
        None => DEFAULT_KEY_PREFIX.to_owned(),
        Some(v) if !valid_prefix(&v.value) => {
            issues.add(
                "cluster.key_prefix",
                Some(&v.referenced),
                "must be 1 to 100 characters, none of them a space or control character",
            );
            String::new()
        }
        Some(v) => v.value.clone(),
    };
    let redis = c.redis.as_ref().map(|s| s.0.clone())?;
    if redis.expose_secret().trim().is_empty() {
        return None;
    }
    if redis::Client::open(redis.expose_secret()).is_err() {
        issues.add(
            "cluster.redis",
            Some(&raw.referenced),
            "is not a redis:// or rediss:// URL (its value is not shown: it may hold a password)",
        );
    }
    Some(ClusterConfig { redis, key_prefix })
}

fn valid_prefix(p: &str) -> bool {
    (1..=100).contains(&p.chars().count())
        && !p.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use secrecy::ExposeSecret;

    use crate::config::{Config, ConfigError};

    const PROFILES: &str = "profiles:\n  - id: a\n    url: http://127.0.0.1:1/cb\n";

    fn parse(cluster: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(
            &format!("{cluster}\n{PROFILES}"),
            Path::new("test.yaml"),
            |name| (name == "REDIS_URL").then(|| "redis://:pw-SECRET@h:6379/0".to_owned()),
        )
    }

    #[test]
    fn absent_or_empty_is_off_and_the_prefix_has_its_default() {
        assert!(parse("").unwrap().cluster.is_none());
        assert!(parse("cluster: {}").unwrap().cluster.is_none());
        assert!(
            parse("cluster: {redis: \"${NOT_SET:-}\"}")
                .unwrap()
                .cluster
                .is_none()
        );
        let c = parse("cluster: {redis: \"${REDIS_URL}\"}").unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.key_prefix, "callback-dispatcher");
        assert_eq!(cluster.redis.expose_secret(), "redis://:pw-SECRET@h:6379/0");
        assert!(c.summary().ends_with(", cluster on"), "{}", c.summary());
        let debug = format!("{c:?}");
        assert!(!debug.contains("pw-SECRET"), "{debug}");
        assert!(debug.contains("ClusterConfig"), "{debug}");
    }

    #[test]
    fn bad_values_are_named_without_showing_the_url() {
        for (cluster, path, what) in [
            (
                "cluster: {redis: \"http://:pw-SECRET@h/\"}",
                "cluster.redis",
                "redis://",
            ),
            (
                "cluster: {redis: \"redis://h/0\", key_prefix: \"\"}",
                "cluster.key_prefix",
                "1 to 100",
            ),
            (
                "cluster: {redis: \"redis://h/0\", key_prefix: \"a b\"}",
                "cluster.key_prefix",
                "space",
            ),
            (
                "cluster: {redis: \"redis://h/0\", port: 1}",
                "",
                "unknown field",
            ),
        ] {
            let e = parse(cluster).expect_err(cluster);
            let text = e.to_string();
            assert!(
                e.issues
                    .iter()
                    .any(|i| i.path == path && i.message.contains(what))
                    || path.is_empty() && text.contains(what),
                "{cluster}: {text}"
            );
            assert!(!text.contains("pw-SECRET"), "{text}");
        }
    }
}
