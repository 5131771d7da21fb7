//! One profile's OAuth 2.0 token, cached in process.
//!
//! Design decisions:
//! - The hot path is [`TokenSlot::fresh`]: one atomic load and a clock read, no await, no
//!   lock. Only a missing or stale token goes further.
//! - Single flight: whoever finds no fresh token and no fetch under way fetches; the others
//!   wait for that fetch to end (all woken at once) and take its token or, if it failed, its
//!   error, so a failing auth server sees one request per burst, not one per waiting
//!   delivery.
//! - A 401 from the callback URL drops the token only if it is still the one that was used,
//!   so a burst of 401s for one stale token causes one refresh.
//! - With a shared cache ([`SharedTokens`]) the slot still fronts it: Redis is asked only
//!   when this replica has no fresh token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::oauth2::{AuthError, OAuth2, Token};
use super::shared::SharedTokens;
use crate::metrics::{ProfileMetrics, TokenOutcome};

/// Everything a fetch needs: the profile's settings, its HTTP client and its series.
pub struct Source<'a> {
    pub profile: &'a str,
    pub oauth: &'a OAuth2,
    pub client: &'a reqwest::Client,
    pub metrics: &'a ProfileMetrics,
    pub shared: Option<&'a SharedTokens>,
    /// How long one auth request may take (the profile's timeout).
    pub timeout: Duration,
    /// The network guard's refusal of the auth URL's literal host, found at build time.
    pub blocked: Option<&'a str>,
}

pub struct TokenSlot {
    current: ArcSwapOption<Token>,
    flight: Mutex<Flight>,
    /// Bumped when a fetch ends: everyone who waited on it wakes at once.
    done: watch::Sender<u64>,
}

#[derive(Default)]
struct Flight {
    fetching: bool,
    /// Fetches ended so far.
    generation: u64,
    /// The last fetch's error, for those who waited on it.
    last_error: Option<Arc<AuthError>>,
}

impl Default for TokenSlot {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            flight: Mutex::new(Flight::default()),
            done: watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for TokenSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSlot")
    }
}

/// Ends a fetch however it ends (even if its future is dropped): records the result and
/// wakes the waiters.
struct Fetching<'a> {
    slot: &'a TokenSlot,
    result: Option<Result<Arc<Token>, Arc<AuthError>>>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        let mut f = self.slot.flight.lock().expect("token slot lock");
        f.fetching = false;
        f.generation += 1;
        match self.result.take() {
            Some(Ok(token)) => {
                self.slot.current.store(Some(token));
                f.last_error = None;
            }
            Some(Err(e)) => f.last_error = Some(e),
            None => {}
        }
        drop(f);
        self.slot.done.send_modify(|g| *g += 1);
    }
}

impl TokenSlot {
    /// The cached token if it is still within its reuse window.
    pub fn fresh(&self) -> Option<Arc<Token>> {
        let guard = self.current.load();
        match &*guard {
            Some(t) if Instant::now() < t.reuse_until => Some(t.clone()),
            _ => None,
        }
    }

    /// A token for one attempt: the cached one, or one fetched once for everybody waiting.
    pub async fn get(&self, src: &Source<'_>) -> Result<Arc<Token>, Arc<AuthError>> {
        if let Some(t) = self.fresh() {
            src.metrics.token_cache_hit();
            return Ok(t);
        }
        let mut seen = None;
        loop {
            let mut ended = self.done.subscribe();
            {
                let mut f = self.flight.lock().expect("token slot lock");
                if let Some(t) = self.fresh() {
                    src.metrics.token_cache_hit();
                    return Ok(t);
                }
                let generation = *seen.get_or_insert(f.generation);
                if f.generation != generation
                    && let Some(e) = &f.last_error
                {
                    return Err(e.clone()); // the fetch we waited for failed
                }
                if !f.fetching {
                    f.fetching = true;
                    break;
                }
            }
            let _ = ended.changed().await;
        }
        let mut fetching = Fetching {
            slot: self,
            result: None,
        };
        let result = match src.shared {
            Some(shared) => shared.token(src).await,
            None => fetch(src).await.map(|t| (t, false)),
        };
        let result = match result {
            Ok((token, from_shared)) => {
                if from_shared {
                    src.metrics.token_cache_hit();
                }
                Ok(Arc::new(token))
            }
            Err(e) => Err(Arc::new(e)),
        };
        fetching.result = Some(result.clone());
        result
    }

    /// Drop `used` after the callback URL answered 401, unless it was already replaced.
    pub async fn reject(&self, used: &Arc<Token>, src: &Source<'_>) {
        self.current.rcu(|cur| match cur {
            Some(c) if Arc::ptr_eq(c, used) => None,
            other => other.clone(),
        });
        if let (Some(shared), Some(stored)) = (src.shared, &used.stored) {
            shared.reject(src, stored).await;
        }
    }
}

/// One request to the auth server, counted and logged (never the secret or the token).
pub async fn fetch(src: &Source<'_>) -> Result<Token, AuthError> {
    let result = match src.blocked {
        Some(why) => Err(AuthError::Blocked(why.to_owned())),
        None => src.oauth.fetch(src.client).await,
    };
    let outcome = match &result {
        Ok(token) => {
            let expires_in = token
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            tracing::info!(profile = src.profile, outcome = "success", scheme = %token.scheme, expires_in_s = expires_in, "auth token fetched");
            TokenOutcome::Success
        }
        Err(err) => {
            tracing::warn!(profile = src.profile, outcome = "failure", error = %err, "auth token request failed");
            TokenOutcome::Failure
        }
    };
    src.metrics.token_request(outcome);
    result
}
