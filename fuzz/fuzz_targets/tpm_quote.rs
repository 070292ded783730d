//! Fuzzes the hub's TPM parsers: the quote (`TPMS_ATTEST`) and the enrolment facts a device sends. No panic on any
//! input, nothing past the quote limit accepted, and accepted enrolment facts encode back to the same bytes.
#![no_main]
use outpost_attestation::quote::{MAX_ATTEST_LEN, TpmEnrolment, parse_quote};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if parse_quote(data).is_ok() {
        assert!(data.len() <= MAX_ATTEST_LEN);
    }
    if let Ok(e) = TpmEnrolment::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
    }
});
