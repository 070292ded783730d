//! Fuzzes the TOML manifest parser: any input gives a manifest or a `ManifestError`, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = outpost_shared::Manifest::from_toml(text, "fuzz.toml") {
            // Whatever parses must survive the trip through its canonical form.
            let again = outpost_shared::Manifest::from_cbor(&m.to_cbor()).expect("canonical manifest decodes");
            assert_eq!(again, m);
        }
    }
});
