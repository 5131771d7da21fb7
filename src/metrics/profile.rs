//! One profile's series, resolved once: the per-event path adds to an atomic and never looks
//! a series up by its label strings.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::{Metrics, TokenOutcome};
use crate::decide::{AttemptClass, DeferReason, DeliveryOutcome, Label};
use crate::receipts::Notices;

/// One series per label value of `L`, each resolved on first use and then held.
struct Children<L: Label, const N: usize> {
    cells: [OnceLock<IntCounter>; N],
    _label: std::marker::PhantomData<L>,
}

impl<L: Label, const N: usize> Children<L, N> {
    fn new() -> Self {
        Self {
            cells: std::array::from_fn(|_| OnceLock::new()),
            _label: std::marker::PhantomData,
        }
    }

    fn get(&self, vec: &IntCounterVec, profile: &str, label: L) -> &IntCounter {
        self.cells[label.index()].get_or_init(|| vec.with_label_values(&[profile, label.as_str()]))
    }
}

/// One profile's series. Built with the profile's runtime; each series is registered on its
/// first use, then every later use is a plain atomic add.
pub struct ProfileMetrics {
    profile: std::sync::Arc<str>,
    root: std::sync::Arc<Metrics>,
    deliveries: Children<DeliveryOutcome, 3>,
    attempts: Children<AttemptClass, 7>,
    tokens: Children<TokenOutcome, 2>,
    deferrals: Children<DeferReason, 4>,
    proxy_errors: OnceLock<IntCounter>,
    duration: OnceLock<Histogram>,
    cache_hits: OnceLock<IntCounter>,
    circuit_open: OnceLock<IntGauge>,
    ordered_waiting: OnceLock<IntGauge>,
}

impl ProfileMetrics {
    pub fn new(root: std::sync::Arc<Metrics>, profile: std::sync::Arc<str>) -> Self {
        Self {
            profile,
            root,
            deliveries: Children::new(),
            attempts: Children::new(),
            tokens: Children::new(),
            deferrals: Children::new(),
            proxy_errors: OnceLock::new(),
            duration: OnceLock::new(),
            cache_hits: OnceLock::new(),
            circuit_open: OnceLock::new(),
            ordered_waiting: OnceLock::new(),
        }
    }

    pub fn root(&self) -> &Metrics {
        &self.root
    }

    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries
            .get(&self.root.deliveries, &self.profile, outcome)
            .inc();
    }

    pub fn attempt(&self, class: AttemptClass, took: Option<std::time::Duration>) {
        self.attempts
            .get(&self.root.delivery_attempts, &self.profile, class)
            .inc();
        if let Some(took) = took {
            self.duration
                .get_or_init(|| {
                    self.root
                        .delivery_duration
                        .with_label_values(&[&self.profile])
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn token_request(&self, outcome: TokenOutcome) {
        self.tokens
            .get(&self.root.token_requests, &self.profile, outcome)
            .inc();
    }

    pub fn token_cache_hit(&self) {
        self.cache_hits
            .get_or_init(|| {
                self.root
                    .token_cache_hits
                    .with_label_values(&[&self.profile])
            })
            .inc();
    }

    /// `deferrals_total{reason}` for SPEC section 9's reasons; a deferral because the egress
    /// proxy failed is counted in `proxy_errors_total` instead (SPEC section 17), so the
    /// label keeps the contract's three values.
    pub fn deferral(&self, reason: DeferReason) {
        if reason == DeferReason::Proxy {
            return;
        }
        self.deferrals
            .get(&self.root.deferrals, &self.profile, reason)
            .inc();
    }

    pub fn proxy_error(&self) {
        self.proxy_errors
            .get_or_init(|| self.root.proxy_errors.with_label_values(&[&self.profile]))
            .inc();
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open
            .get_or_init(|| self.root.circuit_open.with_label_values(&[&self.profile]))
            .set(i64::from(open));
    }

    pub fn ordered_waiting(&self) -> &IntGauge {
        self.ordered_waiting.get_or_init(|| {
            self.root
                .ordered_waiting
                .with_label_values(&[&self.profile])
        })
    }

    /// Where operator events about this profile are told.
    pub fn notices(&self) -> &Notices {
        &self.root.notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_series_appear_on_first_use_with_their_labels() {
        let root = std::sync::Arc::new(Metrics::new());
        let m = ProfileMetrics::new(root.clone(), "acme".into());
        assert!(!root.render().contains("profile=\"acme\""));
        m.attempt(
            AttemptClass::S5xx,
            Some(std::time::Duration::from_millis(3)),
        );
        m.attempt(AttemptClass::S5xx, None);
        m.deferral(DeferReason::RateLimit);
        m.proxy_error();
        let text = root.render();
        assert!(
            text.contains("callback_dispatcher_proxy_errors_total{profile=\"acme\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "callback_dispatcher_delivery_attempts_total{profile=\"acme\",result=\"5xx\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "callback_dispatcher_deferrals_total{profile=\"acme\",reason=\"rate_limit\"} 1"
        ));
        assert!(
            text.contains(
                "callback_dispatcher_delivery_duration_seconds_count{profile=\"acme\"} 1"
            )
        );
        assert!(
            !text.contains("result=\"2xx\""),
            "unused series stay absent"
        );
    }
}
