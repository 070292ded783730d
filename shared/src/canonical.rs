//! Deterministic CBOR (RFC 8949 §4.2.1) for everything Outpost hashes or signs.
//!
//! Values go through `ciborium::Value`, map keys are sorted by their encoded bytes, and integers and floats take
//! their shortest form (ciborium does that), so equal values always give equal bytes. Decoding insists the input
//! was already canonical, so one value has exactly one accepted encoding.

use ciborium::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value could not be encoded or decoded as canonical CBOR.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// The value could not be represented in CBOR (a serializer error from ciborium).
    #[error("cannot encode as CBOR: {0}")]
    Encode(String),
    /// The bytes are not well-formed CBOR, or do not match the expected structure.
    #[error("malformed CBOR: {0}")]
    Decode(String),
    /// Well-formed CBOR that is not in canonical form (unsorted keys, long-form integers, tags, trailing bytes...).
    #[error("CBOR is not in canonical form")]
    NotCanonical,
}

/// Encodes `value` as deterministic CBOR.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = Value::serialized(value).map_err(|e| CanonicalError::Encode(e.to_string()))?;
    encode_value(canonicalize(v))
}

/// Decodes deterministic CBOR, refusing any other encoding of the same value.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CanonicalError> {
    let v: Value = ciborium::de::from_reader(bytes).map_err(|e| CanonicalError::Decode(e.to_string()))?;
    // Nothing we encode carries a tag, and serde drops one on the way into a struct: a tagged item would be a
    // second accepted encoding of the same value (found by fuzz target manifest_cbor).
    if has_tag(&v) || encode_value(canonicalize(v.clone()))? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    v.deserialized().map_err(|e| CanonicalError::Decode(e.to_string()))
}

/// [`from_slice`] for a type that always encodes all it decodes (a content-addressed document such as a package
/// manifest): also refuses input that decodes to a value whose own encoding differs. serde reads a byte string
/// into the text of an untagged enum, among other conversions, which the value-level check above cannot see
/// (found by fuzz target manifest_cbor: a dimension name sent as the bytes of "W" read as the text "W").
pub fn from_slice_exact<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, CanonicalError> {
    // The typed round trip covers the value-level checks too (we never encode a tag, a long form or a trailing
    // byte), so the value is decoded once and encoded once.
    let v: Value = ciborium::de::from_reader(bytes).map_err(|e| CanonicalError::Decode(e.to_string()))?;
    let value: T = v.deserialized().map_err(|e| CanonicalError::Decode(e.to_string()))?;
    if to_vec(&value)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(value)
}

fn has_tag(v: &Value) -> bool {
    match v {
        Value::Tag(..) => true,
        Value::Array(items) => items.iter().any(has_tag),
        Value::Map(entries) => entries.iter().any(|(k, v)| has_tag(k) || has_tag(v)),
        _ => false,
    }
}

fn encode_value(v: Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).map_err(|e| CanonicalError::Encode(e.to_string()))?;
    Ok(out)
}

fn canonicalize(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        Value::Tag(t, inner) => Value::Tag(t, Box::new(canonicalize(*inner))),
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonicalize(k);
                    // Encoding a Value into a Vec cannot fail.
                    let kb = encode_value(k.clone()).unwrap_or_default();
                    (kb, k, canonicalize(v))
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct S {
        zeta: u32,
        alpha: String,
        mid: BTreeMap<String, f64>,
    }

    #[test]
    fn map_keys_are_sorted_by_encoded_bytes_whatever_the_field_order() {
        let s = S { zeta: 1, alpha: "a".into(), mid: [("b".into(), 1.5), ("a".into(), 0.1)].into() };
        let bytes = to_vec(&s).unwrap();
        let v: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
        let keys: Vec<_> = v.as_map().unwrap().iter().map(|(k, _)| k.as_text().unwrap().to_owned()).collect();
        // Shorter encodings sort first: "mid" (3) before "zeta" (4) before "alpha" (5).
        assert_eq!(keys, ["mid", "zeta", "alpha"]);
        assert_eq!(from_slice::<S>(&bytes).unwrap(), s);
    }

    #[test]
    fn non_canonical_encoding_of_same_value_is_refused() {
        // {"a": 1} with the integer 1 in a needless two-byte form (0x18 0x01).
        let bytes = [0xa1, 0x61, b'a', 0x18, 0x01];
        assert!(matches!(from_slice::<BTreeMap<String, u32>>(&bytes), Err(CanonicalError::NotCanonical)));
        let good = [0xa1, 0x61, b'a', 0x01];
        assert_eq!(from_slice::<BTreeMap<String, u32>>(&good).unwrap()["a"], 1);
    }

    #[test]
    fn a_tagged_item_is_refused_as_a_second_encoding_of_the_same_value() {
        // {"a": "x"}, then the same with the text wrapped in tag 5: serde reads both as the same map.
        let good = [0xa1, 0x61, b'a', 0x61, b'x'];
        let tagged = [0xa1, 0x61, b'a', 0xc5, 0x61, b'x'];
        assert_eq!(from_slice::<BTreeMap<String, String>>(&good).unwrap()["a"], "x");
        assert!(matches!(from_slice::<BTreeMap<String, String>>(&tagged), Err(CanonicalError::NotCanonical)));
    }

    #[test]
    fn a_text_field_sent_as_a_byte_string_is_refused_as_a_second_encoding() {
        // As a manifest's shape dimension: a number or a name (an untagged enum, which serde buffers and then
        // reads a byte string into text from).
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        enum Dim {
            Fixed(u64),
            Symbol(String),
        }
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        struct Doc {
            name: Dim,
        }
        // {"name": "W"}, then the same with "W" as a byte string: serde reads both into the text variant.
        let text = [0xa1, 0x64, b'n', b'a', b'm', b'e', 0x61, b'W'];
        let bytes = [0xa1, 0x64, b'n', b'a', b'm', b'e', 0x41, b'W'];
        assert_eq!(from_slice_exact::<Doc>(&text).unwrap().name, Dim::Symbol("W".into()));
        assert!(from_slice::<Doc>(&bytes).is_ok(), "the value-level check alone lets it through");
        assert!(matches!(from_slice_exact::<Doc>(&bytes), Err(CanonicalError::NotCanonical)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let bytes = [0xa1, 0x61, b'a', 0x01, 0x00];
        assert!(from_slice::<BTreeMap<String, u32>>(&bytes).is_err());
    }
}
