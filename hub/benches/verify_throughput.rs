//! `package verify` throughput on a large package, against `openssl dgst -sha256` of the same blob files.
//!
//! Run: `cargo bench -p outpost-hub --bench verify_throughput`. Both sides are whole processes reading the same
//! files from the page cache; each is run `ROUNDS` times, alternating, and the medians are compared.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use outpost_hub::Registry;
use outpost_hub::clock::SystemClock;
use outpost_shared::testkit::{AffineManifest, affine_model_sized};

/// Floats of padding in the generated model: 32 Mi × 4 bytes = 128 MiB model, so ~256 MiB of blobs in all.
const PADDING_FLOATS: usize = 32 * 1024 * 1024;
const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn time(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = cmd.output().expect("command runs");
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    start.elapsed().as_secs_f64()
}

fn main() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("hub");
    Registry::init(&dir).expect("init");
    let model = tmp.path().join("big.onnx");
    let manifest = tmp.path().join("big.toml");
    let m = AffineManifest::new("big", "1.0.0", 2.0, 1.0);
    std::fs::write(&model, affine_model_sized(m.scale, m.bias, PADDING_FLOATS)).expect("write model");
    std::fs::write(&manifest, m.toml()).expect("write manifest");
    let (blobs, total) = {
        let reg = Registry::open(&dir, Arc::new(SystemClock)).expect("open");
        let added = reg.add(&model, &manifest).expect("add");
        let r = reg.record(&added.digest).expect("index").expect("record");
        let blobs: Vec<PathBuf> = [r.digest, r.model_digest].iter().map(|d| reg.blobs().path_of(d)).collect();
        (blobs, r.package_len + r.model_len)
    };

    let hub = env!("CARGO_BIN_EXE_outpost-hub");
    let mut verify = Command::new(hub);
    verify.arg("--data-dir").arg(&dir).args(["package", "verify"]);
    let mut openssl = Command::new("openssl");
    openssl.args(["dgst", "-sha256"]).args(&blobs);

    // Warm the page cache and both binaries.
    time(&mut verify);
    time(&mut openssl);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(time(&mut verify));
        theirs.push(time(&mut openssl));
    }
    let gbps = |secs: f64| total as f64 / secs / 1e9;
    let (ours, theirs) = (median(ours), median(theirs));
    println!("package verify throughput ({} MiB in 2 blobs, median of {ROUNDS} runs)", total / (1024 * 1024));
    println!("  outpost-hub package verify : {:.3} s  {:.2} GB/s", ours, gbps(ours));
    println!("  openssl dgst -sha256       : {:.3} s  {:.2} GB/s  (baseline)", theirs, gbps(theirs));
    println!("  ratio (ours / baseline)    : {:.2}  (goal >= 0.90)", gbps(ours) / gbps(theirs));
}
