//! The evidence parser against malformed and hostile encodings, each presented to the hub's verifier and each
//! ending in "not attested" with the parser's typed reason.

mod support;

use ciborium::Value;
use outpost_attestation::evidence::{CLAIM_BOOTCOUNT, MAX_EVIDENCE_LEN};
use outpost_attestation::{Evidence, EvidenceError, FormatError, Reason};
use support::*;

fn format_error(hub: &Hub, conn: &Conn, bytes: &[u8]) -> FormatError {
    match hub.appraise(conn, bytes).expect_err("must not be attested").reason {
        Reason::Evidence(EvidenceError::Format(e)) => e,
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn claim_error(hub: &Hub, conn: &Conn, bytes: &[u8]) -> EvidenceError {
    match hub.appraise(conn, bytes).expect_err("must not be attested").reason {
        Reason::Evidence(e) => e,
        other => panic!("expected an evidence error, got {other:?}"),
    }
}

#[test]
fn honest_evidence_round_trips() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = evidence(&conn);
    assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1 (tag 18)");
    let parsed = Evidence::parse(&bytes).unwrap();
    assert_eq!(parsed.claims_unverified(), &claims(conn.nonce()));
    assert_eq!(parsed.verify(&device().public_key()), Some(&claims(conn.nonce())));
    assert_eq!(parsed.verify(&other_device().public_key()), None);
}

#[test]
fn truncated_cbor_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = evidence(&conn);
    assert_eq!(format_error(&hub, &conn, &bytes[..bytes.len() - 1]), FormatError::Truncated);
    for cut in [1, 10, bytes.len() / 2] {
        assert_eq!(Evidence::parse(&bytes[..cut]).unwrap_err(), FormatError::Truncated.into(), "cut at {cut}");
    }
}

#[test]
fn oversized_evidence_is_rejected_before_decoding() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    // Honest evidence followed by padding: refused on its size alone.
    let mut bytes = evidence(&conn);
    bytes.resize(MAX_EVIDENCE_LEN + 1, 0);
    assert_eq!(
        format_error(&hub, &conn, &bytes),
        FormatError::TooLarge { len: MAX_EVIDENCE_LEN + 1, max: MAX_EVIDENCE_LEN }
    );
}

#[test]
fn oversized_claims_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut m = claims_map(&conn);
    m.push((int(-65540), Value::Bytes(vec![0; MAX_EVIDENCE_LEN])));
    let bytes = with_payload(cbor(&Value::Map(m)));
    assert!(matches!(format_error(&hub, &conn, &bytes), FormatError::TooLarge { .. }));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut bytes = evidence(&conn);
    bytes.push(0x00);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::TrailingBytes);
}

#[test]
fn duplicate_key_cbor_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    // A second bootcount after the honest one: a lenient decoder would keep the last value.
    let mut m = claims_map(&conn);
    m.push((int(CLAIM_BOOTCOUNT), int(1)));
    let bytes = with_payload(cbor(&Value::Map(m)));
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::DuplicateKey);
}

#[test]
fn duplicate_key_in_protected_header_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let protected = cbor(&Value::Map(vec![(int(1), int(-19)), (int(1), int(-8))]));
    let bytes = with_headers(&conn, protected, vec![]);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::DuplicateKey);
}

#[test]
fn algorithm_only_in_unprotected_header_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = with_headers(&conn, vec![], vec![(int(1), int(-19))]);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::AlgorithmNotProtected);
}

#[test]
fn algorithm_repeated_in_unprotected_header_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = with_headers(&conn, ed25519_protected(), vec![(int(1), int(-19))]);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::AlgorithmNotProtected);
}

#[test]
fn missing_algorithm_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = with_headers(&conn, vec![], vec![]);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::MissingAlgorithm);
}

#[test]
fn algorithm_not_on_the_allow_list_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    // EdDSA (-8, polymorphic), ES256 (-7), an unassigned value and a text label: none is on the allow-list.
    for alg in [int(-8), int(-7), int(-1000), Value::Text("Ed25519".into())] {
        let bytes = with_headers(&conn, cbor(&Value::Map(vec![(int(1), alg.clone())])), vec![]);
        assert!(
            matches!(Evidence::parse(&bytes), Err(EvidenceError::Format(FormatError::UnsupportedAlgorithm(_)))),
            "{alg:?}"
        );
    }
    let bytes = with_headers(&conn, cbor(&Value::Map(vec![(int(1), int(-8))])), vec![]);
    assert_eq!(format_error(&hub, &conn, &bytes), FormatError::UnsupportedAlgorithm("-8".into()));
}

#[test]
fn unexpected_header_parameters_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let kid = vec![(int(4), Value::Bytes(b"key".to_vec()))];
    let bytes = with_headers(&conn, ed25519_protected(), kid);
    assert!(matches!(format_error(&hub, &conn, &bytes), FormatError::UnexpectedHeader(_)));
    let crit = cbor(&Value::Map(vec![(int(1), int(-19)), (int(2), Value::Array(vec![int(99)]))]));
    let bytes = with_headers(&conn, crit, vec![]);
    assert!(matches!(Evidence::parse(&bytes), Err(EvidenceError::Format(FormatError::UnexpectedHeader(_)))));
}

#[test]
fn untagged_or_detached_cose_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let bytes = evidence(&conn);
    assert_eq!(format_error(&hub, &conn, &bytes[1..]), FormatError::NotCoseSign1, "untagged");
    let detached = cbor(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(ed25519_protected()),
            Value::Map(vec![]),
            Value::Null,
            Value::Bytes(vec![0; 64]),
        ])),
    ));
    assert_eq!(Evidence::parse(&detached).unwrap_err(), FormatError::NotCoseSign1.into());
}

#[test]
fn non_canonical_cbor_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    // The bootcount 17 as a two-byte integer (0x18 0x11) instead of one byte (0x11), properly signed.
    let honest = claims(conn.nonce()).encode().unwrap();
    let at = honest.windows(3).position(|w| w == [0x19, 0x01, 0x0b]).unwrap() + 3; // key 267
    assert_eq!(honest[at], 0x11);
    let mut long = honest.clone();
    long.splice(at..=at, [0x18, 0x11]);
    assert_eq!(format_error(&hub, &conn, &with_payload(long)), FormatError::NonCanonical);
}

#[test]
fn claims_out_of_order_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut m = claims_map(&conn);
    m.reverse();
    assert_eq!(format_error(&hub, &conn, &with_payload(cbor(&Value::Map(m)))), FormatError::NonCanonical);
}

#[test]
fn unknown_and_missing_claims_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut m = claims_map(&conn);
    m.push((int(-70000), int(1)));
    assert_eq!(
        claim_error(&hub, &conn, &with_payload(cbor(&Value::Map(m)))),
        EvidenceError::UnknownClaim("-70000".into())
    );
    let mut m = claims_map(&conn);
    m.retain(|(k, _)| *k != int(NONCE_KEY));
    assert_eq!(Evidence::parse(&with_payload(cbor(&Value::Map(m)))).unwrap_err(), EvidenceError::MissingClaim("nonce"));
}

#[test]
fn claims_of_the_wrong_shape_are_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut m = claims_map(&conn);
    m[0].1 = Value::Bytes(vec![0; 16]); // a 16-byte nonce
    assert_eq!(claim_error(&hub, &conn, &with_payload(cbor(&Value::Map(m)))), EvidenceError::BadClaim("nonce"));
    assert_eq!(Evidence::parse(&with_payload(cbor(&Value::Array(vec![])))).unwrap_err(), EvidenceError::NotAMap);
}

#[test]
fn deeply_nested_cbor_is_rejected_without_overflow() {
    let mut bytes = vec![0x81; 100_000];
    bytes.push(0x00);
    // Past the size limit, the nesting is never looked at.
    assert_eq!(
        Evidence::parse(&bytes).unwrap_err(),
        FormatError::TooLarge { len: bytes.len(), max: MAX_EVIDENCE_LEN }.into()
    );
    let mut nested = vec![0x81; MAX_EVIDENCE_LEN - 1];
    nested.push(0x00);
    assert_eq!(Evidence::parse(&nested).unwrap_err(), FormatError::Malformed.into());
}

#[test]
fn every_bit_flip_and_truncation_is_refused_or_canonical() {
    // A deterministic slice of what the `evidence_cose` fuzz target explores.
    let mut hub = Hub::new();
    let conn = hub.connect();
    let honest = evidence(&conn);
    for i in 0..honest.len() {
        assert_eq!(Evidence::parse(&honest[..i]).unwrap_err(), FormatError::Truncated.into(), "truncated at {i}");
        for bit in 0..8 {
            let mut m = honest.clone();
            m[i] ^= 1 << bit;
            if let Ok(ev) = Evidence::parse(&m) {
                // Only the signature bytes or same-length claim values can change and still parse.
                let resigned = Evidence::sign(&device(), ev.claims_unverified()).unwrap();
                assert_eq!(resigned.len(), m.len());
                assert!(ev.verify(&device().public_key()).is_none(), "a flipped bit never verifies");
            }
        }
    }
}

#[test]
fn maximal_evidence_fits_the_size_limit() {
    use outpost_attestation::evidence::{MAX_HWMODEL_LEN, MAX_TEXT_LEN};
    use outpost_attestation::quote::MAX_ATTEST_LEN;
    use outpost_attestation::{OemId, TpmQuote};
    let mut c = claims([0; 32]);
    c.oemid = Some(OemId::Random([1; 16]));
    c.hwmodel = Some(vec![2; MAX_HWMODEL_LEN]);
    c.bootcount = u64::MAX;
    c.swname = "n".repeat(MAX_TEXT_LEN);
    c.swversion = "v".repeat(MAX_TEXT_LEN);
    c.tpm_quote = Some(TpmQuote { attest: vec![3; MAX_ATTEST_LEN], signature: [4; 64] });
    let bytes = Evidence::sign(&device(), &c).unwrap();
    assert!(bytes.len() <= MAX_EVIDENCE_LEN, "{} bytes", bytes.len());
    assert!(bytes.len() < 1100, "the documented bound: {} bytes", bytes.len());
    assert_eq!(Evidence::parse(&bytes).unwrap().claims_unverified(), &c);
}
