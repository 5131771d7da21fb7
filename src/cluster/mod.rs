//! Many replicas act as one (SPEC section 13): what replicas share through `cluster.redis`,
//! their count, the profiles' rate limits and circuit breakers, and from the count each
//! one's share of a profile's concurrency.
//!
//! Design decisions:
//! - A heartbeat every [`BEAT`] announces the replica under `<key_prefix>:replica:<id>` with
//!   a [`REPLICA_TTL`] expiry, lists the live replicas (an index set whose members are
//!   checked against their keys, so a replica killed with -9 drops out when its key expires)
//!   and reads the breakers the deployment shares, in one script and one round trip.
//! - Concurrency: each replica allows an equal share of a profile's `concurrency` among the
//!   live replicas, the remainder going one each to the first by id, at least 1
//!   ([`share::concurrency`]). Profiles resize their slots as the count changes.
//! - Rate limits: GCRA in one Lua script on Redis's clock, one round trip per attempt of a
//!   rate-limited profile. An attempt whose turn comes within the wait the gate allows is
//!   booked at once and waited for here, so a waiting event costs no second call. Profiles
//!   without `rate_limit` make no call per event.
//! - Breakers: opening, the open-until time and the one probe are shared: a failure is
//!   reported (only failures, and the first success after them), the report that reaches
//!   `failures` opens the breaker for all, every replica learns it from its next report or
//!   heartbeat (within a second), and after `open_for` one replica in the deployment takes
//!   the probe (`SET NX` with a lease), whose result closes or re-opens it for all.
//! - Redis away: every call has a [`CALL_TIMEOUT`]. The first failure marks the store down
//!   (a warning, once per outage) and from then on events make no call at all: rate limits
//!   and concurrency are divided by the last known replica count ([`share`]), breakers are
//!   the replica's own. Only the heartbeat keeps trying; when it succeeds, sharing resumes
//!   (logged at info). Every failed call counts in `cluster_errors_total`.
//! - Keys: `<prefix>:replica:<id>`, `<prefix>:replicas` (the index), `<prefix>:rate:<profile>`,
//!   `<prefix>:breakers` (one hash), `<prefix>:breaker:<profile>:failures` and `:probe`. The
//!   heartbeat reads replica keys it finds in the index, so the store must be one Redis (or
//!   a primary), not a Redis Cluster.

mod calls;
pub mod scripts;
pub mod share;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

pub use scripts::{BreakerState, ProbeAnswer, RateAnswer, Report};

use crate::config::{ClusterConfig, RateLimit};
use crate::metrics::Metrics;

/// No Redis call of the cluster waits longer than this.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a replica announces itself and reads the shared breakers.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long a replica stays counted after its last heartbeat.
pub const REPLICA_TTL: Duration = Duration::from_secs(5);
/// The replica count assumed before the first heartbeat succeeds: a replica that has never
/// reached the store does not take a profile's full limits (deployments run at least two).
pub const UNKNOWN_REPLICAS: usize = 2;

/// Who is live, as this replica last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub replicas: usize,
    /// This replica's place among them, by id.
    pub rank: usize,
}

impl Membership {
    fn pack(self) -> u64 {
        ((self.replicas as u64) << 32) | (self.rank as u64 & 0xffff_ffff)
    }
    fn unpack(v: u64) -> Self {
        Membership {
            replicas: (v >> 32) as usize,
            rank: (v & 0xffff_ffff) as usize,
        }
    }
}

/// What a heartbeat read: the breakers the deployment shares, by profile id.
#[derive(Debug, Default)]
pub struct View {
    pub breakers: HashMap<String, BreakerState>,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

struct Scripts {
    heartbeat: redis::Script,
    rate: redis::Script,
    report: redis::Script,
    take_probe: redis::Script,
    probe_result: redis::Script,
}

/// One replica's link to the others.
pub struct Cluster {
    redis: ConnectionManager,
    prefix: String,
    id: String,
    replica_key: String,
    membership: AtomicU64,
    /// Whether the store answered the last call. While it is down, events make no call.
    up: AtomicBool,
    /// The URL's password, scrubbed from any error text before it is logged.
    password: Option<String>,
    replicas_gauge: prometheus::IntGauge,
    errors: prometheus::IntCounter,
    scripts: Scripts,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("key_prefix", &self.prefix)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The password in a `redis://user:password@host` URL, if any.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

/// An id for this replica: the host name (a pod's name in Kubernetes) and a random part.
fn replica_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    if host.is_empty() {
        format!("replica-{}", &random[..8])
    } else {
        format!("{host}-{}", &random[..8])
    }
}

impl Cluster {
    /// Connects lazily: nothing here waits for Redis. Must be called inside the runtime.
    pub fn new(config: &ClusterConfig, metrics: &Metrics) -> Result<Self, redis::RedisError> {
        let url = config.redis.expose_secret();
        let client = redis::Client::open(url)?;
        let manager = client.get_connection_manager_lazy(
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1)),
        )?;
        let id = replica_id();
        let prefix = config.key_prefix.clone();
        Ok(Cluster {
            redis: manager,
            replica_key: format!("{prefix}:replica:{id}"),
            prefix,
            id,
            membership: AtomicU64::new(
                Membership {
                    replicas: UNKNOWN_REPLICAS,
                    rank: 0,
                }
                .pack(),
            ),
            up: AtomicBool::new(true),
            password: password_of(url),
            replicas_gauge: metrics.cluster_replicas.clone(),
            errors: metrics.cluster_errors.clone(),
            scripts: Scripts {
                heartbeat: redis::Script::new(scripts::HEARTBEAT),
                rate: redis::Script::new(scripts::RATE),
                report: redis::Script::new(&scripts::report()),
                take_probe: redis::Script::new(&scripts::take_probe()),
                probe_result: redis::Script::new(&scripts::probe_result()),
            },
        })
    }

    /// This replica's id, as announced.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn membership(&self) -> Membership {
        Membership::unpack(self.membership.load(Ordering::Relaxed))
    }

    /// Whether events share through the store now (else each replica goes on alone).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// This replica's share of a profile's `concurrency`.
    pub fn concurrency(&self, limit: usize) -> usize {
        let m = self.membership();
        share::concurrency(limit, m.replicas, m.rank)
    }

    /// This replica's part of a rate limit while it goes on alone.
    pub fn divided_rate(&self, limit: RateLimit) -> (Duration, u32) {
        share::rate(limit, self.membership().replicas)
    }

    fn key(&self, kind: &str, profile: &str) -> String {
        format!("{}:{kind}:{profile}", self.prefix)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Failure> {
        let mut conn = self.redis.clone();
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::Timeout(CALL_TIMEOUT)),
        }
    }

    /// A call failed: count it; the first failure of an outage is logged and stops the calls
    /// of events until a heartbeat gets through.
    fn failed(&self, what: &str, e: &Failure) {
        self.errors.inc();
        if self.up.swap(false, Ordering::AcqRel) {
            let mut error = e.to_string();
            if let Some(p) = &self.password {
                error = error.replace(p.as_str(), "***");
            }
            tracing::warn!(
                what,
                error,
                replicas = self.membership().replicas,
                "cluster store (Redis) unavailable: this replica goes on alone, with rate limits and concurrency divided by the last known replica count"
            );
        }
    }

    /// Announce this replica, count the live ones and read the shared breakers. `None` when
    /// the store did not answer (counted, and logged once per outage).
    pub async fn beat(&self) -> Option<View> {
        let mut invocation = self.scripts.heartbeat.key(&self.replica_key);
        invocation
            .key(format!("{}:replicas", self.prefix))
            .key(format!("{}:breakers", self.prefix))
            .arg(&self.id)
            .arg(REPLICA_TTL.as_millis() as u64)
            .arg(format!("{}:replica:", self.prefix));
        let (now_ms, mut live, flat): (i64, Vec<String>, Vec<String>) =
            match self.invoke(&invocation).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.failed("announcing this replica", &e);
                    return None;
                }
            };
        live.sort_unstable();
        let membership = Membership {
            replicas: live.len().max(1),
            rank: live.iter().position(|id| *id == self.id).unwrap_or(0),
        };
        let before = Membership::unpack(self.membership.swap(membership.pack(), Ordering::AcqRel));
        self.replicas_gauge.set(membership.replicas as i64);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                replicas = membership.replicas,
                "cluster store (Redis) reachable again: rate limits, concurrency and breakers are shared again"
            );
        }
        if before.replicas != membership.replicas {
            tracing::info!(
                replicas = membership.replicas,
                id = %self.id,
                "live replicas changed; each takes its share of the profiles' concurrency"
            );
        }
        let breakers = flat
            .chunks_exact(2)
            .filter_map(|kv| Some((kv[0].clone(), BreakerState::from_field(&kv[1], now_ms)?)))
            .collect();
        Some(View { breakers })
    }

    /// Heartbeats until `stop`, handing each view to `on_view`; then this replica leaves.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, on_view: impl Fn(&View)) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first one is now: the caller has just beaten
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Some(view) = self.beat().await {
                on_view(&view);
            }
        }
        self.leave().await;
    }

    /// Stop being counted at once (a graceful stop): the others' shares grow at their next
    /// heartbeat instead of after the key's expiry.
    pub async fn leave(&self) {
        let mut pipe = redis::pipe();
        pipe.del(&self.replica_key)
            .srem(format!("{}:replicas", self.prefix), &self.id)
            .ignore();
        let mut conn = self.redis.clone();
        let left = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        if !matches!(left, Ok(Ok(()))) {
            self.errors.inc();
        }
    }
}

#[cfg(test)]
mod tests;
