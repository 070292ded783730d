//! Fuzzes the CBOR manifest decoder used on package contents: no panic, and only canonical input is accepted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = outpost_shared::Manifest::from_cbor(data) {
        assert_eq!(m.to_cbor(), data, "an accepted manifest is in canonical form");
    }
});
