//! Acks of a consuming channel (the work queue's, each ordered partition's), several per frame.
//!
//! Each settled event is acked as before, after its settlement is confirmed; what changes is
//! how the acks travel. One `basic.ack` with `multiple` acknowledges every delivery of the
//! channel up to its tag, and on a quorum queue each ack frame is a command the queue
//! replicates: one frame for many events is work the broker does not do.
//!
//! `multiple` is only safe up to the oldest delivery that is still open (being processed,
//! waiting, or left unacknowledged on purpose): it would acknowledge that one too. So the
//! channel's open tags are tracked ([`Acks::received`]) and a batch is cut by [`plan`], a
//! pure function:
//!
//! - settled events below the oldest open tag: one ack, `multiple`, at the highest of them;
//! - settled events above it are held while the oldest open event is young (under
//!   [`HOLD`]), because it usually settles within milliseconds and then one frame covers all;
//!   once it is older (a slow endpoint, an event left unacknowledged), they are acked one by
//!   one at once, so a slow event never keeps finished ones in the prefetch window.
//!
//! Single acks are what a slow endpoint beside fast ones costs: a quorum queue replicates
//! one settle command per ack frame. The work queue's channel is therefore in transaction
//! mode ([`Acks::transactional`]): a round's acks, single or `multiple`, are followed by one
//! `tx.commit`, and the broker settles everything the round acked in one command (measured
//! with a quorum queue: about 104 µs of broker CPU per event acked alone, 65 in transactions,
//! 25 with `multiple`). On that channel every settled event joins a round. The ordered
//! partitions' channels stay without transactions: a lane given back is nacked event by
//! event, in its order behind its head, and a transaction would hand the broker those
//! returns as one batch whose return order is not what the ordered tests check. There an ack
//! that a batch cannot cover is sent at once by the settling task itself ([`Acks::settled`]
//! says so). Either way an ack still follows its event's settlement, and
//! one that is not committed when the channel dies is as if never sent: the broker delivers
//! the event again.
//!
//! A nack is sent before its tag is released ([`Acks::released`]): a later `multiple` must
//! never cover a delivery that is on its way back to the queue. A crash between a settlement
//! and its ack re-delivers the event (same `webhook-id`), as it did before; holding an ack
//! for at most [`HOLD`] only widens that window a little. At shutdown [`Acks::flush`] sends
//! whatever is held before the channel closes. Each ordered partition's channel (SPEC section
//! 15) has its own: a multiple ack there acknowledges only settled events, whatever their key,
//! and a waiting event is open, so it is never covered.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long settled events wait for a young oldest-open event before they are acked alone.
pub const HOLD: Duration = Duration::from_millis(50);

/// The open and settled deliveries of one consuming channel.
#[derive(Default)]
pub struct Acks {
    state: Mutex<State>,
    wake: Notify,
    /// The channel, when it is in transaction mode (see [`Acks::transactional`]).
    tx: Option<lapin::Channel>,
}

#[derive(Default)]
struct State {
    /// Delivered and neither acked nor nacked: tag -> when it arrived.
    open: BTreeMap<u64, Instant>,
    /// Settled, their ack not sent yet.
    settled: Vec<(u64, Acker)>,
    /// Settled and waiting for a young oldest-open delivery (see [`plan`]).
    held: Vec<(u64, Acker)>,
    /// The batcher has stopped (shutdown, or its channel failed): settling tasks send their
    /// own acks, as before batching, so that none waits for a batch that will not come.
    stopped: bool,
    /// When an ack or a nack last went out on the channel.
    last_sent: Option<Instant>,
}

/// One round of acks: at most one `multiple`, then single ones.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<T> {
    pub multiple: Option<T>,
    pub single: Vec<T>,
    /// When the held ones must be looked at again, if any are held.
    pub recheck_at: Option<Instant>,
}

/// Cut `held` (settled, not yet acked) into this round's acks, keeping in `held` what waits
/// for the oldest open delivery `oldest` (its tag and arrival).
pub fn plan<T>(held: &mut Vec<(u64, T)>, oldest: Option<(u64, Instant)>, now: Instant) -> Plan<T> {
    let mut out = Plan {
        multiple: None,
        single: Vec::new(),
        recheck_at: None,
    };
    let (below, above): (Vec<_>, Vec<_>) = std::mem::take(held)
        .into_iter()
        .partition(|(tag, _)| oldest.is_none_or(|(low, _)| *tag < low));
    out.multiple = below
        .into_iter()
        .max_by_key(|(tag, _)| *tag)
        .map(|(_, a)| a);
    if let Some((_, since)) = oldest
        && !above.is_empty()
    {
        if now.saturating_duration_since(since) >= HOLD {
            out.single = above.into_iter().map(|(_, a)| a).collect();
        } else {
            *held = above;
            out.recheck_at = Some(since + HOLD);
        }
    }
    out
}

impl Acks {
    /// The acks of a channel in transaction mode (`tx.select`): every ack and nack on it
    /// takes effect at the next `tx.commit`, which this batcher sends after each round, and
    /// every settled event joins a round, even above an old open delivery. The broker then
    /// settles a round's single acks in one command for the queue instead of one each.
    pub fn transactional(channel: lapin::Channel) -> Acks {
        Acks {
            tx: Some(channel),
            ..Acks::default()
        }
    }

    /// Acks that are never batched: each settling task sends its own, alone. For a channel
    /// whose deliveries come from several consumers read by different tasks (park queues,
    /// see [`crate::ordered::park`]), where a tag may be registered after a higher one is
    /// settled, so that no `multiple` could be safe.
    pub fn singles() -> Acks {
        let acks = Acks::default();
        acks.state.lock().expect("acks lock").stopped = true;
        acks
    }

    /// After an ack or nack sent outside a round: commit it (transaction mode only).
    pub async fn commit(&self) -> Result<(), lapin::Error> {
        match &self.tx {
            Some(channel) => channel.tx_commit().await,
            None => Ok(()),
        }
    }

    /// How many deliveries of the channel are open.
    pub fn open(&self) -> usize {
        self.state.lock().expect("acks lock").open.len()
    }

    /// A delivery arrived on the channel: it is open until settled or released.
    pub fn received(&self, tag: u64) {
        let mut s = self.state.lock().expect("acks lock");
        s.open.insert(tag, Instant::now());
    }

    /// Its settlement is confirmed: its ack joins the next batch (`true`), or, when it sits
    /// above an open delivery that is already old (see [`plan`]), the caller sends it at once
    /// on its own (`false`), as every task did before batching: a batch cannot cover it. The
    /// tag then stays open until the caller says it was sent ([`Acks::released`]): a
    /// `multiple` sent before it would cover it, and the broker closes a channel that acks a
    /// tag twice.
    pub fn settled(&self, tag: u64, acker: &Acker) -> bool {
        {
            let mut s = self.state.lock().expect("acks lock");
            if s.stopped {
                return false;
            }
            if self.tx.is_none()
                && let Some((low, since)) = s.open.first_key_value()
                && tag > *low
                && since.elapsed() >= HOLD
            {
                return false;
            }
            s.open.remove(&tag);
            s.settled.push((tag, acker.clone()));
        }
        self.wake.notify_one();
        true
    }

    /// Nacked, or acked on its own (the frame sent): no longer open, nothing to ack.
    pub fn released(&self, tag: u64) {
        let mut s = self.state.lock().expect("acks lock");
        s.open.remove(&tag);
        s.last_sent = Some(Instant::now());
        drop(s);
        self.wake.notify_one();
    }

    /// Sends the acks as settlements come in, until `stop`; then sends whatever is left (see
    /// [`Acks::flush`]) and returns, so that the channel can close after it.
    pub async fn run(&self, stop: CancellationToken) {
        let mut recheck_at: Option<Instant> = None;
        loop {
            let wait = async {
                match recheck_at {
                    Some(at) => {
                        tokio::select! {
                            () = self.wake.notified() => {}
                            () = tokio::time::sleep_until(at.into()) => {}
                        }
                    }
                    None => self.wake.notified().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return self.flush().await,
                () = wait => {}
            }
            // Settlements finishing at the same moment join this round.
            tokio::task::yield_now().await;
            let round = self.take();
            recheck_at = round.recheck_at;
            let any = round.multiple.is_some() || !round.single.is_empty();
            let mut sent = send(round).await;
            if any && sent.is_ok() {
                sent = self.commit().await;
            }
            let mut s = self.state.lock().expect("acks lock");
            s.last_sent = Some(Instant::now());
            if sent.is_err() {
                // The channel is gone: the broker returns its unacked deliveries.
                s.stopped = true;
                return;
            }
        }
    }

    /// Everything settled, acked now (shutdown, before the channel closes); settlements
    /// from now on are acked by their own tasks.
    async fn flush(&self) {
        let all = {
            let mut s = self.state.lock().expect("acks lock");
            s.stopped = true;
            let mut all = std::mem::take(&mut s.held);
            all.append(&mut s.settled);
            all
        };
        let acks = all.iter().map(|(_, a)| a.ack(BasicAckOptions::default()));
        futures_util::future::join_all(acks).await;
        if !all.is_empty() {
            let _ = self.commit().await;
            self.state.lock().expect("acks lock").last_sent = Some(Instant::now());
        }
    }

    /// When an ack or a nack last went out on the channel, if one did.
    pub fn last_sent(&self) -> Option<Instant> {
        self.state.lock().expect("acks lock").last_sent
    }

    fn take(&self) -> Plan<Acker> {
        let mut guard = self.state.lock().expect("acks lock");
        let s = &mut *guard;
        s.held.append(&mut s.settled);
        let oldest = s.open.first_key_value().map(|(t, at)| (*t, *at));
        plan(&mut s.held, oldest, Instant::now())
    }
}

/// The multiple ack first, then the single ones, all on their way at once.
async fn send(round: Plan<Acker>) -> Result<(), lapin::Error> {
    if let Some(a) = round.multiple {
        a.ack(BasicAckOptions { multiple: true }).await?;
    }
    let singles = round
        .single
        .iter()
        .map(|a| a.ack(BasicAckOptions::default()));
    for sent in futures_util::future::join_all(singles).await {
        sent?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (settled, oldest open, now, multiple at, single, still held)
    type Case = (
        &'static [u64],
        Option<(u64, Instant)>,
        Instant,
        Option<u64>,
        &'static [u64],
        &'static [u64],
    );

    fn tags(p: &Plan<u64>) -> (Option<u64>, Vec<u64>) {
        (p.multiple, p.single.clone())
    }

    #[test]
    fn a_batch_is_cut_at_the_oldest_open_delivery() {
        let t0 = Instant::now();
        let young = Some((5, t0));
        let old = Some((5, t0));
        let later = t0 + HOLD;
        // (settled, oldest open, now) -> (multiple at, single, still held)
        let cases: [Case; 6] = [
            // Nothing open: one frame for all.
            (&[3, 1, 2], None, t0, Some(3), &[], &[]),
            // Below the open one: one frame; above it: held while it is young.
            (&[1, 4, 7, 9], young, t0, Some(4), &[], &[7, 9]),
            // Above an open one that is old: each at once.
            (&[1, 7, 9], old, later, Some(1), &[7, 9], &[]),
            // Only above, young: all held.
            (&[8], young, t0 + Duration::from_millis(10), None, &[], &[8]),
            // Nothing settled.
            (&[], young, t0, None, &[], &[]),
            (&[], None, t0, None, &[], &[]),
        ];
        for (settled, oldest, now, multiple, single, kept) in cases {
            let mut held: Vec<(u64, u64)> = settled.iter().map(|t| (*t, *t)).collect();
            let p = plan(&mut held, oldest, now);
            assert_eq!(tags(&p), (multiple, single.to_vec()), "{settled:?}");
            let kept_now: Vec<u64> = held.iter().map(|(t, _)| *t).collect();
            assert_eq!(kept_now, kept, "{settled:?}");
            assert_eq!(p.recheck_at.is_some(), !kept.is_empty(), "{settled:?}");
        }
    }

    #[test]
    fn held_acks_are_looked_at_again_when_the_oldest_turns_old() {
        let t0 = Instant::now();
        let mut held = vec![(9, 9u64)];
        let p = plan(&mut held, Some((2, t0)), t0 + Duration::from_millis(20));
        assert_eq!(p.recheck_at, Some(t0 + HOLD));
        let p = plan(&mut held, Some((2, t0)), t0 + HOLD);
        assert_eq!(tags(&p), (None, vec![9]));
        assert!(held.is_empty());
    }
}
