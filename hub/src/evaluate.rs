//! `eval run`: measures a registered package on a registered suite with tract, offline on the hub (never on a
//! device's serving path), and stores the write-once evaluation record.
//!
//! Every sample runs once for the quality metrics; latency comes from the suite's warm-up and timed runs on the
//! injected clock's monotonic time; peak memory is the process's resident high-water mark (Linux
//! `/proc/self/status` `VmHWM`, reset through `clear_refs` first) above what it held before loading.

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_shared::clock::Clock;
use outpost_shared::evaluation::{self, EvaluationRecord, Machine, Metric, SuiteManifest, array_ref};
use outpost_shared::manifest::TensorSpec;
use outpost_shared::model::{self, LoadedModel, ModelError, NamedTensor, TensorData};
use outpost_shared::npy::{self, ArrayError, ArrayLimits};
use outpost_shared::{Digest, Manifest};

use crate::registry::{Registry, RegistryError};

/// The tract version the hub (and the agent) link, recorded with every evaluation.
pub const TRACT_VERSION: &str = "0.23.9";

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The package is not of the suite's capability.
    #[error(
        "package {package} is of capability `{package_capability}`, the suite `{suite}` measures `{suite_capability}`"
    )]
    OtherCapability {
        /// `name@version`.
        package: String,
        /// Its capability.
        package_capability: String,
        /// The suite.
        suite: String,
        /// The suite's capability.
        suite_capability: String,
    },
    /// A suite array could not be decoded or does not fit the contract.
    #[error("suite `{suite}`, {field}: {problem}")]
    BadArray {
        /// The suite.
        suite: String,
        /// `inputs.x`, `labels`, `reference.outputs.y`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The model (or the reference package's) failed to load or run.
    #[error("{package}: {source}")]
    Model {
        /// `name@version`.
        package: String,
        /// Why.
        source: ModelError,
    },
    /// The suite asks for something the hub's runner cannot do.
    #[error("suite `{suite}`: {problem}")]
    Unsupported {
        /// The suite.
        suite: String,
        /// What.
        problem: String,
    },
}

/// What `eval run` did: the stored record and its id.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The record's id.
    pub id: Digest,
    /// The record.
    pub record: EvaluationRecord,
    /// Peak memory could not be measured on this system.
    pub memory_unmeasured: bool,
}

/// A package loaded for evaluation.
struct Subject {
    label: String,
    manifest: Manifest,
    model: LoadedModel,
}

fn load(reg: &Registry, d: &Digest) -> Result<(Subject, u64), EvalError> {
    let record = reg.record(d)?.ok_or_else(|| RegistryError::UnknownPackage(d.to_hex()))?;
    let (_, manifest) = reg.manifest(d)?;
    let bytes = reg.model_of(&record)?;
    let label = format!("{}@{}", record.name, record.version);
    let model = model::load_for_serving(&bytes, &manifest)
        .map_err(|source| EvalError::Model { package: label.clone(), source })?;
    Ok((Subject { label, manifest, model }, record.package_len))
}

/// Runs suite `suite` on package `package` and stores the record.
pub fn run(reg: &Registry, clock: &Arc<dyn Clock>, package: &Digest, suite: &Digest) -> Result<Evaluated, EvalError> {
    let (_, m) = reg.suite(&suite.to_hex())?;
    let name = m.suite.name.clone();
    let bad = |field: &str, problem: String| EvalError::BadArray { suite: name.clone(), field: field.into(), problem };
    if m.suite.budget.threads != 1 {
        return Err(EvalError::Unsupported {
            suite: name.clone(),
            problem: format!("budget.threads is {}; tract on the hub runs one thread", m.suite.budget.threads),
        });
    }
    let limits = ArrayLimits::default();
    let array = |field: &str, reference: &str, tensor: &str| -> Result<NamedTensor, EvalError> {
        let (file, inside) = array_ref(reference);
        let bytes = reg.suite_file(&m, file)?;
        npy::decode(&bytes, inside, tensor, &limits).map_err(|e: ArrayError| bad(field, e.to_string()))
    };

    let baseline_rss = memory::resident();
    memory::reset_peak();
    let (subject, package_len) = load(reg, package)?;
    if subject.manifest.capability != m.suite.capability {
        return Err(EvalError::OtherCapability {
            package: subject.label,
            package_capability: subject.manifest.capability,
            suite: name,
            suite_capability: m.suite.capability,
        });
    }
    // Samples: per input, one tensor per sample.
    let mut per_input = Vec::new();
    for spec in subject.model.inputs() {
        let reference =
            m.suite.inputs.get(&spec.name).ok_or_else(|| bad("inputs", format!("no array for `{}`", spec.name)))?;
        let field = format!("inputs.{}", spec.name);
        let t = array(&field, reference, &spec.name)?;
        if t.dtype() != spec.dtype {
            return Err(bad(&field, format!("element type is {}, the contract's is {}", t.dtype(), spec.dtype)));
        }
        per_input.push(samples(t, spec).map_err(|p| bad(&field, p))?);
    }
    // An input given as one sample (a recurrent model's initial state) goes with every sample.
    let n = per_input.iter().map(Vec::len).max().unwrap_or(0);
    if n == 0 || per_input.iter().any(|s| s.len() != n && s.len() != 1) {
        return Err(bad("inputs", "every input needs the same number of samples, or one sample for all".into()));
    }
    let sample = |i: usize| per_input.iter().map(|s| s[if s.len() == 1 { 0 } else { i }].clone()).collect::<Vec<_>>();
    let run_one = |subject: &Subject, i: usize| {
        subject.model.run(sample(i)).map_err(|source| EvalError::Model { package: subject.label.clone(), source })
    };
    let outputs: Vec<Vec<NamedTensor>> = (0..n).map(|i| run_one(&subject, i)).collect::<Result<_, _>>()?;

    let mut metrics = BTreeMap::new();
    let wants = |metric| m.suite.metrics.contains(&metric);
    let first = |outs: &[NamedTensor]| outs.first().map(|t| t.data.to_f64()).unwrap_or_default();
    let labels = || array("labels", m.suite.labels.as_deref().unwrap_or_default(), "labels").map(|t| t.data.to_f64());
    if wants(Metric::Top1Accuracy) {
        let labels = labels()?;
        if labels.len() != n {
            return Err(bad("labels", format!("{} labels for {n} samples", labels.len())));
        }
        let hits =
            outputs.iter().zip(&labels).filter(|(o, l)| evaluation::argmax(&first(o)) == Some(**l as usize)).count();
        metrics.insert("top1_accuracy".to_owned(), hits as f64 / n as f64);
    }
    if wants(Metric::FrameAccuracy) {
        let labels = labels()?;
        let elements: usize = outputs.iter().map(|o| first(o).len()).sum();
        if labels.len() != elements || elements == 0 {
            return Err(bad("labels", format!("{} labels for {elements} elements of the first output", labels.len())));
        }
        let predicted = outputs.iter().flat_map(|o| first(o)).map(|p| p >= 0.5);
        let hits = predicted.zip(&labels).filter(|(p, l)| *p == (**l != 0.0)).count();
        metrics.insert("frame_accuracy".to_owned(), hits as f64 / elements as f64);
    }
    if wants(Metric::Agreement) || wants(Metric::MaxAbsDiff) {
        // Reference outputs per sample: recorded arrays, else the reference package run on the same samples.
        let reference: Vec<Vec<NamedTensor>> = if m.suite.reference.outputs.is_empty() {
            let d = m.suite.reference.package.ok_or_else(|| bad("reference", "no reference".into()))?;
            let (reference, _) = load(reg, &d)?;
            (0..n).map(|i| run_one(&reference, i)).collect::<Result<_, _>>()?
        } else {
            let mut per_output = Vec::new();
            for spec in subject.model.outputs() {
                let Some(r) = m.suite.reference.outputs.get(&spec.name) else { continue };
                let field = format!("reference.outputs.{}", spec.name);
                per_output.push(samples(array(&field, r, &spec.name)?, spec).map_err(|p| bad(&field, p))?);
            }
            if per_output.iter().any(|s| s.len() != n) {
                return Err(bad("reference.outputs", format!("every reference output needs {n} samples")));
            }
            (0..n).map(|i| per_output.iter().map(|s| s[i].clone()).collect()).collect()
        };
        let mut agree = 0usize;
        let mut max_diff = 0f64;
        for (got, want) in outputs.iter().zip(&reference) {
            for w in want {
                let g = got.iter().find(|g| g.name == w.name).map(|g| g.data.to_f64()).unwrap_or_default();
                let wv = w.data.to_f64();
                if g.len() != wv.len() {
                    return Err(bad(
                        "reference",
                        format!("output `{}`: {} elements, reference has {}", w.name, g.len(), wv.len()),
                    ));
                }
                max_diff = g
                    .iter()
                    .zip(&wv)
                    .map(|(a, b)| (a - b).abs())
                    .fold(max_diff, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) });
            }
            let w0 = want.first().map(|w| w.data.to_f64()).unwrap_or_default();
            let g0 = want
                .first()
                .and_then(|w| got.iter().find(|g| g.name == w.name))
                .map(|g| g.data.to_f64())
                .unwrap_or_default();
            if evaluation::argmax(&g0).is_some() && evaluation::argmax(&g0) == evaluation::argmax(&w0) {
                agree += 1;
            }
        }
        if wants(Metric::Agreement) {
            metrics.insert("agreement".to_owned(), agree as f64 / n as f64);
        }
        if wants(Metric::MaxAbsDiff) {
            metrics.insert("max_abs_diff".to_owned(), max_diff);
        }
    }
    if wants(Metric::Latency) {
        let b = m.suite.budget;
        for i in 0..b.warmup as usize {
            run_one(&subject, i % n)?;
        }
        let mut times = Vec::with_capacity(b.runs as usize);
        for i in 0..b.runs as usize {
            let start = clock.monotonic();
            run_one(&subject, i % n)?;
            times.push(clock.monotonic().saturating_sub(start).as_secs_f64() * 1000.0);
        }
        metrics.insert("latency_p50_ms".to_owned(), evaluation::percentile(&times, 50.0).unwrap_or_default());
        metrics.insert("latency_p95_ms".to_owned(), evaluation::percentile(&times, 95.0).unwrap_or_default());
    }
    let peak = memory::peak().zip(baseline_rss).map(|(p, b)| p.saturating_sub(b));
    if let Some(p) = peak.filter(|_| wants(Metric::PeakMemory)) {
        metrics.insert("peak_memory_bytes".to_owned(), p as f64);
    }
    if wants(Metric::Size) {
        metrics.insert("size_bytes".to_owned(), package_len as f64);
    }
    let record = EvaluationRecord {
        package: *package,
        suite: *suite,
        suite_name: name,
        metrics,
        samples: n as u64,
        machine: Machine { cpu: memory::cpu_model(), cpus: memory::cpus(), threads: 1 },
        versions: [
            ("outpost-hub".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("tract".to_owned(), TRACT_VERSION.to_owned()),
        ]
        .into(),
        at: clock.wall(),
    };
    let id = reg.evaluation_put(&record)?;
    Ok(Evaluated { id, record, memory_unmeasured: wants(Metric::PeakMemory) && peak.is_none() })
}

/// Splits a suite array into samples for `spec` (rank r): an array of rank r+1 holds samples along its first axis,
/// each of rank r (`[S, 1, 3, 48, 192]` for `x[N, 3, 48, 192]`); an array of rank r is one sample.
fn samples(t: NamedTensor, spec: &TensorSpec) -> Result<Vec<NamedTensor>, String> {
    let rank = spec.shape.len();
    if t.shape.len() == rank {
        return Ok(vec![t]);
    }
    if t.shape.len() != rank + 1 || t.shape[0] == 0 {
        return Err(format!(
            "shape {:?}: expected rank {rank} (one sample) or {} (samples along the first axis)",
            t.shape,
            rank + 1
        ));
    }
    let shape = t.shape[1..].to_vec();
    let per: usize = shape.iter().product();
    let one = |data: TensorData| NamedTensor::new(t.name.clone(), shape.clone(), data);
    macro_rules! split {
        ($v:expr, $variant:ident) => {
            if per == 0 {
                vec![one(TensorData::$variant(Vec::new())); t.shape[0]]
            } else {
                $v.chunks(per).map(|c| one(TensorData::$variant(c.to_vec()))).collect()
            }
        };
    }
    Ok(match &t.data {
        TensorData::F32(v) => split!(v, F32),
        TensorData::F64(v) => split!(v, F64),
        TensorData::I8(v) => split!(v, I8),
        TensorData::U8(v) => split!(v, U8),
        TensorData::I32(v) => split!(v, I32),
        TensorData::I64(v) => split!(v, I64),
        TensorData::Bool(v) => split!(v, Bool),
    })
}

/// The machine, as Linux's `/proc` tells it (the only place the hub reads it).
mod memory {
    fn status_kib(key: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// Resident memory now, in bytes.
    pub fn resident() -> Option<u64> {
        status_kib("VmRSS:").map(|k| k * 1024)
    }

    /// Resident high-water mark, in bytes.
    pub fn peak() -> Option<u64> {
        status_kib("VmHWM:").map(|k| k * 1024)
    }

    /// Resets the high-water mark to the current resident size (Linux ≥ 4.0); ignored where unsupported.
    pub fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// The CPU model name, or `unknown`.
    pub fn cpu_model() -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// Logical CPUs.
    pub fn cpus() -> u32 {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    }
}

/// The suite manifest's files, for `suite show`.
pub fn describe(m: &SuiteManifest) -> Vec<String> {
    m.files.iter().map(|(name, f)| format!("{name}  {} bytes  sha256 {}", f.len, f.digest)).collect()
}
