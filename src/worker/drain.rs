//! Shutdown of a session: stop consuming, let deliveries in flight settle within the grace,
//! close every channel and connection, each step bounded.

use std::time::Duration;

use lapin::options::BasicCancelOptions;
use lapin::{Channel, Connection};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Supervisor, bounded};
use crate::amqp::Acks;
use crate::ordered::partition::Part;

/// How long the acks of a drain are given to take effect before the channels close.
const ACK_GRACE: Duration = Duration::from_millis(500);

/// A channel's ack batcher and its task.
pub(super) type Batcher = (Arc<Acks>, JoinHandle<()>);

/// What a session consumes with.
pub(super) struct Consuming<'a> {
    pub conn: &'a Connection,
    pub publisher_conn: &'a Connection,
    pub channel: &'a Channel,
    pub publisher: &'a Channel,
    pub tag: &'a str,
    /// Each partition's channels (SPEC section 15): its park channel, then its own.
    pub ordered: &'a [Channel],
    /// The partitions, whose park channels' acks count for the grace below.
    pub parts: &'a [Arc<Part>],
    /// Stops the channels' ack batchers, which then send what they hold.
    pub acks: (&'a CancellationToken, Vec<Batcher>),
}

impl Supervisor {
    /// Stop consuming, give in-flight deliveries up to `delivery.timeout` to settle, close.
    /// Events waiting for their turn go back to the queue at once; whatever has not settled
    /// by the limit (a blocked broker cannot confirm) returns when the channel closes.
    pub(super) async fn drain(&self, c: Consuming<'_>, tracker: &TaskTracker) {
        let Consuming {
            conn,
            publisher_conn,
            channel,
            publisher,
            tag,
            ordered,
            parts,
            acks: (acks_stop, acking),
        } = c;
        let limit = self.dispatcher.registry.load().delivery.timeout;
        bounded(
            "cancelling the consumer",
            channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
        )
        .await;
        // The partitions' consumers are not cancelled. A quorum queue makes the next single
        // active consumer (another replica) active as soon as the active one is cancelled,
        // while the cancelled one still holds its unacknowledged events (seen on 3.10, and
        // tested in tests/ordered.rs): the other replica would send a key's later events
        // before the earlier ones held here. Instead the partitions' lanes stop after their
        // heads in flight, and closing the channels below gives everything back, in its
        // place, before the next consumer becomes active.
        self.dispatcher.shutdown.cancel();
        tracing::info!(
            in_flight = tracker.len(),
            limit_ms = limit.as_millis() as u64,
            "shutting down: settling deliveries in flight"
        );
        if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
            tracing::warn!(
                unsettled = tracker.len(),
                "shutdown limit reached; unsettled events return to the queue"
            );
        }
        acks_stop.cancel();
        let (batchers, tasks): (Vec<_>, Vec<_>) = acking.into_iter().unzip();
        bounded(
            "sending the last acks",
            futures_util::future::join_all(tasks),
        )
        .await;
        // A quorum queue may return deliveries whose acks reached the broker just before
        // their channel closed (rabbitmq-server#10327: the channel still held the settle
        // commands); a settled event would then be sent again by the next consumer.
        let parks = parts.iter().map(|p| &p.park_acks);
        if let Some(last) = batchers
            .iter()
            .map(|a| &**a)
            .chain(parks)
            .filter_map(Acks::last_sent)
            .max()
        {
            tokio::time::sleep_until((last + ACK_GRACE).into()).await;
        }
        bounded("closing the channel", channel.close(200, "shutdown".into())).await;
        for ch in ordered {
            bounded(
                "closing a partition's channel",
                ch.close(200, "shutdown".into()),
            )
            .await;
        }
        bounded("closing the connection", conn.close(200, "shutdown".into())).await;
        if publisher_conn.status().blocked() {
            // The broker reads nothing from a blocked connection, not even a close.
            tracing::info!(
                "the publisher connection is blocked by the broker; leaving it without a close"
            );
            return;
        }
        bounded(
            "closing the publisher",
            publisher.close(200, "shutdown".into()),
        )
        .await;
        bounded(
            "closing the publisher connection",
            publisher_conn.close(200, "shutdown".into()),
        )
        .await;
    }
}
