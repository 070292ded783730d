//! The package container: one file holding a manifest (deterministic CBOR) and an ONNX model.
//!
//! Layout (all integers big-endian), chosen so a reader can get the manifest without reading the model:
//! `"OPKG"` · format `u8` (= 1) · 3 zero bytes · manifest length `u32` · model length `u64` · manifest · model.
//! Nothing may follow the model. The package digest is the SHA-256 of the whole file.

use crate::digest::{Digest, Sha256};
use crate::manifest::{Manifest, ManifestError};

/// The four bytes every package starts with.
pub const MAGIC: [u8; 4] = *b"OPKG";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 20;

/// Bounds on what a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageLimits {
    /// Largest manifest section, in bytes.
    pub max_manifest_bytes: u32,
    /// Largest model section, in bytes.
    pub max_model_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits { max_manifest_bytes: 16 * 1024 * 1024, max_model_bytes: 2 * 1024 * 1024 * 1024 }
    }
}

/// Why bytes are not a valid package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Fewer bytes than the fixed header.
    #[error("package is truncated: {len} bytes, the header alone is {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
    },
    /// The magic bytes are wrong: not an Outpost package.
    #[error("not an Outpost package (bad magic)")]
    BadMagic,
    /// A format version this code does not know.
    #[error("unsupported package format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// Reserved header bytes are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedBytes,
    /// A section is larger than the limit.
    #[error("{section} section is {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// `manifest` or `model`.
        section: &'static str,
        /// Declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The declared lengths do not add up to the file's length.
    #[error("package length {actual} does not match the header's {expected}")]
    LengthMismatch {
        /// Header length plus declared sections.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The manifest section does not hold a valid manifest.
    #[error("package manifest is invalid: {0}")]
    Manifest(#[from] ManifestError),
}

/// The header of a package: where the manifest and model sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Manifest section length.
    pub manifest_len: u32,
    /// Model section length.
    pub model_len: u64,
}

impl Header {
    /// Parses the fixed header from the first [`HEADER_LEN`] bytes of a package.
    pub fn parse(prefix: &[u8], limits: &PackageLimits) -> Result<Header, PackageError> {
        let h: &[u8; HEADER_LEN] = prefix
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(PackageError::TruncatedHeader { len: prefix.len() })?;
        if h[..4] != MAGIC {
            return Err(PackageError::BadMagic);
        }
        if h[4] != FORMAT_VERSION {
            return Err(PackageError::UnsupportedVersion(h[4]));
        }
        if h[5..8] != [0, 0, 0] {
            return Err(PackageError::ReservedBytes);
        }
        let manifest_len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let model_len = u64::from_be_bytes([h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]]);
        if manifest_len > limits.max_manifest_bytes {
            return Err(PackageError::TooLarge {
                section: "manifest",
                len: manifest_len.into(),
                limit: limits.max_manifest_bytes.into(),
            });
        }
        if model_len > limits.max_model_bytes {
            return Err(PackageError::TooLarge { section: "model", len: model_len, limit: limits.max_model_bytes });
        }
        Ok(Header { manifest_len, model_len })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = FORMAT_VERSION;
        h[8..12].copy_from_slice(&self.manifest_len.to_be_bytes());
        h[12..20].copy_from_slice(&self.model_len.to_be_bytes());
        h
    }

    /// Total package length this header implies.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.manifest_len) + self.model_len
    }
}

/// A decoded package, borrowing the model bytes.
#[derive(Debug)]
pub struct Package<'a> {
    /// The validated manifest.
    pub manifest: Manifest,
    /// The manifest's canonical CBOR as stored in the package.
    pub manifest_cbor: &'a [u8],
    /// The ONNX model bytes.
    pub model: &'a [u8],
}

impl<'a> Package<'a> {
    /// Decodes and validates a whole package held in memory.
    pub fn decode(bytes: &'a [u8], limits: &PackageLimits) -> Result<Package<'a>, PackageError> {
        let header = Header::parse(bytes, limits)?;
        if header.total_len() != bytes.len() as u64 {
            return Err(PackageError::LengthMismatch { expected: header.total_len(), actual: bytes.len() as u64 });
        }
        let (manifest_cbor, model) = bytes[HEADER_LEN..].split_at(header.manifest_len as usize);
        let manifest = Manifest::from_cbor(manifest_cbor)?;
        Ok(Package { manifest, manifest_cbor, model })
    }
}

/// Builds package bytes from a manifest and a model. The same inputs always give the same bytes.
pub fn encode(manifest: &Manifest, model: &[u8]) -> Vec<u8> {
    let cbor = manifest.to_cbor();
    encode_parts(&cbor, model)
}

/// Builds package bytes from an already-encoded canonical manifest and a model.
pub fn encode_parts(manifest_cbor: &[u8], model: &[u8]) -> Vec<u8> {
    let header = Header { manifest_len: manifest_cbor.len() as u32, model_len: model.len() as u64 };
    let mut out = Vec::with_capacity(header.total_len() as usize);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(manifest_cbor);
    out.extend_from_slice(model);
    out
}

/// The digest `encode_parts(manifest_cbor, model)` would have, without building it.
pub fn digest_of_parts(manifest_cbor: &[u8], model: &[u8]) -> Digest {
    let header = Header { manifest_len: manifest_cbor.len() as u32, model_len: model.len() as u64 };
    let mut h = Sha256::new();
    h.update(&header.encode());
    h.update(manifest_cbor);
    h.update(model);
    h.finish()
}
