//! `outpost-agent policy check`, the admin's dry run: the decision, the rule that fired and every rule
//! evaluated, with an exit status scripts can use (0 accept, 2 defer, 3 reject, 1 a policy that does not load).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outpost_shared::package;
use outpost_shared::testkit::{AffineManifest, affine_model};

fn check(dir: &Path, policy: &str, package: &Path, extra: &[&str]) -> (i32, String, String) {
    let policy_path = dir.join("site.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["policy", "check", "--policy", policy_path.to_str().unwrap(), package.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    (status.code().unwrap(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

fn package_file(dir: &Path, risk: &str) -> PathBuf {
    let mut m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    m.risk_tier = risk.into();
    let path = dir.join(format!("affine-{risk}.opkg"));
    std::fs::write(&path, package::encode(&m.manifest(), &affine_model(2.0, 1.0))).unwrap();
    path
}

#[test]
fn high_risk_package_is_rejected_by_the_dry_run_with_the_rule_that_fired() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, _) = check(tmp.path(), "max_risk = \"medium\"\n", &package_file(tmp.path(), "high"), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("decision  reject (rule `max_risk`: risk high > medium)"), "{out}");
    assert!(out.contains("max_risk               REJECT"), "{out}");
}

#[test]
fn accepted_package_exits_zero_and_lists_every_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = "max_risk = \"medium\"\nallowed_capabilities = [\"test.*\"]\nallowed_licenses = [\"Apache-2.0\"]\n";
    let (code, out, _) = check(tmp.path(), policy, &package_file(tmp.path(), "low"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("decision  accept"), "{out}");
    for rule in ["max_risk", "allowed_capabilities", "allowed_licenses"] {
        assert!(out.lines().any(|l| l.starts_with(rule) && l.contains("pass")), "{rule}: {out}");
    }
}

#[test]
fn outside_the_maintenance_window_the_dry_run_defers_until_it_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = "[[maintenance_windows]]\nstart = \"02:00\"\nend = \"04:00\"\n";
    let pkg = package_file(tmp.path(), "low");
    let (code, out, _) = check(tmp.path(), policy, &pkg, &["--at", "2026-11-28T12:00:00Z"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("decision  defer until 2026-11-29T02:00:00Z"), "{out}");
    let (code, _, _) = check(tmp.path(), policy, &pkg, &["--at", "2026-11-29T02:30:00Z"]);
    assert_eq!(code, 0);
}

#[test]
fn malformed_policy_is_refused_with_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) =
        check(tmp.path(), "site = \"x\"\nmax_rsik = \"low\"\n", &package_file(tmp.path(), "low"), &[]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("site.toml:2: key `max_rsik`: unknown field"), "{err}");
}

#[test]
fn damaged_package_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package_file(tmp.path(), "low");
    let mut bytes = std::fs::read(&pkg).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&pkg, bytes).unwrap();
    let (code, _, err) = check(tmp.path(), "", &pkg, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a valid package"), "{err}");
}

#[cfg(feature = "wasm")]
#[test]
fn dry_run_runs_the_example_wasm_module_after_the_declarative_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/policies/deny-restricted.wat");
    let (code, out, _) = check(tmp.path(), "max_risk = \"high\"\n", &package_file(tmp.path(), "low"), &["--wasm", wat]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.starts_with("wasm:deny-restricted") && l.contains("pass")), "{out}");
    let (code, err) = {
        let (code, _, err) = check(tmp.path(), "", &package_file(tmp.path(), "low"), &["--wasm", "/nonexistent.wasm"]);
        (code, err)
    };
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.wasm"), "{err}");
}
