//! `token --profile ID`: one real token request, as the worker would make it (same client,
//! TLS and network guard), for debugging a customer's setup.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::bail;
use secrecy::ExposeSecret;

use super::round_secs;
use crate::auth::{AuthError, Token};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::profiles::Registry;

/// The token redacted to its first 6 characters.
pub fn redact_token(token: &str) -> String {
    let head: String = token.chars().take(6).collect();
    format!("{head}… ({} chars, redacted)", token.chars().count())
}

/// Ok: the report; Err: the failure report (status and error body). The request goes
/// through the profile's runtime as the worker builds it: its HTTP client (TLS, network
/// guard), its timeout, its auth settings.
pub async fn token(config: &Config, profile_id: &str) -> anyhow::Result<String> {
    let Some(profile) = config.profiles.get(profile_id) else {
        bail!("no profile {profile_id:?} in the configuration");
    };
    let Some(oauth) = profile.auth.oauth2() else {
        bail!("profile {profile_id:?} has no Advanced Authentication (auth.type: oauth2)");
    };
    let target = format!(
        "{}{}",
        oauth.url.origin().ascii_serialization(),
        oauth.url.path()
    );
    let registry = Registry::new(config, Arc::new(Metrics::new()));
    let snapshot = registry.load();
    let endpoint = snapshot
        .endpoint(profile_id)
        .expect("every configured profile has a runtime");
    if let Some(blocked) = &endpoint.auth_blocked {
        bail!("profile {profile_id}: token request to {target} refused: {blocked}");
    }
    match endpoint.fetch_token().await {
        Ok(t) => Ok(report(profile_id, &t)),
        Err(e) => {
            let mut out = format!("profile {profile_id}: token request to {target} failed: {e}");
            if let AuthError::Status { body, .. } = &e {
                out.push_str(&format!("\nerror body: {}", body.0.trim()));
            }
            bail!(out)
        }
    }
}

fn report(profile_id: &str, t: &Token) -> String {
    let remaining = t
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let reuse = t.reuse_until.saturating_duration_since(Instant::now());
    format!(
        "profile: {profile_id}\nscheme:  {}\ntoken:   {}\nexpires: {} (in {})\nreused:  for {} before a refresh\n",
        t.scheme,
        redact_token(t.value.expose_secret()),
        humantime::format_rfc3339_seconds(t.expires_at),
        humantime::format_duration(round_secs(remaining)),
        humantime::format_duration(round_secs(reuse)),
    )
}
