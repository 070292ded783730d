//! `outpost-hub suite …` and `eval …`: register write-once evaluation suites (NumPy arrays and what to measure),
//! run one on a package with tract on the hub, and list the evaluation records a package has.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;
use outpost_shared::Digest;
use outpost_shared::clock::format_rfc3339;
use outpost_shared::evaluation::{EvaluationRecord, SuiteManifest};

use super::Out;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum SuiteCmd {
    /// Register the suite in DIR: DIR/suite.toml (name, capability, inputs, labels, reference, metrics, budget)
    /// and the NumPy .npy files (or `file.npz:array` entries of np.savez archives) it names. The files go to the
    /// write-once blob store; the suite's digest is that of its canonical manifest, which lists each file's digest.
    /// The capability must be registered. The same suite again changes nothing; a changed suite needs a new name.
    /// Prints the suite's digest.
    Add {
        /// The suite's directory.
        dir: PathBuf,
    },
    /// List registered suites.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a suite: capability, metrics, budget, and each file with its digest.
    Show {
        /// The suite's name, digest or a unique digest prefix (8+ hex).
        suite: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum EvalCmd {
    /// Measure a package on a suite with tract, here on the hub (offline, never on a device's serving path), and
    /// store the write-once evaluation record (package, suite digest, metrics, machine, hub and tract versions,
    /// time). Metrics: top1_accuracy (a class label per sample), frame_accuracy (a 0/1 label per element of the
    /// first output, thresholded at 0.5), agreement and max_abs_diff (reference outputs or package),
    /// latency_p50_ms/latency_p95_ms (the suite's warm-up and runs, one thread), peak_memory_bytes, size_bytes.
    /// Prints the record id.
    Run {
        /// The package (digest, prefix, name@version or alias).
        package: String,
        /// The suite (name, digest or prefix).
        #[arg(long, value_name = "SUITE")]
        suite: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A package's evaluation records, oldest first.
    List {
        /// The package.
        package: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `outpost-hub suite …`.
pub fn run(cmd: SuiteCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let store = hub.store()?.evaluations();
    match cmd {
        SuiteCmd::Add { dir } => {
            let added = store.suite_add(&dir)?;
            let s = &added.manifest.suite;
            if added.added {
                writeln!(o.err, "added suite {} for {} ({} files)", s.name, s.capability, added.manifest.files.len())?;
            } else {
                writeln!(o.err, "suite {} is already registered with this digest; nothing changed", s.name)?;
            }
            writeln!(o.out, "{}", added.digest)?;
        }
        SuiteCmd::List { json } => {
            let suites = store.suites()?;
            if json {
                let rows: Vec<serde_json::Value> = suites.iter().map(|(d, m)| suite_json(d, m)).collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if suites.is_empty() {
                writeln!(o.err, "no suites yet: register one with `outpost-hub suite add DIR`")?;
            } else {
                writeln!(o.out, "{:<12}  {:<28} {:<24} METRICS", "DIGEST", "NAME", "CAPABILITY")?;
                for (d, m) in suites {
                    writeln!(
                        o.out,
                        "{:<12}  {:<28} {:<24} {}",
                        d.short(),
                        m.suite.name,
                        m.suite.capability,
                        metrics(&m)
                    )?;
                }
            }
        }
        SuiteCmd::Show { suite, json } => {
            let (d, m) = store.suite(&suite)?;
            if json {
                writeln!(o.out, "{}", serde_json::to_string_pretty(&suite_json(&d, &m))?)?;
                return Ok(0);
            }
            let s = &m.suite;
            writeln!(o.out, "suite       {} ({d})", s.name)?;
            writeln!(o.out, "capability  {}", s.capability)?;
            if let Some(desc) = &s.description {
                writeln!(o.out, "            {desc}")?;
            }
            writeln!(o.out, "metrics     {}", metrics(&m))?;
            let b = s.budget;
            writeln!(o.out, "budget      {} thread(s), {} warm-up, {} timed runs", b.threads, b.warmup, b.runs)?;
            for (k, v) in &s.inputs {
                writeln!(o.out, "input       {k} ← {v}")?;
            }
            if let Some(l) = &s.labels {
                writeln!(o.out, "labels      {l}")?;
            }
            for (k, v) in &s.reference.outputs {
                writeln!(o.out, "reference   {k} ← {v}")?;
            }
            if let Some(p) = &s.reference.package {
                writeln!(o.out, "reference   package {p}")?;
            }
            for line in outpost_hub::evaluate::describe(&m) {
                writeln!(o.out, "file        {line}")?;
            }
        }
    }
    Ok(0)
}

/// Runs `outpost-hub eval …`.
pub fn eval(cmd: EvalCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let store = hub.store()?;
    match cmd {
        EvalCmd::Run { package, suite, json } => {
            let d = store.packages().resolve(&package)?;
            let (s, _) = store.evaluations().suite(&suite)?;
            let done = outpost_hub::evaluate::run(store.registry(), hub.clock(), &d, &s)?;
            if done.memory_unmeasured {
                writeln!(o.err, "note: peak memory cannot be measured here (no /proc/self/status)")?;
            }
            if json {
                writeln!(o.out, "{}", serde_json::to_string_pretty(&record_json(&done.id, &done.record))?)?;
            } else {
                let r = &done.record;
                writeln!(o.err, "evaluated {package} on suite {} ({} samples)", r.suite_name, r.samples)?;
                for (k, v) in &r.metrics {
                    writeln!(o.err, "  {k:<18} {v}")?;
                }
                if let Some(cap) = store.capabilities().capability(&store.packages().manifest(&d)?.1.capability)? {
                    for line in over_budget(&cap.capability.budget, r) {
                        writeln!(o.err, "OVER BUDGET: {line}")?;
                    }
                }
                writeln!(o.out, "{}", done.id)?;
            }
        }
        EvalCmd::List { package, json } => {
            let d = store.packages().resolve(&package)?;
            let records = store.evaluations().evaluations(&d)?;
            if json {
                let rows: Vec<serde_json::Value> = records.iter().map(|(id, r)| record_json(id, r)).collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for (id, r) in records {
                    writeln!(o.out, "{}", record_line(&id, &r))?;
                }
            }
        }
    }
    Ok(0)
}

/// What a record measured beyond the capability's budget (latency only when measured on the budget's CPU).
pub fn over_budget(b: &outpost_shared::capability::Budget, r: &EvaluationRecord) -> Vec<String> {
    let mut out = Vec::new();
    let m = |k: &str| r.metrics.get(k).copied();
    if let Some(p95) = m("latency_p95_ms").filter(|&v| v > b.p95_latency_ms) {
        let same_cpu = r.machine.cpu == b.cpu;
        out.push(format!(
            "p95 latency {p95:.2} ms > {} ms{}",
            b.p95_latency_ms,
            if same_cpu {
                String::new()
            } else {
                format!(" (measured on {}, the budget states {})", r.machine.cpu, b.cpu)
            }
        ));
    }
    if let Some(mem) = m("peak_memory_bytes").filter(|&v| v > b.peak_memory_bytes as f64) {
        out.push(format!("peak memory {mem} bytes > {}", b.peak_memory_bytes));
    }
    if let Some(size) = m("size_bytes").filter(|&v| v > b.package_size_bytes as f64) {
        out.push(format!("package size {size} bytes > {}", b.package_size_bytes));
    }
    out
}

/// One line per record: id, suite, time, metrics.
pub fn record_line(id: &Digest, r: &EvaluationRecord) -> String {
    let ms: Vec<String> = r.metrics.iter().map(|(k, v)| format!("{k}={v:.6}")).collect();
    format!("{}  suite {} ({})  {}  {}", id.short(), r.suite_name, r.suite.short(), format_rfc3339(r.at), ms.join(" "))
}

fn metrics(m: &SuiteManifest) -> String {
    let names: Vec<String> = m
        .suite
        .metrics
        .iter()
        .map(|x| serde_json::to_value(x).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
        .collect();
    names.join(", ")
}

fn suite_json(d: &Digest, m: &SuiteManifest) -> serde_json::Value {
    serde_json::json!({ "digest": d, "suite": m.suite, "files": m.files })
}

/// A record as JSON, with its id.
pub fn record_json(id: &Digest, r: &EvaluationRecord) -> serde_json::Value {
    serde_json::json!({
        "id": id, "package": r.package, "suite": r.suite, "suite_name": r.suite_name, "metrics": r.metrics,
        "samples": r.samples, "machine": r.machine, "versions": r.versions, "at": r.at,
    })
}
