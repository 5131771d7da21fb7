//! The optional `token_cache` section: a Redis shared by every replica (SPEC section 12).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use super::issues::Issues;
use super::raw::{RawTokenCache, S};

pub struct TokenCacheConfig {
    /// `redis://[user:password@]host:port/db`: may hold a password.
    pub redis: SecretString,
    pub key_prefix: String,
    /// 32 bytes: the AES-256-GCM key tokens are stored under.
    pub encryption_key: SecretSlice<u8>,
}

impl std::fmt::Debug for TokenCacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCacheConfig")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `None` when the section is absent or its `redis` is empty (so one file serves with and
/// without Redis: `redis: "${REDIS_URL:-}"`).
pub(crate) fn validate(
    issues: &mut Issues,
    raw: Option<&S<RawTokenCache>>,
) -> Option<TokenCacheConfig> {
    let raw = raw?;
    let at = Some(&raw.referenced);
    let t = &raw.value;
    let redis = t.redis.as_ref().map(|s| s.0.clone())?;
    if redis.expose_secret().trim().is_empty() {
        return None;
    }
    if redis::Client::open(redis.expose_secret()).is_err() {
        issues.add(
            "token_cache.redis",
            at,
            "is not a redis:// or rediss:// URL (its value is not shown: it may hold a password)",
        );
    }
    let key_prefix = match &t.key_prefix {
        None => "callback-dispatcher".to_owned(),
        Some(v) if v.value.is_empty() || v.value.len() > 100 => {
            issues.add(
                "token_cache.key_prefix",
                Some(&v.referenced),
                "must be 1 to 100 characters",
            );
            String::new()
        }
        Some(v) => v.value.clone(),
    };
    let encryption_key = match &t.encryption_key {
        None => {
            issues.add(
                "token_cache.encryption_key",
                at,
                "is required with token_cache.redis: 32 random bytes in base64 (e.g. `openssl rand -base64 32`)",
            );
            None
        }
        Some(k) => match STANDARD.decode(k.0.expose_secret().trim()) {
            Ok(bytes) if bytes.len() == 32 => Some(SecretSlice::from(bytes)),
            Ok(bytes) => {
                issues.add(
                    "token_cache.encryption_key",
                    at,
                    format!(
                        "decodes to {} bytes; it must be 32 (e.g. `openssl rand -base64 32`)",
                        bytes.len()
                    ),
                );
                None
            }
            Err(_) => {
                issues.add(
                    "token_cache.encryption_key",
                    at,
                    "is not base64 (its value is not shown)",
                );
                None
            }
        },
    };
    Some(TokenCacheConfig {
        redis,
        key_prefix,
        encryption_key: encryption_key?,
    })
}
