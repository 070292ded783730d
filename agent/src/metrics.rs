//! The agent's `/metrics` (OpenMetrics, through `prometheus_client`): inferences, failures and latency per model
//! and the active model, from the inference handle's counters, and the update loop's own timings (check latency,
//! download time), recorded on the injected clock. Label values are escaped by the library.

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use outpost_shared::metrics::{Format, HistogramFamily, Snapshot, encode, histogram_family};

use crate::inference::ModelHandle;

/// What the update loop measures, kept for the life of the process.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Update checks by result (`ok`, `error`).
    check: HistogramFamily,
    /// Package downloads by result (`ok`, `error`), resumed ones included.
    download: HistogramFamily,
    /// Inference outcomes dropped at the update loop's full queue (`crate::inference::outcomes`).
    outcomes_dropped: Counter,
}

/// 10 ms to about 5.5 min, doubling: a check is a few round trips, a download may be a large model on a slow link.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            check: histogram_family(seconds_histogram),
            download: histogram_family(seconds_histogram),
            outcomes_dropped: Counter::default(),
        }
    }
}

fn result(ok: bool) -> Vec<(&'static str, &'static str)> {
    vec![("result", if ok { "ok" } else { "error" })]
}

impl AgentMetrics {
    /// Records one update check that took `seconds`.
    pub fn checked(&self, ok: bool, seconds: f64) {
        self.check.get_or_create(&result(ok)).observe(seconds);
    }

    /// Records one download that took `seconds`.
    pub fn downloaded(&self, ok: bool, seconds: f64) {
        self.download.get_or_create(&result(ok)).observe(seconds);
    }

    /// The counter of inference outcomes dropped at the update loop's full queue (shared: a clone counts on it).
    pub fn outcomes_dropped(&self) -> Counter {
        self.outcomes_dropped.clone()
    }
}

/// The exposition, in `format`, of what `handle` served and what the update loop measured.
pub fn exposition(handle: &ModelHandle, format: Format) -> String {
    let mut registry = Registry::default();
    let mut inferences = Snapshot::new("outpost_agent_inferences", "Inferences that reached a model.");
    let mut failures = Snapshot::new("outpost_agent_inference_failures", "Inferences the model failed.");
    let mut latency = Snapshot::new("outpost_agent_inference_seconds", "Time the model took per inference.");
    for c in handle.counts() {
        let labels = vec![("model", c.name), ("version", c.version)];
        inferences.push(labels.clone(), ConstCounter::new(c.inferences));
        failures.push(labels.clone(), ConstCounter::new(c.failures));
        latency.push(labels, c.latency);
    }
    let mut active = Snapshot::new("outpost_agent_model_active", "The model served now (1), by digest.");
    if let Some(m) = handle.current() {
        let labels =
            vec![("model", m.name().to_owned()), ("version", m.version().to_string()), ("digest", m.digest().to_hex())];
        active.push(labels, ConstGauge::new(1i64));
    }
    registry.register_collector(Box::new(inferences));
    registry.register_collector(Box::new(failures));
    registry.register_collector(Box::new(latency));
    registry.register_collector(Box::new(active));
    let metrics = handle.metrics();
    registry.register(
        "outpost_agent_check_seconds",
        "Time an update check took (connect, attest, TUF refresh, assignment, downloads, install, reports), by result.",
        metrics.check.clone(),
    );
    registry.register(
        "outpost_agent_download_seconds",
        "Time a package download took (bounded, resumable, hash-checked), by result.",
        metrics.download.clone(),
    );
    registry.register(
        "outpost_agent_inference_outcomes_dropped",
        "Inference outcomes dropped because the update loop's queue was full (a failure among them still reaches \
         the health window).",
        metrics.outcomes_dropped.clone(),
    );
    encode(&registry, format)
}
