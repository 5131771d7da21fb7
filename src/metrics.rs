//! Every metric of SPEC section 7, registered in one place. Label values come only from the
//! profile ids of the config (or [`NO_PROFILE`]) and the `as_str` of the outcome enums, so the
//! number of series is bounded.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The profile label of events that name no known profile. Parentheses cannot occur in a
/// profile id, so it never collides with one.
pub const NO_PROFILE: &str = "(none)";

/// `deliveries_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    RetryScheduled,
    DeadLettered,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryScheduled => "retry_scheduled",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// `delivery_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    S2xx,
    S3xx,
    S4xx,
    S5xx,
    Timeout,
    ConnectError,
    AuthFailed,
}

impl AttemptClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S2xx => "2xx",
            Self::S3xx => "3xx",
            Self::S4xx => "4xx",
            Self::S5xx => "5xx",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
            Self::AuthFailed => "auth_failed",
        }
    }

    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::S2xx,
            300..=399 => Self::S3xx,
            500..=599 => Self::S5xx,
            _ => Self::S4xx,
        }
    }
}

/// `token_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Success,
    Failure,
}

impl TokenOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

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
        let registry = Registry::new();
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
            registry,
            headers: Vec::new(),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(m.events_consumed.clone()),
            Box::new(m.deliveries.clone()),
            Box::new(m.delivery_attempts.clone()),
            Box::new(m.delivery_duration.clone()),
            Box::new(m.token_requests.clone()),
            Box::new(m.token_cache_hits.clone()),
            Box::new(m.inflight.clone()),
            Box::new(m.amqp_connected.clone()),
        ];
        let kinds = [
            "counter",
            "counter",
            "counter",
            "histogram",
            "counter",
            "counter",
            "gauge",
            "gauge",
        ];
        for (c, kind) in collectors.into_iter().zip(kinds) {
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
}
