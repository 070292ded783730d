//! Builders for tests: tiny ONNX models generated in code, and manifests that describe them (and firmware images).
//!
//! One place builds every fixture, so tests across crates stay short and agree on what a valid package is.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension::Value as PbDim};

use crate::digest::Digest;
use crate::manifest::Manifest;

/// An ONNX model computing `y = x * scale + bias` on `x: f32[N, 4]` (N symbolic).
pub fn affine_model(scale: f32, bias: f32) -> Vec<u8> {
    affine_model_sized(scale, bias, 0)
}

/// Like [`affine_model`], plus an unused weight of `padding_floats` elements to make the file larger.
pub fn affine_model_sized(scale: f32, bias: f32, padding_floats: usize) -> Vec<u8> {
    let value_info = |name: &str| f32_info(name, vec![PbDim::DimParam("N".into()), PbDim::DimValue(4)]);
    let mut initializer = vec![scalar("scale", scale), scalar("bias", bias)];
    if padding_floats > 0 {
        initializer.push(pb::TensorProto {
            name: "padding".into(),
            data_type: 1,
            dims: vec![padding_floats as i64],
            raw_data: (0..padding_floats).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            ..Default::default()
        });
    }
    let graph = pb::GraphProto {
        name: "affine".into(),
        node: vec![node("Mul", &["x", "scale"], "scaled"), node("Add", &["scaled", "bias"], "y")],
        initializer,
        input: vec![value_info("x")],
        output: vec![value_info("y")],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "outpost-testkit".into(),
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A graph input or output: an f32 tensor of these dimensions.
fn f32_info(name: &str, dims: Vec<PbDim>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims.into_iter().map(|v| Dimension { denotation: String::new(), value: Some(v) }).collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// A scalar f32 initializer.
fn scalar(name: &str, v: f32) -> pb::TensorProto {
    pb::TensorProto { name: name.into(), data_type: 1, dims: vec![], float_data: vec![v], ..Default::default() }
}

/// A node with one output, named after it.
fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// Rewrites an ONNX model so that it answers exactly as before while every element of `input` is at least
/// `threshold`, and with NaN as soon as one is below: a model that passes a smoke test on bright inputs and
/// fails in the field (the demo's "fails its health window" release). Every graph output gets
/// `+ 1e-30 * sqrt(min(input) - threshold)`: a term tract cannot fold away, too small to change any value that
/// is not NaN, and added at the outputs so no clamp inside the graph can swallow the NaN.
pub fn nan_below(model: &[u8], input: &str, threshold: f32) -> Result<Vec<u8>, prost::DecodeError> {
    let mut model = pb::ModelProto::decode(model)?;
    let graph = model.graph.get_or_insert_with(Default::default);
    let name = |suffix: &str| format!("{input}__outpost_{suffix}");
    graph.initializer.extend([scalar(&name("threshold"), threshold), scalar(&name("tiny"), 1e-30)]);
    let mut min = node("ReduceMin", &[input], &name("min"));
    min.attribute.push(pb::AttributeProto {
        name: "keepdims".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 0,
        ..Default::default()
    });
    graph.node.extend([
        min,
        node("Sub", &[&name("min"), &name("threshold")], &name("shifted")),
        node("Sqrt", &[&name("shifted")], &name("sqrt")),
        node("Mul", &[&name("sqrt"), &name("tiny")], &name("nudge")),
    ]);
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for out in outputs {
        let raw = format!("{out}__outpost_raw");
        for n in &mut graph.node {
            for name in n.input.iter_mut().chain(n.output.iter_mut()).filter(|i| **i == out) {
                name.clone_from(&raw);
            }
        }
        let mut add = node("Add", &[&raw, &name("nudge")], &out);
        add.name = format!("{out}__outpost_guard");
        graph.node.push(add);
    }
    Ok(model.encode_to_vec())
}

/// Knobs for [`affine_manifest_toml`].
#[derive(Debug, Clone)]
pub struct AffineManifest {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// The model's scale (must match the model for the smoke test to pass).
    pub scale: f32,
    /// The model's bias.
    pub bias: f32,
    /// Parent digests; a fine-tune of them when non-empty.
    pub parents: Vec<Digest>,
    /// Risk tier (`low`, `medium`, `high`).
    pub risk_tier: String,
    /// Whether the contract lets input `x` hold NaN or infinities (`allow_non_finite`).
    pub allow_non_finite: bool,
}

impl AffineManifest {
    /// A low-risk root package `name@version` for `affine_model(scale, bias)`.
    pub fn new(name: &str, version: &str, scale: f32, bias: f32) -> Self {
        AffineManifest {
            name: name.into(),
            version: version.into(),
            scale,
            bias,
            parents: vec![],
            risk_tier: "low".into(),
            allow_non_finite: false,
        }
    }

    /// The same package with a contract whose input may hold NaN or infinities.
    pub fn allowing_non_finite(mut self) -> Self {
        self.allow_non_finite = true;
        self
    }

    /// The manifest as an author would write it.
    pub fn toml(&self) -> String {
        let (operator, parents) = if self.parents.is_empty() {
            ("none", String::new())
        } else {
            let list: Vec<String> = self.parents.iter().map(|d| format!("\"{d}\"")).collect();
            ("fine-tune", list.join(", "))
        };
        let expected = 1.0 * self.scale + self.bias;
        format!(
            r#"name = "{name}"
version = "{version}"
capability = "test.affine"
risk_tier = "{risk}"
data_classification = "internal"
license = "Apache-2.0"

[runtime]
min_agent_version = "0.1.0"
memory_budget_bytes = 1048576

[[contract.inputs]]
name = "x"
dtype = "f32"
shape = ["N", 4]{allow}

[[contract.outputs]]
name = "y"
dtype = "f32"
shape = ["N", 4]

[lineage]
operator = "{operator}"
parents = [{parents}]

[evaluation]
suite = {{ name = "affine-golden", digest = "{suite}" }}
metrics = {{ max_abs_error = 0.0 }}
baseline = {{ name = "analytic", metrics = {{ max_abs_error = 0.0 }} }}
decision = {{ outcome = "accepted", by = "testkit", reason = "matches the analytic result" }}

[provenance]
built_by = "outpost-testkit"
source = "generated"
revision = "1"
built_at = "2026-11-28T12:00:00Z"

[smoke_test]
tolerance = 1e-5
inputs = [{{ name = "x", shape = [2, 4], fill = 1.0 }}]
expected = [{{ name = "y", shape = [2, 4], fill = {expected:?} }}]
"#,
            name = self.name,
            version = self.version,
            risk = self.risk_tier,
            suite = Digest::of(b"affine-golden"),
            allow = if self.allow_non_finite { "\nallow_non_finite = true" } else { "" },
        )
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_toml(&self.toml(), "testkit.toml").expect("testkit manifests are valid")
    }
}

/// Deterministic firmware image bytes of `len` that differ per `seed`.
pub fn firmware_image(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8)).collect()
}

/// Knobs for a firmware package manifest ([`FirmwareManifest::toml`]); the image is any bytes.
#[derive(Debug, Clone)]
pub struct FirmwareManifest {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Hardware id the image is built for.
    pub hardware_id: String,
    /// Anti-rollback release counter.
    pub release_counter: u64,
}

impl FirmwareManifest {
    /// A low-risk root firmware package `name@version` for `hardware_id`.
    pub fn new(name: &str, version: &str, hardware_id: &str, release_counter: u64) -> Self {
        FirmwareManifest {
            name: name.into(),
            version: version.into(),
            hardware_id: hardware_id.into(),
            release_counter,
        }
    }

    /// The manifest as an author would write it.
    pub fn toml(&self) -> String {
        format!(
            r#"kind = "firmware"
name = "{name}"
version = "{version}"
capability = "firmware.sensor-hub"
risk_tier = "low"
data_classification = "internal"
license = "Apache-2.0"

[runtime]
min_agent_version = "0.1.0"
memory_budget_bytes = 65536

[firmware]
hardware_id = "{hardware_id}"
release_counter = {counter}

[lineage]
operator = "none"

[evaluation]
suite = {{ name = "hil-bench", digest = "{suite}" }}
metrics = {{ boot_ms = 120.0 }}
baseline = {{ name = "previous release" }}
decision = {{ outcome = "accepted", by = "testkit", reason = "passes the hardware-in-the-loop bench" }}

[provenance]
built_by = "outpost-testkit"
source = "generated"
revision = "1"
built_at = "2026-11-28T12:00:00Z"
"#,
            name = self.name,
            version = self.version,
            hardware_id = self.hardware_id,
            counter = self.release_counter,
            suite = Digest::of(b"hil-bench"),
        )
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_toml(&self.toml(), "testkit.toml").expect("testkit manifests are valid")
    }
}

/// An ONNX model (opset 17) computing `y = x · W` on `x: f32[1, k]` with the weight `w` (`k × n`, row-major) as
/// an initializer: a model whose weight an operator can rewrite per output channel.
pub fn matmul_model(w: &[f32], k: usize, n: usize) -> Vec<u8> {
    let info = |name: &str, cols: usize| f32_info(name, vec![PbDim::DimValue(1), PbDim::DimValue(cols as i64)]);
    let weight = pb::TensorProto {
        name: "w".into(),
        data_type: 1,
        dims: vec![k as i64, n as i64],
        raw_data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "matmul".into(),
        node: vec![node("MatMul", &["x", "w"], "y")],
        initializer: vec![weight],
        input: vec![info("x", k)],
        output: vec![info("y", n)],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "outpost-testkit".into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Runs a [`matmul_model`]-shaped model (`x: f32[1, k]`) with tract and returns `y`.
pub fn run_matmul(model: &[u8], x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(model))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("the model loads in tract");
    let input = tract_ndarray::Array2::from_shape_vec((1, x.len()), x.to_vec()).expect("x is [1, k]");
    let out = plan.run(tvec!(Tensor::from(input).into_tvalue())).expect("the model runs");
    out[0].to_plain_array_view::<f32>().expect("y is f32").iter().copied().collect()
}
