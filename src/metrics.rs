//! Every metric of SPEC section 7, registered in one place, and each profile's series
//! resolved once ([`ProfileMetrics`]) so the per-event path never looks a series up by its
//! label strings. Label values come only from configured profile ids (or [`NO_PROFILE`]) and
//! the `as_str` of outcome enums, so the number of series is bounded; a profile's series
//! appear on the first event that uses them.

use crate::decide::{DeliveryOutcome, Label, label_enum};
use crate::receipts::Notices;

mod profile;

pub use profile::ProfileMetrics;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The profile label of events that name no known profile. Parentheses cannot occur in a
/// profile id, so it never collides with one.
pub const NO_PROFILE: &str = "(none)";

label_enum!(
    /// `token_requests_total{outcome}`.
    TokenOutcome { Success => "success", Failure => "failure" }
);
label_enum!(
    /// `config_reloads_total{outcome}`.
    ReloadOutcome { Success => "success", Failure => "failure" }
);

/// Buckets for HTTP callbacks: from 5 ms to well past the default 15 s timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    /// Every family's `# HELP`/`# TYPE` lines, so a family with no series yet still shows.
    headers: Vec<(String, String)>,
    pub events_consumed: IntCounter,
    pub deliveries: IntCounterVec,
    pub delivery_attempts: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub token_requests: IntCounterVec,
    pub token_cache_hits: IntCounterVec,
    pub inflight: IntGauge,
    pub amqp_connected: IntGauge,
    pub deferrals: IntCounterVec,
    pub circuit_open: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    /// Not in SPEC section 7: operations on the shared token cache that failed or timed out.
    pub token_cache_errors: IntCounter,
    /// Live replicas seen through `cluster.redis` (SPEC section 13); 1 without it.
    pub cluster_replicas: IntGauge,
    /// Failed or timed-out Redis calls of the cluster (SPEC section 13).
    pub cluster_errors: IntCounter,
    /// Settlements the broker refused or could not route (SPEC section 8).
    pub settle_failures: IntCounter,
    /// Receipts and operator events the broker refused or that could not be published
    /// (SPEC section 14).
    pub receipts_failed: IntCounter,
    /// Ordered events held behind an unsettled one of the same key (SPEC section 15).
    pub ordered_waiting: IntGaugeVec,
    /// Operator events (SPEC section 14): the changes these metrics show, also told as
    /// events when `receipts.exchange` is set.
    pub notices: Notices,
    /// Attempts the proxy failed (SPEC section 17).
    pub proxy_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let name = |n: &str| format!("callback_dispatcher_{n}");
        let counter =
            |n: &str, help: &str| IntCounter::with_opts(Opts::new(name(n), help)).unwrap();
        let counter_vec = |n: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name(n), help), labels).unwrap()
        };
        let gauge = |n: &str, help: &str| IntGauge::with_opts(Opts::new(name(n), help)).unwrap();
        let mut m = Self {
            events_consumed: counter(
                "events_consumed_total",
                "Events received from the work queue.",
            ),
            deliveries: counter_vec(
                "deliveries_total",
                "Settled events by outcome: delivered, retry_scheduled, dead_lettered.",
                &["profile", "outcome"],
            ),
            delivery_attempts: counter_vec(
                "delivery_attempts_total",
                "HTTP attempts by result class.",
                &["profile", "result"],
            ),
            delivery_duration: HistogramVec::new(
                HistogramOpts::new(
                    name("delivery_duration_seconds"),
                    "Duration of one callback HTTP attempt.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["profile"],
            )
            .unwrap(),
            token_requests: counter_vec(
                "token_requests_total",
                "Requests to customers' auth servers.",
                &["profile", "outcome"],
            ),
            token_cache_hits: counter_vec(
                "token_cache_hits_total",
                "Deliveries that reused a cached token.",
                &["profile"],
            ),
            inflight: gauge("inflight_deliveries", "Deliveries being processed now."),
            amqp_connected: gauge("amqp_connected", "1 while connected to the broker, else 0."),
            deferrals: counter_vec(
                "deferrals_total",
                "Events put back to a delay queue without an attempt: concurrency, rate_limit, circuit_open.",
                &["profile", "reason"],
            ),
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    name("circuit_open"),
                    "1 while the profile's circuit breaker is open or probing.",
                ),
                &["profile"],
            )
            .unwrap(),
            config_reloads: counter_vec(
                "config_reloads_total",
                "Configuration reloads by outcome: success, failure.",
                &["outcome"],
            ),
            token_cache_errors: counter(
                "token_cache_errors_total",
                "Shared token cache (Redis) operations that failed or timed out; the worker then fetches tokens itself.",
            ),
            cluster_replicas: gauge(
                "cluster_replicas",
                "Live replicas seen through cluster.redis; 1 without it.",
            ),
            cluster_errors: counter(
                "cluster_errors_total",
                "Cluster (Redis) calls that failed or timed out; replicas then go on alone with divided limits.",
            ),
            settle_failures: counter(
                "settle_failures_total",
                "Settlements (retries, deferrals, dead letters) the broker refused or could not route; the event went back to the queue after a back-off.",
            ),
            receipts_failed: counter(
                "receipts_failed_total",
                "Receipts and operator events the broker refused or that could not be published; the events' fates are unchanged.",
            ),
            ordered_waiting: IntGaugeVec::new(
                Opts::new(
                    name("ordered_waiting"),
                    "Ordered events held behind an unsettled one of the same key.",
                ),
                &["profile"],
            )
            .unwrap(),
            notices: Notices::default(),
            proxy_errors: counter_vec(
                "proxy_errors_total",
                "Attempts the proxy failed (unreachable, 407, its own answer to CONNECT); the event was deferred, not attempted.",
                &["profile"],
            ),
            registry: Registry::new(),
            headers: Vec::new(),
        };
        m.cluster_replicas.set(1);
        let collectors: Vec<(Box<dyn prometheus::core::Collector>, &str)> = vec![
            (Box::new(m.events_consumed.clone()), "counter"),
            (Box::new(m.deliveries.clone()), "counter"),
            (Box::new(m.delivery_attempts.clone()), "counter"),
            (Box::new(m.delivery_duration.clone()), "histogram"),
            (Box::new(m.token_requests.clone()), "counter"),
            (Box::new(m.token_cache_hits.clone()), "counter"),
            (Box::new(m.inflight.clone()), "gauge"),
            (Box::new(m.amqp_connected.clone()), "gauge"),
            (Box::new(m.deferrals.clone()), "counter"),
            (Box::new(m.circuit_open.clone()), "gauge"),
            (Box::new(m.config_reloads.clone()), "counter"),
            (Box::new(m.token_cache_errors.clone()), "counter"),
            (Box::new(m.cluster_replicas.clone()), "gauge"),
            (Box::new(m.cluster_errors.clone()), "counter"),
            (Box::new(m.settle_failures.clone()), "counter"),
            (Box::new(m.receipts_failed.clone()), "counter"),
            (Box::new(m.ordered_waiting.clone()), "gauge"),
            (Box::new(m.proxy_errors.clone()), "counter"),
            (Box::new(crate::trace::spans_dropped().clone()), "counter"),
        ];
        for (c, kind) in collectors {
            for d in c.desc() {
                m.headers.push((
                    d.fq_name.clone(),
                    format!(
                        "# HELP {} {}\n# TYPE {} {kind}\n",
                        d.fq_name, d.help, d.fq_name
                    ),
                ));
            }
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding does not fail");
        let mut text = String::from_utf8(out).expect("exposition is UTF-8");
        for (name, header) in &self.headers {
            if !families.iter().any(|f| f.name() == name) {
                text.push_str(header);
            }
        }
        text
    }

    /// `deliveries_total` for events that name no known profile.
    pub fn unprofiled(&self, outcome: DeliveryOutcome) -> IntCounter {
        self.deliveries
            .with_label_values(&[NO_PROFILE, outcome.as_str()])
    }

    /// `ordered_waiting` of events that name no configured profile.
    pub fn unprofiled_waiting(&self) -> IntGauge {
        self.ordered_waiting.with_label_values(&[NO_PROFILE])
    }

    pub fn reload(&self, outcome: ReloadOutcome) {
        self.config_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
    }
}
