//! The hub's `/metrics` (OpenMetrics, through `prometheus_client`): the fleet as the store has it now (devices,
//! releases and their stages, telemetry, device-reported latency), read at each scrape, and the serving process's
//! own timings (attestation appraisal). Label values are escaped by the library, never by hand.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use outpost_shared::metrics::{HistogramFamily, Snapshot, histogram_family};
use outpost_shared::rollout::State;

use crate::registry::DeviceRecord;
use crate::rollouts::ReleaseRecord;
use crate::telemetry::Group;

/// Counters by one static label.
type CounterFamily = Family<Vec<(&'static str, &'static str)>, Counter>;

/// What the serving process measures itself, shared by every scrape.
#[derive(Debug, Clone)]
pub struct Live {
    /// Attestation appraisal time, by result (`affirming`, `warning`, `contraindicated`).
    appraisal: HistogramFamily,
    /// Requests refused at a bound, by bound (`report_size`, `telemetry_streams`, `relayed_challenges`).
    refused: CounterFamily,
    /// Device report files rotated (their oldest file dropped when the device had all it may keep).
    rotated: Counter,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            appraisal: histogram_family(appraisal_histogram),
            refused: Family::default(),
            rotated: Counter::default(),
        }
    }
}

/// 100 µs to about 3.3 s, doubling.
fn appraisal_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Live {
    /// Records one appraisal that took `seconds` and ended in `result`.
    pub fn appraised(&self, result: &'static str, seconds: f64) {
        self.appraisal.get_or_create(&vec![("result", result)]).observe(seconds);
    }

    /// Counts one request refused at `bound`.
    pub fn refused(&self, bound: &'static str) {
        self.refused.get_or_create(&vec![("bound", bound)]).inc();
    }

    /// Counts one device report file rotated.
    pub fn report_file_rotated(&self) {
        self.rotated.inc();
    }
}

/// The fleet as read from the store for one scrape.
pub struct Fleet<'a> {
    /// Every device record (site nodes are left out of the device counts).
    pub devices: &'a [DeviceRecord],
    /// Every release, oldest first.
    pub releases: &'a [(String, ReleaseRecord)],
    /// Telemetry aggregated per site.
    pub telemetry: &'a [Group],
}

/// The registry of one scrape: the fleet's families, then the live ones.
pub fn registry(fleet: &Fleet<'_>, live: &Live) -> Registry {
    use std::collections::BTreeMap;
    let mut registry = Registry::default();

    let mut counts: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut seen = Snapshot::new(
        "outpost_hub_device_last_seen_timestamp_seconds",
        "When the device last attested or reported (Unix seconds), by device key (short) and site.",
    );
    for d in fleet.devices.iter().filter(|d| !d.site_node) {
        let status = format!("{:?}", d.status).to_lowercase();
        let package = d.active.map_or("none".to_owned(), |a| a.short());
        let site = d.shown_site().unwrap_or("-").to_owned();
        *counts.entry((status, site.clone(), package)).or_default() += 1;
        let last = d.last_report.max(d.attestation.as_ref().map(|a| a.at));
        if let Some(at) = last.filter(|_| d.status == crate::registry::DeviceStatus::Approved) {
            let device = outpost_net::logging::short(&d.key).to_owned();
            seen.push(vec![("device", device), ("site", site)], ConstGauge::new(at as i64));
        }
    }
    let mut devices =
        Snapshot::new("outpost_hub_devices", "Devices by status, site and the package they report running.");
    for ((status, site, package), n) in counts {
        devices.push(vec![("status", status), ("site", site), ("package", package)], ConstGauge::new(n));
    }
    registry.register_collector(Box::new(devices));
    registry.register_collector(Box::new(seen));

    let mut by_outcome = Snapshot::new("outpost_hub_release_devices", "Devices of a release by outcome.");
    let mut by_stage = Snapshot::new(
        "outpost_hub_release_stage_devices",
        "Devices of a release's serving stage (1-based) by outcome.",
    );
    let mut state = Snapshot::new(
        "outpost_hub_release_state",
        "A release's state (1 for the current one): running, awaiting_approval, aborted, completed, superseded.",
    );
    let mut aborted =
        Snapshot::new("outpost_hub_release_aborted_timestamp_seconds", "When a release was aborted (Unix seconds).");
    let mut recovery =
        Snapshot::new("outpost_hub_release_recovery_seconds", "Rollback recovery time of an aborted release.");
    for (id, r) in fleet.releases {
        let status = r.rollout.status();
        let outcomes = |s: &outpost_shared::rollout::Stats| {
            [
                ("pending", s.pending),
                ("installed", s.installed),
                ("failed", s.failed),
                ("rolled_back", s.rolled_back),
                ("rejected_by_policy", s.rejected_by_policy),
            ]
        };
        for (outcome, n) in outcomes(&status.cohort) {
            let labels = vec![("release", id.clone()), ("package", r.package.clone()), ("outcome", outcome.into())];
            by_outcome.push(labels, ConstGauge::new(n as i64));
        }
        for (i, stage) in status.stages.iter().enumerate() {
            for (outcome, n) in outcomes(stage) {
                let labels = vec![
                    ("release", id.clone()),
                    ("package", r.package.clone()),
                    ("stage", (i + 1).to_string()),
                    ("outcome", outcome.into()),
                ];
                by_stage.push(labels, ConstGauge::new(n as i64));
            }
        }
        let name = match &r.rollout.state {
            State::Running => "running",
            State::AwaitingApproval { .. } => "awaiting_approval",
            State::Aborted { at, .. } => {
                aborted
                    .push(vec![("release", id.clone()), ("package", r.package.clone())], ConstGauge::new(*at as i64));
                "aborted"
            }
            State::Completed { .. } => "completed",
            State::Superseded { .. } => "superseded",
        };
        let labels = vec![("release", id.clone()), ("package", r.package.clone()), ("state", name.into())];
        state.push(labels, ConstGauge::new(1i64));
        if let Some(t) = r.rollout.recovery_time() {
            recovery.push(vec![("release", id.clone())], ConstGauge::new(t.as_secs() as i64));
        }
    }
    registry.register_collector(Box::new(by_outcome));
    registry.register_collector(Box::new(by_stage));
    registry.register_collector(Box::new(state));
    registry.register_collector(Box::new(aborted));
    registry.register_collector(Box::new(recovery));

    let mut events = Snapshot::new("outpost_hub_telemetry_events", "Telemetry events stored, by site and kind.");
    let mut latency =
        Snapshot::new("outpost_hub_inference_seconds", "Inference latency reported by devices, per site and model.");
    for g in fleet.telemetry {
        for (kind, n) in &g.summary.by_kind {
            events.push(vec![("site", g.key.clone()), ("kind", kind.clone())], ConstGauge::new(*n as i64));
        }
        for (model, i) in &g.summary.inference {
            let model = model[..12.min(model.len())].to_owned();
            latency.push(vec![("site", g.key.clone()), ("model", model)], i.latency.clone());
        }
    }
    registry.register_collector(Box::new(events));
    registry.register_collector(Box::new(latency));

    registry.register(
        "outpost_hub_attestation_appraisal_seconds",
        "Time the hub took to appraise a device's attestation evidence, by result.",
        live.appraisal.clone(),
    );
    registry.register(
        "outpost_hub_refused",
        "Device requests refused at a bound, by bound (report_size, telemetry_streams, relayed_challenges).",
        live.refused.clone(),
    );
    registry.register(
        "outpost_hub_report_files_rotated",
        "Device report files rotated at their size bound (the oldest file dropped).",
        live.rotated.clone(),
    );
    registry
}
