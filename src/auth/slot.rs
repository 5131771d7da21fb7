//! One profile's OAuth 2.0 token, cached in process.
//!
//! Design decisions:
//! - The hot path is [`TokenSlot::fresh`]: one atomic load and a clock read, no await, no
//!   lock. Only a missing or stale token goes further.
//! - Single flight: whoever finds no fresh token and no fetch under way fetches; the others
//!   wait for that fetch to end (all woken at once) and take its token or, if it failed, its
//!   error, so a failing auth server sees one request per burst, not one per waiting
//!   delivery.
//! - After a failed request no new one is made for a back-off ([`backoff`]: 1 s doubling to
//!   1 min, reset by a success, SPEC section 4); meanwhile whoever needs the token gets the
//!   last error at once, without a request. The back-off counts from the end of the failed
//!   request, so a hanging auth server sees one request per timeout plus back-off.
//! - Only the caller that made the request learns it did ([`TokenError::Failed`]'s
//!   `requested`): the profile's breaker counts one failed request once, not once per event
//!   that waited for it or failed during the back-off.
//! - A caller waits for someone else's request only as long as it was told it may
//!   (`patience`, the profile's fair share of the prefetch window, SPEC section 9): then it
//!   gets [`TokenError::Busy`] and its event is deferred without an attempt, so a hanging
//!   auth server holds one event per profile, not every event of the profile in hand.
//! - A 401 from the callback URL drops the token only if it is still the one that was used,
//!   so a burst of 401s for one stale token causes one refresh.
//! - With a shared cache ([`SharedTokens`]) the slot still fronts it: Redis is asked only
//!   when this replica has no fresh token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::fetch::{Source, fetch};
use super::oauth2::{AuthError, Token};
use super::shared::SharedTokens;

pub struct TokenSlot {
    current: ArcSwapOption<Token>,
    flight: Mutex<Flight>,
    /// Bumped when a fetch ends: everyone who waited on it wakes at once.
    done: watch::Sender<u64>,
    /// Set when a fetch changed whether the auth server works, until someone takes it.
    changed: AtomicBool,
}

/// A change of whether the profile's auth server gives tokens (SPEC section 14's
/// `auth.failing` and `auth.recovered`).
#[derive(Debug, Clone)]
pub enum AuthChange {
    /// The first failed request after a success (or since the start).
    Failing(Arc<AuthError>),
    /// The first success after a failure.
    Recovered,
}

#[derive(Default)]
struct Flight {
    /// When the fetch under way, if any, started.
    fetching: Option<Instant>,
    /// Fetches ended so far.
    generation: u64,
    /// The last fetch's error, for those who waited on it and for the back-off.
    last_error: Option<Arc<AuthError>>,
    /// Failed fetches in a row.
    failures: u32,
    /// No new fetch before this, after a failure.
    retry_at: Option<Instant>,
    /// Not taken yet: see [`TokenSlot::take_change`].
    change: Option<AuthChange>,
}

/// The first wait after a failed token request.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait after the `failures`-th failed request in a row: 1 s doubling up to 1 min.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// Why no token was handed out.
#[derive(Debug, Clone)]
pub enum TokenError {
    /// The token request failed: this caller's own (`requested`), or one it waited for, or
    /// the last one while its back-off runs.
    Failed {
        error: Arc<AuthError>,
        requested: bool,
    },
    /// Another caller's request is still under way and this one may wait no longer; it
    /// ends by `left` at the latest.
    Busy { left: Duration },
}

impl Default for TokenSlot {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            flight: Mutex::new(Flight::default()),
            done: watch::Sender::new(0),
            changed: AtomicBool::new(false),
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
        f.fetching = None;
        f.generation += 1;
        match self.result.take() {
            Some(Ok(token)) => {
                self.slot.current.store(Some(token));
                if f.failures > 0 {
                    f.change = Some(AuthChange::Recovered);
                    self.slot.changed.store(true, Ordering::Release);
                }
                f.last_error = None;
                f.failures = 0;
                f.retry_at = None;
            }
            Some(Err(e)) => {
                if f.failures == 0 {
                    f.change = Some(AuthChange::Failing(e.clone()));
                    self.slot.changed.store(true, Ordering::Release);
                }
                f.failures = f.failures.saturating_add(1);
                f.retry_at = Some(Instant::now() + backoff(f.failures));
                f.last_error = Some(e);
            }
            // Dropped mid-fetch: no result to share; whoever waited fetches again.
            None => f.last_error = None,
        }
        drop(f);
        self.slot.done.send_modify(|g| *g += 1);
    }
}

impl TokenSlot {
    /// A change of the auth server's health that nobody has told yet; whoever takes it
    /// tells it, once.
    pub fn take_change(&self) -> Option<AuthChange> {
        // Read first: on the per-event path this is one shared load, not a write to a cache
        // line every event of the profile touches.
        if !self.changed.load(Ordering::Acquire) || !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.flight.lock().expect("token slot lock").change.take()
    }

    /// The cached token if it is still within its reuse window.
    pub fn fresh(&self) -> Option<Arc<Token>> {
        let guard = self.current.load();
        match &*guard {
            Some(t) if Instant::now() < t.reuse_until => Some(t.clone()),
            _ => None,
        }
    }

    /// A token for one attempt: the cached one, or one fetched once for everybody waiting.
    /// Waits for another caller's request at most `patience`.
    pub async fn get(
        &self,
        src: &Source<'_>,
        shared: Option<&SharedTokens>,
        patience: Duration,
    ) -> Result<Arc<Token>, TokenError> {
        if let Some(t) = self.fresh() {
            src.metrics.token_cache_hit();
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let mut seen = None;
        loop {
            let mut ended = self.done.subscribe();
            let started = {
                let mut f = self.flight.lock().expect("token slot lock");
                if let Some(t) = self.fresh() {
                    src.metrics.token_cache_hit();
                    return Ok(t);
                }
                let generation = *seen.get_or_insert(f.generation);
                let waited = f.generation != generation;
                let backing_off = f.retry_at.is_some_and(|at| Instant::now() < at);
                if let Some(e) = &f.last_error
                    && (waited || backing_off)
                {
                    // The fetch we waited for failed, or the last one did and its back-off
                    // runs: fail at once, without a request.
                    return Err(TokenError::Failed {
                        error: e.clone(),
                        requested: false,
                    });
                }
                match f.fetching {
                    None => {
                        f.fetching = Some(Instant::now());
                        break;
                    }
                    Some(started) => started,
                }
            };
            if tokio::time::timeout_at(deadline, ended.changed())
                .await
                .is_err()
            {
                let ends = started + src.timeout;
                return Err(TokenError::Busy {
                    left: ends.saturating_duration_since(Instant::now()),
                });
            }
        }
        let mut fetching = Fetching {
            slot: self,
            result: None,
        };
        let result = match shared {
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
        result.map_err(|error| TokenError::Failed {
            error,
            requested: true,
        })
    }

    /// Drop `used` after the callback URL answered 401, unless it was already replaced.
    pub async fn reject(&self, used: &Arc<Token>, src: &Source<'_>, shared: Option<&SharedTokens>) {
        self.current.rcu(|cur| match cur {
            Some(c) if Arc::ptr_eq(c, used) => None,
            other => other.clone(),
        });
        if let (Some(shared), Some(stored)) = (shared, &used.stored) {
            shared.reject(src, stored).await;
        }
    }
}

#[cfg(test)]
mod tests;
