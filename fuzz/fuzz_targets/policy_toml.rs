//! Fuzzes the site policy parser: any input gives a policy or a `ConfigError`, never a panic; a policy that
//! loads evaluates any package at any time without panicking.
#![no_main]
use outpost_shared::policy::{PackageFacts, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(policy) = Policy::from_toml(text, std::path::Path::new("fuzz.toml")) {
            let m = outpost_shared::Manifest::from_toml(include_str!("../../fixtures/models/silero-vad.toml"), "m")
                .expect("fixture manifest");
            let facts = PackageFacts::from_manifest(&m, Some(data.len() as u64));
            for now in [0, 1_795_867_200, u64::MAX / 2] {
                policy.evaluate(&facts, now);
            }
        }
    }
});
