//! One session: a connection pair's life from declaring the topology to the end of consuming,
//! and the hand-off of every delivery (work queue and ordered partitions) to the pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::Consuming;
use super::{BROKER_LIMIT, End, Inflight, SessionError, Supervisor, bounded};
use crate::amqp::{Acks, Topology};
use crate::ordered::partition::{self, Feed, Part};
use crate::settle::Outlet;

impl Supervisor {
    /// One connection pair's life: declare, consume, dispatch, until shutdown or loss.
    pub(super) async fn session<F: Future<Output = ()>>(
        &self,
        conn: &Connection,
        publisher_conn: &Connection,
        shutdown: &mut Pin<&mut F>,
    ) -> Result<End, SessionError> {
        let d = &self.dispatcher;
        let tag = format!("callback-dispatcher-{}", uuid::Uuid::new_v4().simple());
        let prefetch = self.base.amqp.prefetch;
        // Every step waits for the broker: bounded as a whole, and shutdown cuts it short.
        let setup = async {
            let channel = conn.create_channel().await?;
            self.topology
                .declare(&channel, &d.registry.load().delays_ms)
                .await?;
            self.topology.declare_ordered(&channel).await?;
            if let Some(r) = &self.base.receipts {
                Topology::declare_receipts(&channel, r).await?;
            }
            let publisher = publisher_conn.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            // Acks on the work queue's channel go in transactions (see `amqp::acks`).
            channel.tx_select().await?;
            let consumer = channel
                .basic_consume(
                    self.topology.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let partitions = partition::open(conn, &self.topology, prefetch, &tag).await?;
            Ok::<_, SessionError>((channel, publisher, consumer, partitions))
        };
        let (channel, publisher, mut consumer, partitions) = tokio::select! {
            biased;
            () = shutdown.as_mut() => {
                bounded("closing", conn.close(200, "shutdown".into())).await;
                bounded("closing", publisher_conn.close(200, "shutdown".into())).await;
                return Ok(End::Shutdown);
            }
            setup = tokio::time::timeout(BROKER_LIMIT, setup) => match setup {
                Ok(setup) => setup?,
                Err(_) => return Err(SessionError::Timeout("declaring and starting to consume")),
            },
        };
        let partitions = partitions.take();
        let mut publisher_events = publisher_conn.events_listener();
        if let Some(r) = &self.receipts {
            r.attach(Some(publisher.clone()));
        }
        d.metrics.amqp_connected.set(1);
        self.health.set_consuming(true);
        tracing::info!(queue = %self.topology.queue, prefetch, concurrency = d.registry.load().delivery.concurrency, "consuming");

        let out = Arc::new(Outlet {
            publisher: publisher.clone(),
            topology: self.topology.clone(),
            receipts: self.receipts.clone(),
        });
        let tracker = TaskTracker::new();
        let feed = Arc::new(Feed {
            dispatcher: d.clone(),
            out: out.clone(),
            memory: self.ordered_attempts.clone(),
            tracker: tracker.clone(),
            // Shutdown ends the session's ordered work too.
            over: d.shutdown.child_token(),
        });
        // Each consuming channel's acks, batched (see `amqp::acks`); stopped after the drain
        // so that the last ones go out before the channels close.
        let acks_stop = CancellationToken::new();
        let mut acking = Vec::with_capacity(partitions.len() + 1);
        let mut batcher = |acks: Acks| {
            let acks = Arc::new(acks);
            let stop = acks_stop.clone();
            let task = tokio::spawn({
                let acks = acks.clone();
                async move { acks.run(stop).await }
            });
            acking.push((acks.clone(), task));
            acks
        };
        let acks = batcher(Acks::transactional(channel.clone()));
        let mut ordered = Vec::with_capacity(partitions.len());
        let mut parts = Vec::with_capacity(partitions.len());
        let mut intake = Vec::with_capacity(partitions.len());
        for p in partitions {
            let part = Arc::new(Part::new(&p, batcher(Acks::default())));
            parts.push(part.clone());
            intake.push(tokio::spawn(feed.clone().run(part, p.consumer)));
            // The park channel first: nothing depends on the order (a park queue has a
            // single active consumer too), but its events are the older ones of their keys.
            ordered.push(p.park_channel);
            ordered.push(p.channel);
        }
        let end = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.as_mut() => break End::Shutdown,
                () = feed.over.cancelled() => break End::Lost("an ordered partition failed".into()),
                event = publisher_events.next() => {
                    match event {
                        Some(lapin::Event::Error(e)) => break End::Lost(format!("publisher connection: {e}")),
                        Some(lapin::Event::ConnectionBlocked(why)) => {
                            tracing::warn!(reason = %why, "the broker blocks publishing (memory or disk alarm): retries, deferrals and dead letters wait");
                        }
                        Some(lapin::Event::ConnectionUnblocked) => tracing::info!("the broker accepts publishing again"),
                        Some(_) => {}
                        None => break End::Lost("publisher connection closed".into()),
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break End::Lost(format!("consumer: {e}")),
                None => break End::Lost("consumer cancelled by the broker".into()),
            };
            let (d, out, acks) = (d.clone(), out.clone(), acks.clone());
            acks.received(delivery.delivery_tag);
            let inflight = Inflight::new(&d.metrics);
            // Boxed: the pipeline's future is several kilobytes, and a task's future is
            // copied when the task is made and again when it finishes.
            tracker.spawn(Box::pin(async move {
                let settler = out.settler(&d.settle_backoff, &d.shutdown, &acks);
                d.handle(&settler, delivery).await;
                drop(inflight);
            }));
        };
        self.health.set_consuming(false);
        d.metrics.amqp_connected.set(0);
        tracker.close();
        if let End::Shutdown = end {
            let consuming = Consuming {
                conn,
                publisher_conn,
                channel: &channel,
                publisher: &publisher,
                tag: &tag,
                ordered: &ordered,
                parts: &parts,
                acks: (&acks_stop, acking),
            };
            self.drain(consuming, &tracker).await;
            // The partitions' intake ends with their channels; then nothing counts any more.
            bounded("ending the partitions' intake", join_all(intake)).await;
            feed.clear(&parts);
        } else {
            // Parking stops: nothing more is moved, asked or drained in this session.
            feed.over.cancel();
            // The partitions' consumers would go on serving their queues on this connection
            // (single active consumer: the next session's would stay standbys): their
            // channels close, and their unsettled events go back to the queue in their
            // places. Deliveries still in flight settle; an ack the batcher can no longer
            // send goes out from its task (see `Acks::settled`) or fails with its channel.
            for ch in &ordered {
                bounded(
                    "closing a partition's channel",
                    ch.close(200, "session lost".into()),
                )
                .await;
            }
            let (tracker, stop) = (tracker.clone(), acks_stop);
            tokio::spawn(async move {
                tracker.wait().await;
                stop.cancel();
                bounded("ending the partitions' intake", join_all(intake)).await;
                feed.clear(&parts);
            });
        }
        Ok(end)
    }
}
