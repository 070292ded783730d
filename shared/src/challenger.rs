//! The challenger loop's decisions: from the evaluation runs of a champion, its no-op control (the champion measured
//! again, to size the noise) and its descendants, which descendant (if any) becomes a shadow candidate and why each
//! was rejected; the cycle record that keeps it all; and the risk tier a descendant's changes imply.
//!
//! Invariants: every decision names the threshold and the measurements that made it; a metric's noise band is the
//! spread of the champion's and the no-op's runs, so only a difference beyond it counts; derived risk only ever
//! raises the declared tier. Pure: the hub runs the operators and the evaluations and stores the record.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::capability::contract_fits;
use crate::clock::UnixSeconds;
use crate::digest::Digest;
use crate::manifest::{Contract, Dim, LineageOperator, Manifest, RiskTier};

/// What decides a cycle. Every field has a documented default ([`Thresholds::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Largest drop of a quality metric (`top1_accuracy`, `frame_accuracy`, `agreement`) below the champion's, beyond the noise band (default 0.01).
    pub max_quality_drop: f64,
    /// Largest rise of `max_abs_diff` above the champion's, beyond the noise band (default 0.05).
    pub max_diff_increase: f64,
    /// Largest rise of `latency_p95_ms` as a share of the champion's, beyond the noise band (default 0.25).
    pub max_latency_regression: f64,
    /// Smallest size reduction, as a share of the champion's `size_bytes`, that counts as a gain (default 0.10). A
    /// candidate must gain in size or in `latency_p50_ms` (faster by more than the noise band) to be promoted.
    pub min_size_gain: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_quality_drop: 0.01,
            max_diff_increase: 0.05,
            max_latency_regression: 0.25,
            min_size_gain: 0.10,
        }
    }
}

/// Who a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The champion.
    Champion,
    /// The champion again: the no-op control.
    Noop,
    /// Descendant `i` (from 0).
    Descendant(u32),
}

/// One evaluation run in the cycle, in the order it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Who.
    pub subject: Subject,
    /// Round (from 0).
    pub round: u32,
    /// The evaluation record it stored.
    pub record: Digest,
    /// What it measured.
    pub metrics: BTreeMap<String, f64>,
}

/// The order runs go in: round by round, each round every subject once, the starting subject rotating so machine
/// noise (a warm cache, a busy neighbour) falls on all alike.
pub fn schedule(descendants: u32, rounds: u32) -> Vec<(u32, Subject)> {
    let subjects: Vec<Subject> =
        [Subject::Champion, Subject::Noop].into_iter().chain((0..descendants).map(Subject::Descendant)).collect();
    let n = subjects.len();
    let mut order = Vec::with_capacity(n * rounds as usize);
    for r in 0..rounds {
        order.extend((0..n).map(|i| (r, subjects[(i + r as usize) % n])));
    }
    order
}

/// How a candidate came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Passed every threshold and was the best: promoted to shadow candidate.
    Promoted,
    /// Passed every threshold, but another passing candidate was smaller.
    Passed,
    /// Failed at least one threshold (see the reasons).
    Rejected,
}

/// A candidate's verdict, with the reasons (each naming the threshold and the figures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// Why it was rejected (empty unless rejected).
    pub reasons: Vec<String>,
    /// What it gained over the champion.
    pub gains: Vec<String>,
    /// Its median metrics over its runs.
    pub metrics: BTreeMap<String, f64>,
}

/// The median of each metric over the runs of `who`.
pub fn medians(runs: &[Run], who: Subject) -> BTreeMap<String, f64> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.subject == who) {
        for (k, v) in &r.metrics {
            by.entry(k).or_default().push(*v);
        }
    }
    by.into_iter().filter_map(|(k, v)| crate::evaluation::percentile(&v, 50.0).map(|m| (k.to_owned(), m))).collect()
}

/// Per metric, the noise band: the spread (max − min) of the champion's and the no-op's runs together.
pub fn noise(runs: &[Run]) -> BTreeMap<String, f64> {
    let mut by: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for r in runs.iter().filter(|r| matches!(r.subject, Subject::Champion | Subject::Noop)) {
        for (k, &v) in &r.metrics {
            let e = by.entry(k).or_insert((v, v));
            *e = (e.0.min(v), e.1.max(v));
        }
    }
    by.into_iter().map(|(k, (lo, hi))| (k.to_owned(), hi - lo)).collect()
}

/// Decides every descendant against the champion and the noise band under `t`; `size_budget` is the capability's
/// package size limit. At most one is promoted: the smallest that passes (then the fastest).
pub fn decide(runs: &[Run], descendants: u32, t: &Thresholds, size_budget: Option<u64>) -> Vec<Verdict> {
    let champion = medians(runs, Subject::Champion);
    let band = noise(runs);
    let nb = |k: &str| band.get(k).copied().unwrap_or(0.0);
    let mut verdicts: Vec<Verdict> = (0..descendants)
        .map(|i| {
            let m = medians(runs, Subject::Descendant(i));
            let (mut reasons, mut gains) = (Vec::new(), Vec::new());
            for k in crate::evaluation::QUALITY_METRICS {
                if let (Some(&c), Some(&d)) = (champion.get(k), m.get(k))
                    && c - d > nb(k) + t.max_quality_drop
                {
                    reasons.push(format!(
                        "{k} {d:.4} vs champion {c:.4}: drop {:.4} > noise {:.4} + max_quality_drop {}",
                        c - d,
                        nb(k),
                        t.max_quality_drop
                    ));
                }
            }
            if let (Some(&c), Some(&d)) = (champion.get("max_abs_diff"), m.get("max_abs_diff"))
                && d - c > nb("max_abs_diff") + t.max_diff_increase
            {
                reasons.push(format!(
                    "max_abs_diff {d:.4} vs champion {c:.4}: rise {:.4} > noise {:.4} + max_diff_increase {}",
                    d - c,
                    nb("max_abs_diff"),
                    t.max_diff_increase
                ));
            }
            if let (Some(&c), Some(&d)) = (champion.get("latency_p95_ms"), m.get("latency_p95_ms")) {
                let limit = c * (1.0 + t.max_latency_regression) + nb("latency_p95_ms");
                if d > limit {
                    reasons.push(format!(
                        "latency_p95_ms {d:.3} > {limit:.3} (champion {c:.3} × (1 + max_latency_regression {}) + noise \
                         {:.3})",
                        t.max_latency_regression,
                        nb("latency_p95_ms")
                    ));
                }
            }
            if let (Some(&d), Some(b)) = (m.get("size_bytes"), size_budget)
                && d > b as f64
            {
                reasons.push(format!("size_bytes {d} > the capability's budget {b}"));
            }
            if let (Some(&c), Some(&d)) = (champion.get("size_bytes"), m.get("size_bytes")) {
                let share = if c > 0.0 { (c - d) / c } else { 0.0 };
                if share >= t.min_size_gain {
                    gains.push(format!("size {d} vs {c} bytes ({:.1}% smaller)", share * 100.0));
                }
            }
            if let (Some(&c), Some(&d)) = (champion.get("latency_p50_ms"), m.get("latency_p50_ms"))
                && c - d > nb("latency_p50_ms")
            {
                gains.push(format!(
                    "latency_p50_ms {d:.3} vs {c:.3} (faster by more than noise {:.3})",
                    nb("latency_p50_ms")
                ));
            }
            if reasons.is_empty() && gains.is_empty() {
                reasons.push(format!(
                    "no gain beyond noise: size not min_size_gain {} smaller, latency_p50_ms not faster than noise",
                    t.min_size_gain
                ));
            }
            let outcome = if reasons.is_empty() { Outcome::Passed } else { Outcome::Rejected };
            Verdict { outcome, reasons, gains, metrics: m }
        })
        .collect();
    let key = |v: &Verdict| {
        let g = |k: &str| v.metrics.get(k).copied().unwrap_or(f64::INFINITY);
        (g("size_bytes"), g("latency_p50_ms"))
    };
    let best = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.outcome == Outcome::Passed)
        .min_by(|(_, a), (_, b)| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(i, _)| i);
    if let Some(i) = best {
        verdicts[i].outcome = Outcome::Promoted;
    }
    verdicts
}

/// The risk tier a descendant's changes imply, beside the one its manifest declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedRisk {
    /// What the manifest says.
    pub declared: RiskTier,
    /// What the changes against the parent imply.
    pub derived: RiskTier,
    /// Each change that raised it.
    pub reasons: Vec<String>,
}

impl DerivedRisk {
    /// The tier that applies: the higher of the two.
    pub fn effective(&self) -> RiskTier {
        self.declared.max(self.derived)
    }
}

/// The operator types a lineage operator may add to a graph without counting as new code: restoring lower-precision
/// weights (DequantizeLinear, Mul, Cast) for `quantize`; nothing for any other.
pub fn expected_new_ops(op: LineageOperator) -> BTreeSet<String> {
    match op {
        LineageOperator::Quantize => ["DequantizeLinear", "Mul", "Cast"].iter().map(|s| (*s).to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

/// Derives the risk of `child` against `parent`: high, whatever the child declares, when it changes the contract,
/// the data classification, the capability or the package kind, or when its graph uses operator types the parent's
/// does not beyond what its lineage operator explains (`new_ops`: the child's op types minus the parent's) — new
/// code on the device. Otherwise low: the declared tier still applies if higher.
///
/// Not a contract change: a child that only fixes some of the parent's symbolic dimensions (same tensors, types
/// and ranks; `package add` still holds it to a registered capability), or whose contract and the parent's both fit
/// `capability` (the registered capability's contract, what requests see of either).
pub fn derive_risk(
    parent: &Manifest,
    child: &Manifest,
    new_ops: &BTreeSet<String>,
    capability: Option<&Contract>,
) -> DerivedRisk {
    let mut reasons = Vec::new();
    let both_fit = capability
        .is_some_and(|c| contract_fits(c, &parent.contract).is_ok() && contract_fits(c, &child.contract).is_ok());
    if child.contract != parent.contract && !both_fit && !narrows(&parent.contract, &child.contract) {
        reasons.push("the contract differs from the parent's".to_owned());
    }
    if child.data_classification != parent.data_classification {
        reasons.push(format!(
            "data classification changes from {} to {}",
            parent.data_classification, child.data_classification
        ));
    }
    if child.capability != parent.capability {
        reasons.push(format!("capability changes from `{}` to `{}`", parent.capability, child.capability));
    }
    if child.kind != parent.kind {
        reasons.push(format!("package kind changes from {} to {}", parent.kind, child.kind));
    }
    let expected = expected_new_ops(child.lineage.operator);
    let unexplained: Vec<&String> = new_ops.difference(&expected).collect();
    if !unexplained.is_empty() {
        let names: Vec<&str> = unexplained.iter().map(|s| s.as_str()).collect();
        reasons.push(format!(
            "code semantics: the graph gains operator types {} that `{}` does not explain",
            names.join(", "),
            child.lineage.operator
        ));
    }
    let derived = if reasons.is_empty() { RiskTier::Low } else { RiskTier::High };
    DerivedRisk { declared: child.risk_tier, derived, reasons }
}

/// Whether `child` is `parent` with some symbolic dimensions fixed, and nothing else changed.
fn narrows(parent: &Contract, child: &Contract) -> bool {
    let side = |p: &[crate::manifest::TensorSpec], c: &[crate::manifest::TensorSpec]| {
        p.len() == c.len()
            && p.iter().zip(c).all(|(p, c)| {
                p.name == c.name
                    && p.dtype == c.dtype
                    && p.shape.len() == c.shape.len()
                    && p.shape
                        .iter()
                        .zip(&c.shape)
                        .all(|(pd, cd)| pd == cd || matches!((pd, cd), (Dim::Symbol(_), Dim::Fixed(_))))
            })
    };
    side(&parent.inputs, &child.inputs) && side(&parent.outputs, &child.outputs)
}

/// How the descendants were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRun {
    /// An operator the hub ran itself (`int8`, `fp16`).
    Builtin {
        /// Its name.
        name: String,
    },
    /// An external command: `COMMAND INPUT OUTPUT`.
    External {
        /// The command line as given.
        command: String,
        /// The champion's model digest (the input).
        input: Digest,
    },
}

/// One descendant in a cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Its package.
    pub package: Digest,
    /// `name@version`.
    pub label: String,
    /// Its model's digest (for an external operator, the output's).
    pub model: Digest,
    /// The operator's parameters for it.
    pub parameters: BTreeMap<String, String>,
    /// Its risk, declared and derived.
    pub risk: DerivedRisk,
    /// The decision.
    pub verdict: Verdict,
}

/// A whole cycle: write-once, addressed by its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleRecord {
    /// The capability.
    pub capability: String,
    /// The champion.
    pub champion: Digest,
    /// The suite every run used, and its name.
    pub suite: Digest,
    /// The suite's name.
    pub suite_name: String,
    /// The operator.
    pub operator: OperatorRun,
    /// Rounds each subject ran.
    pub rounds: u32,
    /// The thresholds that decided.
    pub thresholds: Thresholds,
    /// Every run, in the order it ran.
    pub runs: Vec<Run>,
    /// The champion's and the no-op's medians, and the noise band per metric.
    pub champion_metrics: BTreeMap<String, f64>,
    /// The no-op's medians.
    pub noop_metrics: BTreeMap<String, f64>,
    /// Noise band per metric.
    pub noise: BTreeMap<String, f64>,
    /// The descendants, with their verdicts.
    pub candidates: Vec<Candidate>,
    /// The promoted candidate, if any.
    pub promoted: Option<Digest>,
    /// What happened after: a shadow release's id, or why none was started.
    pub follow_up: Option<String>,
    /// When (the injected clock).
    pub at: UnixSeconds,
}

impl CycleRecord {
    /// Canonical CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        canonical::to_vec(self).unwrap_or_default()
    }

    /// The record's id.
    pub fn id(&self) -> Digest {
        Digest::of(&self.to_cbor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DataClassification;

    fn run(subject: Subject, round: u32, m: &[(&str, f64)]) -> Run {
        Run {
            subject,
            round,
            record: Digest::of(&[round as u8]),
            metrics: m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn the_schedule_interleaves_every_subject_each_round_with_a_rotating_start() {
        let s = schedule(2, 2);
        assert_eq!(s.len(), 8);
        assert_eq!(s[0], (0, Subject::Champion));
        assert_eq!(s[4], (1, Subject::Noop));
        assert_eq!(s[7], (1, Subject::Champion));
    }

    #[test]
    fn a_candidate_worse_than_the_noop_noise_band_is_rejected_with_the_reason() {
        let base =
            |acc: f64, lat: f64, size: f64| vec![("top1_accuracy", acc), ("latency_p50_ms", lat), ("size_bytes", size)];
        let runs = vec![
            run(Subject::Champion, 0, &base(0.90, 10.0, 1000.0)),
            run(Subject::Noop, 0, &base(0.88, 10.4, 1000.0)),
            // Within noise (0.02) + 0.01 of the champion, half the size: passes.
            run(Subject::Descendant(0), 0, &base(0.875, 10.2, 500.0)),
            // 0.05 below: beyond the band.
            run(Subject::Descendant(1), 0, &base(0.85, 9.0, 400.0)),
            // As good, no smaller, not faster beyond noise: no gain.
            run(Subject::Descendant(2), 0, &base(0.90, 10.1, 990.0)),
        ];
        let v = decide(&runs, 3, &Thresholds::default(), Some(2000));
        assert_eq!(v[0].outcome, Outcome::Promoted, "{v:?}");
        assert_eq!(v[1].outcome, Outcome::Rejected);
        assert_eq!(
            v[1].reasons,
            ["top1_accuracy 0.8500 vs champion 0.9000: drop 0.0500 > noise 0.0200 + max_quality_drop 0.01"]
        );
        assert_eq!(v[2].outcome, Outcome::Rejected);
        assert!(v[2].reasons[0].starts_with("no gain beyond noise"), "{:?}", v[2].reasons);
        // Over the capability's size budget is a rejection too.
        assert!(decide(&runs, 1, &Thresholds::default(), Some(400))[0].reasons[0].contains("budget 400"));
    }

    fn manifest() -> Manifest {
        crate::testkit::AffineManifest::new("a", "1.0.0", 1.0, 0.0).manifest()
    }

    #[test]
    fn a_data_class_change_is_high_risk_even_if_declared_low() {
        let parent = manifest();
        let mut child = manifest();
        child.lineage.operator = LineageOperator::Quantize;
        child.risk_tier = RiskTier::Low;
        child.data_classification = DataClassification::Restricted;
        let r = derive_risk(&parent, &child, &BTreeSet::new(), None);
        assert_eq!((r.declared, r.derived, r.effective()), (RiskTier::Low, RiskTier::High, RiskTier::High));
        assert_eq!(
            r.reasons,
            [format!("data classification changes from {} to restricted", parent.data_classification)]
        );
    }

    #[test]
    fn new_operator_types_are_code_and_high_risk_unless_the_operator_explains_them() {
        let parent = manifest();
        let mut child = manifest();
        child.lineage.operator = LineageOperator::Quantize;
        let dq: BTreeSet<String> = ["DequantizeLinear".to_owned()].into();
        assert_eq!(derive_risk(&parent, &child, &dq, None).effective(), RiskTier::Low);
        child.lineage.operator = LineageOperator::FineTune;
        let r = derive_risk(&parent, &child, &dq, None);
        assert_eq!(r.derived, RiskTier::High);
        assert!(r.reasons[0].starts_with("code semantics"), "{r:?}");
        // A contract change is high risk; fixing a symbolic dimension is not a change.
        let mut renamed = manifest();
        renamed.contract.inputs[0].name = "input".into();
        assert_eq!(derive_risk(&parent, &renamed, &BTreeSet::new(), None).derived, RiskTier::High);
        let mut narrowed = manifest();
        narrowed.contract.inputs[0].shape[0] = Dim::Fixed(1);
        assert_eq!(derive_risk(&parent, &narrowed, &BTreeSet::new(), None).derived, RiskTier::Low);
        // The declared tier still applies when higher.
        child.risk_tier = RiskTier::Medium;
        assert_eq!(derive_risk(&parent, &child, &BTreeSet::new(), None).effective(), RiskTier::Medium);
    }
}
