//! Scrape-time metric families (feature `prometheus`): values computed when Prometheus asks (from the hub's store,
//! from the agent's counters) and encoded by `prometheus_client`, which writes the OpenMetrics text and escapes
//! every label value, so no device-reported string can break the exposition.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Label pairs of one series, in order.
pub type Labels = Vec<(&'static str, String)>;

/// A live histogram per set of fixed label values (`result="ok"`), each made with the family's buckets.
pub type HistogramFamily = Family<Vec<(&'static str, &'static str)>, Histogram, fn() -> Histogram>;

/// An empty [`HistogramFamily`] whose histograms `new` makes.
pub fn histogram_family(new: fn() -> Histogram) -> HistogramFamily {
    Family::new_with_constructor(new)
}

/// One metric family's series as they are now: a [`Collector`] to register in a per-scrape `Registry`.
///
/// A counter's name is given without `_total`; the encoder appends it (OpenMetrics).
#[derive(Debug)]
pub struct Snapshot<M> {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, M)>,
}

impl<M> Snapshot<M> {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Snapshot { name, help, series: Vec::new() }
    }

    /// Adds one series.
    pub fn push(&mut self, labels: Labels, metric: M) {
        self.series.push((labels, metric));
    }
}

impl<M: EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Snapshot<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(self.name, self.help, None, M::TYPE)?;
        for (labels, metric) in &self.series {
            metric.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The two exposition formats `/metrics` speaks, chosen by the scraper's `Accept` header as Prometheus' own
/// clients do: OpenMetrics for a Prometheus server (which asks for it first), the classic text format (0.0.4)
/// for anything else (`curl`, `promtool check metrics`). Same names, labels and values in both; a counter's
/// `# TYPE` line names it without `_total` in OpenMetrics and with it in the classic format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`, ending in `# EOF`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The registry's exposition in `format`.
pub fn encode(registry: &prometheus_client::registry::Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a metric that refuses itself (none here).
    let _ = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Registry;

    #[test]
    fn a_label_value_with_quotes_backslashes_and_newlines_stays_inside_its_series() {
        let mut devices = Snapshot::new("devices", "Devices by site.");
        devices.push(vec![("site", "plant \"7\"\n} 999\nevil_metric 1".to_owned())], ConstGauge::new(3i64));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(devices));
        let text = encode(&registry, Format::OpenMetrics);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP devices Devices by site.",
                "# TYPE devices gauge",
                r#"devices{site="plant \"7\"\n} 999\nevil_metric 1"} 3"#,
                "# EOF"
            ],
            "{text}"
        );
        let classic = encode(&registry, Format::Prometheus);
        assert!(classic.contains(r#"devices{site="plant \"7\"\n} 999\nevil_metric 1"} 3"#), "{classic}");
        assert_eq!(classic.lines().count(), 3, "{classic}");
    }

    #[test]
    fn a_prometheus_server_gets_openmetrics_and_anything_else_the_classic_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
