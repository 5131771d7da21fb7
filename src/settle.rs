//! The settle stage: carrying out the [`Settlement`] that `decide` chose, with publisher
//! confirms.
//!
//! The invariant: the original delivery is acked only once its fate is settled. A retry, a
//! deferral or a dead letter is a publish that the broker must confirm (and must have
//! routed) before the ack; if that fails the delivery is nacked back to the queue, or, when
//! the channel is gone, left to the broker's redelivery. Either way nothing is lost; at worst
//! it is sent twice, with the same `webhook-id`.
//!
//! Every republish carries the current trace context on (`traceparent`/`tracestate`, see
//! [`crate::trace::carry_on`]), so all attempts of an event are in one trace.
//!
//! A publish the broker refuses (nack: a full, length-limited queue) or cannot route (a
//! missing queue) does not go back at once (SPEC section 8): the event would be redelivered
//! and its callback re-sent in a tight loop. It is counted in `settle_failures_total`, logged
//! at error with the queue's name, and nacked back only after a back-off
//! ([`SettleBackoff`]); shutdown cuts the wait short.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

use crate::amqp::headers::{self, ATTEMPT, DEFERRALS, DeadInfo, FIRST_ATTEMPT, RetryState};
use crate::amqp::{Acks, PublishError, Topology, publish_confirmed};
use crate::decide::{Label, Settlement};
use crate::event::Event;
use crate::receipts::{Receipt, Receipts};
use crate::retry::RetryPlan;

/// Why a settlement could not be carried out. The delivery was nacked or is left to the
/// broker: it is not lost.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("republish: {0}")]
    Publish(#[from] PublishError),
    /// Refused or not routed: already counted and logged; nacked after a back-off.
    #[error("the broker refused or could not route the publish to queue {queue}")]
    Refused { queue: String },
    #[error("ack: {0}")]
    Ack(#[from] lapin::Error),
}

/// The first wait before an event whose settlement was refused goes back to the queue.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long events whose settlement the broker refused wait before they go back to the
/// queue, per target queue: 1 s, doubling up to 1 min, reset by a successful settlement to
/// that queue (a full dead-letter queue keeps backing off while retries flow).
///
/// The wait doubles at most once per wait: the events refused together (up to the prefetch)
/// share one wait, and those refused again once it has passed get twice as long. So an
/// event whose settlement keeps failing is re-sent once per wait, never in a loop.
pub struct SettleBackoff {
    queues: Mutex<HashMap<String, Step>>,
    /// Queues backing off, so the success path takes no lock when none does.
    backing_off: AtomicUsize,
    failures: IntCounter,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    wait: Duration,
    /// A failure from then on doubles the wait.
    doubles_at: Instant,
}

impl SettleBackoff {
    /// `failures` is `settle_failures_total`.
    pub fn new(failures: IntCounter) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            backing_off: AtomicUsize::new(0),
            failures,
        }
    }

    /// A settlement to `queue` was refused at `now`: count it; how long to wait.
    pub fn failed(&self, queue: &str, now: Instant) -> Duration {
        self.failures.inc();
        let mut queues = self.queues.lock().expect("settle back-off lock");
        let step = match queues.get(queue) {
            None => {
                self.backing_off.fetch_add(1, Ordering::AcqRel);
                Step {
                    wait: BACKOFF_FIRST,
                    doubles_at: now + BACKOFF_FIRST,
                }
            }
            Some(s) if now >= s.doubles_at => {
                let wait = s.wait.saturating_mul(2).min(BACKOFF_MAX);
                Step {
                    wait,
                    doubles_at: now + wait,
                }
            }
            Some(s) => *s,
        };
        queues.insert(queue.to_owned(), step);
        step.wait
    }

    /// A settlement to `queue` succeeded: its back-off starts again from 1 s.
    pub fn succeeded(&self, queue: &str) {
        if self.backing_off.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut queues = self.queues.lock().expect("settle back-off lock");
        if queues.remove(queue).is_some() {
            self.backing_off.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The properties without `expiration`: a publisher's per-message TTL must not make a dead
/// letter vanish from the dead-letter queue. (amq-protocol has no way to unset one field.)
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(v) = p.$get().clone() {
                out = out.$set(v);
            }
        )*};
    }
    keep!(content_type => with_content_type, content_encoding => with_content_encoding,
        headers => with_headers, delivery_mode => with_delivery_mode, priority => with_priority,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
        user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id);
    out
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Rewritten from the [`RetryState`] on every republish.
const RETRY_HEADERS: [&str; 3] = [ATTEMPT, DEFERRALS, FIRST_ATTEMPT];

/// What one session's deliveries settle with, shared by their tasks rather than cloned per
/// event.
pub struct Outlet {
    pub publisher: Channel,
    pub topology: Topology,
    pub receipts: Option<std::sync::Arc<Receipts>>,
}

impl Outlet {
    pub fn settler<'a>(
        &'a self,
        backoff: &'a SettleBackoff,
        shutdown: &'a CancellationToken,
        acks: &'a Acks,
    ) -> Settler<'a> {
        Settler {
            publisher: &self.publisher,
            topology: &self.topology,
            backoff,
            shutdown,
            receipts: self.receipts.as_deref(),
            acks,
        }
    }
}

/// Carries settlements out on one session's publishing channel (confirms on).
pub struct Settler<'a> {
    pub publisher: &'a Channel,
    pub topology: &'a Topology,
    /// Shared by every session of the worker.
    pub backoff: &'a SettleBackoff,
    /// Cancelled at shutdown: a refused settlement's event goes back at once.
    pub shutdown: &'a CancellationToken,
    /// With `receipts.exchange`: each settlement's receipt goes out before the ack.
    pub receipts: Option<&'a Receipts>,
    /// The ack batcher of the delivery's channel ([`crate::amqp::acks`]).
    pub acks: &'a Acks,
}

impl Settler<'_> {
    /// With the next batch, or at once on its own when no batch can cover it.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), lapin::Error> {
        if !self.acks.settled(delivery.delivery_tag, &delivery.acker) {
            let sent = delivery.ack(BasicAckOptions::default()).await;
            // Sent, or failed with its channel: either way a later `multiple` covering it
            // acknowledges an event that is settled.
            self.acks.released(delivery.delivery_tag);
            sent?;
            self.acks.commit().await?;
        }
        Ok(())
    }

    /// Back to the queue; then its tag no longer holds back the batched acks.
    async fn nack(&self, delivery: &Delivery) -> Result<(), lapin::Error> {
        let sent = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        // A nack that failed leaves the tag open: the channel is failing, and no later
        // `multiple` may cover a delivery the broker still holds unsettled.
        if sent.is_ok() {
            self.acks.released(delivery.delivery_tag);
        }
        sent?;
        self.acks.commit().await
    }
    /// The event back into a delay queue with `set` changed in its headers, keeping its id
    /// and when it was first attempted (`max_age` counts from it when the event has no
    /// usable AMQP timestamp: none, or one too far in the future).
    async fn delay(
        &self,
        delivery: &Delivery,
        body: &[u8],
        event: Option<&Event>,
        plan: &RetryPlan,
        state: impl FnOnce(&mut RetryState),
    ) -> (String, Result<(), PublishError>) {
        let mut h = headers::copy(&delivery.properties, &RETRY_HEADERS);
        let mut retry = RetryState::read(delivery.properties.headers().as_ref());
        state(&mut retry);
        let mut props = delivery
            .properties
            .clone()
            .with_expiration(plan.expiration_ms.to_string().into());
        if let Some(e) = event {
            props = props.with_message_id(e.id.as_str().into());
            retry.first_attempt_ms = Some(unix_ms(e.first_attempt));
        }
        retry.write(&mut h);
        crate::trace::carry_on(&mut h);
        let queue = self.topology.delay_queue(plan.queue_delay_ms);
        let result =
            publish_confirmed(self.publisher, "", &queue, body, props.with_headers(h)).await;
        (queue, result)
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        body: &[u8],
        event: Option<&Event>,
        info: DeadInfo,
    ) -> (String, Result<(), PublishError>) {
        let mut h: FieldTable = headers::copy(&delivery.properties, &[]);
        info.write(&mut h);
        crate::trace::carry_on(&mut h);
        let mut props = without_expiration(&delivery.properties);
        if let Some(e) = event {
            props = props.with_message_id(e.id.as_str().into());
        }
        let queue = self.topology.dead_queue.clone();
        let result =
            publish_confirmed(self.publisher, "", &queue, body, props.with_headers(h)).await;
        (queue, result)
    }

    /// Carry `settlement` out for `delivery`; `event` is the read event, if reading
    /// succeeded. Its `receipt` is published once the settlement is confirmed, and the ack
    /// follows the receipt's confirm (or its failure: see [`crate::receipts`]).
    pub async fn apply(
        &self,
        delivery: &Delivery,
        body: &[u8],
        event: Option<&Event>,
        settlement: &Settlement,
        receipt: Option<&Receipt>,
    ) -> Result<(), SettleError> {
        let (queue, published) = match settlement {
            Settlement::Delivered { .. } => (String::new(), Ok(())),
            Settlement::Requeue => {
                self.nack(delivery).await?;
                return Ok(());
            }
            Settlement::Retry { plan, attempts, .. } => {
                self.delay(delivery, body, event, plan, |s| s.attempts = *attempts)
                    .await
            }
            Settlement::Defer {
                plan, deferrals, ..
            } => {
                self.delay(delivery, body, event, plan, |s| s.deferrals = *deferrals)
                    .await
            }
            Settlement::DeadLetter {
                reason,
                status,
                error,
                attempts,
            } => {
                let info = DeadInfo {
                    reason: Some(*reason),
                    status: *status,
                    error: error.clone(),
                    attempts: *attempts,
                    dead_at_ms: Some(unix_ms(SystemTime::now())),
                };
                self.dead_letter(delivery, body, event, info).await
            }
        };
        let refused = match published {
            Ok(()) => {
                if !queue.is_empty() {
                    self.backoff.succeeded(&queue);
                }
                if let (Some(receipts), Some(receipt)) = (self.receipts, receipt) {
                    receipts.publish(self.publisher, receipt).await;
                }
                self.ack(delivery).await?;
                return Ok(());
            }
            Err(e @ (PublishError::Nacked | PublishError::Unroutable(_))) => e,
            Err(e) => {
                // The channel failed: back to the queue at once; if the channel is gone the
                // broker does it.
                let _ = self.nack(delivery).await;
                return Err(e.into());
            }
        };
        let wait = self.backoff.failed(&queue, Instant::now());
        tracing::error!(
            queue = queue.as_str(),
            error = %refused,
            outcome = settlement.fate().as_str(),
            retry_in_ms = wait.as_millis() as u64,
            "the broker refused or could not route the settlement; the event goes back to the queue after a back-off"
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.shutdown.cancelled() => {}
        }
        let _ = self.nack(delivery).await;
        Err(SettleError::Refused { queue })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_once_per_wait_per_queue_and_a_success_resets_it() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let counter = IntCounter::new("f", "f").unwrap();
        let b = SettleBackoff::new(counter.clone());
        // Refused together: one wait.
        assert_eq!(b.failed("dead", t0), s(1));
        assert_eq!(b.failed("dead", t0 + Duration::from_millis(300)), s(1));
        // Refused again once the wait has passed: twice as long, up to a minute.
        let mut at = t0 + s(1);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let w = b.failed("dead", at);
            waits.push(w.as_secs());
            at += w;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        // Another queue has its own; a success to it does not reset this one.
        assert_eq!(b.failed("delay.5000", at), s(1));
        b.succeeded("delay.5000");
        assert_eq!(b.failed("dead", at), s(60));
        b.succeeded("dead");
        assert_eq!(b.failed("dead", at + s(1)), s(1));
        assert_eq!(counter.get(), 13);
        b.succeeded("dead");
        assert_eq!(b.backing_off.load(Ordering::Acquire), 0);
    }
}
