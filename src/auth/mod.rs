//! The authenticate stage: what goes into the callback's `Authorization` (or API-key) header.
//!
//! Static credentials (`basic`, `bearer`, `api_key`) are built into a header once at config
//! load. OAuth 2.0 tokens (`oauth2`) come from the customer's auth server and are cached per
//! profile in a moka cache whose per-entry expiry is the token's own reuse window:
//! - `try_get_with` is single-flight: however many deliveries need a token at once, one
//!   request goes to the auth server and the others wait for its answer (or its error).
//! - After a 401 from the callback URL the token that was used is dropped only if it is
//!   still the cached one (`and_compute_with`), so a burst of 401s refreshes once.

pub mod oauth2;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use reqwest::header::{HeaderName, HeaderValue};

use crate::metrics::{Metrics, TokenOutcome};
use crate::profile::Profile;
pub use oauth2::{AuthError, OAuth2, Token};

/// A profile's validated `auth` block.
#[derive(Debug)]
pub enum Auth {
    None,
    /// `basic`, `bearer` and `api_key`: a fixed header, marked sensitive.
    Static {
        header: HeaderName,
        value: HeaderValue,
    },
    OAuth2(Box<OAuth2>),
}

/// The header one attempt sends, and the token it came from (to drop it after a 401).
pub struct Credential {
    pub header: HeaderName,
    pub value: HeaderValue,
    pub token: Option<Arc<Token>>,
}

struct TokenExpiry;

impl Expiry<Arc<str>, Arc<Token>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        token: &Arc<Token>,
        created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(token.reuse_until.saturating_duration_since(created_at))
    }
}

/// Hands out credentials; owns the token cache.
pub struct Authenticator {
    tokens: Cache<Arc<str>, Arc<Token>>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(client: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            tokens: Cache::builder().expire_after(TokenExpiry).build(),
            client,
            metrics,
        }
    }

    /// The credential for one attempt; `None` for profiles without auth.
    pub async fn credential(
        &self,
        profile: &Profile,
    ) -> Result<Option<Credential>, Arc<AuthError>> {
        match &profile.auth {
            Auth::None => Ok(None),
            Auth::Static { header, value } => Ok(Some(Credential {
                header: header.clone(),
                value: value.clone(),
                token: None,
            })),
            Auth::OAuth2(oauth) => {
                let token = self.token(profile, oauth).await?;
                Ok(Some(Credential {
                    header: reqwest::header::AUTHORIZATION,
                    value: token.header.clone(),
                    token: Some(token),
                }))
            }
        }
    }

    async fn token(&self, profile: &Profile, oauth: &OAuth2) -> Result<Arc<Token>, Arc<AuthError>> {
        let mut fetched = false;
        let result = self
            .tokens
            .try_get_with(profile.id.clone(), async {
                fetched = true;
                self.fetch(profile, oauth).await.map(Arc::new)
            })
            .await;
        if !fetched && result.is_ok() {
            self.metrics
                .token_cache_hits
                .with_label_values(&[&profile.id])
                .inc();
        }
        result
    }

    /// One request to the auth server, counted and logged (never the secret or the token).
    pub async fn fetch(&self, profile: &Profile, oauth: &OAuth2) -> Result<Token, AuthError> {
        let result = oauth.fetch(&self.client).await;
        let outcome = match &result {
            Ok(token) => {
                let expires_in = token
                    .expires_at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                tracing::info!(profile = %profile.id, outcome = "success", scheme = %token.scheme, expires_in_s = expires_in, "auth token fetched");
                TokenOutcome::Success
            }
            Err(err) => {
                tracing::warn!(profile = %profile.id, outcome = "failure", error = %err, "auth token request failed");
                TokenOutcome::Failure
            }
        };
        self.metrics
            .token_requests
            .with_label_values(&[&profile.id, outcome.as_str()])
            .inc();
        result
    }

    /// Drop `used` after the callback URL answered 401, unless another delivery has already
    /// replaced it: a burst of 401s for one stale token causes one refresh, not many.
    pub async fn reject(&self, profile: &Profile, used: &Arc<Token>) {
        self.tokens
            .entry(profile.id.clone())
            .and_compute_with(|current| async move {
                match current {
                    Some(entry) if Arc::ptr_eq(entry.value(), used) => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }
}
