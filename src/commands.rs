//! The operator commands' output, kept apart from `main` so tests can call them.

use std::time::{Duration, SystemTime};

use anyhow::bail;
use secrecy::ExposeSecret;

use crate::auth::{Auth, AuthError, oauth2::Token};
use crate::config::Config;
use crate::dead_letters::DeadLetter;
use crate::http;

/// The token redacted to its first 6 characters.
pub fn redact_token(token: &str) -> String {
    let head: String = token.chars().take(6).collect();
    format!("{head}… ({} chars, redacted)", token.chars().count())
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// `token --profile ID`: one real auth request. Ok: the report; Err: the failure report.
pub async fn token(config: &Config, profile_id: &str) -> anyhow::Result<String> {
    let Some(profile) = config.profiles.get(profile_id) else {
        bail!("no profile {profile_id:?} in the configuration");
    };
    let Auth::OAuth2(oauth) = &profile.auth else {
        bail!("profile {profile_id:?} has no Advanced Authentication (auth.type: oauth2)");
    };
    let client = http::client(config.delivery.connect_timeout, config.delivery.timeout);
    match oauth.fetch(&client).await {
        Ok(t) => Ok(report(profile_id, &t)),
        Err(e) => {
            let mut out = format!(
                "profile {profile_id}: token request to {} failed: {e}",
                origin(&oauth.url)
            );
            if let AuthError::Status { body, .. } = &e {
                out.push_str(&format!("\nerror body: {}", body.0.trim()));
            }
            bail!(out)
        }
    }
}

fn origin(url: &reqwest::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

fn report(profile_id: &str, t: &Token) -> String {
    let remaining = t
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let reuse = t
        .reuse_until
        .saturating_duration_since(std::time::Instant::now());
    format!(
        "profile: {profile_id}\nscheme:  {}\ntoken:   {}\nexpires: {} (in {})\nreused:  for {} before a refresh\n",
        t.scheme,
        redact_token(t.value.expose_secret()),
        humantime::format_rfc3339_seconds(t.expires_at),
        humantime::format_duration(round_secs(remaining)),
        humantime::format_duration(round_secs(reuse)),
    )
}

/// `dead-letters list` as a table.
pub fn dead_letter_table(rows: &[DeadLetter], total: u32) -> String {
    let mut out = format!(
        "{} dead-lettered event(s) in the queue, showing {}\n{:<36} {:<16} {:<18} {:>6} {:>8} {:>10}  {}\n",
        total,
        rows.len(),
        "ID",
        "PROFILE",
        "REASON",
        "STATUS",
        "ATTEMPTS",
        "AGE",
        "LAST ERROR"
    );
    for r in rows {
        let status = r.last_status.map_or("-".into(), |s| s.to_string());
        let age = r.age.map_or("-".into(), |a| {
            humantime::format_duration(round_secs(a)).to_string()
        });
        let error: String = r.last_error.chars().take(120).collect();
        out.push_str(&format!(
            "{:<36} {:<16} {:<18} {:>6} {:>8} {:>10}  {}\n",
            r.id,
            r.profile,
            r.reason,
            status,
            r.attempts,
            age,
            error.replace('\n', " ")
        ));
    }
    out
}
