//! The Prometheus text exposition, parsed: what a test reads from `/metrics`.

/// Samples of a Prometheus text exposition: (name, sorted labels) -> value.
/// One sample: name, sorted labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), vec![]),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels: Vec<(String, String)> = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').expect("label");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (n.to_owned(), labels)
                }
            };
            out.push((name, labels, value.parse().expect("numeric sample")));
        }
        Metrics(out)
    }

    /// The value of `name` with exactly these labels, 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map_or(0.0, |(_, _, v)| *v)
    }

    /// `deliveries_total{profile, outcome}`.
    pub fn deliveries(&self, profile: &str, outcome: &str) -> f64 {
        self.value(
            "callback_dispatcher_deliveries_total",
            &[("profile", profile), ("outcome", outcome)],
        )
    }

    /// `delivery_attempts_total{profile, result}`.
    pub fn attempts(&self, profile: &str, result: &str) -> f64 {
        self.value(
            "callback_dispatcher_delivery_attempts_total",
            &[("profile", profile), ("result", result)],
        )
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.0.iter().map(|(n, _, _)| n.clone()).collect();
        n.dedup();
        n
    }
}
