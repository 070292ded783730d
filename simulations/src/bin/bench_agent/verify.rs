//! Section `verify`: the agent's check of a downloaded package (length and SHA-256 against TUF) on a 256 MiB
//! package, against `openssl dgst -sha256` on the same file.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use outpost_shared::testkit::{AffineManifest, affine_model_sized};
use outpost_shared::{Digest, package};

use crate::report::Row;
use crate::{VERIFY_PADDING_FLOATS, VERIFY_RUNS, now};

/// The agent's check of a downloaded package: `device::hash_file` (what `Agent::try_download` calls; `Digest::of_reader` underneath, as the hub verifies blobs), then the
/// length and SHA-256 compared with what TUF lists.
fn agent_verify(path: &Path, length: u64, digest: &Digest) -> Result<()> {
    let (n, d) = outpost_agent::device::hash_file(path)?;
    ensure!(n == length && d == *digest, "package does not verify");
    Ok(())
}

fn openssl_sha256(path: &Path) -> Result<Digest> {
    let out = Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(path).output().context("openssl")?;
    ensure!(out.status.success(), "openssl dgst failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().context("openssl output")?.parse().context("openssl digest")
}

pub(crate) fn bench_verify(tmp: &Path) -> Result<Vec<Row>> {
    let m = AffineManifest::new("big", "1.0.0", 2.0, 1.0);
    let bytes = package::encode(&m.manifest(), &affine_model_sized(m.scale, m.bias, VERIFY_PADDING_FLOATS));
    let (len, digest) = (bytes.len() as u64, Digest::of(&bytes));
    let path = tmp.join("big.opkg");
    std::fs::write(&path, &bytes)?;
    drop(bytes);
    eprintln!("package verification: {len} bytes, best of {VERIFY_RUNS} after a warm-up, alternating...");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..=VERIFY_RUNS {
        let start = now();
        agent_verify(&path, len, &digest)?;
        let a = start.elapsed();
        let start = now();
        let d = openssl_sha256(&path)?;
        let b = start.elapsed();
        ensure!(d == digest, "openssl computed {d}, the agent {digest}");
        if run > 0 {
            ours.push(a.as_secs_f64());
            theirs.push(b.as_secs_f64());
        }
    }
    std::fs::remove_file(&path)?;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (a, b) = (best(&ours), best(&theirs));
    let gbps = |s: f64| len as f64 / s / 1e9;
    eprintln!("  agent: {ours:.3?} s; openssl: {theirs:.3?} s");
    Ok(vec![Row::new(
        "package verify, 256 MiB (GB/s)",
        format!("{:.2} ({a:.3} s)", gbps(a)),
        format!("{:.2} ({b:.3} s) openssl dgst -sha256", gbps(b)),
        gbps(a) / gbps(b),
        ">= 0.90 (hub's)",
    )])
}
