//! `GET /metrics` parsed with a real Prometheus text parser (`prometheus-parse`).

use prometheus_parse::{Scrape, Value as Sample};

use crate::helpers::TestApp;

/// One scrape, parsed.
pub struct Metrics(pub Scrape);

impl Metrics {
    pub async fn scrape(app: &TestApp, token: Option<&str>) -> (Metrics, usize) {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("scrape");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/openmetrics-text"));
        let text = response.text().await.expect("text");
        assert!(
            text.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with # EOF"
        );
        let bytes = text.len();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        (Metrics(Scrape::parse(lines).expect("parses")), bytes)
    }

    /// The samples of `name` whose labels include `labels` (exactly these values).
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.0.samples.iter().filter(move |s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).unwrap_or("") == *v)
        })
    }

    /// The value of the one series of `name` with exactly `labels` (0 when absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .matching(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?}: {} series",
            found.len()
        );
        found.first().map_or(0.0, |s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            other => panic!("{name}: not a number: {other:?}"),
        })
    }

    /// The sum over every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    /// A histogram's observation count (its `+Inf` bucket) for exactly `labels`.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .matching(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?}: {} series",
            found.len()
        );
        let Some(sample) = found.first() else {
            return 0.0;
        };
        let Sample::Histogram(buckets) = &sample.value else {
            panic!("{name}: not a histogram");
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .expect("+Inf bucket")
            .count;
        // The `_count` line agrees with the `+Inf` bucket.
        assert_eq!(self.value(&format!("{name}_count"), labels), inf);
        inf
    }

    /// Distinct series (each histogram bucket, sum and count is one).
    pub fn series(&self) -> usize {
        self.0
            .samples
            .iter()
            .map(|s| match &s.value {
                Sample::Histogram(b) => b.len(),
                _ => 1,
            })
            .sum()
    }
}
