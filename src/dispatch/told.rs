//! What is told of a settlement: the metrics, the `event settled` log line and, with
//! receipts, the receipt of a settlement that republishes nothing (an ordered retry).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lapin::message::Delivery;

use super::Dispatcher;
use crate::decide::{Label, Settlement};
use crate::profiles::Endpoint;
use crate::receipts::Receipt;
use crate::settle::Settler;

impl Dispatcher {
    /// `deliveries_total` and `deferrals_total` for a settlement carried out.
    pub(super) fn count(&self, endpoint: Option<&Arc<Endpoint>>, settlement: &Settlement) {
        match (settlement.outcome(), endpoint) {
            (Some(outcome), Some(ep)) => ep.metrics.delivery(outcome),
            (Some(outcome), None) => self.metrics.unprofiled(outcome).inc(),
            (None, _) => {}
        }
        if let (Settlement::Defer { reason, .. }, Some(ep)) = (settlement, endpoint) {
            ep.metrics.deferral(*reason);
        }
    }

    /// An ordered event's retry, which republishes nothing: counted, logged and, with
    /// receipts, told.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tell(
        &self,
        settler: &Settler<'_>,
        delivery: &Delivery,
        event_id: &str,
        endpoint: Option<&Arc<Endpoint>>,
        named: Option<&str>,
        settlement: &Settlement,
        started: Instant,
    ) {
        self.count(endpoint, settlement);
        log_settled(settlement, started.elapsed());
        if let Some(receipts) = settler.receipts
            && let Some(r) = Receipt::of(
                settlement,
                receipt_id(delivery, event_id),
                named,
                started.elapsed(),
                SystemTime::now(),
            )
        {
            receipts.publish(settler.publisher, &r).await;
        }
    }
}

/// The id a receipt names: the event's, else the message's own `message_id` (an event that
/// could not be read), else empty.
pub(super) fn receipt_id<'a>(delivery: &'a Delivery, event_id: &'a str) -> &'a str {
    if event_id != "-" {
        return event_id;
    }
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("", |m| m.as_str())
}

/// The `event settled` line (`event deferred` at debug); the event's id and profile come
/// from its span.
pub(super) fn log_settled(settlement: &Settlement, took: Duration) {
    let ms = took.as_millis() as u64;
    let outcome = settlement.fate().as_str();
    match settlement {
        Settlement::Delivered { status, attempts } => tracing::info!(
            attempt = attempts,
            outcome,
            status,
            duration_ms = ms,
            "event settled"
        ),
        Settlement::Retry {
            plan,
            attempts,
            status,
            error,
        } => tracing::info!(
            attempt = attempts,
            outcome,
            status = status.map(i64::from),
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
            attempt = attempts,
            outcome,
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
            outcome,
            reason = reason.as_str(),
            deferrals,
            delay_ms = plan.expiration_ms,
            duration_ms = ms,
            "event deferred"
        ),
        Settlement::Requeue => {
            tracing::debug!(outcome, "event returned to the queue at shutdown")
        }
    }
}
