//! The settle stage: what happens to an event after its attempt, decided by a pure function
//! and carried out with publisher confirms.
//!
//! The invariant: the original delivery is acked only once its fate is settled. A retry or a
//! dead letter is a publish that the broker must confirm (and must have routed) before the
//! ack; if that fails the delivery is nacked back to the queue, or, when the channel is gone,
//! left to the broker's redelivery. Either way nothing is lost; at worst it is sent twice,
//! with the same `webhook-id`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};

use crate::broker::{self, PublishError};
use crate::event::{Event, HEADER_ATTEMPT, HEADER_FIRST_ATTEMPT};
use crate::metrics::DeliveryOutcome;
use crate::retry::{RetryPlan, RetryPolicy};
use crate::topology::Topology;

pub const HEADER_DEAD_REASON: &str = "x-dead-reason";
pub const HEADER_LAST_STATUS: &str = "x-last-status";
pub const HEADER_LAST_ERROR: &str = "x-last-error";
/// Unix milliseconds when the event was dead-lettered, for `dead-letters list`.
pub const HEADER_DEAD_AT: &str = "x-dead-at";

/// Why an event was dead-lettered (`x-dead-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    UnknownProfile,
    MissingProfile,
    PermanentStatus,
    MaxAttempts,
    Expired,
    PayloadTooLarge,
    /// A `message_id` that cannot be sent as the `webhook-id` header.
    InvalidMessageId,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownProfile => "unknown_profile",
            Self::MissingProfile => "missing_profile",
            Self::PermanentStatus => "permanent_status",
            Self::MaxAttempts => "max_attempts",
            Self::Expired => "expired",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidMessageId => "invalid_message_id",
        }
    }
}

/// The result of an attempt (authenticate + sign + send), as settling sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    Permanent {
        status: u16,
        error: String,
    },
}

/// What to do with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered {
        status: u16,
        attempts: u32,
    },
    Retry {
        plan: RetryPlan,
        attempts: u32,
    },
    DeadLetter {
        reason: DeadReason,
        status: Option<u16>,
        error: String,
        attempts: u32,
    },
}

impl Settlement {
    pub fn outcome(&self) -> DeliveryOutcome {
        match self {
            Self::Delivered { .. } => DeliveryOutcome::Delivered,
            Self::Retry { .. } => DeliveryOutcome::RetryScheduled,
            Self::DeadLetter { .. } => DeliveryOutcome::DeadLettered,
        }
    }
}

/// Decide an event's fate after attempt number `attempts` (1-based). `unit` in `[0, 1)`
/// picks the jitter. Pure.
pub fn decide(
    result: AttemptResult,
    attempts: u32,
    age: Duration,
    policy: &RetryPolicy,
    declared: &[u64],
    unit: f64,
) -> Settlement {
    match result {
        AttemptResult::Delivered { status } => Settlement::Delivered { status, attempts },
        AttemptResult::Permanent { status, error } => Settlement::DeadLetter {
            reason: DeadReason::PermanentStatus,
            status: Some(status),
            error,
            attempts,
        },
        AttemptResult::Retryable {
            status,
            retry_after,
            error,
        } => {
            let reason = if attempts >= policy.max_attempts {
                DeadReason::MaxAttempts
            } else if age >= policy.max_age {
                DeadReason::Expired
            } else {
                return Settlement::Retry {
                    plan: policy.plan(attempts, retry_after, unit, declared),
                    attempts,
                };
            };
            Settlement::DeadLetter {
                reason,
                status,
                error,
                attempts,
            }
        }
    }
}

/// Why a settlement could not be carried out. The delivery was nacked or is left to the
/// broker: it is not lost.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("republish: {0}")]
    Publish(#[from] PublishError),
    #[error("ack: {0}")]
    Ack(#[from] lapin::Error),
}

/// The event's headers without the broker's dead-letter trail (`x-death`, ...) and without
/// the names in `also_drop`.
pub(crate) fn copy_headers(props: &BasicProperties, also_drop: &[&str]) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in props.headers().iter().flat_map(|h| h.inner()) {
        let name = k.as_str();
        let broker_trail = ["x-death", "x-first-death", "x-last-death"]
            .iter()
            .any(|p| name.starts_with(p));
        if !broker_trail && !also_drop.contains(&name) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
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

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Carries settlements out on one session's publishing channel (confirms on).
pub struct Settler<'a> {
    pub publisher: &'a Channel,
    pub topology: &'a Topology,
}

impl Settler<'_> {
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), SettleError> {
        Ok(broker::publish_confirmed(self.publisher, "", queue, body, props).await?)
    }

    /// Carry `settlement` out for `delivery`; `event` is the read event, if reading succeeded.
    pub async fn apply(
        &self,
        delivery: &lapin::message::Delivery,
        body: &[u8],
        event: Option<&Event>,
        settlement: &Settlement,
    ) -> Result<(), SettleError> {
        let result = match settlement {
            Settlement::Delivered { .. } => Ok(()),
            Settlement::Retry { plan, attempts } => {
                let mut headers = copy_headers(&delivery.properties, &[]);
                headers.insert(
                    HEADER_ATTEMPT.into(),
                    AMQPValue::LongInt(clamp_i32(*attempts)),
                );
                let mut props = delivery
                    .properties
                    .clone()
                    .with_expiration(plan.expiration_ms.to_string().into());
                if let Some(e) = event {
                    props = props.with_message_id(e.id.as_str().into());
                    if delivery.properties.timestamp().is_none() {
                        let ms = e
                            .first_attempt
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis();
                        headers.insert(
                            HEADER_FIRST_ATTEMPT.into(),
                            AMQPValue::LongLongInt(ms as i64),
                        );
                    }
                }
                let queue = self.topology.delay_queue(plan.queue_delay_ms);
                self.publish(&queue, body, props.with_headers(headers))
                    .await
            }
            Settlement::DeadLetter {
                reason,
                status,
                error,
                attempts,
            } => {
                let mut headers = copy_headers(&delivery.properties, &[]);
                headers.insert(HEADER_DEAD_REASON.into(), text(reason.as_str()));
                if let Some(s) = status {
                    headers.insert(HEADER_LAST_STATUS.into(), AMQPValue::LongInt(i32::from(*s)));
                }
                headers.insert(HEADER_LAST_ERROR.into(), text(error));
                headers.insert(
                    HEADER_ATTEMPT.into(),
                    AMQPValue::LongInt(clamp_i32(*attempts)),
                );
                let mut props = without_expiration(&delivery.properties);
                if let Some(e) = event {
                    props = props.with_message_id(e.id.as_str().into());
                }
                let dead_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                headers.insert(
                    HEADER_DEAD_AT.into(),
                    AMQPValue::LongLongInt(dead_at as i64),
                );
                self.publish(&self.topology.dead_queue, body, props.with_headers(headers))
                    .await
            }
        };
        match result {
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
                Err(e)
            }
        }
    }
}

fn clamp_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_table() {
        let policy = RetryPolicy {
            max_attempts: 3,
            max_age: Duration::from_secs(60),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let declared = policy.delay_queue_ms();
        let retryable = || AttemptResult::Retryable {
            status: Some(503),
            retry_after: None,
            error: "HTTP 503".into(),
        };
        let young = Duration::from_secs(1);
        let old = Duration::from_secs(60);
        let dead = |reason, status: Option<u16>, error: &str, attempts| Settlement::DeadLetter {
            reason,
            status,
            error: error.into(),
            attempts,
        };
        let cases = [
            (
                AttemptResult::Delivered { status: 204 },
                1,
                young,
                Settlement::Delivered {
                    status: 204,
                    attempts: 1,
                },
            ),
            (
                AttemptResult::Delivered { status: 200 },
                3,
                old,
                Settlement::Delivered {
                    status: 200,
                    attempts: 3,
                },
            ),
            (
                AttemptResult::Permanent {
                    status: 400,
                    error: "bad".into(),
                },
                1,
                young,
                dead(DeadReason::PermanentStatus, Some(400), "bad", 1),
            ),
            (
                retryable(),
                1,
                young,
                Settlement::Retry {
                    plan: RetryPlan {
                        queue_delay_ms: 5000,
                        expiration_ms: 5000,
                    },
                    attempts: 1,
                },
            ),
            (
                retryable(),
                2,
                young,
                Settlement::Retry {
                    plan: RetryPlan {
                        queue_delay_ms: 15000,
                        expiration_ms: 15000,
                    },
                    attempts: 2,
                },
            ),
            (
                retryable(),
                3,
                young,
                dead(DeadReason::MaxAttempts, Some(503), "HTTP 503", 3),
            ),
            (
                retryable(),
                9,
                young,
                dead(DeadReason::MaxAttempts, Some(503), "HTTP 503", 9),
            ),
            (
                retryable(),
                1,
                old,
                dead(DeadReason::Expired, Some(503), "HTTP 503", 1),
            ),
        ];
        for (result, attempts, age, want) in cases {
            assert_eq!(
                decide(result.clone(), attempts, age, &policy, &declared, 0.5),
                want,
                "{result:?} #{attempts}"
            );
        }
    }
}
