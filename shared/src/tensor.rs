//! Owned tensors as the contract names them: what a model takes and returns, and what the OIP codec decodes
//! requests into. Plain data (no tract), so the codec and its fuzz target build without the runtime.

use crate::manifest::ElementType;

/// Element values of a [`NamedTensor`], row-major, one variant per [`ElementType`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 8-bit signed integers.
    I8(Vec<i8>),
    /// 8-bit unsigned integers.
    U8(Vec<u8>),
    /// 32-bit signed integers.
    I32(Vec<i32>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl TensorData {
    /// The element type.
    pub fn dtype(&self) -> ElementType {
        match self {
            TensorData::F32(_) => ElementType::F32,
            TensorData::F64(_) => ElementType::F64,
            TensorData::I8(_) => ElementType::I8,
            TensorData::U8(_) => ElementType::U8,
            TensorData::I32(_) => ElementType::I32,
            TensorData::I64(_) => ElementType::I64,
            TensorData::Bool(_) => ElementType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first NaN or infinite element of float data, widened to `f64`; `None` for finite, integer and boolean
    /// data.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, f64::from(v[i]))),
            TensorData::F64(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            _ => None,
        }
    }

    /// The values widened to `f64` (booleans as 0 and 1; `i64` beyond 2^53 rounds), for comparisons.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }
}

/// An owned tensor with a name: what a loaded model (`model::LoadedModel::run`) takes and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The contract's input or output name.
    pub name: String,
    /// Concrete dimensions; their product is the element count.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: TensorData,
}

impl NamedTensor {
    /// A tensor; `run` checks that `shape` and `data` agree.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Self {
        NamedTensor { name: name.into(), shape, data }
    }

    /// The element type.
    pub fn dtype(&self) -> ElementType {
        self.data.dtype()
    }
}
