//! The pipeline, for one delivery:
//!
//! ```text
//! read -> resolve -> guard (age, breaker, limits) -> authenticate -> sign + send -> classify -> decide -> settle
//! ```
//!
//! [`Dispatcher::handle`] runs it; every stage hands the next a typed value, what an answer
//! means is read in one place ([`classify`]) and the event's fate is chosen in one place
//! ([`decide`]). Each event is processed inside one tracing span, `event`, that carries its
//! id and profile, so every log line about it (token requests, breaker changes, the
//! settlement) names them without passing them by hand. With tracing on it is also the
//! OpenTelemetry span `process <queue>` ([`crate::trace::adopt`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::amqp::RetryState;
use crate::auth::AuthError;
use crate::auth::slot::TokenError;
use crate::decide::{
    self, AttemptResult, Case, DeferReason, Facts, Health, Label, Reading, Settlement, auth_failed,
    classify, decide,
};
use crate::event::{self, Event};
use crate::metrics::{Metrics, NO_PROFILE};
use crate::ordered::{Attempts, InPlace, ORDERED_MAX_WAIT, OrderedEnd, Parking, wait_in_place};
use crate::profiles::gate::{MAX_WAIT, Refusal};
use crate::profiles::{Endpoint, Registry, Snapshot, Window};
use crate::receipts::Receipt;
use crate::send;
use crate::settle::{SettleBackoff, SettleError, Settler};
use crate::trace;

mod told;

use told::{log_settled, receipt_id};

/// Everything deliveries share.
pub struct Dispatcher {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub window: Arc<Window>,
    /// Cancelled at shutdown: events still waiting for their turn go back to the queue.
    pub shutdown: CancellationToken,
    /// The wait before events whose settlement the broker refused go back to the queue.
    pub settle_backoff: SettleBackoff,
}

impl Dispatcher {
    /// One delivery, from the queue to its settlement. Never panics on bad input and never
    /// acks before the settlement is confirmed (see [`crate::settle`]).
    pub async fn handle(&self, settler: &Settler<'_>, delivery: Delivery) {
        self.process(settler, delivery, None).await;
    }

    /// An ordered event (SPEC section 15): retries and deferrals wait here, the event
    /// unacknowledged, instead of in a delay queue, so that nothing of its key overtakes it.
    /// `Settled` once it was delivered or dead-lettered; `Left` when shutdown (or a lost
    /// channel) left it to the broker, which returns it, in its place, to whoever consumes
    /// the partition next.
    /// With `parking`, a waiting event whose lane holds more than its share of the window
    /// ends as `Park`, unsettled, to be parked with its lane ([`crate::ordered::park`]).
    pub async fn handle_ordered(
        &self,
        settler: &Settler<'_>,
        delivery: Delivery,
        memory: &Attempts,
        parking: Option<&Parking<'_>>,
        stop: &CancellationToken,
    ) -> OrderedEnd {
        self.process(settler, delivery, Some((memory, parking, stop)))
            .await
    }

    async fn process(
        &self,
        settler: &Settler<'_>,
        mut delivery: Delivery,
        ordered: Option<(&Attempts, Option<&Parking<'_>>, &CancellationToken)>,
    ) -> OrderedEnd {
        let started = Instant::now();
        self.metrics.events_consumed.inc();
        let body = Bytes::from(std::mem::take(&mut delivery.data));
        let snapshot = self.registry.load();
        let now = SystemTime::now();

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
        let event_id = read.as_ref().map_or("-", |e| e.id.as_str());
        let profile = endpoint.map(|e| &e.profile.id);
        let process = trace::Process::start(
            &settler.topology.queue,
            delivery.properties.headers().as_ref(),
            read.as_ref().ok().map(|e| e.id.as_str()),
            event_id,
            profile,
        );
        let ids = process.ids();
        let span = tracing::info_span!(
            "event",
            event_id,
            profile = profile.map_or(NO_PROFILE, |p| &**p),
            trace_id = ids.map(|(t, _)| tracing::field::display(t)),
            span_id = ids.map(|(_, s)| tracing::field::display(s)),
        );
        let work = async {
            let mut facts = match &read {
                Ok(e) => Facts {
                    attempts_before: e.attempts_before,
                    deferrals_before: e.deferrals_before,
                    age: e.age(now),
                },
                Err(_) => Facts {
                    attempts_before: RetryState::read(delivery.properties.headers().as_ref())
                        .attempts,
                    deferrals_before: 0,
                    age: Duration::ZERO,
                },
            };
            if let Some((memory, _, stop)) = ordered {
                facts.attempts_before = facts.attempts_before.max(memory.get(event_id));
                // A head parked in the middle of its wait waits out the rest first.
                if let Some(until) = memory.until(event_id)
                    && let InPlace::Stopped = wait_in_place(until, None, stop).await
                {
                    return OrderedEnd::Left;
                }
            }
            let settlement = loop {
                let hold = endpoint.map(|e| e.gate.hold(&self.window));
                let case = match (&read, endpoint) {
                    (Err(rejected), _) => Case::Rejected(rejected.clone()),
                    (Ok(e), None) => Case::UnknownProfile(e.profile.clone()),
                    (Ok(e), Some(ep)) => self.guard_and_attempt(&snapshot, ep, e, facts).await,
                };
                // decide -> settle. The event stops counting against its profile's share
                // here: from now on it waits only for the broker, which may send the next
                // one as soon as it acks.
                drop(hold);
                let settlement = decide(
                    case,
                    facts,
                    &snapshot.retry,
                    &snapshot.delays_ms,
                    rand::random::<f64>(),
                );
                let Some((memory, parking, stop)) = ordered else {
                    break settlement;
                };
                // An ordered event's retry or deferral waits here.
                let wait = match &settlement {
                    Settlement::Retry { plan, attempts, .. } => {
                        memory.set(event_id, *attempts);
                        facts.attempts_before = *attempts;
                        self.tell(settler, &delivery, event_id, endpoint, named, &settlement, started)
                            .await;
                        plan.expiration_ms
                    }
                    Settlement::Defer { plan, reason, .. } => {
                        if let Some(ep) = endpoint {
                            ep.metrics.deferral(*reason);
                        }
                        log_settled(&settlement, started.elapsed());
                        plan.expiration_ms
                    }
                    _ => break settlement,
                };
                let until = Instant::now() + Duration::from_millis(wait).min(ORDERED_MAX_WAIT);
                match wait_in_place(until, parking, stop).await {
                    InPlace::Waited => {}
                    InPlace::Stopped => return OrderedEnd::Left,
                    InPlace::Park => {
                        memory.hold_until(event_id, until);
                        delivery.data = body.to_vec();
                        return OrderedEnd::Park(Box::new(delivery));
                    }
                }
                facts.age = read.as_ref().map_or(Duration::ZERO, |e| e.age(SystemTime::now()));
            };
            if matches!(settlement, Settlement::Requeue) && ordered.is_some() {
                // Shutdown: left unacknowledged, it returns in its place.
                return OrderedEnd::Left;
            }
            let receipt = settler.receipts.and_then(|_| {
                Receipt::of(&settlement, receipt_id(&delivery, event_id), named, started.elapsed(), SystemTime::now())
            });
            let event = read.as_ref().ok();
            trace::outcome(settlement.fate().as_str());
            match settler
                .apply(&delivery, &body, event, &settlement, receipt.as_ref())
                .await
            {
                Ok(()) => {
                    self.count(endpoint, &settlement);
                    log_settled(&settlement, started.elapsed());
                    if let Some((memory, ..)) = ordered {
                        memory.forget(event_id);
                    }
                    OrderedEnd::Settled
                }
                // Logged at error where it was refused.
                Err(SettleError::Refused { .. }) => OrderedEnd::Left,
                Err(e) => {
                    tracing::warn!(error = %e, "settlement not confirmed; the event stays on the queue");
                    OrderedEnd::Left
                }
            }
        }
        .instrument(span);
        process.scope(work).await
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
        // Not attempted after all (shutdown, or deferred while another event's token request
        // hangs): dropping the pass tells the breaker nothing.
        let reading = match self.attempt(ep, event).await {
            Ok(reading) => reading,
            Err(case) => return case,
        };
        ep.finish(pass, &reading);
        Case::Attempted(reading.result)
    }

    /// Authenticate, sign, send and classify, with one immediate resend after a 401 that
    /// refreshed an OAuth 2.0 token. Only signing and sending hold one of the attempts all
    /// profiles share: an event waiting for its profile's token holds its profile's slot
    /// alone (SPEC section 4), so a hanging auth server holds back its own profile and no
    /// other. It waits for a token request made for another event only within its
    /// profile's share of the prefetch window, like an event waiting for a slot, and is
    /// deferred after that. `Err` is the case when there was no attempt: interrupted by
    /// shutdown, or deferred.
    async fn attempt(&self, ep: &Endpoint, event: &Event) -> Result<Reading, Case> {
        let mut refreshed = false;
        loop {
            // After a 401 the event has had its attempt: it waits for the new token.
            let patience = if refreshed {
                ep.timeout
            } else {
                ep.gate.patience(&self.window)
            };
            let credential = match ep.credential(patience).await {
                Ok(c) => c,
                Err(TokenError::Busy { left }) if !refreshed => {
                    return Err(Case::Deferred {
                        reason: DeferReason::Concurrency,
                        wait: left.max(MAX_WAIT),
                    });
                }
                Err(TokenError::Busy { .. }) => {
                    let reading = auth_failed(
                        "auth_failed: the token request did not end in time".into(),
                        Health::Unknown,
                    );
                    ep.metrics.attempt(reading.class, None);
                    return Ok(reading);
                }
                Err(TokenError::Failed { ref error, .. })
                    if let AuthError::Proxy(failure) = &**error =>
                {
                    // The proxy failed: no attempt, deferred by `decide` (SPEC section 17).
                    ep.proxy_failed(failure);
                    return Ok(decide::proxy_failed(failure.clone()));
                }
                Err(TokenError::Failed { error, requested }) => {
                    // Only the request itself counts for the breaker, once (SPEC section 4).
                    let health = if requested {
                        error.health()
                    } else {
                        Health::Unknown
                    };
                    let reading = auth_failed(format!("auth_failed: {error}"), health);
                    ep.metrics.attempt(reading.class, None);
                    return Ok(reading);
                }
            };
            let Some(_slot) = self.registry.attempt_slot(&self.shutdown).await else {
                return Err(Case::Interrupted);
            };
            let (answer, took) = send::send(
                &ep.client,
                &ep.profile,
                event,
                credential.as_ref(),
                ep.timeout,
                ep.callback_blocked.as_deref(),
            )
            .await;
            let reading = classify(answer);
            if let AttemptResult::ProxyFailed { error } = &reading.result {
                ep.proxy_failed(error);
                return Ok(reading);
            }
            ep.proxy_worked();
            ep.metrics.attempt(reading.class, Some(took));
            match credential.and_then(|c| c.token) {
                Some(token) if reading.refresh && !refreshed => {
                    ep.reject(&token).await;
                    refreshed = true;
                }
                _ => return Ok(reading),
            }
        }
    }
}
