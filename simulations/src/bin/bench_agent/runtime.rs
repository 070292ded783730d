//! Section `runtime`: tract as the agent serves a model against onnxruntime on one thread
//! (`scripts/bench-agent-ort.py`), same inputs and answers, alternating rounds, the median round counting.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use outpost_shared::manifest::ElementType;
use outpost_shared::model;

use crate::api::per_run;
use crate::fixtures::Loaded;
use crate::report::{Latency, latency, micros};
use crate::{RUNTIME_BUDGET, RUNTIME_ROUNDS, now, repo_root};
use outpost_sim::http::data_json;

/// What `scripts/bench-agent-ort.py` printed.
pub(crate) struct OrtResult {
    pub(crate) onnxruntime: String,
    pub(crate) median_us: f64,
    pub(crate) p99_us: f64,
    runs: u64,
    pub(crate) load_ms: f64,
    /// The first values of each output, by name.
    outputs: serde_json::Value,
}

impl OrtResult {
    fn parse(json: &[u8]) -> Result<OrtResult> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        let num = |k: &str| v[k].as_f64().with_context(|| format!("onnxruntime result has no {k}"));
        Ok(OrtResult {
            onnxruntime: v["onnxruntime"].as_str().unwrap_or("?").to_owned(),
            median_us: num("median_us")?,
            p99_us: num("p99_us")?,
            runs: num("runs")? as u64,
            load_ms: num("load_ms")?,
            outputs: v["outputs"].clone(),
        })
    }
}

fn dtype_name(t: ElementType) -> &'static str {
    match t {
        ElementType::F32 => "f32",
        ElementType::F64 => "f64",
        ElementType::I8 => "i8",
        ElementType::U8 => "u8",
        ElementType::I32 => "i32",
        ElementType::I64 => "i64",
        ElementType::Bool => "bool",
    }
}

fn onnxruntime(l: &Loaded, tmp: &Path, iterations: usize) -> Result<OrtResult> {
    let inputs: Vec<serde_json::Value> = l
        .inputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "dtype": dtype_name(t.dtype()), "data": data_json(&t.data),
            })
        })
        .collect();
    let request = tmp.join(format!("{}-ort.json", l.name()));
    std::fs::write(
        &request,
        serde_json::to_vec(&serde_json::json!({"iterations": iterations, "warmup": 50, "inputs": inputs}))?,
    )?;
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/bench-agent-ort.py"))
        .arg(&l.model_path)
        .arg(&request)
        .stderr(Stdio::inherit())
        .output()
        .context("python3 not found: run scripts/bench-agent, which installs onnxruntime")?;
    ensure!(
        out.status.success(),
        "scripts/bench-agent-ort.py failed (is onnxruntime installed? scripts/bench-agent installs it)"
    );
    OrtResult::parse(&out.stdout)
}

/// Times `LoadedModel::run` `iterations` times after a warm-up.
fn tract_latency(l: &Loaded, model: &model::LoadedModel, iterations: usize) -> Result<Latency> {
    for _ in 0..50 {
        model.run(l.inputs.clone())?;
    }
    let mut v = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let inputs = l.inputs.clone();
        let start = now();
        let out = model.run(inputs)?;
        v.push(micros(start.elapsed()));
        std::hint::black_box(out);
    }
    Ok(latency(v))
}

/// The median round of each side (by median latency), and the runs per round.
pub(crate) struct RuntimeComparison {
    pub(crate) tract: Latency,
    pub(crate) tract_fixed: Latency,
    pub(crate) ort: OrtResult,
    pub(crate) iterations: usize,
}

fn median_round<T>(mut rounds: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds.swap_remove(rounds.len() / 2)
}

pub(crate) fn bench_runtimes(l: &Loaded, tmp: &Path) -> Result<RuntimeComparison> {
    let iterations = (RUNTIME_BUDGET.as_secs_f64() / per_run(l)?.as_secs_f64()).clamp(100.0, 10_000.0) as usize;
    // For reference: a plan for the smoke test's shapes only, every dimension fixed before optimising.
    let fixed = model::load(&l.model_bytes, &l.manifest)?;
    let outputs = l.served.model().run(l.inputs.clone())?;
    let (mut ort, mut tract, mut tract_fixed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNTIME_ROUNDS {
        let o = onnxruntime(l, tmp, iterations)?;
        ensure!(o.runs as usize == iterations, "onnxruntime ran {} times, not {iterations}", o.runs);
        // Same inputs, same answers (first values of each output).
        for t in &outputs {
            let ours = t.data.to_f64();
            let theirs =
                o.outputs[&t.name].as_array().with_context(|| format!("onnxruntime has no output {}", t.name))?;
            for (a, b) in ours.iter().zip(theirs.iter().filter_map(serde_json::Value::as_f64)) {
                ensure!((a - b).abs() < 1e-3, "output {}: tract {a}, onnxruntime {b}", t.name);
            }
        }
        ort.push(o);
        tract.push(tract_latency(l, l.served.model(), iterations)?);
        tract_fixed.push(tract_latency(l, &fixed, iterations)?);
    }
    Ok(RuntimeComparison {
        tract: median_round(tract, |t| t.median),
        tract_fixed: median_round(tract_fixed, |t| t.median),
        ort: median_round(ort, |o| o.median_us),
        iterations,
    })
}
