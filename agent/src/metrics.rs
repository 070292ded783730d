//! The agent's `/metrics` (OpenMetrics, through `prometheus_client`): inferences, failures and latency per model
//! and the active model, from the inference handle's counters, and the update loop's own timings (check latency,
//! download time), recorded on the injected clock; with routes, each route's quality per candidate and its
//! concentration. Label values are escaped by the library.

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use outpost_shared::metrics::{Format, HistogramFamily, Snapshot, encode, histogram_family};

use crate::inference::{ModelHandle, Routes};

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
pub fn exposition(handle: &ModelHandle, routes: Option<&Routes>, format: Format) -> String {
    let mut registry = Registry::default();
    if let Some(routes) = routes {
        register_routes(&mut registry, routes);
    }
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

/// Per route: requests and unanswered ones, and the concentration of its answers (top candidate's share, HHI);
/// per route and candidate: answers, errors, fallbacks by reason and latency.
fn register_routes(registry: &mut Registry, routes: &Routes) {
    let mut requests = Snapshot::new("outpost_agent_route_requests", "Requests to a route.");
    let mut unanswered = Snapshot::new("outpost_agent_route_unanswered", "Requests to a route no candidate answered.");
    let mut answers = Snapshot::new("outpost_agent_route_answers", "Requests a route's candidate answered.");
    let mut errors = Snapshot::new("outpost_agent_route_errors", "Requests a route's candidate failed on.");
    let mut fallbacks = Snapshot::new(
        "outpost_agent_route_fallbacks",
        "Requests a route's candidate answered as a fallback, by why the candidate in front was passed over.",
    );
    let mut latency = Snapshot::new("outpost_agent_route_seconds", "Time a route's candidate took per answer.");
    let mut top = Snapshot::new("outpost_agent_route_top_share", "Share of a route's answers its top candidate gave.");
    let mut hhi = Snapshot::new("outpost_agent_route_hhi", "Herfindahl-Hirschman index of a route's answer shares.");
    for (route, q) in routes.quality() {
        requests.push(vec![("route", route.clone())], ConstCounter::new(q.requests));
        unanswered.push(vec![("route", route.clone())], ConstCounter::new(q.unanswered));
        if let Some(c) = q.concentration() {
            top.push(vec![("route", route.clone()), ("candidate", c.top)], ConstGauge::new(c.top_share));
            hhi.push(vec![("route", route.clone())], ConstGauge::new(c.hhi));
        }
        for (candidate, cq) in q.candidates {
            let labels = vec![("route", route.clone()), ("candidate", candidate)];
            answers.push(labels.clone(), ConstCounter::new(cq.answered));
            errors.push(labels.clone(), ConstCounter::new(cq.errors));
            for (reason, n) in cq.fallbacks {
                let mut labels = labels.clone();
                labels.push(("reason", reason.name().to_owned()));
                fallbacks.push(labels, ConstCounter::new(n));
            }
            latency.push(labels, cq.latency);
        }
    }
    registry.register_collector(Box::new(requests));
    registry.register_collector(Box::new(unanswered));
    registry.register_collector(Box::new(answers));
    registry.register_collector(Box::new(errors));
    registry.register_collector(Box::new(fallbacks));
    registry.register_collector(Box::new(latency));
    registry.register_collector(Box::new(top));
    registry.register_collector(Box::new(hhi));
}
