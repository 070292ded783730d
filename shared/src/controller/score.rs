//! The score decomposition: each component of a package's viability as a number in 0–1 with the inputs it came
//! from and its weight; the total is the weighted mean of the components that have data.
//!
//! Invariants: a component without data is listed as such and left out of the total (its weight too), never
//! counted as 0 or 1; every value is clamped to 0–1, so one extreme input cannot outweigh the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ControllerPolicy, Role};
use crate::digest::Digest;

/// What the hub knows of one package, gathered from its registry, evaluation records and telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The package.
    pub package: Digest,
    /// `name@version`.
    pub label: String,
    /// Its capability.
    pub capability: String,
    /// The channel it serves, or would serve (its parent's, else the busiest serving its capability).
    pub channel: Option<String>,
    /// Where it stands.
    pub role: Role,
    /// Its derived risk tier is low (a low-risk descendant, or declared and derived low).
    pub risk_low: bool,
    /// 1 for low, 0.5 for medium, 0 for high risk.
    pub risk_score: f64,
    /// Offline quality: (metric name, the package's value, the champion's value, the no-op noise band).
    pub quality: Option<(String, f64, f64, f64)>,
    /// Field telemetry.
    pub field: Field,
    /// Its offline p95 latency, milliseconds (evaluation records).
    pub offline_p95_ms: Option<f64>,
    /// The capability's p95 budget, milliseconds.
    pub latency_budget_ms: f64,
    /// Its measured peak memory, bytes (evaluation records).
    pub peak_memory_bytes: Option<u64>,
    /// The capability's memory budget, bytes.
    pub memory_budget_bytes: u64,
    /// Its package size, bytes.
    pub size_bytes: u64,
    /// The capability's package-size budget, bytes.
    pub size_budget_bytes: u64,
    /// Devices on the channel it serves or would serve.
    pub channel_devices: u64,
    /// The champion's share of traffic (what a promoted shadow would take).
    pub champion_traffic_share: f64,
    /// Days since it last served a request (0 if serving now, or a shadow running).
    pub idle_days: f64,
}

/// Field telemetry of one package.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Inferences reported.
    pub inferences: u64,
    /// Failed inferences.
    pub errors: u64,
    /// Rollbacks away from it.
    pub rollbacks: u64,
    /// Devices that ran it.
    pub devices: u64,
    /// Fleet p95 latency, milliseconds, if reported.
    pub p95_ms: Option<f64>,
    /// Its share of the capability's traffic, 0–1.
    pub traffic_share: f64,
}

/// One component of the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// `offline_quality`, `field_reliability`, …
    pub name: String,
    /// Its value in 0–1 (1 is best), or `None` without data.
    pub value: Option<f64>,
    /// Its weight in the policy.
    pub weight: f64,
    /// The inputs it was computed from.
    pub inputs: BTreeMap<String, f64>,
    /// How, in words.
    pub formula: String,
}

/// A package's score: its components and their weighted mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decomposition {
    /// Every component, scored or not.
    pub components: Vec<Component>,
    /// Σ weight × value over the scored components / Σ of their weights (0 when none is scored).
    pub total: f64,
}

/// A component before its weight: value (if scored), inputs, formula.
type Part = (Option<f64>, BTreeMap<String, f64>, String);

fn clamp01(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// Scores `f` under `policy`.
pub fn decompose(f: &Facts, policy: &ControllerPolicy) -> Decomposition {
    let t = &policy.thresholds;
    let mut parts: BTreeMap<&str, Part> = BTreeMap::new();
    let inputs = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect::<BTreeMap<_, _>>();

    let quality = f.quality.as_ref().map(|(metric, q, c, noise)| {
        let diff = if (q - c).abs() <= *noise { 0.0 } else { q - c };
        let v = clamp01(0.5 + diff / (2.0 * t.quality_scale));
        (v, inputs(&[("value", *q), ("champion", *c), ("noise_band", *noise)]), metric.clone())
    });
    parts.insert(
        "offline_quality",
        match quality {
            Some((v, i, metric)) => (
                Some(v),
                i,
                format!(
                    "0.5 + ({metric} − champion's, 0 within the noise band) / (2 × quality_scale {})",
                    t.quality_scale
                ),
            ),
            None => (None, BTreeMap::new(), "no evaluation record on the capability's suite".into()),
        },
    );

    let fd = &f.field;
    parts.insert(
        "field_reliability",
        if fd.inferences == 0 && fd.rollbacks == 0 {
            (None, BTreeMap::new(), "no field telemetry yet".into())
        } else {
            let error_rate = fd.errors as f64 / fd.inferences.max(1) as f64;
            let rollback_rate = fd.rollbacks as f64 / fd.devices.max(1) as f64;
            (
                Some(clamp01(1.0 - error_rate / t.max_error_rate - rollback_rate)),
                inputs(&[
                    ("inferences", fd.inferences as f64),
                    ("errors", fd.errors as f64),
                    ("rollbacks", fd.rollbacks as f64),
                    ("devices", fd.devices as f64),
                ]),
                format!("1 − error rate / max_error_rate {} − rollbacks per device", t.max_error_rate),
            )
        },
    );

    let p95 = fd.p95_ms.map(|p| (p, "fleet")).or(f.offline_p95_ms.map(|p| (p, "offline")));
    parts.insert(
        "latency",
        match p95 {
            Some((p, source)) => (
                Some(clamp01(1.5 - p / f.latency_budget_ms)),
                inputs(&[("p95_ms", p), ("budget_ms", f.latency_budget_ms)]),
                format!("1.5 − {source} p95 / budget (0.5 at the budget)"),
            ),
            None => (None, BTreeMap::new(), "no latency measured".into()),
        },
    );
    parts.insert(
        "memory",
        match f.peak_memory_bytes {
            Some(m) => (
                Some(clamp01(1.5 - m as f64 / f.memory_budget_bytes.max(1) as f64)),
                inputs(&[("peak_bytes", m as f64), ("budget_bytes", f.memory_budget_bytes as f64)]),
                "1.5 − peak memory / budget".into(),
            ),
            None => (None, BTreeMap::new(), "no peak memory measured".into()),
        },
    );
    parts.insert(
        "cost",
        (
            Some(clamp01(1.5 - f.size_bytes as f64 / f.size_budget_bytes.max(1) as f64)),
            inputs(&[
                ("size_bytes", f.size_bytes as f64),
                ("budget_bytes", f.size_budget_bytes as f64),
                ("devices", f.channel_devices as f64),
                ("bytes_to_ship", f.size_bytes.saturating_mul(f.channel_devices) as f64),
            ]),
            "1.5 − package size / budget (every device downloads it)".into(),
        ),
    );
    let (share, how) = if matches!(f.role, Role::Shadow | Role::Candidate) {
        (f.champion_traffic_share, "the champion's share, which a challenger would take")
    } else {
        (fd.traffic_share, "its share of the capability's traffic")
    };
    parts.insert("traffic", (Some(clamp01(share)), inputs(&[("share", share)]), how.into()));
    parts.insert(
        "staleness",
        (
            Some(clamp01(1.0 - f.idle_days / t.stale_after_days)),
            inputs(&[("idle_days", f.idle_days)]),
            format!("1 − idle days / stale_after_days {}", t.stale_after_days),
        ),
    );
    parts.insert(
        "risk",
        (Some(clamp01(f.risk_score)), inputs(&[("score", f.risk_score)]), "1 low, 0.5 medium, 0 high".into()),
    );

    let mut components = Vec::new();
    let (mut sum, mut weights) = (0.0, 0.0);
    for (name, weight) in policy.weights.named() {
        let (value, inputs, formula) = parts.remove(name).unwrap_or((None, BTreeMap::new(), String::new()));
        if let Some(v) = value {
            sum += weight * v;
            weights += weight;
        }
        components.push(Component { name: name.into(), value, weight, inputs, formula });
    }
    let total = if weights > 0.0 { sum / weights } else { 0.0 };
    Decomposition { components, total }
}
