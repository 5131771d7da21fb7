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
use std::time::Instant;

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
            // Dropped mid-fetch: no result to share; whoever waited fetches again.
            None => f.last_error = None,
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
    pub async fn get(
        &self,
        src: &Source<'_>,
        shared: Option<&SharedTokens>,
    ) -> Result<Arc<Token>, Arc<AuthError>> {
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
        result
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
