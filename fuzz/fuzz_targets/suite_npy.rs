//! Fuzzes what `suite add` and `eval run` parse: the suite TOML (before a NUL) and a NumPy array (after it, as
//! `.npy`, and as an `.npz` entry). Any input gives a value or a typed error, never a panic, and a decoded array
//! holds exactly the elements its shape says, within the limits. The whole input is also read as a stored suite
//! manifest (canonical CBOR), which must survive its own encoding.
#![no_main]
use std::path::Path;

use outpost_shared::evaluation::{SuiteManifest, SuiteToml};
use outpost_shared::npy::{ArrayLimits, decode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(stored) = SuiteManifest::from_cbor(data) {
        assert!(SuiteManifest::from_cbor(&stored.to_cbor()).is_ok());
    }
    let (text, array) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(text) = std::str::from_utf8(text) {
        if let Ok(suite) = SuiteToml::from_toml(text, Path::new("suite.toml")) {
            assert!(!suite.files().is_empty());
        }
    }
    let limits = ArrayLimits { max_elements: 1 << 20, max_rank: 8 };
    for inside in [None, Some("x")] {
        if let Ok(t) = decode(array, inside, "x", &limits) {
            assert!(t.data.len() <= limits.max_elements && t.shape.len() <= limits.max_rank);
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }
});
