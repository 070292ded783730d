//! Section `size`: the stripped size of the release `outpost-agent` binary against onnxruntime's native library
//! from its PyPI wheel, stripped the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::report::Row;
use crate::rss::agent_exe;

fn stripped_size(path: &Path, tmp: &Path) -> Result<u64> {
    let out = tmp.join(format!("{}.stripped", path.file_name().context("name")?.to_string_lossy()));
    let ok = Command::new("strip").arg("-o").arg(&out).arg(path).status().context("strip (binutils)")?;
    ensure!(ok.success(), "strip {} failed", path.display());
    let len = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok(len)
}

/// onnxruntime's native library from the installed PyPI wheel.
fn onnxruntime_library() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()?;
    ensure!(out.status.success(), "onnxruntime is not installed");
    let capi = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("capi");
    std::fs::read_dir(&capi)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .with_context(|| format!("no libonnxruntime.so in {}", capi.display()))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub(crate) fn size_row(tmp: &Path) -> Result<Row> {
    let exe = agent_exe()?;
    let ours = stripped_size(&exe, tmp)?;
    let unstripped = std::fs::metadata(&exe)?.len();
    let ort_lib = onnxruntime_library()?;
    let ort = stripped_size(&ort_lib, tmp)?;
    eprintln!(
        "binary size: outpost-agent {unstripped} bytes, {ours} stripped; {} {} bytes stripped",
        ort_lib.display(),
        ort
    );
    Ok(Row::new(
        "outpost-agent stripped (release, default features)",
        format!("{} ({ours} B)", mb(ours)),
        format!("{} ({ort} B) libonnxruntime.so, stripped", mb(ort)),
        ours as f64 / ort as f64,
        "<= 25 MB",
    ))
}
