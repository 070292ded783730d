//! Section `profile`: where one inference's time goes, per operator, in tract (the plan the agent serves,
//! `LoadedModel::profile`) and in onnxruntime (its own profiler), at each model's smoke-test size.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use crate::fixtures::Loaded;
use crate::runtime::ort_request;
use crate::{now, repo_root};

/// One side's operators: name, nodes, microseconds per run.
pub(crate) struct Profile {
    pub(crate) total_us: f64,
    pub(crate) operators: Vec<(String, usize, f64)>,
    /// tract: what making and dropping a run state costs per run, and whether serving reuses states instead.
    pub(crate) new_state_us: Option<(f64, bool)>,
    /// tract: the kernels its matrix products run on here, as tract names them.
    pub(crate) kernels: Vec<String>,
}

/// Profiled runs per side.
const RUNS: usize = 50;

/// tract's and onnxruntime's per-operator time for `l` at its smoke-test size.
pub(crate) fn bench_profile(l: &Loaded, tmp: &Path) -> Result<(Profile, Profile)> {
    let started = now();
    let elapsed = || started.elapsed();
    let model = l.served.model();
    for _ in 0..10 {
        model.run(l.inputs.clone())?;
    }
    let p = model.profile(l.inputs.clone(), RUNS, &elapsed)?;
    let per_run = |d: std::time::Duration| d.as_secs_f64() * 1e6 / RUNS as f64;
    let tract = Profile {
        total_us: p.operators.iter().map(|o| per_run(o.total)).sum(),
        operators: p.operators.iter().map(|o| (o.operator.clone(), o.nodes, per_run(o.total))).collect(),
        new_state_us: Some((per_run(p.new_state), p.reuses_states)),
        kernels: p
            .operators
            .iter()
            .flat_map(|o| o.kernels.iter().map(move |k| format!("{}: {k}", o.operator)))
            .collect(),
    };
    let request = ort_request(l, &l.inputs, tmp, RUNS)?;
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/bench-agent-ort.py"))
        .arg("--profile")
        .arg(&l.model_path)
        .arg(&request)
        .stderr(Stdio::inherit())
        .output()
        .context("python3 not found: run scripts/bench-agent, which installs onnxruntime")?;
    ensure!(out.status.success(), "scripts/bench-agent-ort.py --profile failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let operators: Vec<(String, usize, f64)> = v["operators"]
        .as_array()
        .context("onnxruntime profile has no operators")?
        .iter()
        .map(|o| {
            (
                o["operator"].as_str().unwrap_or("?").to_owned(),
                o["nodes"].as_u64().unwrap_or(0) as usize,
                o["us_per_run"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let ort = Profile { total_us: operators.iter().map(|o| o.2).sum(), operators, new_state_us: None, kernels: vec![] };
    Ok((tract, ort))
}

/// Prints both sides, the top operators of each, with their share of the run.
pub(crate) fn print_profile(name: &str, tract: &Profile, ort: &Profile) {
    println!();
    println!(
        "{name}: per operator, microseconds per run ({RUNS} runs, node time summed; tract {:.0} us, onnxruntime {:.0} \
         us)",
        tract.total_us, ort.total_us
    );
    if let Some((us, reused)) = tract.new_state_us {
        println!(
            "a new tract run state costs {us:.1} us a run; serving {}",
            if reused {
                "reuses states (no operator keeps state between runs)"
            } else {
                "makes one per run (stateful)"
            }
        );
    }
    for k in &tract.kernels {
        println!("tract kernel: {k}");
    }
    println!("| tract operator | nodes | us/run | share | onnxruntime operator | nodes | us/run | share |");
    println!("|---|---|---|---|---|---|---|---|");
    let cell = |p: &Profile, i: usize| {
        p.operators.get(i).map_or_else(
            || "| | | ".to_owned(),
            |(op, n, us)| format!("{op} | {n} | {us:.0} | {:.0}%", 100.0 * us / p.total_us.max(f64::MIN_POSITIVE)),
        )
    };
    for i in 0..tract.operators.len().max(ort.operators.len()).min(12) {
        println!("| {} | {} |", cell(tract, i), cell(ort, i));
    }
}
