//! callback-dispatcher: consumes callback events from RabbitMQ and delivers them, signed, to
//! customers' callback URLs, with Advanced Authentication (OAuth 2.0 client credentials
//! against the customer's own auth server) and durable retries. The contract is SPEC.md.
//!
//! One event goes through these stages, one module each:
//!
//! ```text
//! consume (event) -> resolve profile (profile) -> authenticate (auth) -> sign + send (sign, send) -> settle (settle)
//! ```
//!
//! [`Dispatcher::handle`] below is that pipeline; [`worker`] runs it for every delivery with
//! bounded concurrency, reconnects to the broker, and shuts down gracefully.

pub mod auth;
pub mod broker;
pub mod commands;
pub mod config;
pub mod dead_letters;
pub mod event;
pub mod http;
pub mod metrics;
pub mod profile;
pub mod publish;
pub mod retry;
pub mod send;
pub mod server;
pub mod settle;
pub mod sign;
pub mod topology;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lapin::message::Delivery;

use auth::Authenticator;
use config::Config;
use metrics::{Metrics, NO_PROFILE};
use profile::Profile;
use send::Verdict;
use settle::{AttemptResult, DeadReason, Settlement, Settler};
use topology::Topology;

pub use worker::{Worker, run};

/// Everything one delivery needs, shared by all of them.
pub struct Dispatcher {
    pub config: Config,
    pub topology: Topology,
    pub auth: Authenticator,
    pub client: reqwest::Client,
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        let client = http::client(config.delivery.connect_timeout, config.delivery.timeout);
        Self {
            topology: Topology::new(&config),
            auth: Authenticator::new(client.clone(), metrics.clone()),
            client,
            metrics,
            config,
        }
    }

    /// One delivery, from the queue to its settlement. Never panics on bad input and never
    /// acks before the settlement is confirmed (see [`settle`]).
    pub async fn handle(&self, settler: &Settler<'_>, mut delivery: Delivery) {
        let started = Instant::now();
        self.metrics.events_consumed.inc();
        let now = SystemTime::now();
        let body = Bytes::from(std::mem::take(&mut delivery.data));

        // consume -> resolve profile -> (authenticate -> sign -> send) -> decide
        let (event, profile, settlement) = match event::read(
            &delivery.properties,
            body.clone(),
            self.config.delivery.max_body_bytes,
            now,
        ) {
            Err(rejected) => {
                let profile = rejected
                    .profile
                    .as_deref()
                    .and_then(|id| self.config.profiles.get(id))
                    .cloned();
                let dead = Settlement::DeadLetter {
                    reason: rejected.reason,
                    status: None,
                    error: rejected.error,
                    attempts: event::attempts(delivery.properties.headers().as_ref()),
                };
                (None, profile, dead)
            }
            Ok(event) => match self.config.profiles.get(&event.profile).cloned() {
                None => {
                    let dead = Settlement::DeadLetter {
                        reason: DeadReason::UnknownProfile,
                        status: None,
                        error: format!("no profile {:?} in the configuration", event.profile),
                        attempts: event.attempts_before,
                    };
                    (Some(event), None, dead)
                }
                Some(profile) => {
                    let attempts = event.attempts_before.saturating_add(1);
                    let result = self.attempt(&profile, &event).await;
                    let age = now.duration_since(event.born).unwrap_or_default();
                    let unit = rand::random::<f64>();
                    let settlement = settle::decide(
                        result,
                        attempts,
                        age,
                        &self.config.retry,
                        &self.topology.delays_ms,
                        unit,
                    );
                    (Some(event), Some(profile), settlement)
                }
            },
        };

        // settle
        let label = profile.as_ref().map_or(NO_PROFILE, |p| &p.id);
        let id = event.as_ref().map_or("-", |e| e.id.as_str());
        match settler
            .apply(&delivery, &body, event.as_ref(), &settlement)
            .await
        {
            Ok(()) => {
                self.metrics
                    .deliveries
                    .with_label_values(&[label, settlement.outcome().as_str()])
                    .inc();
                log_settled(id, label, &settlement, started.elapsed());
            }
            Err(e) => {
                tracing::warn!(event_id = id, profile = label, error = %e, "settlement not confirmed; the event stays on the queue")
            }
        }
    }

    /// Authenticate, sign and send, with one immediate resend after a 401 that refreshed an
    /// OAuth 2.0 token.
    async fn attempt(&self, profile: &Profile, event: &event::Event) -> AttemptResult {
        let timeout = profile.timeout.unwrap_or(self.config.delivery.timeout);
        let mut refreshed = false;
        loop {
            let attempts = |class: metrics::AttemptClass| {
                self.metrics
                    .delivery_attempts
                    .with_label_values(&[&profile.id, class.as_str()])
                    .inc()
            };
            let credential = match self.auth.credential(profile).await {
                Ok(c) => c,
                Err(e) => {
                    attempts(metrics::AttemptClass::AuthFailed);
                    return AttemptResult::Retryable {
                        status: None,
                        retry_after: None,
                        error: format!("auth_failed: {e}"),
                    };
                }
            };
            let (sent, took) =
                send::send(&self.client, profile, event, credential.as_ref(), timeout).await;
            attempts(sent.class());
            self.metrics
                .delivery_duration
                .with_label_values(&[&profile.id])
                .observe(took.as_secs_f64());
            let (status, retry_after, snippet) = match sent {
                send::Sent::Answered {
                    status,
                    retry_after,
                    snippet,
                } => (status, retry_after, snippet),
                send::Sent::Failed { error, .. } => {
                    return AttemptResult::Retryable {
                        status: None,
                        retry_after: None,
                        error,
                    };
                }
            };
            let error = || format!("HTTP {status}: {}", snippet.trim());
            match send::classify(status) {
                Verdict::Delivered => return AttemptResult::Delivered { status },
                Verdict::Unauthorized if !refreshed => {
                    if let Some(token) = credential.and_then(|c| c.token) {
                        self.auth.reject(profile, &token).await;
                        refreshed = true;
                        continue;
                    }
                    return AttemptResult::Retryable {
                        status: Some(status),
                        retry_after,
                        error: error(),
                    };
                }
                Verdict::Unauthorized | Verdict::Retry => {
                    return AttemptResult::Retryable {
                        status: Some(status),
                        retry_after,
                        error: error(),
                    };
                }
                Verdict::Permanent => {
                    return AttemptResult::Permanent {
                        status,
                        error: error(),
                    };
                }
            }
        }
    }
}

fn log_settled(id: &str, profile: &str, settlement: &Settlement, took: Duration) {
    let ms = took.as_millis() as u64;
    match settlement {
        Settlement::Delivered { status, attempts } => tracing::info!(
            event_id = id,
            profile,
            attempt = attempts,
            outcome = "delivered",
            status,
            duration_ms = ms,
            "event settled"
        ),
        Settlement::Retry { plan, attempts } => tracing::info!(
            event_id = id,
            profile,
            attempt = attempts,
            outcome = "retry_scheduled",
            delay_ms = plan.expiration_ms,
            duration_ms = ms,
            "event settled"
        ),
        Settlement::DeadLetter {
            reason,
            status,
            error,
            attempts,
        } => tracing::info!(
            event_id = id,
            profile,
            attempt = attempts,
            outcome = "dead_lettered",
            reason = reason.as_str(),
            status = status.map(i64::from),
            error = error.as_str(),
            duration_ms = ms,
            "event settled"
        ),
    }
}
