//! Fuzzes the attestation evidence parser (COSE_Sign1 + EAT claims): no panic on any input, and accepted evidence
//! is canonical: its claims re-encode, and re-signing them yields a token of the same length.
#![no_main]
use outpost_attestation::{Evidence, Identity};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(evidence) = Evidence::parse(data) {
        let claims = evidence.claims_unverified();
        let resigned = Evidence::sign(&Identity::from_seed([0; 32]), claims).expect("accepted claims re-encode");
        assert_eq!(resigned.len(), data.len(), "an accepted token is in the one canonical encoding");
        let _ = evidence.verify(&Identity::from_seed([1; 32]).public_key());
    }
});
