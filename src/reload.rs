//! Reloading the configuration without a restart (SPEC section 11).
//!
//! Design decisions:
//! - Triggers: SIGHUP, and a change of the file's content, checked every
//!   [`POLL`]. Content is compared, not the inode or mtime: a Kubernetes ConfigMap update
//!   swaps a symlink, and editors replace files. A changed content is applied only once two
//!   checks in a row read it (it stayed the same for one interval), so a file still being
//!   written is never applied, even when a prefix of it parses.
//! - Every broker step of a reload is bounded, and shutdown never waits for a reload.
//! - A valid file becomes a new [`crate::profiles::Snapshot`], swapped in atomically for
//!   events consumed from then on; deliveries in flight keep the one they started with. New
//!   delay queues are declared before the swap, on a short connection of the reload's own;
//!   if that fails the reload fails and the running configuration stays.
//! - An invalid file changes nothing: every error is logged as `check-config` prints it and
//!   `config_reloads_total{outcome="failure"}` counts it. The same bad content is reported
//!   once, not at every poll.
//! - `amqp`, `metrics`, `log`, `token_cache` and `cluster` are fixed for the process's life:
//!   a change there is logged as needing a restart and not applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Topology};
use crate::config::Config;
use crate::metrics::{Metrics, ReloadOutcome};
use crate::profiles::Registry;
use crate::receipts::NoticeType;
use crate::worker::BROKER_LIMIT;

/// How often the file's content is compared.
pub const POLL: Duration = Duration::from_secs(2);

pub struct Reloader {
    path: PathBuf,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    topology: Topology,
    /// The parts only a restart changes, as the process started with them.
    fixed: Fixed,
    /// The content last applied (or refused), to notice a change.
    last: Option<[u8; 32]>,
    /// A changed content seen at the last check, applied if the next check sees it again.
    pending: Option<[u8; 32]>,
    /// The broker the process is connected to, for declaring new delay queues.
    url: secrecy::SecretString,
}

#[derive(PartialEq, Eq)]
struct Fixed {
    amqp: [u8; 32],
    metrics: String,
    log: String,
    tracing: String,
    token_cache: Option<[u8; 32]>,
    cluster: Option<[u8; 32]>,
    receipts: String,
}

impl Fixed {
    fn of(c: &Config) -> Fixed {
        use secrecy::ExposeSecret;
        let mut amqp = Sha256::new();
        amqp.update(c.amqp.url.expose_secret().as_bytes());
        amqp.update(format!(
            "{}|{}|{}|{}",
            c.amqp.queue, c.amqp.exchange, c.amqp.prefetch, c.amqp.partitions
        ));
        Fixed {
            amqp: amqp.finalize().into(),
            metrics: format!("{:?}", c.metrics),
            log: format!("{:?}", c.log),
            tracing: format!("{:?}", c.tracing),
            token_cache: c.token_cache.as_ref().map(|t| {
                let mut h = Sha256::new();
                h.update(t.redis.expose_secret().as_bytes());
                h.update(t.key_prefix.as_bytes());
                h.update(t.encryption_key.expose_secret());
                h.finalize().into()
            }),
            cluster: c.cluster.as_ref().map(|c| {
                let mut h = Sha256::new();
                h.update(c.redis.expose_secret().as_bytes());
                h.update([0]);
                h.update(c.key_prefix.as_bytes());
                h.finalize().into()
            }),
            receipts: format!("{:?}", c.receipts),
        }
    }

    /// The sections that differ, by name.
    fn changed(&self, other: &Fixed) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.amqp != other.amqp {
            out.push("amqp");
        }
        if self.metrics != other.metrics {
            out.push("metrics");
        }
        if self.log != other.log {
            out.push("log");
        }
        if self.tracing != other.tracing {
            out.push("tracing");
        }
        if self.token_cache != other.token_cache {
            out.push("token_cache");
        }
        if self.cluster != other.cluster {
            out.push("cluster");
        }
        if self.receipts != other.receipts {
            out.push("receipts");
        }
        out
    }
}

/// Whether content `now`, read at a check, is a change to apply: it differs from `last` (the
/// content last applied or refused) and is what the previous check read too (`pending`), so
/// it has stayed the same for one check interval (SPEC section 11). A file still being
/// written changes between checks and is never applied half-written.
fn settled(last: Option<[u8; 32]>, pending: &mut Option<[u8; 32]>, now: [u8; 32]) -> bool {
    if last == Some(now) {
        *pending = None;
        return false;
    }
    if *pending == Some(now) {
        return true;
    }
    *pending = Some(now);
    false
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        base: &Config,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        topology: Topology,
    ) -> Self {
        let last = std::fs::read(&path).ok().map(|b| digest(&b));
        Self {
            path,
            registry,
            metrics,
            topology,
            fixed: Fixed::of(base),
            last,
            pending: None,
            url: base.amqp.url.clone(),
        }
    }

    /// Watch for SIGHUP and content changes until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = async { hup.as_mut().expect("checked").recv().await }, if hup.is_some() => true,
                _ = tick.tick() => false,
            };
            let Ok(bytes) = std::fs::read(&self.path) else {
                if forced {
                    tracing::warn!(path = %self.path.display(), "SIGHUP: cannot read the configuration file; keeping the running one");
                }
                continue; // e.g. in the middle of a ConfigMap symlink swap
            };
            let now = digest(&bytes);
            if !forced && !settled(self.last, &mut self.pending, now) {
                continue;
            }
            self.last = Some(now);
            self.pending = None;
            // A reload waits for the broker (new delay queues): shutdown never waits for it.
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.reload(forced) => {}
            }
        }
    }

    /// Read, validate, and apply or report.
    pub async fn reload(&self, forced: bool) {
        let why = if forced { "SIGHUP" } else { "file changed" };
        let metrics = &self.metrics;
        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                metrics.reload(ReloadOutcome::Failure);
                let lines = e.lines();
                tracing::error!(
                    trigger = why,
                    errors = lines.len(),
                    "configuration reload failed; the running configuration stays"
                );
                for line in &lines {
                    tracing::error!("{line}");
                }
                metrics
                    .notices
                    .tell(NoticeType::ReloadFailed, None, Some(&lines.join("\n")));
                return;
            }
        };
        let restart = self.fixed.changed(&Fixed::of(&config));
        if !restart.is_empty() {
            tracing::warn!(sections = ?restart, "these sections changed and need a restart to take effect; the rest is applied");
        }
        let next = self.registry.prepare(&config);
        let current = self.registry.load();
        let new_delays: Vec<u64> = next
            .delays_ms
            .iter()
            .copied()
            .filter(|d| !current.delays_ms.contains(d))
            .collect();
        if !new_delays.is_empty()
            && let Err(e) = self.declare(&new_delays).await
        {
            metrics.reload(ReloadOutcome::Failure);
            tracing::error!(trigger = why, error = %e, "configuration reload failed: the new delay queues could not be declared; the running configuration stays");
            metrics.notices.tell(
                NoticeType::ReloadFailed,
                None,
                Some(&format!("declaring the new delay queues: {e}")),
            );
            return;
        }
        let summary = config.summary();
        self.registry.store(next);
        metrics.reload(ReloadOutcome::Success);
        metrics
            .notices
            .tell(NoticeType::ReloadSucceeded, None, None);
        tracing::info!(trigger = why, summary = %summary, new_delay_queues = new_delays.len(), "configuration reloaded");
    }

    /// Declare the new delay queues on a connection of the reload's own, each broker step
    /// bounded by [`BROKER_LIMIT`].
    async fn declare(&self, delays: &[u64]) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(
            BROKER_LIMIT,
            amqp::connect(&self.url, "callback-dispatcher reload"),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the broker did not answer the connect within {}s",
                BROKER_LIMIT.as_secs()
            )
        })??;
        let result = tokio::time::timeout(BROKER_LIMIT, async {
            let ch = conn.create_channel().await?;
            self.topology.declare_delays(&ch, delays).await?;
            anyhow::Ok(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the broker did not answer the declarations within {}s",
                BROKER_LIMIT.as_secs()
            ))
        });
        let _ =
            tokio::time::timeout(Duration::from_secs(2), conn.close(200, "reloaded".into())).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_applied_once_it_stays_the_same_for_one_check() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let mut last = Some(a);
        let mut pending = None;
        // (content read at each check, applied?)
        let checks = [
            (a, false),
            (b, false), // first seen: may still be being written
            (c, false), // changed again
            (c, true),  // the same for one interval
            (c, false), // applied already
            (b, false),
            (a, false), // back to what is in force: nothing to do
            (b, false),
            (b, true),
        ];
        for (i, (now, want)) in checks.into_iter().enumerate() {
            let got = settled(last, &mut pending, now);
            assert_eq!(got, want, "check {i}");
            if got {
                last = Some(now);
                pending = None;
            }
        }
    }
}
