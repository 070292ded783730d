//! Loading an ONNX model with tract, matching it against the manifest's contract, and running its smoke test.
//!
//! Pure computation on bytes (no I/O): the hub runs it at `package add`, the agent before activation. tract panics
//! are caught and reported as load errors, so a hostile model cannot take the caller down.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as PbDim;
use tract_onnx::prelude::*;

use crate::manifest::{Dim, ElementType, Manifest, SmokeTensor, TensorSpec};

/// Why a model was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// tract could not parse or load the model.
    #[error("model does not load in tract-onnx: {0}")]
    Load(String),
    /// The model's graph does not match the manifest's contract.
    #[error("model does not match the manifest: field `{field}`: {problem}")]
    Contract {
        /// Manifest field at fault.
        field: String,
        /// What differs.
        problem: String,
    },
    /// The smoke test could not run.
    #[error("smoke test failed to run: {0}")]
    SmokeRun(String),
    /// An output differs from the expected values by more than the tolerance.
    #[error(
        "smoke test output `{output}` is outside tolerance: element {index} is {actual}, expected {expected} \
         (|diff| {diff:.3e} > tolerance {tolerance:.3e})"
    )]
    SmokeMismatch {
        /// Output name.
        output: String,
        /// Flat index of the worst element.
        index: usize,
        /// Value produced.
        actual: f64,
        /// Value expected.
        expected: f64,
        /// Their absolute difference.
        diff: f64,
        /// The manifest's tolerance.
        tolerance: f64,
    },
    /// An output has a different shape than expected.
    #[error("smoke test output `{output}` has shape {actual:?}, expected {expected:?}")]
    SmokeShape {
        /// Output name.
        output: String,
        /// Shape produced.
        actual: Vec<usize>,
        /// Shape expected.
        expected: Vec<u64>,
    },
}

/// What a passing smoke test measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    /// Per checked output: its name and the largest absolute difference seen.
    pub outputs: Vec<(String, f64)>,
}

/// A model loaded, optimised for the smoke test's shapes, and ready to run.
pub struct LoadedModel {
    plan: std::sync::Arc<TypedRunnableModel>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish_non_exhaustive()
    }
}

/// Loads `model_bytes`, checks it against `manifest.contract`, and runs `manifest.smoke_test`.
pub fn check(model_bytes: &[u8], manifest: &Manifest) -> Result<SmokeReport, ModelError> {
    let loaded = load(model_bytes, manifest)?;
    loaded.smoke_test(manifest)
}

/// Loads the model, checks the contract, and optimises it for the smoke test's input shapes.
pub fn load(model_bytes: &[u8], manifest: &Manifest) -> Result<LoadedModel, ModelError> {
    guard(|| load_inner(model_bytes, manifest))
}

impl LoadedModel {
    /// Runs the manifest's smoke test on this model.
    pub fn smoke_test(&self, manifest: &Manifest) -> Result<SmokeReport, ModelError> {
        guard(|| self.smoke_inner(manifest))
    }

    fn smoke_inner(&self, manifest: &Manifest) -> Result<SmokeReport, ModelError> {
        let st = &manifest.smoke_test;
        let mut inputs = TVec::new();
        for name in &self.input_names {
            let t = st
                .inputs
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| ModelError::SmokeRun(format!("no smoke-test tensor for input `{name}`")))?;
            let spec = manifest
                .contract
                .inputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| ModelError::SmokeRun(format!("input `{name}` is not in the contract")))?;
            inputs.push(to_tensor(t, spec.dtype)?.into_tvalue());
        }
        let outputs = self.plan.run(inputs).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
        let mut report = Vec::new();
        for expected in &st.expected {
            let ix = self
                .output_names
                .iter()
                .position(|n| n == &expected.name)
                .ok_or_else(|| ModelError::SmokeRun(format!("model has no output `{}`", expected.name)))?;
            let actual = outputs[ix].cast_to::<f64>().map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
            let shape_ok = actual.shape().len() == expected.shape.len()
                && actual.shape().iter().zip(&expected.shape).all(|(&a, &e)| a as u64 == e);
            if !shape_ok {
                return Err(ModelError::SmokeShape {
                    output: expected.name.clone(),
                    actual: actual.shape().to_vec(),
                    expected: expected.shape.clone(),
                });
            }
            let got: Vec<f64> = actual
                .to_plain_array_view::<f64>()
                .map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?
                .iter()
                .copied()
                .collect();
            let want = expected.materialize();
            let mut worst = (0usize, 0.0f64);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = (g - w).abs();
                // NaN compares false everywhere: treat it as infinitely far off.
                let d = if d.is_nan() { f64::INFINITY } else { d };
                if d > worst.1 {
                    worst = (i, d);
                }
            }
            if worst.1 > st.tolerance {
                return Err(ModelError::SmokeMismatch {
                    output: expected.name.clone(),
                    index: worst.0,
                    actual: got[worst.0],
                    expected: want[worst.0],
                    diff: worst.1,
                    tolerance: st.tolerance,
                });
            }
            report.push((expected.name.clone(), worst.1));
        }
        Ok(SmokeReport { outputs: report })
    }

    /// Input names in the model's order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Output names in the model's order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }
}

fn guard<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(ModelError::Load(format!("tract panicked: {msg}")))
    })
}

fn load_inner(model_bytes: &[u8], manifest: &Manifest) -> Result<LoadedModel, ModelError> {
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_read(&mut &model_bytes[..]).map_err(|e| ModelError::Load(format!("{e:#}")))?;
    let graph = proto.graph.as_ref().ok_or_else(|| ModelError::Load("the model has no graph".into()))?;
    // Older exporters list initializers among the inputs; those are weights, not inputs.
    let graph_inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !graph.initializer.iter().any(|w| w.name == i.name)).collect();
    let graph_outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    match_contract("inputs", &manifest.contract.inputs, &graph_inputs)?;
    match_contract("outputs", &manifest.contract.outputs, &graph_outputs)?;

    let mut model = onnx.model_for_proto_model(&proto).map_err(|e| ModelError::Load(format!("{e:#}")))?;
    let input_names: Vec<String> = graph_inputs.iter().map(|i| i.name.clone()).collect();
    let output_names: Vec<String> = graph_outputs.iter().map(|o| o.name.clone()).collect();
    for (ix, name) in input_names.iter().enumerate() {
        let spec = manifest.contract.inputs.iter().find(|s| &s.name == name);
        let smoke = manifest.smoke_test.inputs.iter().find(|t| &t.name == name);
        if let (Some(spec), Some(smoke)) = (spec, smoke) {
            let shape: TVec<usize> = smoke.shape.iter().map(|&d| d as usize).collect();
            let fact = InferenceFact::dt_shape(datum_type(spec.dtype), shape);
            model.set_input_fact(ix, fact).map_err(|e| ModelError::Load(format!("{e:#}")))?;
        }
    }
    let plan =
        model.into_optimized().and_then(|m| m.into_runnable()).map_err(|e| ModelError::Load(format!("{e:#}")))?;
    Ok(LoadedModel { plan, input_names, output_names })
}

fn match_contract(side: &str, specs: &[TensorSpec], graph: &[&pb::ValueInfoProto]) -> Result<(), ModelError> {
    let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
    if specs.len() != graph.len() {
        return Err(ModelError::Contract {
            field: format!("contract.{side}"),
            problem: format!(
                "declares {} [{}], the model has {} [{}]",
                specs.len(),
                names(&mut specs.iter().map(|s| s.name.as_str())),
                graph.len(),
                names(&mut graph.iter().map(|g| g.name.as_str())),
            ),
        });
    }
    for (i, (spec, g)) in specs.iter().zip(graph).enumerate() {
        let at = format!("contract.{side}[{i}]");
        if spec.name != g.name {
            return Err(ModelError::Contract {
                field: format!("{at}.name"),
                problem: format!("declared `{}`, the model's {side} #{i} is `{}`", spec.name, g.name),
            });
        }
        let Some(pb::type_proto::Value::TensorType(tt)) = g.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(ModelError::Contract {
                field: format!("{at}.dtype"),
                problem: format!("the model does not declare a tensor type for `{}`", g.name),
            });
        };
        if tt.elem_type != spec.dtype.onnx_code() {
            let model_ty = ElementType::from_onnx_code(tt.elem_type)
                .map(|t| t.to_string())
                .unwrap_or_else(|| format!("ONNX type {}", tt.elem_type));
            return Err(ModelError::Contract {
                field: format!("{at}.dtype"),
                problem: format!("declared {}, the model has {model_ty}", spec.dtype),
            });
        }
        let model_dims: Vec<Option<i64>> = tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(PbDim::DimValue(v)) if *v >= 0 => Some(*v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fmt_model = |d: &[Option<i64>]| {
            d.iter().map(|x| x.map_or_else(|| "?".to_owned(), |v| v.to_string())).collect::<Vec<_>>().join(", ")
        };
        let dims_match = model_dims.len() == spec.shape.len()
            && spec.shape.iter().zip(&model_dims).all(|(s, m)| match (s, m) {
                (Dim::Fixed(n), Some(v)) => *v >= 0 && *n == *v as u64,
                (Dim::Symbol(_), None) => true,
                _ => false,
            });
        if !dims_match {
            let declared: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
            return Err(ModelError::Contract {
                field: format!("{at}.shape"),
                problem: format!("declared [{}], the model has [{}]", declared.join(", "), fmt_model(&model_dims)),
            });
        }
    }
    Ok(())
}

fn datum_type(t: ElementType) -> DatumType {
    match t {
        ElementType::F32 => f32::datum_type(),
        ElementType::F64 => f64::datum_type(),
        ElementType::I8 => i8::datum_type(),
        ElementType::U8 => u8::datum_type(),
        ElementType::I32 => i32::datum_type(),
        ElementType::I64 => i64::datum_type(),
        ElementType::Bool => bool::datum_type(),
    }
}

fn to_tensor(t: &SmokeTensor, dtype: ElementType) -> Result<Tensor, ModelError> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let values = t.materialize();
    let as_f64 = Tensor::from_shape::<f64>(&shape, &values).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
    as_f64.cast_to_dt(datum_type(dtype)).map(|c| c.into_owned()).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))
}
