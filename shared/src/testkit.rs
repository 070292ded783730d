//! Builders for tests: tiny ONNX models generated in code, and manifests that describe them.
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
    let dim = |v: PbDim| Dimension { denotation: String::new(), value: Some(v) };
    let value_info = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![dim(PbDim::DimParam("N".into())), dim(PbDim::DimValue(4))],
                }),
            })),
        }),
        doc_string: String::new(),
    };
    let scalar = |name: &str, v: f32| pb::TensorProto {
        name: name.into(),
        data_type: 1,
        dims: vec![],
        float_data: vec![v],
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
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
        }
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
shape = ["N", 4]

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
        )
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_toml(&self.toml(), "testkit.toml").expect("testkit manifests are valid")
    }
}
