//! The registry through its users' eyes: the `outpost-hub` binary on a real data directory.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_hub::RegistryError;
use outpost_shared::Digest;
use outpost_shared::testkit::AffineManifest;
use support::{TestHub, fixture, flip_byte, stderr, stdout};

fn add(hub: &TestHub, m: &AffineManifest) -> Digest {
    let (model, manifest) = hub.write_affine(m);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().parse().unwrap()
}

#[test]
fn init_writes_commented_config_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let run =
        || Command::new(env!("CARGO_BIN_EXE_outpost-hub")).arg("--data-dir").arg(&dir).arg("init").output().unwrap();
    assert!(run().status.success());
    let config = std::fs::read_to_string(dir.join("hub.toml")).unwrap();
    assert!(config.lines().filter(|l| l.starts_with('#')).count() >= 3);
    std::fs::write(dir.join("hub.toml"), format!("{config}\n# my edit\n")).unwrap();
    let again = run();
    assert!(again.status.success());
    assert!(stderr(&again).contains("nothing changed"));
    assert!(std::fs::read_to_string(dir.join("hub.toml")).unwrap().contains("# my edit"), "init kept the edited file");
}

#[test]
fn commands_on_an_uninitialised_dir_say_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-hub"))
        .args(["--data-dir", tmp.path().to_str().unwrap(), "package", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("init"), "{}", stderr(&out));
}

#[test]
fn adding_the_same_package_twice_is_a_no_op_that_says_so() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let d1 = add(&hub, &m);
    let blobs = hub.blob_files();
    let (model, manifest) = hub.write_affine(&m);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("already registered"), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), d1.to_hex());
    assert_eq!(hub.blob_files(), blobs);
    assert_eq!(hub.open().list().unwrap().len(), 1);
}

#[test]
fn flipped_byte_in_a_blob_is_caught_by_package_verify() {
    let hub = TestHub::new();
    let d = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let ok = hub.cli(&["package", "verify"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    let reg = hub.open();
    let record = reg.record(&d).unwrap().unwrap();
    let model_blob = reg.blobs().path_of(&record.model_digest);
    drop(reg); // redb allows one process at a time.
    flip_byte(&model_blob, 10);
    let out = hub.cli(&["package", "verify"]);
    assert!(!out.status.success(), "verify must fail on a tampered blob");
    let report = stdout(&out);
    assert!(report.contains("TAMPERED"), "{report}");
    assert!(report.contains(&record.model_digest.to_hex()), "{report}");
    assert!(report.contains(&model_blob.display().to_string()), "{report}");
    assert!(!report.contains(&format!("package {}", d.to_hex())), "the intact package blob is not blamed: {report}");
}

#[test]
fn missing_blob_is_named_by_package_verify() {
    let hub = TestHub::new();
    let d = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let path = hub.open().blobs().path_of(&d);
    std::fs::remove_file(&path).unwrap();
    let out = hub.cli(&["package", "verify", &d.to_hex()[..12]]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("MISSING"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&d.to_hex()), "{}", stdout(&out));
}

#[test]
fn reconstruct_reproduces_the_recorded_digest() {
    let hub = TestHub::new();
    let d = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    assert!(hub.cli(&["alias", "set", "stable", &d.to_hex()]).status.success());
    let out_dir = hub.tmp.path().join("rebuilt");
    let out = hub.cli(&["reconstruct", "stable", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read(stdout(&out).trim()).unwrap();
    assert_eq!(Digest::of(&written), d);
    assert_eq!(written, std::fs::read(hub.open().blobs().path_of(&d)).unwrap());
}

#[test]
fn reconstruct_refuses_a_damaged_model_blob() {
    let hub = TestHub::new();
    let d = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let reg = hub.open();
    reg.alias_set("stable", &d).unwrap();
    flip_byte(&reg.blobs().path_of(&reg.record(&d).unwrap().unwrap().model_digest), 3);
    let err = reg.reconstruct("stable", &hub.tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, RegistryError::BadBlob { role: "model", missing: false, .. }), "{err}");
}

#[test]
fn alias_update_is_atomic_when_the_process_is_killed() {
    let hub = TestHub::new();
    let a = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let b = add(&hub, &AffineManifest::new("affine", "1.1.0", 3.0, 1.0));
    hub.open().alias_set("stable", &a).unwrap();
    // Kill `alias set` at spread-out moments, including mid-commit; every survivor state must be whole.
    for i in 0..40u64 {
        let target = if i % 2 == 0 { b } else { a };
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-hub"))
            .arg("--data-dir")
            .arg(hub.dir())
            .args(["alias", "set", "stable", &target.to_hex()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros((i * 397) % 6000));
        let _ = child.kill();
        let _ = child.wait();
    }
    let reg = hub.open();
    let current = reg.alias_get("stable").unwrap();
    let history = reg.alias_history("stable").unwrap();
    assert_eq!(history.last().unwrap().digest, current, "alias and its history agree");
    for (i, ev) in history.iter().enumerate() {
        assert_eq!(ev.seq, i as u64 + 1, "history has no gaps");
        assert_eq!(ev.previous, i.checked_sub(1).map(|p| history[p].digest), "each event links to the one before");
    }
}

#[test]
fn alias_history_records_every_change_in_order() {
    let hub = TestHub::new();
    let a = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let b = add(&hub, &AffineManifest::new("affine", "1.1.0", 3.0, 1.0));
    for d in [a, b, a] {
        assert!(hub.cli(&["alias", "set", "stable", &d.to_hex()]).status.success());
    }
    let out = hub.cli(&["alias", "history", "stable"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("#1") && lines[0].contains(&a.to_hex()));
    assert!(lines[1].starts_with("#2") && lines[1].contains(&b.to_hex()));
    assert!(lines[2].starts_with("#3") && lines[2].contains(&a.to_hex()));
}

#[test]
fn manifest_missing_a_field_is_refused_naming_field_and_file() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let (model, manifest) = hub.write_files(
        "bad",
        &outpost_shared::testkit::affine_model(2.0, 1.0),
        &m.toml().replace("license = \"Apache-2.0\"\n", ""),
    );
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("`license`"), "{err}");
    assert!(hub.blob_files().is_empty(), "nothing was stored");
}

#[test]
fn manifest_with_a_wrong_type_is_refused_naming_field_line_and_file() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let text = m.toml().replace("tolerance = 1e-5", "tolerance = \"tight\"");
    let (model, manifest) = hub.write_files("bad", &outpost_shared::testkit::affine_model(2.0, 1.0), &text);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    let line = text.lines().position(|l| l.contains("\"tight\"")).unwrap() + 1;
    assert!(stderr(&out).contains(&format!("bad.toml:{line}: field `smoke_test.tolerance`")), "{}", stderr(&out));
}

#[test]
fn contract_that_does_not_match_the_model_is_refused() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let text = m.toml().replacen("dtype = \"f32\"", "dtype = \"i64\"", 1);
    let (model, manifest) = hub.write_files("bad", &outpost_shared::testkit::affine_model(2.0, 1.0), &text);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("contract.inputs[0].dtype"), "{}", stderr(&out));
    assert!(hub.blob_files().is_empty());
}

#[test]
fn smoke_test_outside_tolerance_is_refused() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    // The manifest's expectations are for bias 1.0; the model adds 1.5.
    let (model, manifest) = hub.write_files("drift", &outpost_shared::testkit::affine_model(2.0, 1.5), &m.toml());
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("outside tolerance"), "{}", stderr(&out));
    assert!(hub.blob_files().is_empty());
}

#[test]
fn model_that_tract_cannot_load_is_refused() {
    let hub = TestHub::new();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let (model, manifest) = hub.write_files("junk", b"\x08\x07 definitely not a model", &m.toml());
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not load in tract"), "{}", stderr(&out));
}

#[test]
fn same_version_with_different_bytes_is_refused() {
    let hub = TestHub::new();
    add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 3.0, 1.0));
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already registered as"), "{}", stderr(&out));
}

#[test]
fn lineage_is_shown_back_to_the_root_and_unknown_parents_are_refused() {
    let hub = TestHub::new();
    let root = add(&hub, &AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let mut child = AffineManifest::new("affine", "1.1.0", 2.5, 1.0);
    child.parents = vec![root];
    let child_d = add(&hub, &child);
    let mut grandchild = AffineManifest::new("affine-small", "1.0.0", 2.5, 0.5);
    grandchild.parents = vec![child_d];
    let gc = add(&hub, &grandchild);

    let lineage = hub.open().lineage(&gc).unwrap();
    let chain: Vec<(usize, Digest)> = lineage.iter().map(|e| (e.depth, e.digest)).collect();
    assert_eq!(chain, vec![(0, gc), (1, child_d), (2, root)]);
    let shown = stdout(&hub.cli(&["package", "show", "affine-small@1.0.0"]));
    assert!(shown.contains("affine@1.0.0") && shown.contains("affine@1.1.0"), "{shown}");

    let mut orphan = AffineManifest::new("orphan", "1.0.0", 2.0, 1.0);
    orphan.parents = vec![Digest::of(b"elsewhere")];
    let (model, manifest) = hub.write_affine(&orphan);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lineage.parents"), "{}", stderr(&out));
}

#[test]
fn real_fixture_packages_build_the_digests_their_lineage_records() {
    // The converted classifier's manifest names its parent by digest, computed once on another machine: the same
    // inputs must give the same digest here.
    let hub = TestHub::new();
    let reg = hub.open();
    let parent = reg.add(&fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx"), &fixture("ppocr-direction.toml")).unwrap();
    let child = reg.add(&fixture("ppocr_direction_fixed48x192.onnx"), &fixture("ppocr-direction-fixed.toml")).unwrap();
    let lineage = reg.lineage(&child.digest).unwrap();
    assert_eq!(lineage[1].digest, parent.digest);
    assert_eq!(
        reg.add(&fixture("silero_vad_16k_sequence.onnx"), &fixture("silero-vad.toml"))
            .unwrap()
            .smoke
            .unwrap()
            .outputs
            .len(),
        2
    );
    assert!(reg.verify(None).unwrap().problems().next().is_none());
}
