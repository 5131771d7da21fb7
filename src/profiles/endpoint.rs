//! One profile's runtime: its validated settings with everything that acts on them — the
//! gate (concurrency, rate limit, breaker), the token slot, the HTTP client for its TLS
//! setting, and its metric series.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::auth::fetch::Source;
use crate::auth::shared::SharedTokens;
use crate::auth::slot::{AuthChange, TokenError};
use crate::auth::{Auth, AuthError, Credential, Token, TokenSlot};
use crate::config::Profile;
use crate::decide::{AttemptResult, Reading};
use crate::metrics::ProfileMetrics;
use crate::profiles::breaker::{BreakerState, Change};
use crate::profiles::gate::{Gate, Pass};
use crate::receipts::NoticeType;

pub struct Endpoint {
    pub profile: Arc<Profile>,
    pub client: crate::http::Client,
    pub gate: Gate,
    pub tokens: Arc<TokenSlot>,
    pub metrics: Arc<ProfileMetrics>,
    /// The profile's timeout, else `delivery.timeout`.
    pub timeout: Duration,
    /// The network guard's refusal of a literal callback host.
    pub callback_blocked: Option<String>,
    /// The network guard's refusal of a literal auth host.
    pub auth_blocked: Option<String>,
    pub shared: Option<Arc<SharedTokens>>,
    /// Whether its proxy failed last: a proxy outage is logged at warn once, not per event.
    pub proxy_failing: AtomicBool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("profile", &self.profile.id)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn source(&self) -> Option<Source<'_>> {
        let oauth = self.profile.auth.oauth2()?;
        Some(Source {
            profile: &self.profile.id,
            oauth,
            client: &self.client,
            metrics: &self.metrics,
            timeout: self.timeout,
            blocked: self.auth_blocked.as_deref(),
        })
    }

    /// The credential for one attempt; `None` for profiles without auth. Waits for a token
    /// request made for another event at most `patience` (see [`TokenSlot::get`]).
    pub async fn credential(&self, patience: Duration) -> Result<Option<Credential>, TokenError> {
        match &self.profile.auth {
            Auth::None => Ok(None),
            Auth::Static { header, value } => Ok(Some(Credential {
                header: header.clone(),
                value: value.clone(),
                token: None,
            })),
            Auth::OAuth2(_) => {
                let src = self.source().expect("an oauth2 profile");
                let token = self
                    .tokens
                    .get(&src, self.shared.as_deref(), patience)
                    .await;
                self.tell_auth_change();
                let token = token?;
                Ok(Some(Credential {
                    header: reqwest::header::AUTHORIZATION,
                    value: token.header.clone(),
                    token: Some(token),
                }))
            }
        }
    }

    /// `auth.failing` / `auth.recovered`, told once by whoever sees the change first.
    fn tell_auth_change(&self) {
        let notices = self.metrics.notices();
        match self.tokens.take_change() {
            None => {}
            Some(AuthChange::Failing(error)) => notices.tell(
                NoticeType::AuthFailing,
                Some(&self.profile.id),
                Some(&error.to_string()),
            ),
            Some(AuthChange::Recovered) => {
                notices.tell(NoticeType::AuthRecovered, Some(&self.profile.id), None)
            }
        }
    }

    /// One fresh token request, past the cache: the `token` command's.
    pub async fn fetch_token(&self) -> Result<Token, AuthError> {
        let src = self.source().ok_or_else(|| {
            AuthError::Transport("the profile has no Advanced Authentication".into())
        })?;
        crate::auth::fetch::fetch(&src).await
    }

    /// The callback URL answered 401 to `used`.
    pub async fn reject(&self, used: &Arc<Token>) {
        if let Some(src) = self.source() {
            self.tokens.reject(used, &src, self.shared.as_deref()).await;
        }
    }

    /// An attempt is over: its health goes to the breaker (and, with `cluster.redis`, to the
    /// deployment's), and a change of the breaker is logged (warn when it opens, info when it
    /// closes) and shown in `circuit_open`.
    pub fn finish(&self, pass: Pass, reading: &Reading) {
        let probe = pass.is_probe();
        let (change, open) = pass.finish(reading.health);
        let last_error = match &reading.result {
            AttemptResult::Delivered { .. } => "",
            AttemptResult::Permanent { error, .. }
            | AttemptResult::Retryable { error, .. }
            | AttemptResult::Blocked { error }
            | AttemptResult::ProxyFailed { error } => error,
        };
        announce(
            &self.profile.id,
            &self.metrics,
            change,
            open,
            By::ThisReplica,
            last_error,
        );
        self.gate
            .share_result(probe, reading.health, change == Change::Opened, last_error);
    }

    /// The proxy failed before the endpoint was reached (SPEC section 17): counted, and
    /// logged at warn when it starts failing (naming the proxy, never its credentials).
    pub fn proxy_failed(&self, error: &str) {
        self.metrics.proxy_error();
        let profile = &*self.profile.id;
        if self.proxy_failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                profile,
                error,
                "proxy failed: event deferred without an attempt"
            );
        } else {
            tracing::warn!(
                profile,
                error,
                "proxy failed: event deferred without an attempt; this profile's events wait until it works again"
            );
        }
    }

    /// A request got through (or did not need the proxy): a proxy outage is over.
    pub fn proxy_worked(&self) {
        if self.proxy_failing.load(Ordering::Relaxed)
            && self.proxy_failing.swap(false, Ordering::Relaxed)
        {
            tracing::info!(profile = &*self.profile.id, "proxy works again");
        }
    }

    /// The deployment's breaker, from a heartbeat (SPEC section 13).
    pub fn adopt(&self, shared: BreakerState) {
        let (change, open) = self.gate.adopt(shared);
        announce(
            &self.profile.id,
            &self.metrics,
            change,
            open,
            By::AnotherReplica,
            "",
        );
    }
}

/// Whose attempt changed a breaker: this replica's, or (with `cluster.redis`) another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    ThisReplica,
    AnotherReplica,
}

/// Log a breaker's change (warn when it opens, info when it closes) and show it in
/// `circuit_open`.
pub(crate) fn announce(
    profile: &str,
    metrics: &ProfileMetrics,
    change: Change,
    open: bool,
    by: By,
    last_error: &str,
) {
    match (change, by) {
        (Change::None, _) => return,
        (Change::Opened, By::ThisReplica) => {
            tracing::warn!(
                profile,
                last_error,
                "circuit breaker opened: no attempts to this profile until a probe succeeds"
            );
            metrics
                .notices()
                .tell(NoticeType::BreakerOpened, Some(profile), Some(last_error));
        }
        (Change::Opened, By::AnotherReplica) => tracing::warn!(
            profile,
            "circuit breaker opened by the deployment's failures: no attempts to this profile until a probe succeeds"
        ),
        (Change::Reopened, _) => {
            tracing::warn!(
                profile,
                last_error,
                "circuit breaker probe failed; open again"
            )
        }
        (Change::Closed, By::ThisReplica) => {
            tracing::info!(profile, "circuit breaker closed: the probe succeeded");
            metrics
                .notices()
                .tell(NoticeType::BreakerClosed, Some(profile), None);
        }
        (Change::Closed, By::AnotherReplica) => tracing::info!(
            profile,
            "circuit breaker closed: another replica's probe succeeded"
        ),
    }
    metrics.set_circuit_open(open);
}
