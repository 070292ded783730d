//! The fixture models in `fixtures/models` loaded for serving, with their manifests' smoke-test inputs as
//! run-time tensors: what every benchmark section feeds the agent and its baselines.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use outpost_agent::inference::Served;
use outpost_shared::Manifest;
use outpost_shared::manifest::ElementType;
use outpost_shared::model::{NamedTensor, TensorData};

use crate::repo_root;

pub(crate) struct Fixture {
    model_file: &'static str,
    manifest_file: &'static str,
}

pub(crate) const FIXTURES: [Fixture; 2] = [
    Fixture { model_file: "ch_ppocr_mobile_v2.0_cls_infer.onnx", manifest_file: "ppocr-direction.toml" },
    Fixture { model_file: "silero_vad_16k_sequence.onnx", manifest_file: "silero-vad.toml" },
];

/// A fixture loaded for serving, with its smoke-test inputs in every form the benchmarks send them.
pub(crate) struct Loaded {
    pub(crate) model_path: PathBuf,
    pub(crate) manifest_text: String,
    pub(crate) manifest: Manifest,
    pub(crate) model_bytes: Vec<u8>,
    pub(crate) served: Arc<Served>,
    pub(crate) inputs: Vec<NamedTensor>,
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
        Ok(Loaded { model_path, manifest_text, manifest, model_bytes, served, inputs })
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
