//! Model operators for the challenger loop: pure functions from ONNX model bytes to ONNX model bytes that lower the
//! precision of a model's weights (int8 with DequantizeLinear, float16 with Cast), leaving its contract alone.
//!
//! Invariants: only float tensors of rank ≥ 2 with at least `min_elements` elements (weights, not biases, batch-norm
//! vectors or shape constants) are rewritten, in the top-level graph; each keeps its name as the output of the
//! node that restores it to float, placed where the original value was defined, so consumers and topological order
//! are unchanged; every new name is unique in the graph. Here rather than in the hub: they are sans-IO computations
//! on bytes like `model`, and sit beside tract's protobuf types behind the same `runtime` feature.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::f16;

use crate::manifest::LineageOperator;

/// ONNX `TensorProto.DataType` codes used here.
const FLOAT: i32 = 1;
const INT8: i32 = 3;
const FLOAT16: i32 = 10;
/// `AttributeProto.AttributeType` codes.
const ATTR_INT: i32 = 2;
/// The first default-domain opset whose DequantizeLinear takes a per-axis (1-D) scale and an `axis`.
const PER_AXIS_OPSET: i64 = 13;
/// The first opset with DequantizeLinear at all.
const DEQUANTIZE_OPSET: i64 = 10;
/// The smallest threshold a cycle's later variants start their ×4 ladder from ([`Operator::variant`]).
pub const VARIANT_FLOOR: usize = 256;
/// Default for [`Int8::min_elements`] and [`Fp16::min_elements`]: tensors smaller than this stay float.
pub const DEFAULT_MIN_ELEMENTS: usize = 1024;

/// How int8 scales are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One scale per output channel (Conv: axis 0; MatMul: the last axis; Gemm: per `transB`); a tensor whose
    /// consumers disagree, or feed another op, falls back to one scale.
    PerChannel,
    /// One scale for the whole tensor.
    PerTensor,
}

/// Weight-only int8 quantisation: symmetric scales (`max |w| / 127`), zero point 0, values in [-127, 127].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8 {
    /// Smallest float tensor (elements) rewritten.
    pub min_elements: usize,
    /// Per output channel or per tensor.
    pub granularity: Granularity,
}

impl Default for Int8 {
    fn default() -> Self {
        Int8 { min_elements: DEFAULT_MIN_ELEMENTS, granularity: Granularity::PerChannel }
    }
}

/// float16 weights, cast back to float where they are used. Values beyond ±65504 saturate (and are counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp16 {
    /// Smallest float tensor (elements) rewritten.
    pub min_elements: usize,
}

impl Default for Fp16 {
    fn default() -> Self {
        Fp16 { min_elements: DEFAULT_MIN_ELEMENTS }
    }
}

/// An operator the hub runs itself, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Weight-only int8.
    Int8(Int8),
    /// float16 weights.
    Fp16(Fp16),
}

/// Why an operator could not rewrite a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OperatorError {
    /// The bytes are not an ONNX model (the caller handed the operator something else).
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// The model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// The model's default-domain opset predates DequantizeLinear.
    #[error("opset {opset} has no DequantizeLinear (needs {DEQUANTIZE_OPSET} or later)")]
    OpsetTooOld {
        /// The model's default-domain opset.
        opset: i64,
    },
    /// No tensor qualified: the result would be the parent itself.
    #[error("no float weight of rank ≥ 2 with at least {min_elements} elements to rewrite")]
    NothingToRewrite {
        /// The threshold that excluded everything.
        min_elements: usize,
    },
    /// A parameter was unknown or malformed (`--param`).
    #[error("operator `{operator}`: parameter `{name}`: {problem}")]
    BadParameter {
        /// The operator.
        operator: String,
        /// The parameter.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The operator name is not one the hub runs.
    #[error("unknown operator `{0}` (the hub runs `int8` and `fp16`; use --operator-cmd for anything else)")]
    UnknownOperator(String),
}

/// What an operator did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewritten {
    /// The new model.
    pub model: Vec<u8>,
    /// Tensors rewritten.
    pub tensors: usize,
    /// Of those, int8 tensors with one scale per channel.
    pub per_channel: usize,
    /// float16 elements that saturated at ±65504.
    pub saturated: u64,
    /// Bytes of float weights replaced, and the bytes that replaced them (data, scales and zero points).
    pub weight_bytes: (u64, u64),
}

impl Operator {
    /// The lineage operator a descendant made by this operator records.
    pub fn lineage(&self) -> LineageOperator {
        LineageOperator::Quantize
    }

    /// The operator's name (`int8`, `fp16`).
    pub fn name(&self) -> &'static str {
        match self {
            Operator::Int8(_) => "int8",
            Operator::Fp16(_) => "fp16",
        }
    }

    /// The parameters as recorded in lineage (`min_elements`, `granularity`).
    pub fn parameters(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        match self {
            Operator::Int8(q) => {
                p.insert("min_elements".into(), q.min_elements.to_string());
                let g = match q.granularity {
                    Granularity::PerChannel => "per-channel",
                    Granularity::PerTensor => "per-tensor",
                };
                p.insert("granularity".into(), g.into());
            }
            Operator::Fp16(h) => {
                p.insert("min_elements".into(), h.min_elements.to_string());
            }
        }
        p
    }

    /// Parses `--operator NAME` with `--param key=value` pairs (`min_elements=N`; int8 also
    /// `granularity=per-channel|per-tensor`).
    pub fn parse(name: &str, params: &[(String, String)]) -> Result<Operator, OperatorError> {
        let bad = |n: &str, p: String| OperatorError::BadParameter {
            operator: name.to_owned(),
            name: n.to_owned(),
            problem: p,
        };
        let mut op = match name {
            "int8" => Operator::Int8(Int8::default()),
            "fp16" => Operator::Fp16(Fp16::default()),
            other => return Err(OperatorError::UnknownOperator(other.to_owned())),
        };
        for (k, v) in params {
            match (k.as_str(), &mut op) {
                ("min_elements", Operator::Int8(Int8 { min_elements, .. }) | Operator::Fp16(Fp16 { min_elements })) => {
                    *min_elements = v.parse().map_err(|_| bad(k, format!("`{v}` is not a whole number")))?;
                }
                ("granularity", Operator::Int8(q)) => {
                    q.granularity = match v.as_str() {
                        "per-channel" => Granularity::PerChannel,
                        "per-tensor" => Granularity::PerTensor,
                        _ => return Err(bad(k, format!("`{v}`: expected per-channel or per-tensor"))),
                    };
                }
                _ => return Err(bad(k, "not a parameter of this operator".into())),
            }
        }
        Ok(op)
    }

    /// The `i`-th variant for a cycle (`i` from 0), so a cycle's descendants differ: the first is `self`; then int8
    /// alternates the other granularity and a size threshold four times higher for every second step (from at least
    /// [`VARIANT_FLOOR`]), and fp16 raises the threshold ×4 a step (from at least the floor).
    pub fn variant(&self, i: usize) -> Operator {
        let ladder = |m: usize, steps: usize| m.max(VARIANT_FLOOR).saturating_mul(4usize.saturating_pow(steps as u32));
        match *self {
            _ if i == 0 => *self,
            Operator::Int8(q) => {
                let flip = match q.granularity {
                    Granularity::PerChannel => Granularity::PerTensor,
                    Granularity::PerTensor => Granularity::PerChannel,
                };
                // 1: the other granularity; 2: ×4 the threshold; 3: both; 4: ×16; …
                let granularity = if i % 2 == 1 { flip } else { q.granularity };
                let min_elements = if i < 2 { q.min_elements } else { ladder(q.min_elements, i / 2) };
                Operator::Int8(Int8 { min_elements, granularity })
            }
            Operator::Fp16(h) => Operator::Fp16(Fp16 { min_elements: ladder(h.min_elements, i) }),
        }
    }

    /// Applies the operator to `model` (ONNX bytes).
    pub fn apply(&self, model: &[u8]) -> Result<Rewritten, OperatorError> {
        match self {
            Operator::Int8(q) => quantize_int8(model, q),
            Operator::Fp16(h) => fp16_weights(model, h),
        }
    }
}

/// Rewrites float weights to int8 + DequantizeLinear (per-axis from opset 13; before that DequantizeLinear with a
/// unit scale and a Mul by the per-channel scales, which every opset from 10 runs the same way).
pub fn quantize_int8(model: &[u8], params: &Int8) -> Result<Rewritten, OperatorError> {
    let mut m = decode(model)?;
    let opset = default_opset(&m);
    if opset < DEQUANTIZE_OPSET {
        return Err(OperatorError::OpsetTooOld { opset });
    }
    let graph = m.graph.as_mut().ok_or(OperatorError::NoGraph)?;
    let axes = channel_axes(graph);
    let mut names = Names::of(graph);
    let mut out = Rewritten { model: Vec::new(), tensors: 0, per_channel: 0, saturated: 0, weight_bytes: (0, 0) };
    rewrite(graph, params.min_elements, &mut |name, dims, values, new_inits| {
        let axis = match params.granularity {
            Granularity::PerChannel => axes.get(name).copied().flatten().filter(|&a| a < dims.len()),
            Granularity::PerTensor => None,
        };
        let channels = axis.map_or(1, |a| dims[a] as usize);
        // Element i belongs to channel (i / inner) % channels in row-major order.
        let inner: usize = axis.map_or(1, |a| dims[a + 1..].iter().map(|&d| d as usize).product());
        let channel = |i: usize| if channels == 1 { 0 } else { (i / inner.max(1)) % channels };
        let mut max_abs = vec![0f32; channels];
        for (i, v) in values.iter().enumerate() {
            let c = channel(i);
            max_abs[c] = max_abs[c].max(v.abs());
        }
        // An all-zero channel keeps scale 1 (its values quantise to 0 whatever the scale).
        let scales: Vec<f32> =
            max_abs.iter().map(|&m| if m > 0.0 && m.is_finite() { m / 127.0 } else { 1.0 }).collect();
        let q: Vec<u8> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((v / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8) as u8)
            .collect();
        let q_name = names.fresh(&format!("{name}_int8"));
        let mut produced = vec![tensor(&q_name, INT8, dims.to_vec(), q)];
        let mut nodes = Vec::new();
        let per_axis = axis.filter(|_| opset >= PER_AXIS_OPSET && channels > 1);
        let (scale_dims, zero_dims) = match per_axis {
            Some(_) => (vec![channels as i64], vec![channels as i64]),
            None => (vec![], vec![]),
        };
        let s_name = names.fresh(&format!("{name}_scale"));
        let z_name = names.fresh(&format!("{name}_zero_point"));
        let node_name = names.fresh(&format!("{name}_dequantize"));
        match (per_axis, axis.filter(|_| channels > 1)) {
            (Some(a), _) => {
                produced.push(tensor(&s_name, FLOAT, scale_dims, f32_bytes(&scales)));
                produced.push(tensor(&z_name, INT8, zero_dims, vec![0; channels]));
                let mut n = node(&node_name, "DequantizeLinear", &[&q_name, &s_name, &z_name], name);
                n.attribute.push(int_attr("axis", a as i64));
                nodes.push(n);
            }
            (None, Some(a)) => {
                // Opset 10–12: per-tensor DequantizeLinear at scale 1, then the per-channel scales by broadcast.
                let unit = names.fresh(&format!("{name}_unit_scale"));
                let raw = names.fresh(&format!("{name}_dequantized"));
                produced.push(tensor(&unit, FLOAT, vec![], f32_bytes(&[1.0])));
                produced.push(tensor(&z_name, INT8, vec![], vec![0]));
                let mut bshape = vec![1i64; dims.len()];
                bshape[a] = channels as i64;
                produced.push(tensor(&s_name, FLOAT, bshape, f32_bytes(&scales)));
                nodes.push(node(&node_name, "DequantizeLinear", &[&q_name, &unit, &z_name], &raw));
                let mul = names.fresh(&format!("{name}_rescale"));
                nodes.push(node(&mul, "Mul", &[&raw, &s_name], name));
            }
            (None, None) => {
                produced.push(tensor(&s_name, FLOAT, vec![], f32_bytes(&scales)));
                produced.push(tensor(&z_name, INT8, vec![], vec![0]));
                nodes.push(node(&node_name, "DequantizeLinear", &[&q_name, &s_name, &z_name], name));
            }
        }
        out.tensors += 1;
        out.per_channel += usize::from(channels > 1);
        out.weight_bytes.0 += values.len() as u64 * 4;
        out.weight_bytes.1 += produced.iter().map(|t| t.raw_data.len() as u64).sum::<u64>();
        new_inits.extend(produced);
        nodes
    });
    if out.tensors == 0 {
        return Err(OperatorError::NothingToRewrite { min_elements: params.min_elements });
    }
    out.model = m.encode_to_vec();
    Ok(out)
}

/// Rewrites float weights to float16 + Cast(to = float).
pub fn fp16_weights(model: &[u8], params: &Fp16) -> Result<Rewritten, OperatorError> {
    let mut m = decode(model)?;
    let graph = m.graph.as_mut().ok_or(OperatorError::NoGraph)?;
    let mut names = Names::of(graph);
    let mut out = Rewritten { model: Vec::new(), tensors: 0, per_channel: 0, saturated: 0, weight_bytes: (0, 0) };
    rewrite(graph, params.min_elements, &mut |name, dims, values, new_inits| {
        let mut raw = Vec::with_capacity(values.len() * 2);
        for v in values {
            let h = f16::from_f32(*v);
            let h = if h.is_infinite() && v.is_finite() {
                out.saturated += 1;
                if *v > 0.0 { f16::MAX } else { f16::MIN }
            } else {
                h
            };
            raw.extend_from_slice(&h.to_bits().to_le_bytes());
        }
        let h_name = names.fresh(&format!("{name}_fp16"));
        let node_name = names.fresh(&format!("{name}_cast"));
        out.tensors += 1;
        out.weight_bytes.0 += values.len() as u64 * 4;
        out.weight_bytes.1 += raw.len() as u64;
        new_inits.push(tensor(&h_name, FLOAT16, dims.to_vec(), raw));
        let mut n = node(&node_name, "Cast", &[&h_name], name);
        n.attribute.push(int_attr("to", i64::from(FLOAT)));
        vec![n]
    });
    if out.tensors == 0 {
        return Err(OperatorError::NothingToRewrite { min_elements: params.min_elements });
    }
    out.model = m.encode_to_vec();
    Ok(out)
}

/// The operator types a model's top-level graph uses (for risk derivation: a new type is new code on the device).
pub fn op_types(model: &[u8]) -> Result<BTreeSet<String>, OperatorError> {
    let m = decode(model)?;
    let graph = m.graph.ok_or(OperatorError::NoGraph)?;
    Ok(graph.node.into_iter().map(|n| n.op_type).collect())
}

/// The operator types an operator adds by design (DequantizeLinear and Mul for int8, Cast for fp16).
pub fn footprint(op: &Operator) -> BTreeSet<String> {
    let types: &[&str] = match op {
        Operator::Int8(_) => &["DequantizeLinear", "Mul"],
        Operator::Fp16(_) => &["Cast"],
    };
    types.iter().map(|s| (*s).to_owned()).collect()
}

fn decode(model: &[u8]) -> Result<pb::ModelProto, OperatorError> {
    pb::ModelProto::decode(model).map_err(|e| OperatorError::Decode(e.to_string()))
}

fn default_opset(m: &pb::ModelProto) -> i64 {
    m.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version)
}

/// For each tensor name consumed as a weight, the axis of its output channels; `None` where consumers disagree
/// or the use has no channel axis.
fn channel_axes(graph: &pb::GraphProto) -> BTreeMap<String, Option<usize>> {
    let rank_of = |name: &str| -> Option<usize> {
        let init = graph.initializer.iter().find(|t| t.name == name).map(|t| t.dims.len());
        init.or_else(|| {
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))
                .find_map(|n| {
                    n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()).map(|t| t.dims.len())
                })
        })
    };
    let mut axes: BTreeMap<String, Option<usize>> = BTreeMap::new();
    for n in &graph.node {
        for (slot, input) in n.input.iter().enumerate() {
            let axis = match (n.op_type.as_str(), slot) {
                ("Conv", 1) => Some(0),
                ("MatMul", 1) => rank_of(input).map(|r| r.saturating_sub(1)),
                ("Gemm", 1) => {
                    let trans_b = n.attribute.iter().find(|a| a.name == "transB").is_some_and(|a| a.i != 0);
                    Some(if trans_b { 0 } else { 1 })
                }
                _ => None,
            };
            axes.entry(input.clone()).and_modify(|a| *a = if *a == axis { *a } else { None }).or_insert(axis);
        }
    }
    axes
}

/// Given a weight's name, dims and values, pushes the tensors that replace it and returns the nodes that restore it.
type WeightRewrite<'a> = dyn FnMut(&str, &[i64], &[f32], &mut Vec<pb::TensorProto>) -> Vec<pb::NodeProto> + 'a;

/// Calls `f(name, dims, values, new_initializers)` for each qualifying float weight — initializers (not listed as
/// graph inputs, which a caller may override) and `Constant` nodes — and puts the nodes it returns where the value
/// was defined: a Constant's place, or the front of the graph for an initializer.
fn rewrite(graph: &mut pb::GraphProto, min_elements: usize, f: &mut WeightRewrite<'_>) {
    let overridable: BTreeSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let mut new_inits = Vec::new();
    let mut front = Vec::new();
    let mut kept = Vec::new();
    for t in std::mem::take(&mut graph.initializer) {
        match weight_values(&t, min_elements).filter(|_| !overridable.contains(&t.name)) {
            Some(values) => front.extend(f(&t.name, &t.dims, &values, &mut new_inits)),
            None => kept.push(t),
        }
    }
    let mut nodes = front;
    for n in std::mem::take(&mut graph.node) {
        let value = (n.op_type == "Constant" && n.output.len() == 1)
            .then(|| n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()))
            .flatten()
            .and_then(|t| weight_values(t, min_elements).map(|v| (t.dims.clone(), v)));
        match value {
            Some((dims, values)) => nodes.extend(f(&n.output[0], &dims, &values, &mut new_inits)),
            None => nodes.push(n),
        }
    }
    kept.extend(new_inits);
    graph.initializer = kept;
    graph.node = nodes;
}

/// A float tensor's values when it is a weight worth rewriting: rank ≥ 2, at least `min_elements` elements, data
/// held in the model (not external), and as many values as its dims say.
fn weight_values(t: &pb::TensorProto, min_elements: usize) -> Option<Vec<f32>> {
    if t.data_type != FLOAT || t.dims.len() < 2 || t.dims.iter().any(|&d| d < 0) || t.data_location.unwrap_or(0) != 0 {
        return None;
    }
    // Checked: a crafted model's dims must not wrap around to match a short buffer.
    let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))?;
    if n < min_elements.max(1) {
        return None;
    }
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        t.float_data.clone()
    };
    (values.len() == n).then_some(values)
}

fn tensor(name: &str, data_type: i32, dims: Vec<i64>, raw_data: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto { name: name.into(), data_type, dims, raw_data, ..Default::default() }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn node(name: &str, op_type: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        name: name.into(),
        op_type: op_type.into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: ATTR_INT, i, ..Default::default() }
}

/// Every name in use in the graph, to mint unique ones.
struct Names(BTreeSet<String>);

impl Names {
    fn of(g: &pb::GraphProto) -> Names {
        let mut s = BTreeSet::new();
        s.extend(g.initializer.iter().map(|t| t.name.clone()));
        s.extend(g.input.iter().chain(&g.output).chain(&g.value_info).map(|v| v.name.clone()));
        for n in &g.node {
            s.insert(n.name.clone());
            s.extend(n.input.iter().chain(&n.output).cloned());
        }
        Names(s)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut i = 1;
        while self.0.contains(&name) {
            i += 1;
            name = format!("{base}_{i}");
        }
        self.0.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::model::{self, NamedTensor, TensorData};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../fixtures/models/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn ppocr() -> (Vec<u8>, Manifest) {
        let text = String::from_utf8(fixture("ppocr-direction.toml")).unwrap();
        (fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx"), Manifest::from_toml(&text, "ppocr-direction.toml").unwrap())
    }

    /// Deterministic crops with structure (gradients and stripes), not just a constant fill.
    fn crops() -> Vec<NamedTensor> {
        (0..3)
            .map(|k| {
                let data: Vec<f32> = (0..3 * 48 * 192)
                    .map(|i| {
                        let (c, y, x) = (i / (48 * 192), (i / 192) % 48, i % 192);
                        ((x as f32 * 0.05 + y as f32 * 0.11 * (k + 1) as f32 + c as f32).sin() * 0.5).clamp(-1.0, 1.0)
                    })
                    .collect();
                NamedTensor::new("x", vec![1, 3, 48, 192], TensorData::F32(data))
            })
            .collect()
    }

    /// The largest absolute output difference between two models over the crops.
    fn max_diff(a: &[u8], b: &[u8], manifest: &Manifest) -> f64 {
        let (ma, mb) = (model::load_for_serving(a, manifest).unwrap(), model::load_for_serving(b, manifest).unwrap());
        crops()
            .into_iter()
            .map(|x| {
                let (ya, yb) = (ma.run(vec![x.clone()]).unwrap(), mb.run(vec![x]).unwrap());
                ya[0].data.to_f64().iter().zip(yb[0].data.to_f64()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
            })
            .fold(0.0, f64::max)
    }

    /// Every node input is a graph input, an initializer, or the output of an earlier node; no name is defined twice.
    fn assert_topologically_valid(bytes: &[u8]) {
        let g = decode(bytes).unwrap().graph.unwrap();
        let mut defined: BTreeSet<String> = g.input.iter().map(|i| i.name.clone()).collect();
        for t in &g.initializer {
            assert!(defined.insert(t.name.clone()), "{} defined twice", t.name);
        }
        for n in &g.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                assert!(defined.contains(i), "node {} reads {i} before it is defined", n.name);
            }
            for o in &n.output {
                assert!(defined.insert(o.clone()), "{o} defined twice");
            }
        }
        let node_names: Vec<&String> = g.node.iter().map(|n| &n.name).filter(|n| !n.is_empty()).collect();
        assert_eq!(node_names.len(), node_names.iter().collect::<BTreeSet<_>>().len(), "node names are unique");
    }

    // Tolerances stated for the PP-OCR classifier (softmax outputs in [0, 1]) on structured crops.
    const INT8_TOLERANCE: f64 = 0.05;
    const FP16_TOLERANCE: f64 = 2e-3;

    #[test]
    fn int8_per_channel_ppocr_loads_in_tract_stays_within_tolerance_and_shrinks_to_under_45_percent() {
        let (champion, manifest) = ppocr();
        let op = Operator::Int8(Int8 { min_elements: 0, granularity: Granularity::PerChannel });
        let done = op.apply(&champion).unwrap();
        assert_eq!(done.tensors, 54, "every rank ≥ 2 weight of the classifier");
        assert!(done.per_channel >= 50, "{done:?}");
        assert_topologically_valid(&done.model);
        let ratio = done.model.len() as f64 / champion.len() as f64;
        // 496,288 bytes of weights become a quarter, plus scales and the new nodes' names (~0.42 in all).
        assert!(ratio < 0.45, "int8 model is {} of {} bytes ({ratio:.3})", done.model.len(), champion.len());
        let diff = max_diff(&champion, &done.model, &manifest);
        assert!(diff < INT8_TOLERANCE, "int8 outputs differ from the champion's by {diff}");
    }

    #[test]
    fn int8_per_tensor_and_a_size_threshold_rewrite_fewer_tensors() {
        let (champion, _) = ppocr();
        let all = quantize_int8(&champion, &Int8 { min_elements: 0, granularity: Granularity::PerTensor }).unwrap();
        assert_eq!(all.per_channel, 0);
        let big = quantize_int8(&champion, &Int8 { min_elements: 4096, granularity: Granularity::PerChannel }).unwrap();
        assert_eq!(big.tensors, 11, "the eleven weights of 5000 elements or more");
        assert!(big.model.len() > all.model.len());
        assert_topologically_valid(&big.model);
        assert_eq!(
            quantize_int8(&champion, &Int8 { min_elements: 1_000_000, ..Int8::default() }).unwrap_err(),
            OperatorError::NothingToRewrite { min_elements: 1_000_000 }
        );
    }

    #[test]
    fn fp16_ppocr_loads_in_tract_stays_within_tolerance_and_shrinks_by_the_weights_half() {
        let (champion, manifest) = ppocr();
        let done = fp16_weights(&champion, &Fp16 { min_elements: 0 }).unwrap();
        assert_eq!((done.tensors, done.saturated), (54, 0));
        assert_topologically_valid(&done.model);
        // 496,288 bytes of float weights become 248,144 bytes of float16 (plus a few bytes of Cast nodes).
        assert_eq!(done.weight_bytes, (496_288, 248_144));
        let saved = champion.len() as i64 - done.model.len() as i64;
        assert!((240_000..=248_144).contains(&saved), "saved {saved} bytes");
        let diff = max_diff(&champion, &done.model, &manifest);
        assert!(diff < FP16_TOLERANCE, "fp16 outputs differ from the champion's by {diff}");
    }

    #[test]
    fn per_axis_dequantize_linear_from_opset_13_runs_in_tract() {
        // x[1, 64] · W[64, 32] at opset 17: W becomes int8 with 32 scales on axis 1.
        let w: Vec<f32> = (0..64 * 32).map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 32) as f32)).collect();
        let bytes = crate::testkit::matmul_model(&w, 64, 32);
        let done = quantize_int8(&bytes, &Int8 { min_elements: 16, granularity: Granularity::PerChannel }).unwrap();
        assert_eq!((done.tensors, done.per_channel), (1, 1));
        let g = decode(&done.model).unwrap().graph.unwrap();
        let dq = g.node.iter().find(|n| n.op_type == "DequantizeLinear").unwrap();
        assert_eq!(dq.attribute.iter().find(|a| a.name == "axis").map(|a| a.i), Some(1));
        assert!(!g.node.iter().any(|n| n.op_type == "Mul"), "per-axis needs no Mul at opset 13+");
        assert_topologically_valid(&done.model);
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.1).cos()).collect();
        let run = |m: &[u8]| crate::testkit::run_matmul(m, &x);
        // Mean absolute error relative to the mean output magnitude: one scale per column beats one for the whole
        // weight when columns differ in range ×32 (the worst element, in the widest column, is the same for both).
        let error = |m: &[u8]| {
            let (want, got) = (run(&bytes), run(m));
            let diff: f32 = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).sum();
            diff / want.iter().map(|v| v.abs()).sum::<f32>()
        };
        let per_tensor =
            quantize_int8(&bytes, &Int8 { min_elements: 16, granularity: Granularity::PerTensor }).unwrap();
        let (channel_err, tensor_err) = (error(&done.model), error(&per_tensor.model));
        assert!(channel_err < 0.03, "per-channel relative error {channel_err}");
        assert!(channel_err * 1.5 < tensor_err, "per-channel {channel_err} vs per-tensor {tensor_err}");
    }

    #[test]
    fn dims_that_overflow_are_not_a_weight() {
        let t = tensor("w", FLOAT, vec![1 << 62, 8], f32_bytes(&[1.0; 8]));
        assert_eq!(weight_values(&t, 0), None);
        assert_eq!(weight_values(&tensor("w", FLOAT, vec![2, 4], f32_bytes(&[1.0; 8])), 0).map(|v| v.len()), Some(8));
        assert!(matches!(quantize_int8(b"not a model", &Int8::default()), Err(OperatorError::Decode(_))));
    }

    #[test]
    fn parameters_parse_vary_and_refuse_unknown_names() {
        let op = Operator::parse("int8", &[("min_elements".into(), "256".into())]).unwrap();
        assert_eq!(op, Operator::Int8(Int8 { min_elements: 256, granularity: Granularity::PerChannel }));
        assert_eq!(op.variant(1), Operator::Int8(Int8 { min_elements: 256, granularity: Granularity::PerTensor }));
        assert_eq!(op.variant(2), Operator::Int8(Int8 { min_elements: 1024, granularity: Granularity::PerChannel }));
        assert_eq!(Operator::parse("fp16", &[]).unwrap().variant(1), Operator::Fp16(Fp16 { min_elements: 4096 }));
        assert!(matches!(
            Operator::parse("fp16", &[("granularity".into(), "per-tensor".into())]),
            Err(OperatorError::BadParameter { .. })
        ));
        assert_eq!(Operator::parse("prune", &[]).unwrap_err(), OperatorError::UnknownOperator("prune".into()));
    }
}
