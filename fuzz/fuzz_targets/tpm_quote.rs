//! Fuzzes the hub's TPM quote parser (`TPMS_ATTEST`): no panic on any input, and nothing past the limit accepted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if outpost_attestation::quote::parse_quote(data).is_ok() {
        assert!(data.len() <= outpost_attestation::quote::MAX_ATTEST_LEN);
    }
});
