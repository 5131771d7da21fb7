//! The resolve stage: the registry of profile runtimes, swapped as a whole on reload.
//!
//! Design decisions:
//! - A [`Snapshot`] is everything a reload may change (`delivery`, `retry`, the profiles)
//!   built into runtime objects once. A delivery takes the current snapshot when it starts
//!   and keeps it to the end, so it finishes with the profile it started with.
//! - Building a snapshot reuses what still holds from the one before: HTTP clients (and
//!   their warm connections) when the delivery settings did not change, a profile's tokens
//!   when its auth and TLS did not change, its limiter, breaker and statistics when their
//!   own settings did not, and its metric series always.
//! - One HTTP client per distinct TLS setting and proxy; profiles without either share one.
//! - With `cluster.redis` the registry holds the replica's [`Cluster`] link: every gate
//!   shares through it, and [`Registry::start_cluster`] runs the heartbeat, whose view of
//!   the shared breakers goes to the profiles in force.

pub mod breaker;
pub mod endpoint;
pub mod gate;
pub mod slots;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

pub use endpoint::Endpoint;
pub use window::Window;

use crate::auth::TokenSlot;
use crate::auth::oauth2::Fingerprint;
use crate::auth::shared::SharedTokens;
use crate::cluster::{Cluster, View};
use crate::config::{Config, DeliveryConfig, Profile, Proxy};
use crate::guard::Guard;
use crate::metrics::{Metrics, ProfileMetrics};
use crate::retry::RetryPolicy;

/// What sets one HTTP client apart from another.
type ClientKey = (Option<Fingerprint>, Option<Proxy>);

/// What the worker runs with, for events consumed from now on.
pub struct Snapshot {
    pub delivery: DeliveryConfig,
    pub retry: RetryPolicy,
    /// The delay queues' TTLs (ms), ascending.
    pub delays_ms: Vec<u64>,
    endpoints: HashMap<Arc<str>, Arc<Endpoint>>,
    /// By TLS fingerprint (`None`: profiles without `tls`) and proxy (`None`: direct).
    clients: HashMap<ClientKey, crate::http::Client>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("profiles", &self.endpoints.len())
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn endpoint(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(id)
    }
}

/// The swappable set of profile runtimes, and the attempts all profiles share.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// `delivery.concurrency`: attempts in flight across all profiles. Only an attempt
    /// (sign, send) holds one: events waiting for their profile's turn or token hold none.
    attempts: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shared: Option<Arc<SharedTokens>>,
    cluster: Option<Arc<Cluster>>,
}

impl Registry {
    /// Build the first snapshot. Must run inside the Tokio runtime (the shared token cache
    /// connects lazily from there).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let shared = config.token_cache.as_ref().and_then(|tc| {
            SharedTokens::new(
                &tc.redis,
                &tc.key_prefix,
                &tc.encryption_key,
                metrics.token_cache_errors.clone(),
            )
            .map_err(|e| tracing::warn!(error = %e, "shared token cache disabled"))
            .ok()
            .map(Arc::new)
        });
        let cluster = config.cluster.as_ref().and_then(|c| {
            Cluster::new(c, &metrics)
                .map_err(
                    |e| tracing::warn!(error = %e, "cluster disabled: each replica on its own"),
                )
                .ok()
                .map(Arc::new)
        });
        let first = build(config, None, &metrics, shared.as_ref(), cluster.as_ref());
        Self {
            current: ArcSwap::from_pointee(first),
            attempts: Arc::new(Semaphore::new(config.delivery.concurrency)),
            metrics,
            shared,
            cluster,
        }
    }

    /// The replica's link to the others, with `cluster.redis`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// With `cluster.redis`: announce this replica once (so the first events already take
    /// their share; bounded by the call timeout), then keep announcing it every second until
    /// `stop`, when it leaves.
    pub async fn start_cluster(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let cluster = self.cluster.clone()?;
        tracing::info!(id = cluster.id(), "joining the cluster");
        if let Some(view) = cluster.beat().await {
            self.adopt(&view);
        }
        let registry = self.clone();
        Some(tokio::spawn(
            cluster.run(stop, move |view| registry.adopt(view)),
        ))
    }

    /// The shared breakers a heartbeat read, to the profiles in force.
    fn adopt(&self, view: &View) {
        if view.breakers.is_empty() {
            return;
        }
        for ep in self.load().endpoints.values() {
            if let Some(state) = view.breakers.get(&*ep.profile.id) {
                ep.adopt(*state);
            }
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A snapshot for `config`, reusing what still holds from the current one.
    pub fn prepare(&self, config: &Config) -> Snapshot {
        build(
            config,
            Some(&self.current.load()),
            &self.metrics,
            self.shared.as_ref(),
            self.cluster.as_ref(),
        )
    }

    /// Put `next` in force; a change of `delivery.concurrency` resizes the shared attempts.
    pub fn store(&self, next: Snapshot) {
        let (old, new) = (self.load().delivery.concurrency, next.delivery.concurrency);
        self.current.store(Arc::new(next));
        resize(&self.attempts, old, new);
    }

    /// One of the attempts all profiles share, or `None` when shutdown comes first.
    pub async fn attempt_slot(&self, shutdown: &CancellationToken) -> Option<SemaphorePermit<'_>> {
        if let Ok(slot) = self.attempts.try_acquire() {
            return Some(slot);
        }
        tokio::select! {
            slot = self.attempts.acquire() => slot.ok(),
            () = shutdown.cancelled() => None,
        }
    }
}

/// Change the number of attempts allowed at once across profiles.
fn resize(attempts: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        attempts.add_permits(new - old);
    } else if new < old {
        let attempts = attempts.clone();
        let fewer = (old - new) as u32;
        // Take the surplus as attempts finish, and never give it back.
        tokio::spawn(async move {
            if let Ok(p) = attempts.acquire_many_owned(fewer).await {
                p.forget();
            }
        });
    }
}

/// How much longer than its timeout a probe stays this replica's in the deployment.
const PROBE_LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

fn build(
    config: &Config,
    previous: Option<&Snapshot>,
    metrics: &Arc<Metrics>,
    shared: Option<&Arc<SharedTokens>>,
    cluster: Option<&Arc<Cluster>>,
) -> Snapshot {
    let d = &config.delivery;
    let guard = Guard::new(d.allow_networks.clone());
    let same_clients = previous.is_some_and(|p| {
        (
            p.delivery.connect_timeout,
            p.delivery.timeout,
            &p.delivery.allow_networks,
            &p.delivery.no_proxy,
        ) == (d.connect_timeout, d.timeout, &d.allow_networks, &d.no_proxy)
    });
    let mut clients: HashMap<ClientKey, crate::http::Client> = HashMap::new();
    let mut client_for = |p: &Profile| -> crate::http::Client {
        let proxy = p.proxy(d);
        let key = (p.tls.as_ref().map(|t| t.fingerprint), proxy.cloned());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let client = previous
            .filter(|_| same_clients)
            .and_then(|prev| prev.clients.get(&key).cloned())
            .unwrap_or_else(|| {
                crate::http::Client::new(
                    d.connect_timeout,
                    d.timeout,
                    &guard,
                    p.tls.as_ref(),
                    proxy.map(|proxy| (proxy, &d.no_proxy)),
                )
            });
        clients.insert(key, client.clone());
        client
    };
    let endpoints = config
        .profiles
        .iter()
        .map(|p| {
            let before = previous.and_then(|prev| prev.endpoints.get(&p.id));
            let profile_metrics = before.map_or_else(
                || Arc::new(ProfileMetrics::new(metrics.clone(), p.id.clone())),
                |b| b.metrics.clone(),
            );
            let timeout = p.timeout.unwrap_or(d.timeout);
            let endpoint = Endpoint {
                client: client_for(p),
                gate: gate::Gate::new(
                    p.concurrency.unwrap_or(d.per_profile_concurrency),
                    p.rate_limit,
                    p.circuit_breaker.unwrap_or(d.circuit_breaker),
                    before.map(|b| &b.gate),
                    cluster.map(|c| gate::Shared {
                        cluster: c.clone(),
                        profile: p.id.clone(),
                        probe_lease: timeout + PROBE_LEASE_MARGIN,
                        metrics: profile_metrics.clone(),
                    }),
                ),
                tokens: match before {
                    Some(b) if same_credentials(&b.profile, p) => b.tokens.clone(),
                    _ => Arc::new(TokenSlot::default()),
                },
                metrics: profile_metrics,
                timeout,
                callback_blocked: guard.check_literal(&p.url).err().map(|b| b.to_string()),
                auth_blocked: p
                    .auth
                    .oauth2()
                    .and_then(|o| guard.check_literal(&o.url).err())
                    .map(|b| b.to_string()),
                shared: shared.cloned(),
                proxy_failing: Default::default(),
                profile: p.clone(),
            };
            (p.id.clone(), Arc::new(endpoint))
        })
        .collect();
    Snapshot {
        delivery: d.clone(),
        retry: config.retry.clone(),
        delays_ms: config.retry.delay_queue_ms(),
        endpoints,
        clients,
    }
}

/// Whether a token fetched for `old` still serves `new`: same auth settings, same TLS.
fn same_credentials(old: &Profile, new: &Profile) -> bool {
    let auth = |p: &Profile| p.auth.oauth2().map(|o| o.fingerprint);
    let tls = |p: &Profile| p.tls.as_ref().map(|t| t.fingerprint);
    auth(old).is_some() && auth(old) == auth(new) && tls(old) == tls(new)
}
