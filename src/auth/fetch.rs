//! One request to a profile's auth server, with everything it needs, counted and logged:
//! what the token slot and the shared cache both call when they need a new token.

use std::time::{Duration, SystemTime};

use super::oauth2::{AuthError, OAuth2, Token};
use crate::decide::Label;
use crate::metrics::{ProfileMetrics, TokenOutcome};

/// Everything a fetch needs: the profile's settings, its HTTP client and its series.
pub struct Source<'a> {
    pub profile: &'a str,
    pub oauth: &'a OAuth2,
    pub client: &'a crate::http::Client,
    pub metrics: &'a ProfileMetrics,
    /// How long one auth request may take (the profile's timeout).
    pub timeout: Duration,
    /// The network guard's refusal of the auth URL's literal host, found at build time.
    pub blocked: Option<&'a str>,
}

/// One request to the auth server, counted and logged (never the secret or the token).
pub async fn fetch(src: &Source<'_>) -> Result<Token, AuthError> {
    let result = match src.blocked {
        Some(why) => Err(AuthError::Blocked(why.to_owned())),
        None => {
            // The `token` span covers the request alone: the log lines below stay in the
            // event's span, with its trace ids.
            let span = crate::trace::token_span(src.profile);
            let request = tokio::time::timeout(src.timeout, src.oauth.fetch(src.client));
            match request.await {
                Ok(result) => {
                    if let Err(e) = &result {
                        let status;
                        let kind = match e {
                            AuthError::Status { status: s, .. } => {
                                status = s.to_string();
                                status.as_str()
                            }
                            AuthError::Transport(_) => "transport_error",
                            AuthError::Response(_) => "unusable_response",
                            AuthError::Blocked(_) => "blocked_destination",
                            AuthError::Assertion(_) => "assertion_error",
                            AuthError::Proxy(_) => "proxy_error",
                        };
                        span.failed(kind);
                    }
                    result
                }
                Err(_) => {
                    span.failed("timeout");
                    Err(AuthError::Transport(format!(
                        "timed out after {}",
                        humantime::format_duration(src.timeout)
                    )))
                }
            }
        }
    };
    let outcome = match &result {
        Ok(token) => {
            let expires_in = token
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            tracing::info!(profile = src.profile, outcome = TokenOutcome::Success.as_str(), scheme = %token.scheme, expires_in_s = expires_in, "auth token fetched");
            TokenOutcome::Success
        }
        Err(err) => {
            tracing::warn!(profile = src.profile, outcome = TokenOutcome::Failure.as_str(), error = %err, "auth token request failed");
            TokenOutcome::Failure
        }
    };
    src.metrics.token_request(outcome);
    result
}
