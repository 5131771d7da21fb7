//! Receipts and operator events (SPEC section 14): the publishing platform learns what became
//! of every event, and its operators when a customer's endpoint or auth server starts failing.
//!
//! Design decisions:
//! - A receipt is published on the session's publishing channel (confirms on) after the
//!   settlement's own publish is confirmed and before the ack, so a receipt never claims a
//!   fate that did not happen. Events are settled by concurrent tasks, so their receipts'
//!   confirms are pipelined on that channel: no round trip per event is waited for in turn.
//! - A receipt is published without `mandatory`: an exchange nobody has bound a queue to yet
//!   is not a failure. A nack (a bound queue that rejects publishes), a failed channel or no
//!   confirm within [`RECEIPT_LIMIT`] is counted in `receipts_failed_total` and logged, and
//!   the event is acked all the same: its fate is settled and its callback is never sent
//!   again for a receipt's sake. So a receipt may be missing; it is never wrong.
//! - The AMQP `message_id` is `<event id>.<attempt>`: a redelivery after a crash repeats it,
//!   and a consumer drops the duplicate.
//! - Operator events are told through [`Notices`], a bounded queue that never blocks the
//!   code that tells (a breaker change, a token request, a reload), and published by one
//!   task on the current session's publishing channel. Each is told once, by the replica
//!   that saw the change.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decide::{Label, Settlement, label_enum};

/// The longest the ack of a settled event waits for its receipt's confirm.
pub const RECEIPT_LIMIT: Duration = Duration::from_secs(5);
/// Operator events waiting for a channel; more are dropped (and counted).
const NOTICE_BACKLOG: usize = 1024;

label_enum!(
    /// A receipt's `type`.
    ReceiptType {
        Succeeded => "delivery.succeeded",
        Retrying => "delivery.retrying",
        DeadLettered => "delivery.dead_lettered",
    }
);
label_enum!(
    /// An operator event's `type` (routing key `ops.<type>`).
    NoticeType {
        BreakerOpened => "breaker.opened",
        BreakerClosed => "breaker.closed",
        AuthFailing => "auth.failing",
        AuthRecovered => "auth.recovered",
        ReloadSucceeded => "reload.succeeded",
        ReloadFailed => "reload.failed",
    }
);

/// The routing key's profile part for events that name no profile.
pub const NO_PROFILE_KEY: &str = "(none)";

/// One settlement, as the platform reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message_id: String,
    pub profile: Option<String>,
    /// Attempts made so far; 0 when the event was settled without one.
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The worker's time on this event, from receiving it to settling it.
    pub duration_ms: u64,
    /// The `x-dead-reason` of a dead letter.
    pub reason: Option<&'static str>,
    /// When a retry is due (RFC 3339, UTC, milliseconds).
    pub next_attempt_at: Option<String>,
    pub at: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Receipt {
    /// The receipt of `settlement`; none for a deferral or a requeue, which settle nothing.
    pub fn of(
        settlement: &Settlement,
        message_id: &str,
        profile: Option<&str>,
        took: Duration,
        now: SystemTime,
    ) -> Option<Receipt> {
        let base = |kind: ReceiptType, attempt| Receipt {
            kind: kind.as_str(),
            message_id: message_id.to_owned(),
            profile: profile.map(str::to_owned),
            attempt,
            status: None,
            error: None,
            duration_ms: took.as_millis() as u64,
            reason: None,
            next_attempt_at: None,
            at: rfc3339(now),
        };
        Some(match settlement {
            Settlement::Delivered { status, attempts } => Receipt {
                status: Some(*status),
                ..base(ReceiptType::Succeeded, *attempts)
            },
            Settlement::Retry {
                plan,
                attempts,
                status,
                error,
            } => Receipt {
                status: *status,
                error: non_empty(error),
                next_attempt_at: Some(rfc3339(now + Duration::from_millis(plan.expiration_ms))),
                ..base(ReceiptType::Retrying, *attempts)
            },
            Settlement::DeadLetter {
                reason,
                status,
                error,
                attempts,
            } => Receipt {
                status: *status,
                error: non_empty(error),
                reason: Some(reason.as_str()),
                ..base(ReceiptType::DeadLettered, *attempts)
            },
            Settlement::Defer { .. } | Settlement::Requeue => return None,
        })
    }

    /// `<profile>.<type>`.
    pub fn routing_key(&self) -> String {
        format!(
            "{}.{}",
            self.profile.as_deref().unwrap_or(NO_PROFILE_KEY),
            self.kind
        )
    }

    /// The AMQP `message_id`: `<event id>.<attempt>`, the same for a repeated receipt.
    pub fn amqp_id(&self) -> String {
        format!("{}.{}", self.message_id, self.attempt)
    }
}

/// An operator event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub profile: Option<String>,
    pub error: Option<String>,
    pub at: String,
}

/// Publishes receipts and operator events to `receipts.exchange`.
pub struct Receipts {
    exchange: String,
    /// `receipts_failed_total`.
    failed: IntCounter,
    /// The current session's publishing channel, for operator events.
    channel: ArcSwapOption<Channel>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Receipts {
    pub fn new(exchange: String, failed: IntCounter) -> Self {
        Self {
            exchange,
            failed,
            channel: ArcSwapOption::empty(),
        }
    }

    /// Publish `receipt` on `channel` and wait for its confirm, at most [`RECEIPT_LIMIT`]
    /// (shorter than the shutdown grace, so a draining worker still sends its receipts). A
    /// failure is counted and logged, never returned: the event's fate stands.
    pub async fn publish(&self, channel: &Channel, receipt: &Receipt) {
        let body = serde_json::to_vec(receipt).expect("a receipt serializes");
        let key = receipt.routing_key();
        let sent = tokio::time::timeout(
            RECEIPT_LIMIT,
            self.send(channel, &key, receipt.amqp_id(), &body),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no confirm within {}s", RECEIPT_LIMIT.as_secs())));
        if let Err(error) = sent {
            self.failed.inc();
            tracing::error!(
                exchange = %self.exchange,
                routing_key = %key,
                receipt_id = %receipt.amqp_id(),
                error = %error,
                "receipt not published; the event's fate is unchanged"
            );
        }
    }

    async fn send(
        &self,
        channel: &Channel,
        key: &str,
        id: String,
        body: &[u8],
    ) -> Result<(), String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_timestamp(now);
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(|e| e.to_string())?;
        match confirm.await.map_err(|e| e.to_string())? {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err("the broker refused it (nack)".into()),
        }
    }

    /// Operator events go out on `channel` from now on (a new session's), or wait for one.
    pub fn attach(&self, channel: Option<Channel>) {
        self.channel.store(channel.map(Arc::new));
    }

    /// Publish the operator events told through `notices` until `stop`.
    pub fn start(
        self: &Arc<Self>,
        notices: &Notices,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel::<Notice>(NOTICE_BACKLOG);
        notices.set(tx, self.failed.clone());
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    n = rx.recv() => match n { Some(n) => n, None => return },
                    () = stop.cancelled() => return,
                };
                me.publish_notice(&notice, &stop).await;
            }
        })
    }

    async fn publish_notice(&self, notice: &Notice, stop: &CancellationToken) {
        let body = serde_json::to_vec(notice).expect("a notice serializes");
        let key = format!("ops.{}", notice.kind);
        // Wait for a session's channel (the broker may be away) at most RECEIPT_LIMIT.
        let waited = tokio::time::timeout(RECEIPT_LIMIT, async {
            loop {
                if let Some(ch) = self.channel.load_full()
                    && ch.status().connected()
                {
                    return ch;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = stop.cancelled() => std::future::pending::<()>().await,
                }
            }
        });
        let result = match tokio::select! {
            ch = waited => ch.ok(),
            () = stop.cancelled() => None,
        } {
            None => Err("no connection to the broker".to_owned()),
            Some(ch) => tokio::time::timeout(
                RECEIPT_LIMIT,
                self.send(&ch, &key, uuid::Uuid::new_v4().to_string(), &body),
            )
            .await
            .unwrap_or_else(|_| Err("no confirm in time".into())),
        };
        if let Err(error) = result {
            self.failed.inc();
            tracing::error!(exchange = %self.exchange, routing_key = %key, error = %error, "operator event not published");
        }
    }
}

/// Where operator events are told: a no-op until receipts are started, and never blocking.
#[derive(Default)]
pub struct Notices {
    to: OnceLock<(mpsc::Sender<Notice>, IntCounter)>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notices")
    }
}

impl Notices {
    fn set(&self, tx: mpsc::Sender<Notice>, failed: IntCounter) {
        let _ = self.to.set((tx, failed));
    }

    /// Tell operators of `kind` (for `profile`, with `error`).
    pub fn tell(&self, kind: NoticeType, profile: Option<&str>, error: Option<&str>) {
        let Some((tx, failed)) = self.to.get() else {
            return;
        };
        let notice = Notice {
            kind: kind.as_str(),
            profile: profile.map(str::to_owned),
            error: error.filter(|e| !e.is_empty()).map(str::to_owned),
            at: rfc3339(SystemTime::now()),
        };
        if tx.try_send(notice).is_err() {
            failed.inc();
            tracing::error!(
                kind = kind.as_str(),
                "operator event dropped: too many waiting for the broker"
            );
        }
    }
}

#[cfg(test)]
mod tests;
