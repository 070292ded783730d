//! Fuzzes the controller policy parser: any input gives a policy or a `ConfigError`, never a panic. A policy that
//! loads has weights summing to 1, keeps its digest through its canonical form, and scores a package to a total in
//! 0–1 whatever the package's numbers.
#![no_main]
use std::path::Path;

use outpost_shared::Digest;
use outpost_shared::controller::{ControllerPolicy, Facts, Field, Role, decompose};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = ControllerPolicy::from_toml(text, Path::new("fuzz.toml")) else { return };
    let sum: f64 = policy.weights.named().iter().map(|(_, w)| w).sum();
    assert!((sum - 1.0).abs() < 1e-6);
    assert_eq!(policy.digest(), policy.clone().digest());
    let f = Facts {
        package: Digest::of(data),
        label: "fuzz@1".into(),
        capability: "fuzz.cap".into(),
        channel: None,
        role: Role::Shadow,
        risk_low: true,
        risk_score: f64::NAN,
        quality: Some(("top1_accuracy".into(), f64::INFINITY, 0.5, -1.0)),
        field: Field { inferences: u64::MAX, errors: u64::MAX, rollbacks: 3, devices: 0, p95_ms: Some(-1.0), traffic_share: 2.0 },
        offline_p95_ms: None,
        latency_budget_ms: 0.0,
        peak_memory_bytes: Some(u64::MAX),
        memory_budget_bytes: 0,
        size_bytes: u64::MAX,
        size_budget_bytes: 0,
        channel_devices: u64::MAX,
        champion_traffic_share: f64::NAN,
        idle_days: f64::INFINITY,
    };
    let d = decompose(&f, &policy);
    assert!((0.0..=1.0).contains(&d.total), "{}", d.total);
});
