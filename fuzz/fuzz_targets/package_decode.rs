//! Fuzzes the package container decoder with default limits: typed errors only, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = outpost_shared::PackageLimits::default();
    if let Ok(p) = outpost_shared::Package::decode(data, &limits) {
        assert_eq!(outpost_shared::package::encode_parts(p.manifest_cbor, p.model), data);
    }
});
