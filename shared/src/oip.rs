//! The Open Inference Protocol v2 codec (KServe, Triton): a request body parsed and checked against a model's
//! contract, an answer encoded; JSON, and the binary tensor data extension. Bytes in, bytes out, no model and no
//! HTTP: the agent's API and the fuzz target `infer_request` both go through it.

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::manifest::{Dim, ElementType, MAX_CONTRACT_TENSORS, MAX_RANK, TensorSpec};
use crate::tensor::{NamedTensor, TensorData};

/// The binary tensor data extension's header (lower case, as `http` spells header names): the length of the
/// JSON object at the front of a body whose binary tensor data follows it.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A body that is not a valid OIP inference request (malformed JSON, missing field, unsupported datatype, data
/// that does not fit the datatype, unknown requested output, binary tensor data whose sizes do not add up): the
/// message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// A response body: the JSON object, followed by the binary outputs when `json_len` is given (the
/// `Inference-Header-Content-Length` to send).
pub struct Encoded {
    /// The body.
    pub body: Vec<u8>,
    /// The `Inference-Header-Content-Length` to send: `None` for an all-JSON body.
    pub json_len: Option<usize>,
}

impl Encoded {
    /// The JSON object, then the data of each binary output in order.
    ///
    /// # Errors
    /// What `serde_json` says when the JSON cannot be written (never for these types).
    pub fn of(answer: &InferResponse) -> Result<Encoded, serde_json::Error> {
        let binary_len: usize = answer.outputs.iter().filter(|t| t.binary).map(|t| byte_len(&t.data)).sum();
        let mut body = Vec::with_capacity(RESPONSE_HEADER_ESTIMATE + binary_len);
        serde_json::to_writer(&mut body, answer)?;
        let json_len = body.len();
        let mut any = false;
        for t in answer.outputs.iter().filter(|t| t.binary) {
            write_le(&t.data, &mut body);
            any = true;
        }
        Ok(Encoded { body, json_len: any.then_some(json_len) })
    }
}
/// Room reserved for a response's JSON text (grows as needed).
const RESPONSE_HEADER_ESTIMATE: usize = 512;
/// An inference request as parsed and checked against a model's contract, before anything runs.
#[derive(Debug)]
pub struct ParsedRequest {
    /// The request's `id`, echoed in the answer.
    pub id: Option<String>,
    /// One tensor per input, data decoded from JSON or from the binary tensor data.
    pub tensors: Vec<NamedTensor>,
    /// Every output as binary data unless a requested output says otherwise (`binary_data_output`).
    pub all_binary: bool,
    /// The requested outputs and whether each comes back binary; `None`: every output.
    pub wanted: Option<Vec<(String, bool)>>,
}

/// Most elements by default of one input tensor whose contract shape has a symbolic dimension
/// ([`RequestLimits::max_dynamic_elements`]): 4 Mi, 16 MiB as FP32, the most a smoke test may hold.
pub const DEFAULT_MAX_DYNAMIC_ELEMENTS: u64 = crate::manifest::MAX_SMOKE_ELEMENTS as u64;

/// What one request may make the codec allocate, on top of its body. The contract bounds every input: a tensor
/// of fixed shape holds exactly its shape's product, one with a symbolic dimension at most
/// [`max_dynamic_elements`](RequestLimits::max_dynamic_elements); a request declaring more is refused before its
/// data is decoded, and data running past its declared shape is refused at the first element too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most elements of one input tensor whose contract shape has a symbolic dimension (or the product of its
    /// fixed dimensions, when that is larger: one item of a batch always fits).
    pub max_dynamic_elements: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_dynamic_elements: DEFAULT_MAX_DYNAMIC_ELEMENTS }
    }
}

impl RequestLimits {
    /// Most elements a request's tensor for `spec` may hold.
    pub fn max_elements(&self, spec: &TensorSpec) -> u64 {
        let mut fixed = 1u64;
        let mut symbolic = false;
        for d in &spec.shape {
            match d {
                Dim::Fixed(n) => fixed = fixed.saturating_mul(*n),
                Dim::Symbol(_) => symbolic = true,
            }
        }
        if symbolic { fixed.max(self.max_dynamic_elements) } else { fixed }
    }
}

/// Parses a request body for a model with these `inputs` and `outputs`: the JSON header, then the binary tensor
/// data when `json_len` (the `Inference-Header-Content-Length` header) says where the header ends. Every problem
/// is a [`BadRequest`] naming it; nothing panics on any input (fuzz target `infer_request`). Tensors are bounded
/// by the contract ([`RequestLimits`]) before they are decoded: a body's size never multiplies into memory.
///
/// # Errors
/// [`BadRequest`] with the reason.
pub fn parse_request(
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    body: &[u8],
    json_len: Option<usize>,
    limits: &RequestLimits,
) -> Result<ParsedRequest, BadRequest> {
    let (json, binary) = match json_len {
        None => (body, &[][..]),
        Some(n) => body.split_at_checked(n).ok_or_else(|| {
            BadRequest(format!(
                "{INFERENCE_HEADER_CONTENT_LENGTH} is {n} bytes, but the body holds only {}",
                body.len()
            ))
        })?,
    };
    let request: InferRequest =
        serde_json::from_slice(json).map_err(|e| BadRequest(format!("not a valid inference request: {e}")))?;
    let declared = request
        .inputs
        .0
        .iter()
        .filter_map(|i| i.parameters.binary_data_size)
        .try_fold(0u64, u64::checked_add)
        .and_then(|n| usize::try_from(n).ok());
    if declared != Some(binary.len()) {
        let declared = declared.map_or_else(|| "more than usize::MAX".to_owned(), |n| n.to_string());
        return Err(BadRequest(format!(
            "the inputs' binary_data_size add up to {declared} bytes, but {} bytes of binary tensor data follow the \
             JSON header ({INFERENCE_HEADER_CONTENT_LENGTH}: {})",
            binary.len(),
            json_len.map_or_else(|| "absent, so the whole body is JSON".to_owned(), |n| n.to_string()),
        )));
    }
    let mut tensors: Vec<NamedTensor> = Vec::with_capacity(request.inputs.0.len());
    let mut rest = binary;
    for input in request.inputs.0 {
        // Refused before its data is decoded: a request cannot multiply its tensors by repeating one.
        if tensors.iter().any(|t| t.name == input.name) {
            return Err(BadRequest(format!("input `{}`: given more than once", input.name)));
        }
        tensors.push(input.into_tensor(inputs, limits, &mut rest)?);
    }
    let all_binary = request.parameters.binary_data_output.unwrap_or(false);
    let wanted = match request.outputs {
        None => None,
        Some(Bounded(list)) => {
            let mut names = Vec::with_capacity(list.len());
            for o in list {
                if !outputs.iter().any(|s| s.name == o.name) {
                    let known: Vec<&str> = outputs.iter().map(|s| s.name.as_str()).collect();
                    return Err(BadRequest(format!(
                        "requested output `{}` is not an output of this model (its outputs: {})",
                        o.name,
                        known.join(", ")
                    )));
                }
                names.push((o.name, o.parameters.binary_data.unwrap_or(all_binary)));
            }
            Some(names)
        }
    };
    Ok(ParsedRequest { id: request.id, tensors, all_binary, wanted })
}
/// The OIP datatype name of an element type.
pub fn oip_name(t: ElementType) -> &'static str {
    match t {
        ElementType::F32 => "FP32",
        ElementType::F64 => "FP64",
        ElementType::I8 => "INT8",
        ElementType::U8 => "UINT8",
        ElementType::I32 => "INT32",
        ElementType::I64 => "INT64",
        ElementType::Bool => "BOOL",
    }
}

/// The element type of an OIP datatype name, if Outpost supports it.
pub fn from_oip_name(name: &str) -> Option<ElementType> {
    use ElementType::*;
    [F32, F64, I8, U8, I32, I64, Bool].into_iter().find(|&t| oip_name(t) == name)
}

/// The OIP request body (the JSON header, with the binary tensor data extension). Unknown fields and
/// parameters are ignored. Each input's `data` stays JSON text (borrowed from the body) until its input is
/// checked against the contract; lists are bounded by what a contract can hold.
#[derive(Deserialize)]
struct InferRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Bounded<RequestInput<'a>, MAX_CONTRACT_TENSORS>,
    #[serde(default)]
    outputs: Option<Bounded<RequestOutput, MAX_CONTRACT_TENSORS>>,
    #[serde(default)]
    parameters: RequestParameters,
}

/// A JSON array of at most `N` elements (more is an error at the first one too many, never an allocation).
struct Bounded<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Each<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    if out.len() == N {
                        return Err(de::Error::custom(format_args!("more than {N} elements")));
                    }
                    out.push(x);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(Each(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    /// Every output as binary data unless its own `binary_data` says otherwise.
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Bounded<i64, MAX_RANK>,
    datatype: String,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: InputParameters,
}

#[derive(Deserialize, Default)]
struct InputParameters {
    /// The tensor's bytes follow the JSON header instead of `data`.
    #[serde(default)]
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: OutputParameters,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    #[serde(default)]
    binary_data: Option<bool>,
}

impl RequestInput<'_> {
    /// The tensor, its data from `data` or, for a binary input, from the front of `binary` (which it consumes);
    /// checked against its contract spec before any of its data is decoded.
    fn into_tensor(
        self,
        specs: &[TensorSpec],
        limits: &RequestLimits,
        binary: &mut &[u8],
    ) -> Result<NamedTensor, BadRequest> {
        let name = self.name;
        let bad = |problem: String| BadRequest(format!("input `{name}`: {problem}"));
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(bad(format!("not an input of this model (its inputs: {})", known.join(", "))));
        };
        let supported = "FP32, FP64, INT8, UINT8, INT32, INT64, BOOL";
        let dtype = from_oip_name(&self.datatype).ok_or_else(|| match self.datatype.as_str() {
            // No Outpost contract has string tensors, so BYTES (in JSON or binary) has nothing to feed.
            "BYTES" => bad(format!(
                "BYTES tensors are not supported, in JSON or binary: no Outpost model takes strings (supported: \
                 {supported})"
            )),
            other => bad(format!("datatype `{other}` is not supported (supported: {supported})")),
        })?;
        if spec.dtype != dtype {
            return Err(bad(format!("datatype {}, the model takes {}", self.datatype, oip_name(spec.dtype))));
        }
        let shape = self
            .shape
            .0
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("shape {:?} has a negative dimension", self.shape.0))))
            .collect::<Result<Vec<usize>, _>>()?;
        // The contract bounds the tensor before anything is decoded: 2-byte JSON elements would otherwise become
        // 8-byte numbers, several times over.
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let allowed = limits.max_elements(spec);
        if count.is_none_or(|n| n > allowed) {
            let count = count.map_or_else(|| "more than u64::MAX".to_owned(), |n| n.to_string());
            let declared: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
            return Err(bad(format!(
                "shape {shape:?} holds {count} elements, more than the {allowed} the contract's [{}] allows",
                declared.join(", ")
            )));
        }
        let count = count.unwrap_or_default();
        let data = match (self.data, self.parameters.binary_data_size) {
            (Some(_), Some(_)) => {
                return Err(bad("has both `data` and `parameters.binary_data_size`; give one".into()));
            }
            (None, None) => return Err(bad("has no data: give `data` or `parameters.binary_data_size`".into())),
            (Some(raw), None) => {
                let flat = Flat::parse(raw, count)
                    .map_err(|e| BadRequest(format!("not a valid inference request: input `{name}`: data: {e}")))?;
                flat.into_typed(dtype).map_err(bad)?
            }
            (None, Some(size)) => {
                let expected = shape.iter().try_fold(element_size(dtype), |a, &d| a.checked_mul(d));
                if expected.is_none_or(|e| e as u64 != size) {
                    let expected = expected.map_or_else(|| "more than usize::MAX".to_owned(), |e| e.to_string());
                    return Err(bad(format!(
                        "binary_data_size is {size} bytes, but shape {shape:?} of {} takes {expected}",
                        self.datatype
                    )));
                }
                // The caller checked that the sizes add up to the binary section.
                let (bytes, rest) = binary
                    .split_at_checked(size as usize)
                    .ok_or_else(|| bad(format!("binary_data_size {size} runs past the end of the body")))?;
                *binary = rest;
                read_le(dtype, bytes).map_err(bad)?
            }
        };
        // A non-finite input (NaN bits in binary data, or JSON `1e300` as FP32) makes a model's output non-finite,
        // which counts as the model's failure and would roll back a good release: it is the caller's fault, unless
        // the contract says this input may hold such values.
        if !spec.allow_non_finite
            && let Some((i, x)) = data.first_non_finite()
        {
            return Err(bad(format!("element {i} is {x}: inputs must be finite numbers")));
        }
        Ok(NamedTensor::new(name.clone(), shape, data))
    }
}

/// Bytes per element in the binary tensor data extension (BOOL: one byte, 0 or 1).
fn element_size(t: ElementType) -> usize {
    match t {
        ElementType::I8 | ElementType::U8 | ElementType::Bool => 1,
        ElementType::I32 | ElementType::F32 => 4,
        ElementType::I64 | ElementType::F64 => 8,
    }
}

fn byte_len(d: &TensorData) -> usize {
    d.len() * element_size(d.dtype())
}

/// Decodes little-endian tensor bytes (their length a multiple of the element size, checked by the caller).
fn read_le(dtype: ElementType, bytes: &[u8]) -> Result<TensorData, String> {
    fn each<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        bytes.as_chunks::<N>().0.iter().map(|&c| f(c)).collect()
    }
    Ok(match dtype {
        ElementType::F32 => TensorData::F32(each(bytes, f32::from_le_bytes)),
        ElementType::F64 => TensorData::F64(each(bytes, f64::from_le_bytes)),
        ElementType::I8 => TensorData::I8(each(bytes, i8::from_le_bytes)),
        ElementType::U8 => TensorData::U8(bytes.to_vec()),
        ElementType::I32 => TensorData::I32(each(bytes, i32::from_le_bytes)),
        ElementType::I64 => TensorData::I64(each(bytes, i64::from_le_bytes)),
        ElementType::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("BOOL element {i} is the byte {b}, not 0 or 1")),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Appends tensor data as little-endian bytes.
fn write_le(d: &TensorData, out: &mut Vec<u8>) {
    fn each<T: Copy, const N: usize>(v: &[T], out: &mut Vec<u8>, f: fn(T) -> [u8; N]) {
        out.reserve(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
    }
    match d {
        TensorData::F32(v) => each(v, out, f32::to_le_bytes),
        TensorData::F64(v) => each(v, out, f64::to_le_bytes),
        TensorData::I8(v) => each(v, out, i8::to_le_bytes),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I32(v) => each(v, out, i32::to_le_bytes),
        TensorData::I64(v) => each(v, out, i64::to_le_bytes),
        TensorData::Bool(v) => each(v, out, |b| [u8::from(b)]),
    }
}

/// An inference answer: the model, the request's `id`, and the outputs.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The model's version.
    pub model_version: String,
    /// The request's `id`, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs, in the model's order.
    pub outputs: Vec<ResponseTensor>,
    /// Response parameters: for an answer through a route, `route` and, when a fallback answered,
    /// `fallback_reason`. Left out when empty.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<&'static str, String>,
}

/// One output: with its values as `data`, or, when `binary`, with `parameters.binary_data_size` and its bytes
/// after the JSON object.
#[derive(Debug)]
pub struct ResponseTensor {
    /// The output's name.
    pub name: String,
    /// Its OIP datatype name ([`oip_name`]).
    pub datatype: &'static str,
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: TensorData,
    /// Whether it goes as binary data after the JSON object.
    pub binary: bool,
}

impl Serialize for ResponseTensor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ResponseTensor", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("datatype", self.datatype)?;
        st.serialize_field("shape", &self.shape)?;
        if self.binary {
            st.serialize_field("parameters", &BinaryDataSize { binary_data_size: byte_len(&self.data) })?;
        } else {
            st.serialize_field("data", &Values(&self.data))?;
        }
        st.end()
    }
}

#[derive(Serialize)]
struct BinaryDataSize {
    binary_data_size: usize,
}

/// Serialises tensor data as a flat JSON array (non-finite floats become `null`, as JSON has no NaN).
struct Values<'a>(&'a TensorData);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::F32(v) => v.serialize(s),
            TensorData::F64(v) => v.serialize(s),
            TensorData::I8(v) => v.serialize(s),
            TensorData::U8(v) => v.serialize(s),
            TensorData::I32(v) => v.serialize(s),
            TensorData::I64(v) => v.serialize(s),
            TensorData::Bool(v) => v.serialize(s),
        }
    }
}

/// A request's `data`, flat or nested arrays flattened row-major as they are parsed (no `serde_json::Value`
/// tree: eight bytes per element). Integers stay exact until a float shows up.
#[derive(Default)]
enum Flat {
    #[default]
    Empty,
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
}

impl Flat {
    /// Parses `data` (flat or nested arrays, or one number) into at most `limit` elements: the first element
    /// beyond it is an error, before it is stored.
    fn parse(data: &RawValue, limit: u64) -> Result<Flat, serde_json::Error> {
        let mut flat = Flat::Empty;
        // Each element takes at least one character and a separator: never reserve more than the text can hold.
        let room = usize::try_from(limit).unwrap_or(usize::MAX).min(data.get().len() / 2 + 1);
        let mut de = serde_json::Deserializer::from_str(data.get());
        FlatSeed { flat: &mut flat, limit, room }.deserialize(&mut de)?;
        de.end()?;
        Ok(flat)
    }

    fn len(&self) -> usize {
        match self {
            Flat::Empty => 0,
            Flat::Ints(xs) => xs.len(),
            Flat::Floats(xs) => xs.len(),
            Flat::Bools(xs) => xs.len(),
        }
    }

    fn push_int(&mut self, v: i64) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Ints(vec![v]),
            Flat::Ints(xs) => xs.push(v),
            Flat::Floats(xs) => xs.push(v as f64),
            Flat::Bools(_) => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn push_float(&mut self, v: f64) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Floats(vec![v]),
            Flat::Ints(xs) => {
                let mut fs: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
                fs.push(v);
                *self = Flat::Floats(fs);
            }
            Flat::Floats(xs) => xs.push(v),
            Flat::Bools(_) => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn push_bool(&mut self, v: bool) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Bools(vec![v]),
            Flat::Bools(xs) => xs.push(v),
            _ => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn into_typed(self, dtype: ElementType) -> Result<TensorData, String> {
        fn ints<T: TryFrom<i64>>(flat: Flat, dtype: ElementType) -> Result<Vec<T>, String> {
            match flat {
                Flat::Empty => Ok(Vec::new()),
                Flat::Ints(xs) => xs
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| {
                        T::try_from(x).map_err(|_| format!("element {i} ({x}) is out of range for {}", oip_name(dtype)))
                    })
                    .collect(),
                Flat::Floats(xs) => {
                    let (i, x) = xs.iter().enumerate().find(|(_, x)| x.fract() != 0.0 || !x.is_finite()).map_or(
                        // Every float is integral but the JSON spelled one with a point or exponent.
                        (0, xs.first().copied().unwrap_or_default()),
                        |(i, x)| (i, *x),
                    );
                    Err(format!("{} data must be integers; element {i} is {x}", oip_name(dtype)))
                }
                Flat::Bools(_) => Err(format!("{} data must be integers, not booleans", oip_name(dtype))),
            }
        }
        fn floats(flat: Flat, dtype: ElementType) -> Result<Vec<f64>, String> {
            match flat {
                Flat::Empty => Ok(Vec::new()),
                Flat::Ints(xs) => Ok(xs.into_iter().map(|x| x as f64).collect()),
                Flat::Floats(xs) => Ok(xs),
                Flat::Bools(_) => Err(format!("{} data must be numbers, not booleans", oip_name(dtype))),
            }
        }
        Ok(match dtype {
            ElementType::F32 => TensorData::F32(floats(self, dtype)?.into_iter().map(|x| x as f32).collect()),
            ElementType::F64 => TensorData::F64(floats(self, dtype)?),
            ElementType::I8 => TensorData::I8(ints(self, dtype)?),
            ElementType::U8 => TensorData::U8(ints(self, dtype)?),
            ElementType::I32 => TensorData::I32(ints(self, dtype)?),
            ElementType::I64 => TensorData::I64(ints(self, dtype)?),
            ElementType::Bool => match self {
                Flat::Empty => TensorData::Bool(Vec::new()),
                Flat::Bools(xs) => TensorData::Bool(xs),
                _ => return Err("BOOL data must be true or false".into()),
            },
        })
    }
}

/// Visits one JSON value of `data`, appending its scalars to the accumulator, at most `limit` of them; the
/// first vector is given `room` elements at once.
struct FlatVisitor<'a> {
    flat: &'a mut Flat,
    limit: u64,
    room: usize,
}

impl FlatVisitor<'_> {
    /// Refuses the element about to be stored if it is one too many; reserves room for the first.
    fn admit<E: de::Error>(&mut self, push: impl FnOnce(&mut Flat) -> Result<(), &'static str>) -> Result<(), E> {
        let len = self.flat.len();
        if len as u64 >= self.limit {
            return Err(E::custom(format_args!("more than the {} elements its shape holds", self.limit)));
        }
        push(self.flat).map_err(E::custom)?;
        if len == 0 {
            match self.flat {
                Flat::Ints(xs) => xs.reserve_exact(self.room),
                Flat::Floats(xs) => xs.reserve_exact(self.room),
                Flat::Bools(xs) => xs.reserve_exact(self.room),
                Flat::Empty => {}
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers, booleans, or (nested) arrays of them")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.admit(|f| f.push_bool(v))
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.admit(|f| f.push_int(v))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.admit(|f| f.push_int(v)),
            Err(_) => self.admit(|f| f.push_float(v as f64)),
        }
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.admit(|f| f.push_float(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let FlatVisitor { flat, limit, room } = self;
        while seq.next_element_seed(FlatSeed { flat: &mut *flat, limit, room })?.is_some() {}
        Ok(())
    }
}

struct FlatSeed<'a> {
    flat: &'a mut Flat,
    limit: u64,
    room: usize,
}

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FlatVisitor { flat: self.flat, limit: self.limit, room: self.room })
    }
}
