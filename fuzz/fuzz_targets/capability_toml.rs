//! Fuzzes the capability parser: any input gives a capability or a `ConfigError`, never a panic. A capability that
//! loads survives its stored form, and judging a contract (its own, and the one after a NUL) against it never
//! panics; its own contract always fits.
#![no_main]
use std::path::Path;

use outpost_shared::capability::{Capability, contract_fits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (text, other) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(cap) = Capability::from_toml(text, Path::new("fuzz.toml")) else { return };
    assert_eq!(Capability::from_cbor(&cap.to_cbor()).as_ref(), Ok(&cap));
    assert_eq!(contract_fits(&cap.contract, &cap.contract), Ok(()));
    let _ = cap.check_publishable();
    if let Ok(Ok(other)) = std::str::from_utf8(other).map(|t| Capability::from_toml(t, Path::new("other.toml"))) {
        let _ = contract_fits(&cap.contract, &other.contract);
    }
});
