//! Strict CBOR decoding and the one COSE_Sign1 profile Outpost signs and accepts (tagged, Ed25519 in the protected
//! header, nothing else in either header bucket), shared by evidence and signed reference values.
//!
//! Every input is bounded in size before it is decoded, decoded in full (no trailing bytes), checked for duplicate
//! map keys at every depth (ciborium keeps duplicates instead of refusing them) and re-encoded to prove it was in
//! preferred serialization, so each value has exactly one accepted encoding. Signatures are not checked here: the
//! caller verifies [`Sign1::tbs`] with the key it trusts.

use ciborium::Value;
use coset::{AsCborValue, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};

use crate::identity::Identity;

/// The COSE algorithms accepted, only ever read from the protected header: Ed25519 (RFC 9864, −19).
pub const ALLOWED_ALGORITHMS: &[i64] = &[ED25519];
/// COSE algorithm identifier of Ed25519 (RFC 9864 "fully specified" EdDSA).
pub const ED25519: i64 = iana::Algorithm::Ed25519 as i64;
/// CBOR tag of a COSE_Sign1 message (RFC 9052).
pub const COSE_SIGN1_TAG: u64 = 18;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const HEADER_ALG: i128 = 1;
const HEADER_CONTENT_TYPE: i128 = 3;

/// Why bytes are not a well-formed COSE_Sign1 in Outpost's profile. Always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input exceeds its size limit; it was not decoded.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLarge {
        /// Bytes presented.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CBOR ends in the middle of an item.
    #[error("truncated CBOR")]
    Truncated,
    /// Not CBOR, or nested too deeply.
    #[error("malformed CBOR")]
    Malformed,
    /// Bytes follow the top-level item.
    #[error("trailing bytes after the CBOR item")]
    TrailingBytes,
    /// A map holds the same key twice (RFC 8949 §5.6: such a map is not valid; COSE requires it be refused).
    #[error("duplicate map key")]
    DuplicateKey,
    /// Well-formed, but not in preferred serialization (non-shortest lengths or integers, indefinite lengths,
    /// claims out of order).
    #[error("not in preferred (canonical) CBOR serialization")]
    NonCanonical,
    /// Not a tagged COSE_Sign1 with a byte-string payload and a 64-byte signature.
    #[error("not a tagged COSE_Sign1 (tag 18) with an attached payload")]
    NotCoseSign1,
    /// The protected header names no algorithm.
    #[error("no algorithm in the protected header")]
    MissingAlgorithm,
    /// The algorithm appears in the unprotected header, where anyone may change it.
    #[error("algorithm given in the unprotected header")]
    AlgorithmNotProtected,
    /// The protected header names an algorithm outside [`ALLOWED_ALGORITHMS`].
    #[error("algorithm {0} is not allowed (only Ed25519, -19)")]
    UnsupportedAlgorithm(String),
    /// A header parameter this profile does not use (the unprotected header must be empty).
    #[error("unexpected header parameter {0}")]
    UnexpectedHeader(String),
    /// The content type is missing or not the one expected for this kind of document.
    #[error("wrong content type")]
    WrongContentType,
}

/// A parsed COSE_Sign1 whose signature is still unchecked.
#[derive(Debug, Clone)]
pub(crate) struct Sign1 {
    /// The Sig_structure bytes the signature covers (RFC 9052 §4.4, empty external AAD).
    pub tbs: Vec<u8>,
    /// The payload, strictly decoded.
    pub payload: Value,
    /// The raw payload bytes.
    pub payload_bytes: Vec<u8>,
    /// The Ed25519 signature.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Decodes exactly one CBOR item from `bytes` and enforces the strictness rules in the module docs.
pub(crate) fn decode_strict(bytes: &[u8]) -> Result<Value, FormatError> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(|e| match e {
        ciborium::de::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Malformed,
    })?;
    if !rest.is_empty() {
        return Err(FormatError::TrailingBytes);
    }
    check_no_duplicates(&value)?;
    if encode(&value) != bytes {
        return Err(FormatError::NonCanonical);
    }
    Ok(value)
}

/// Encodes a CBOR value (preferred serialization; ciborium always emits shortest forms).
pub(crate) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("encoding a CBOR value into a Vec cannot fail");
    out
}

fn check_no_duplicates(value: &Value) -> Result<(), FormatError> {
    match value {
        Value::Map(entries) => {
            let mut keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| encode(k)).collect();
            keys.sort_unstable();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return Err(FormatError::DuplicateKey);
            }
            entries.iter().try_for_each(|(k, v)| check_no_duplicates(k).and_then(|()| check_no_duplicates(v)))
        }
        Value::Array(items) => items.iter().try_for_each(check_no_duplicates),
        Value::Tag(_, inner) => check_no_duplicates(inner),
        _ => Ok(()),
    }
}

fn label(key: &Value) -> String {
    match key {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => format!("{t:?}"),
        _ => "(non-label key)".into(),
    }
}

fn int_key(key: &Value) -> Option<i128> {
    match key {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    }
}

/// Parses a tagged COSE_Sign1 of at most `max_len` bytes whose protected header holds an allowed algorithm and,
/// when `content_type` is given, exactly that text content type.
pub(crate) fn parse_sign1(bytes: &[u8], max_len: usize, content_type: Option<&str>) -> Result<Sign1, FormatError> {
    if bytes.len() > max_len {
        return Err(FormatError::TooLarge { len: bytes.len(), max: max_len });
    }
    let value = decode_strict(bytes)?;
    let Value::Tag(COSE_SIGN1_TAG, inner) = value else { return Err(FormatError::NotCoseSign1) };
    let Value::Array(items) = *inner else { return Err(FormatError::NotCoseSign1) };
    let [Value::Bytes(protected), Value::Map(unprotected), Value::Bytes(payload_bytes), Value::Bytes(signature)] =
        items.as_slice()
    else {
        return Err(FormatError::NotCoseSign1);
    };
    let signature: [u8; SIGNATURE_LEN] = signature.as_slice().try_into().map_err(|_| FormatError::NotCoseSign1)?;

    // RFC 9052 §3: an empty protected header is a zero-length byte string.
    let protected_map = if protected.is_empty() {
        Vec::new()
    } else {
        match decode_strict(protected)? {
            Value::Map(m) => m,
            _ => return Err(FormatError::NotCoseSign1),
        }
    };
    if unprotected.iter().any(|(k, _)| int_key(k) == Some(HEADER_ALG)) {
        return Err(FormatError::AlgorithmNotProtected);
    }
    if let Some((k, _)) = unprotected.first() {
        return Err(FormatError::UnexpectedHeader(label(k)));
    }
    let mut alg = None;
    let mut content = None;
    for (k, v) in &protected_map {
        match int_key(k) {
            Some(HEADER_ALG) => alg = Some(v),
            Some(HEADER_CONTENT_TYPE) if content_type.is_some() => content = Some(v),
            _ => return Err(FormatError::UnexpectedHeader(label(k))),
        }
    }
    match alg {
        None => return Err(FormatError::MissingAlgorithm),
        Some(Value::Integer(i)) if ALLOWED_ALGORITHMS.iter().any(|a| i128::from(*a) == i128::from(*i)) => {}
        Some(Value::Integer(i)) => return Err(FormatError::UnsupportedAlgorithm(i128::from(*i).to_string())),
        Some(other) => return Err(FormatError::UnsupportedAlgorithm(format!("{other:?}"))),
    }
    if let Some(expected) = content_type {
        match content {
            Some(Value::Text(t)) if t == expected => {}
            _ => return Err(FormatError::WrongContentType),
        }
    }
    let payload = decode_strict(payload_bytes)?;
    let payload_bytes = payload_bytes.clone();

    // coset builds the Sig_structure over the protected header exactly as received.
    let sign1 = CoseSign1::from_cbor_value(Value::Array(items)).map_err(|_| FormatError::NotCoseSign1)?;
    let tbs = sign1.tbs_data(b"");
    Ok(Sign1 { tbs, payload, payload_bytes, signature })
}

/// Signs `payload` as a tagged COSE_Sign1 with Ed25519 in the protected header (and `content_type` there too when
/// given), empty unprotected header, attached payload, empty external AAD.
pub(crate) fn sign1(identity: &Identity, content_type: Option<&str>, payload: Vec<u8>) -> Vec<u8> {
    let mut header = HeaderBuilder::new().algorithm(iana::Algorithm::Ed25519);
    if let Some(ct) = content_type {
        header = header.content_type(ct.to_owned());
    }
    CoseSign1Builder::new()
        .protected(header.build())
        .payload(payload)
        .create_signature(b"", |tbs| identity.sign(tbs).to_vec())
        .build()
        .to_tagged_vec()
        .expect("encoding a COSE_Sign1 into a Vec cannot fail")
}

/// Verifies an Ed25519 signature strictly (RFC 8032 with the checks of `verify_strict`: no small-order keys, no
/// malleable signatures).
pub(crate) fn verify_ed25519(key: &[u8; 32], message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else { return false };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
}
