//! Evaluation suites and records: the suite a capability's packages are measured on (its TOML, and the canonical
//! manifest whose digest is the suite's address), the record one run leaves, the metrics, and whether a package's
//! evaluation card is backed by records.
//!
//! Invariants: a suite's digest is SHA-256 of its canonical manifest, which lists every data file by digest, so one
//! suite digest names one set of bytes; a record's id is the digest of its canonical form. Pure: the hub reads the
//! files, runs the model and stores the results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::clock::UnixSeconds;
use crate::config::{self, ConfigError};
use crate::digest::Digest;
use crate::manifest::{EvaluationCard, validate_capability_name};

/// The suite's TOML inside its directory.
pub const SUITE_FILE: &str = "suite.toml";
/// Largest `suite.toml`, in bytes.
pub const MAX_SUITE_TOML_BYTES: usize = 64 * 1024;
/// Most data files one suite may name.
pub const MAX_SUITE_FILES: usize = 64;
/// Most timed runs (and warm-up runs) a suite may ask for.
pub const MAX_RUNS: u32 = 100_000;
/// Largest relative difference between a card's claim and the record for the claim to count as backed.
pub const CLAIM_TOLERANCE: f64 = 1e-6;

/// The metrics where higher is better and a drop is a loss of quality, as records name them.
pub const QUALITY_METRICS: [&str; 3] = ["top1_accuracy", "frame_accuracy", "agreement"];

/// What a suite measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of samples whose first output's argmax is the label (`top1_accuracy`; needs `labels`).
    Top1Accuracy,
    /// Share of the first output's elements on the label's side of 0.5, over every element of every sample: a
    /// binary decision per element, as a VAD's per-frame speech probability (`frame_accuracy`; needs `labels`,
    /// 0 or 1 per element, each sample shaped as the first output).
    FrameAccuracy,
    /// Share of samples whose first output's argmax is the reference's (`agreement`; needs `[reference]`).
    Agreement,
    /// Largest absolute difference from the reference outputs over every element (`max_abs_diff`).
    MaxAbsDiff,
    /// p50 and p95 latency of one run, in milliseconds (`latency_p50_ms`, `latency_p95_ms`).
    Latency,
    /// Peak resident memory while loading and running, in bytes (`peak_memory_bytes`).
    PeakMemory,
    /// Package size in bytes (`size_bytes`).
    Size,
}

/// How the measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalBudget {
    /// Inference threads (tract on the hub runs one; a suite stating more is refused at `eval run`).
    pub threads: u32,
    /// Untimed runs first.
    pub warmup: u32,
    /// Timed runs (cycling over the samples) for the latency figures.
    pub runs: u32,
}

/// A suite as its author writes `suite.toml`. Array references are `file.npy`, or `file.npz:array`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteToml {
    /// Suite name: lowercase letters, digits, `-`, `_`, `.` (one name, one digest, for ever).
    pub name: String,
    /// The capability whose packages it measures.
    pub capability: String,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Contract input name → its samples. An array of rank r+1 (r = the input's rank) holds samples along its
    /// first axis, each of rank r (`[S, 1, 3, 48, 192]` for `x[N, 3, 48, 192]`); an array of rank r is one sample,
    /// given with every sample (a recurrent model's initial state).
    pub inputs: BTreeMap<String, String>,
    /// Labels: one class per sample (`top1_accuracy`), or a 0/1 label per element of the first output
    /// (`frame_accuracy`), samples along the first axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// What to compare outputs with.
    #[serde(default, skip_serializing_if = "Reference::is_empty")]
    pub reference: Reference,
    /// What to compute.
    pub metrics: BTreeSet<Metric>,
    /// How to run.
    pub budget: EvalBudget,
}

/// Reference outputs: recorded arrays and/or a reference package run on the same inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Contract output name → reference outputs, samples along the first axis as for inputs.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// A registered package whose outputs are the reference (run by `eval run` beside the package).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Digest>,
}

impl Reference {
    /// No reference at all.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.package.is_none()
    }
}

/// One data file of a suite, by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// SHA-256 of the file (its blob's address).
    pub digest: Digest,
    /// Its length in bytes.
    pub len: u64,
}

/// The canonical suite manifest: the TOML's content and each data file's digest. Its digest is the suite's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteManifest {
    /// The suite as written.
    pub suite: SuiteToml,
    /// Every data file named in it, by file name.
    pub files: BTreeMap<String, FileEntry>,
}

impl SuiteManifest {
    /// Canonical CBOR, the form stored and hashed.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Strings, numbers, sequences and string-keyed maps only: encoding cannot fail.
        canonical::to_vec(self).unwrap_or_default()
    }

    /// The suite's digest: SHA-256 of [`SuiteManifest::to_cbor`].
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_cbor())
    }

    /// Decodes a stored manifest.
    pub fn from_cbor(bytes: &[u8]) -> Result<SuiteManifest, String> {
        canonical::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Splits an array reference into its file and, for `.npz`, the array inside.
pub fn array_ref(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once(':') {
        Some((file, array)) if file.ends_with(".npz") => (file, Some(array)),
        _ => (reference, None),
    }
}

impl SuiteToml {
    /// Parses and validates `suite.toml`; `path` names it in errors, which name the dotted field.
    pub fn from_toml(text: &str, path: &Path) -> Result<SuiteToml, ConfigError> {
        config::parse_validated(text, path, MAX_SUITE_TOML_BYTES, SuiteToml::validate)
    }

    /// Every data file the suite names (file names within its directory).
    pub fn files(&self) -> BTreeSet<&str> {
        let refs = self.inputs.values().chain(&self.labels).chain(self.reference.outputs.values());
        refs.map(|r| array_ref(r).0).collect()
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, p: &str| Err((f.to_owned(), p.to_owned()));
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        };
        if !ok_name(&self.name) {
            return fail("name", "must be 1–128 of a-z, 0-9, `-`, `_`, `.`");
        }
        validate_capability_name(&self.capability).or_else(|p| fail("capability", &p))?;
        if self.inputs.is_empty() {
            return fail("inputs", "must give an array for every contract input");
        }
        let refs = self.inputs.iter().map(|(k, v)| (format!("inputs.{k}"), v));
        let refs = refs.chain(self.labels.iter().map(|v| ("labels".to_owned(), v)));
        let refs = refs.chain(self.reference.outputs.iter().map(|(k, v)| (format!("reference.outputs.{k}"), v)));
        for (field, r) in refs {
            let (file, _) = array_ref(r);
            let plain = file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !plain || file.starts_with('.') || !(file.ends_with(".npy") || file.ends_with(".npz")) {
                return fail(&field, "must name a .npy file (or `file.npz:array`) in the suite's directory");
            }
        }
        if self.files().len() > MAX_SUITE_FILES {
            return fail("inputs", &format!("a suite names at most {MAX_SUITE_FILES} files"));
        }
        if self.metrics.is_empty() {
            return fail("metrics", "must name at least one metric");
        }
        for (metric, name) in [(Metric::Top1Accuracy, "top1_accuracy"), (Metric::FrameAccuracy, "frame_accuracy")] {
            if self.metrics.contains(&metric) && self.labels.is_none() {
                return fail("labels", &format!("`{name}` needs labels"));
            }
        }
        let compares = self.metrics.contains(&Metric::Agreement) || self.metrics.contains(&Metric::MaxAbsDiff);
        if compares && self.reference.is_empty() {
            return fail("reference", "`agreement` and `max_abs_diff` need reference outputs or a reference package");
        }
        let b = &self.budget;
        if b.threads == 0 {
            return fail("budget.threads", "must be at least 1");
        }
        if b.runs == 0 || b.runs > MAX_RUNS || b.warmup > MAX_RUNS {
            return fail("budget.runs", &format!("runs must be 1–{MAX_RUNS}, warmup at most {MAX_RUNS}"));
        }
        Ok(())
    }
}

/// The machine a record was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`'s `model name`).
    pub cpu: String,
    /// Logical CPUs the machine has.
    pub cpus: u32,
    /// Inference threads used.
    pub threads: u32,
}

/// What one `eval run` measured: write-once, addressed by its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    /// The package measured.
    pub package: Digest,
    /// The suite's digest.
    pub suite: Digest,
    /// The suite's name.
    pub suite_name: String,
    /// Metric name → value (`top1_accuracy`, `agreement`, `max_abs_diff`, `latency_p50_ms`, `latency_p95_ms`,
    /// `peak_memory_bytes`, `size_bytes`).
    pub metrics: BTreeMap<String, f64>,
    /// Samples evaluated.
    pub samples: u64,
    /// Where.
    pub machine: Machine,
    /// The hub's version (the agent shares it) and tract's.
    pub versions: BTreeMap<String, String>,
    /// When (Unix seconds, the injected clock).
    pub at: UnixSeconds,
}

impl EvaluationRecord {
    /// Canonical CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        canonical::to_vec(self).unwrap_or_default()
    }

    /// The record's id: SHA-256 of [`EvaluationRecord::to_cbor`].
    pub fn id(&self) -> Digest {
        Digest::of(&self.to_cbor())
    }
}

/// Index of the largest value (the first of equals); `None` for no values or a NaN.
pub fn argmax(values: &[f64]) -> Option<usize> {
    if values.iter().any(|v| v.is_nan()) {
        return None;
    }
    values
        .iter()
        .enumerate()
        .fold(None, |best, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// The nearest-rank percentile `p` (0–100) of `values`; `None` for none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// How a card's claimed metric stands against the package's records.
#[derive(Debug, Clone, PartialEq)]
pub enum Backing {
    /// A record on the card's suite has this value (within [`CLAIM_TOLERANCE`]).
    Backed {
        /// The record.
        record: Digest,
    },
    /// The newest record on the card's suite measured something else.
    Differs {
        /// The record.
        record: Digest,
        /// What it measured.
        recorded: f64,
    },
    /// Records on the card's suite exist but none measured this metric.
    NotMeasured,
    /// No record of this package on the card's suite.
    NoRecord,
}

impl Backing {
    /// Whether a record backs the claim.
    pub fn is_backed(&self) -> bool {
        matches!(self, Backing::Backed { .. })
    }
}

/// For each metric the card claims: its value and how records back it. `records` are the package's, any order;
/// only those on the card's suite digest count, newest first.
pub fn card_backing(card: &EvaluationCard, records: &[(Digest, EvaluationRecord)]) -> Vec<(String, f64, Backing)> {
    let mut on_suite: Vec<&(Digest, EvaluationRecord)> =
        records.iter().filter(|(_, r)| r.suite == card.suite.digest).collect();
    on_suite.sort_by_key(|(_, r)| std::cmp::Reverse(r.at));
    card.metrics
        .iter()
        .map(|(name, &claimed)| {
            let backing = if on_suite.is_empty() {
                Backing::NoRecord
            } else {
                let measured: Vec<(Digest, f64)> =
                    on_suite.iter().filter_map(|(id, r)| r.metrics.get(name).map(|&v| (*id, v))).collect();
                let close = |v: f64| (claimed - v).abs() <= CLAIM_TOLERANCE * v.abs().max(1.0);
                match (measured.iter().find(|(_, v)| close(*v)), measured.first()) {
                    (Some((id, _)), _) => Backing::Backed { record: *id },
                    (None, Some((id, v))) => Backing::Differs { record: *id, recorded: *v },
                    (None, None) => Backing::NotMeasured,
                }
            };
            (name.clone(), claimed, backing)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = r#"
name = "ocr-direction-golden"
capability = "ocr.text-direction"
metrics = ["top1_accuracy", "agreement", "max_abs_diff", "latency", "size"]
labels = "labels.npy"
[inputs]
x = "inputs.npz:x"
[reference]
outputs = { y = "reference.npy" }
[budget]
threads = 1
warmup = 2
runs = 10
"#;

    fn record(suite: Digest, at: u64, metrics: &[(&str, f64)]) -> (Digest, EvaluationRecord) {
        let r = EvaluationRecord {
            package: Digest::of(b"p"),
            suite,
            suite_name: "s".into(),
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            samples: 3,
            machine: Machine { cpu: "cpu".into(), cpus: 2, threads: 1 },
            versions: BTreeMap::new(),
            at,
        };
        (r.id(), r)
    }

    #[test]
    fn suite_toml_names_its_files_and_its_errors_name_the_field() {
        let s = SuiteToml::from_toml(SUITE, Path::new("suite.toml")).unwrap();
        assert_eq!(s.files(), ["inputs.npz", "labels.npy", "reference.npy"].into());
        assert_eq!(array_ref("inputs.npz:x"), ("inputs.npz", Some("x")));
        let key = |text: &str| match SuiteToml::from_toml(text, Path::new("suite.toml")) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(&SUITE.replace("labels = \"labels.npy\"", "")), "labels");
        assert_eq!(key(&SUITE.replace("\"inputs.npz:x\"", "\"../secret.npy\"")), "inputs.x");
        assert_eq!(key(&SUITE.replace("runs = 10", "runs = 0")), "budget.runs");
        assert_eq!(key(&SUITE.replace("\"size\"", "\"speed\"")), "metrics[4]");
    }

    #[test]
    fn the_suite_digest_changes_with_any_file() {
        let suite = SuiteToml::from_toml(SUITE, Path::new("suite.toml")).unwrap();
        let file = |b: &[u8]| FileEntry { digest: Digest::of(b), len: b.len() as u64 };
        let mut m = SuiteManifest { suite, files: [("labels.npy".to_owned(), file(b"a"))].into() };
        let before = m.digest();
        assert_eq!(SuiteManifest::from_cbor(&m.to_cbor()).unwrap().digest(), before);
        m.files.insert("labels.npy".into(), file(b"b"));
        assert_ne!(m.digest(), before);
    }

    #[test]
    fn a_card_without_a_backing_record_is_flagged() {
        let card = crate::testkit::AffineManifest::new("a", "1.0.0", 1.0, 0.0).manifest().evaluation;
        let suite = card.suite.digest;
        let claimed = card.metrics["max_abs_error"];
        // No record at all, a record on another suite, and one on the suite without the metric.
        assert_eq!(card_backing(&card, &[]), vec![("max_abs_error".into(), claimed, Backing::NoRecord)]);
        assert_eq!(
            card_backing(&card, &[record(Digest::of(b"other"), 1, &[("max_abs_error", 0.0)])])[0].2,
            Backing::NoRecord
        );
        assert_eq!(card_backing(&card, &[record(suite, 1, &[("size_bytes", 9.0)])])[0].2, Backing::NotMeasured);
        // A record that measured something else, then one that agrees.
        let off = record(suite, 1, &[("max_abs_error", 0.5)]);
        assert_eq!(
            card_backing(&card, std::slice::from_ref(&off))[0].2,
            Backing::Differs { record: off.0, recorded: 0.5 }
        );
        let good = record(suite, 2, &[("max_abs_error", 0.0)]);
        assert_eq!(card_backing(&card, &[off, good.clone()])[0].2, Backing::Backed { record: good.0 });
    }

    #[test]
    fn argmax_and_percentiles() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[1.0, f64::NAN]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
