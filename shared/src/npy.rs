//! NumPy arrays from bytes: one `.npy` file, or one array of an `.npz` archive (`np.savez`), decoded into an owned
//! [`NamedTensor`]. Evaluation suites keep their inputs, labels and reference outputs this way.
//!
//! Bounded before anything is allocated: the header's element count must fit [`ArrayLimits`] and the bytes that
//! follow it must hold exactly that many elements; an `.npz` entry is read at most to the archive's own length.

use std::io::{Cursor, Read};

use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use ndarray_npy::npy::header::Header;

use crate::manifest::ElementType;
use crate::tensor::{NamedTensor, TensorData};

/// Bounds on one decoded array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayLimits {
    /// Most elements one array may hold.
    pub max_elements: usize,
    /// Highest rank.
    pub max_rank: usize,
}

impl Default for ArrayLimits {
    fn default() -> Self {
        ArrayLimits { max_elements: 1 << 26, max_rank: 16 }
    }
}

/// Why an array could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    /// Not a `.npy` file (bad magic, version or header).
    #[error("not a NumPy .npy array: {0}")]
    Header(String),
    /// An element type suites do not use (structured, complex, big-endian, strings, …).
    #[error("element type {0} is not supported (use f32, f64, i8, u8, i32, i64 or bool, little-endian)")]
    ElementType(String),
    /// The header declares more than the limits allow.
    #[error("shape {shape:?} is over the limit ({max_elements} elements, rank {max_rank})")]
    TooLarge {
        /// The declared shape.
        shape: Vec<usize>,
        /// The element limit.
        max_elements: usize,
        /// The rank limit.
        max_rank: usize,
    },
    /// The data after the header is not exactly the declared shape's size.
    #[error("the header declares {declared} bytes of data, {actual} follow")]
    Length {
        /// Bytes the shape needs.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The `.npz` archive could not be read, or has no such array.
    #[error("npz: {0}")]
    Npz(String),
}

/// Decodes one `.npy` file, or with `array`, the array of that name in an `.npz` archive, naming it `name`.
pub fn decode(bytes: &[u8], array: Option<&str>, name: &str, limits: &ArrayLimits) -> Result<NamedTensor, ArrayError> {
    match array {
        None => decode_npy(bytes, name, limits),
        Some(a) => decode_npy(&npz_entry(bytes, a)?, name, limits),
    }
}

/// The bytes of array `array` (`array.npy` inside) of an `.npz` archive.
fn npz_entry(bytes: &[u8], array: &str) -> Result<Vec<u8>, ArrayError> {
    let npz = |e: &dyn std::fmt::Display| ArrayError::Npz(e.to_string());
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| npz(&e))?;
    let mut entry = zip.by_name(&format!("{array}.npy")).map_err(|e| npz(&format!("array `{array}`: {e}")))?;
    // Stored entries only (no codecs built in): an entry is never longer than the archive holding it.
    let mut out = Vec::new();
    entry.by_ref().take(bytes.len() as u64).read_to_end(&mut out).map_err(|e| npz(&e))?;
    Ok(out)
}

fn decode_npy(bytes: &[u8], name: &str, limits: &ArrayLimits) -> Result<NamedTensor, ArrayError> {
    let mut cursor = Cursor::new(bytes);
    let header = Header::from_reader(&mut cursor).map_err(|e| ArrayError::Header(e.to_string()))?;
    let descr = header.type_descriptor.to_string();
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (dtype, size) = match descr {
        "<f4" => (ElementType::F32, 4),
        "<f8" => (ElementType::F64, 8),
        "|i1" | "<i1" => (ElementType::I8, 1),
        "|u1" | "<u1" => (ElementType::U8, 1),
        "<i4" => (ElementType::I32, 4),
        "<i8" => (ElementType::I64, 8),
        "|b1" => (ElementType::Bool, 1),
        other => return Err(ArrayError::ElementType(other.to_owned())),
    };
    let shape = header.shape.clone();
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= limits.max_elements);
    let Some(count) = count.filter(|_| shape.len() <= limits.max_rank) else {
        return Err(ArrayError::TooLarge { shape, max_elements: limits.max_elements, max_rank: limits.max_rank });
    };
    let actual = bytes.len() - cursor.position() as usize;
    if count * size != actual {
        return Err(ArrayError::Length { declared: count * size, actual });
    }
    fn read<T: ndarray_npy::ReadableElement + Clone>(bytes: &[u8]) -> Result<Vec<T>, ArrayError> {
        let a = ArrayD::<T>::read_npy(bytes).map_err(|e| ArrayError::Header(e.to_string()))?;
        // Row-major order whatever the file's layout.
        Ok(a.as_standard_layout().iter().cloned().collect())
    }
    let data = match dtype {
        ElementType::F32 => TensorData::F32(read(bytes)?),
        ElementType::F64 => TensorData::F64(read(bytes)?),
        ElementType::I8 => TensorData::I8(read(bytes)?),
        ElementType::U8 => TensorData::U8(read(bytes)?),
        ElementType::I32 => TensorData::I32(read(bytes)?),
        ElementType::I64 => TensorData::I64(read(bytes)?),
        ElementType::Bool => TensorData::Bool(read(bytes)?),
    };
    Ok(NamedTensor::new(name, shape, data))
}

/// Encodes an f32 array as `.npy` bytes (tests and fixtures write suites with it).
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    encode(shape, "<f4", values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Encodes an i64 array as `.npy` bytes (labels).
pub fn encode_i64(shape: &[usize], values: &[i64]) -> Vec<u8> {
    encode(shape, "<i8", values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn encode(shape: &[usize], descr: &str, data: Vec<u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_lies_about_size_are_refused_before_allocating() {
        let bytes = encode_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = decode(&bytes, None, "x", &ArrayLimits::default()).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let labels = decode(&encode_i64(&[3], &[0, 1, 1]), None, "l", &ArrayLimits::default()).unwrap();
        assert_eq!(labels.data, TensorData::I64(vec![0, 1, 1]));

        // A header claiming a huge shape over a few bytes: refused on the count, nothing allocated.
        let mut huge = encode_f32(&[1usize << 40, 1 << 20], &[]);
        huge.truncate(huge.len());
        assert!(matches!(decode(&huge, None, "x", &ArrayLimits::default()), Err(ArrayError::TooLarge { .. })));
        // A header within limits but more elements than bytes.
        let short = encode_f32(&[4], &[1.0]);
        assert_eq!(
            decode(&short, None, "x", &ArrayLimits::default()),
            Err(ArrayError::Length { declared: 16, actual: 4 })
        );
        assert!(matches!(decode(b"not numpy", None, "x", &ArrayLimits::default()), Err(ArrayError::Header(_))));
    }
}
