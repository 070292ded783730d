//! Section `runtime`: tract as the agent serves a model against a plan made for the request's shapes alone and
//! against onnxruntime on one thread (`scripts/bench-agent-ort.py`), same inputs and answers, at each input size
//! the model is benchmarked at; alternating rounds, the median round counting.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use outpost_shared::manifest::ElementType;
use outpost_shared::model::{self, NamedTensor};

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

/// Writes the request `scripts/bench-agent-ort.py` reads: these inputs, run `iterations` times after a warm-up.
pub(crate) fn ort_request(l: &Loaded, inputs: &[NamedTensor], tmp: &Path, iterations: usize) -> Result<PathBuf> {
    let inputs: Vec<serde_json::Value> = inputs
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
        serde_json::to_vec(
            &serde_json::json!({"iterations": iterations, "warmup": (iterations / 4).clamp(5, 50), "inputs": inputs}),
        )?,
    )?;
    Ok(request)
}

fn onnxruntime(l: &Loaded, inputs: &[NamedTensor], tmp: &Path, iterations: usize) -> Result<OrtResult> {
    let request = ort_request(l, inputs, tmp, iterations)?;
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

/// One run of `m` on a copy of `inputs` (the copy not timed), in microseconds.
fn timed_run(m: &model::LoadedModel, inputs: &[NamedTensor]) -> Result<f64> {
    let inputs = inputs.to_vec();
    let start = now();
    let out = m.run(inputs)?;
    let took = micros(start.elapsed());
    std::hint::black_box(out);
    Ok(took)
}

/// Times the plan the agent serves (`served`) and a plan made for these shapes alone (`fixed`) on the same
/// inputs, interleaved (one run each per step, their order swapped every step) so that neither side gets the
/// quieter moments or the warmer caches: medians of each.
fn served_and_fixed(
    served: &model::LoadedModel,
    fixed: &model::LoadedModel,
    inputs: &[NamedTensor],
    iterations: usize,
) -> Result<(Latency, Latency)> {
    for _ in 0..20 {
        served.run(inputs.to_vec())?;
        fixed.run(inputs.to_vec())?;
    }
    let (mut a, mut b) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for i in 0..iterations {
        if i % 2 == 0 {
            a.push(timed_run(served, inputs)?);
            b.push(timed_run(fixed, inputs)?);
        } else {
            b.push(timed_run(fixed, inputs)?);
            a.push(timed_run(served, inputs)?);
        }
    }
    Ok((latency(a), latency(b)))
}

/// The same two plans timed the way this section did until 2026-12-07: all of `served`'s runs, then all of
/// `fixed`'s, each after its own warm-up (an info row: what the order alone does to the figures).
fn served_then_fixed(
    served: &model::LoadedModel,
    fixed: &model::LoadedModel,
    inputs: &[NamedTensor],
    iterations: usize,
) -> Result<(Latency, Latency)> {
    let block = |m: &model::LoadedModel| -> Result<Latency> {
        for _ in 0..20 {
            m.run(inputs.to_vec())?;
        }
        let v = (0..iterations).map(|_| timed_run(m, inputs)).collect::<Result<Vec<_>>>()?;
        Ok(latency(v))
    };
    Ok((block(served)?, block(fixed)?))
}

/// One input size of one model: the median round of each side (by median latency), and the runs per round.
pub(crate) struct RuntimeComparison {
    /// The input shapes, as `[1, 3, 48, 192]` (the first input's, and more if there are more inputs).
    pub(crate) shapes: String,
    pub(crate) tract: Latency,
    pub(crate) tract_fixed: Latency,
    /// Served and fixed timed in blocks, served first, right after onnxruntime's process (the earlier method).
    pub(crate) blocks: (Latency, Latency),
    pub(crate) ort: OrtResult,
    pub(crate) iterations: usize,
}

fn median_round<T>(mut rounds: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds.swap_remove(rounds.len() / 2)
}

/// The model at each of its sizes (the smoke test's, then `other_sizes`): tract as the agent serves it, tract
/// with a plan for that size alone (`model::load` with the smoke test's shapes set to it), and onnxruntime, in
/// alternating rounds.
pub(crate) fn bench_runtimes(l: &Loaded, tmp: &Path) -> Result<Vec<RuntimeComparison>> {
    std::iter::once(&l.inputs).chain(&l.other_sizes).map(|inputs| bench_size(l, inputs, tmp)).collect()
}

fn bench_size(l: &Loaded, inputs: &[NamedTensor], tmp: &Path) -> Result<RuntimeComparison> {
    let served = l.served.model();
    // The reference: a plan for these shapes only, every dimension fixed before optimising.
    let mut manifest = l.manifest.clone();
    for t in &mut manifest.smoke_test.inputs {
        let given = inputs.iter().find(|i| i.name == t.name).context("an input of every name")?;
        t.shape = given.shape.iter().map(|&d| d as u64).collect();
    }
    let fixed = model::load(&l.model_bytes, &manifest)?;
    let one = latency((0..5).map(|_| timed_run(&fixed, inputs)).collect::<Result<_>>()?).median;
    let iterations = (RUNTIME_BUDGET.as_secs_f64() * 1e6 / one).clamp(20.0, 10_000.0) as usize;
    let outputs = served.run(inputs.to_vec())?;
    // As on a device once the same request shapes recurred: a plan the model builds for them in the background
    // (`Planning::Symbolic`) is ready before anything is timed.
    for _ in 0..model::PLAN_RECURRING_AFTER {
        served.run(inputs.to_vec())?;
    }
    let deadline = now() + std::time::Duration::from_secs(60);
    while !served.settled() && now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (mut ort, mut tract, mut tract_fixed, mut blocks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNTIME_ROUNDS {
        let o = onnxruntime(l, inputs, tmp, iterations)?;
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
        blocks.push(served_then_fixed(served, &fixed, inputs, iterations)?);
        let (s, f) = served_and_fixed(served, &fixed, inputs, iterations)?;
        tract.push(s);
        tract_fixed.push(f);
    }
    Ok(RuntimeComparison {
        shapes: inputs.iter().map(|t| format!("{:?}", t.shape)).collect::<Vec<_>>().join(" "),
        tract: median_round(tract, |t| t.median),
        tract_fixed: median_round(tract_fixed, |t| t.median),
        blocks: median_round(blocks, |(s, f)| s.median / f.median),
        ort: median_round(ort, |o| o.median_us),
        iterations,
    })
}
