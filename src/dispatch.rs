//! The pipeline, for one delivery:
//!
//! ```text
//! read -> resolve -> guard (age, breaker, limits) -> authenticate -> sign + send -> decide -> settle
//! ```
//!
//! [`Dispatcher::handle`] runs it; every stage hands the next a typed value, and the event's
//! fate is chosen in one place, [`decide`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::amqp::headers;
use crate::decide::{AttemptResult, Case, Facts, Failure, Settlement, decide};
use crate::event::{self, Event};
use crate::metrics::{AttemptClass, Label, Metrics, NO_PROFILE};
use crate::profiles::breaker::Health;
use crate::profiles::gate::Refusal;
use crate::profiles::{Endpoint, Registry, Snapshot, Window};
use crate::send::{self, Sent, Unanswered, Verdict};
use crate::settle::Settler;

/// Everything deliveries share.
pub struct Dispatcher {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub window: Arc<Window>,
    /// `delivery.concurrency`: attempts in flight across all profiles.
    pub attempts: Arc<Semaphore>,
    /// Cancelled at shutdown: events still waiting for their turn go back to the queue.
    pub shutdown: CancellationToken,
}

impl Dispatcher {
    /// One delivery, from the queue to its settlement. Never panics on bad input and never
    /// acks before the settlement is confirmed (see [`crate::settle`]).
    pub async fn handle(&self, settler: &Settler<'_>, mut delivery: Delivery) {
        let started = Instant::now();
        self.metrics.events_consumed.inc();
        let snapshot = self.registry.load();
        let now = SystemTime::now();
        let body = Bytes::from(std::mem::take(&mut delivery.data));

        // read -> resolve
        let read = event::read(
            &delivery.properties,
            body.clone(),
            snapshot.delivery.max_body_bytes,
            now,
        );
        let named = match &read {
            Ok(e) => Some(e.profile.as_str()),
            Err(r) => r.profile.as_deref(),
        };
        let endpoint = named.and_then(|id| snapshot.endpoint(id));
        let hold = endpoint.map(|e| e.gate.hold(&self.window));
        let facts = match &read {
            Ok(e) => Facts {
                attempts_before: e.attempts_before,
                deferrals_before: e.deferrals_before,
                age: e.age(now),
            },
            Err(_) => Facts {
                attempts_before: headers::count(
                    delivery.properties.headers().as_ref(),
                    headers::ATTEMPT,
                ),
                deferrals_before: 0,
                age: Duration::ZERO,
            },
        };
        let case = match (&read, endpoint) {
            (Err(rejected), _) => Case::Rejected(rejected.clone()),
            (Ok(e), None) => Case::UnknownProfile(e.profile.clone()),
            (Ok(e), Some(ep)) => self.guard_and_attempt(&snapshot, ep, e, facts).await,
        };

        // decide -> settle. The event stops counting against its profile's share here: from
        // now on it waits only for the broker, which may send the next one as soon as it acks.
        drop(hold);
        let settlement = decide(
            case,
            facts,
            &snapshot.retry,
            &snapshot.delays_ms,
            rand::random::<f64>(),
        );
        let event = read.as_ref().ok();
        let id = event.map_or("-", |e| e.id.as_str());
        let label = endpoint.map_or(NO_PROFILE, |e| &*e.profile.id);
        match settler.apply(&delivery, &body, event, &settlement).await {
            Ok(()) => {
                match (settlement.outcome(), endpoint) {
                    (Some(outcome), Some(ep)) => ep.metrics.delivery(outcome),
                    (Some(outcome), None) => self.metrics.unprofiled(outcome).inc(),
                    (None, _) => {}
                }
                if let (Settlement::Defer { reason, .. }, Some(ep)) = (&settlement, endpoint) {
                    ep.metrics.deferral(*reason);
                }
                log_settled(id, label, &settlement, started.elapsed());
            }
            Err(e) => {
                tracing::warn!(event_id = id, profile = label, error = %e, "settlement not confirmed; the event stays on the queue")
            }
        }
    }

    /// Too old, not now (breaker, concurrency, rate), or attempted.
    async fn guard_and_attempt(
        &self,
        snapshot: &Snapshot,
        ep: &Endpoint,
        event: &Event,
        facts: Facts,
    ) -> Case {
        if snapshot.retry.expired(facts.age) {
            return Case::Expired;
        }
        let pass = match ep.gate.admit(&self.window, &self.shutdown).await {
            Ok(pass) => pass,
            Err(Refusal::Defer { reason, wait }) => return Case::Deferred { reason, wait },
            Err(Refusal::Shutdown) => return Case::Interrupted,
        };
        let _slot = match self.attempts.try_acquire() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                slot = self.attempts.acquire() => slot.expect("never closed"),
                () = self.shutdown.cancelled() => return Case::Interrupted,
            },
        };
        let result = self.attempt(ep, event).await;
        let (change, open) = pass.finish(health(&result));
        ep.breaker_changed(change, open, error_of(&result));
        Case::Attempted(result)
    }

    /// Authenticate, sign and send, with one immediate resend after a 401 that refreshed an
    /// OAuth 2.0 token.
    async fn attempt(&self, ep: &Endpoint, event: &Event) -> AttemptResult {
        let mut refreshed = false;
        loop {
            let credential = match ep.credential().await {
                Ok(c) => c,
                Err(e) => {
                    ep.metrics.attempt(AttemptClass::AuthFailed, None);
                    return AttemptResult::Retryable {
                        failure: Failure::Auth,
                        retry_after: None,
                        error: format!("auth_failed: {e}"),
                    };
                }
            };
            let (sent, took) = send::send(
                &ep.client,
                &ep.profile,
                event,
                credential.as_ref(),
                ep.timeout,
                ep.callback_blocked.as_deref(),
            )
            .await;
            ep.metrics.attempt(sent.class(), Some(took));
            let (status, retry_after, snippet) = match sent {
                Sent::Answered {
                    status,
                    retry_after,
                    snippet,
                } => (status, retry_after, snippet),
                Sent::Failed { why, error } => {
                    let failure = match why {
                        Unanswered::Blocked => return AttemptResult::Blocked { error },
                        Unanswered::Timeout => Failure::Timeout,
                        Unanswered::Connect => Failure::Connect,
                    };
                    return AttemptResult::Retryable {
                        failure,
                        retry_after: None,
                        error,
                    };
                }
            };
            let error = || format!("HTTP {status}: {}", snippet.trim());
            let retryable = || AttemptResult::Retryable {
                failure: Failure::Status(status),
                retry_after,
                error: error(),
            };
            match send::classify(status).0 {
                Verdict::Delivered => return AttemptResult::Delivered { status },
                Verdict::Unauthorized if !refreshed => match credential.and_then(|c| c.token) {
                    Some(token) => {
                        ep.reject(&token).await;
                        refreshed = true;
                    }
                    None => return retryable(),
                },
                Verdict::Unauthorized | Verdict::Retry => return retryable(),
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

/// What an attempt says about the endpoint, for its breaker: only its own failures count
/// (timeouts, connection errors, 5xx and 429); an answer of any other kind means it is up.
fn health(result: &AttemptResult) -> Health {
    match result {
        AttemptResult::Delivered { .. } | AttemptResult::Permanent { .. } => Health::Up,
        AttemptResult::Blocked { .. } => Health::Unknown,
        AttemptResult::Retryable { failure, .. } => match failure {
            Failure::Status(s) if *s == 429 || *s >= 500 => Health::Down,
            Failure::Status(_) => Health::Up,
            Failure::Timeout | Failure::Connect => Health::Down,
            Failure::Auth => Health::Unknown,
        },
    }
}

fn error_of(result: &AttemptResult) -> &str {
    match result {
        AttemptResult::Delivered { .. } => "",
        AttemptResult::Permanent { error, .. }
        | AttemptResult::Retryable { error, .. }
        | AttemptResult::Blocked { error } => error,
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
        Settlement::Retry {
            plan,
            attempts,
            error,
        } => tracing::info!(
            event_id = id,
            profile,
            attempt = attempts,
            outcome = "retry_scheduled",
            delay_ms = plan.expiration_ms,
            error = error.as_str(),
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
        Settlement::Defer {
            plan,
            reason,
            deferrals,
        } => tracing::debug!(
            event_id = id,
            profile,
            outcome = "deferred",
            reason = reason.as_str(),
            deferrals,
            delay_ms = plan.expiration_ms,
            duration_ms = ms,
            "event deferred"
        ),
        Settlement::Requeue => {
            tracing::debug!(
                event_id = id,
                profile,
                "event returned to the queue at shutdown"
            )
        }
    }
}
