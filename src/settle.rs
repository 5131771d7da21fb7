//! The settle stage: carrying out the [`Settlement`] that `decide` chose, with publisher
//! confirms.
//!
//! The invariant: the original delivery is acked only once its fate is settled. A retry, a
//! deferral or a dead letter is a publish that the broker must confirm (and must have
//! routed) before the ack; if that fails the delivery is nacked back to the queue, or, when
//! the channel is gone, left to the broker's redelivery. Either way nothing is lost; at worst
//! it is sent twice, with the same `webhook-id`.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

use crate::amqp::headers::{self, ATTEMPT, DEFERRALS, DeadInfo, FIRST_ATTEMPT, RetryState};
use crate::amqp::{PublishError, Topology, publish_confirmed};
use crate::decide::Settlement;
use crate::event::Event;
use crate::retry::RetryPlan;

/// Why a settlement could not be carried out. The delivery was nacked or is left to the
/// broker: it is not lost.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("republish: {0}")]
    Publish(#[from] PublishError),
    #[error("ack: {0}")]
    Ack(#[from] lapin::Error),
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

/// Carries settlements out on one session's publishing channel (confirms on).
pub struct Settler<'a> {
    pub publisher: &'a Channel,
    pub topology: &'a Topology,
}

impl Settler<'_> {
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
    ) -> Result<(), PublishError> {
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
        let queue = self.topology.delay_queue(plan.queue_delay_ms);
        publish_confirmed(self.publisher, "", &queue, body, props.with_headers(h)).await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        body: &[u8],
        event: Option<&Event>,
        info: DeadInfo,
    ) -> Result<(), PublishError> {
        let mut h: FieldTable = headers::copy(&delivery.properties, &[]);
        info.write(&mut h);
        let mut props = without_expiration(&delivery.properties);
        if let Some(e) = event {
            props = props.with_message_id(e.id.as_str().into());
        }
        publish_confirmed(
            self.publisher,
            "",
            &self.topology.dead_queue,
            body,
            props.with_headers(h),
        )
        .await
    }

    /// Carry `settlement` out for `delivery`; `event` is the read event, if reading succeeded.
    pub async fn apply(
        &self,
        delivery: &Delivery,
        body: &[u8],
        event: Option<&Event>,
        settlement: &Settlement,
    ) -> Result<(), SettleError> {
        let published = match settlement {
            Settlement::Delivered { .. } => Ok(()),
            Settlement::Requeue => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
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
        match published {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Err(e) => {
                // Back to the queue for another try; if the channel is gone the broker does it.
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
                Err(e.into())
            }
        }
    }
}
