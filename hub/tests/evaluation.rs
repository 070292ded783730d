//! Evaluation suites and records: suites are content-addressed and write-once, `eval run` measures a real model
//! with tract and stores a write-once record, and an evaluation card claiming metrics no record backs is flagged
//! in `package show` and `release status`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_hub::RegistryError;
use outpost_shared::Digest;
use outpost_shared::evaluation::{EvaluationRecord, Machine};
use outpost_shared::npy::{encode_f32, encode_i64};
use outpost_shared::testkit::AffineManifest;
use support::{ALL_OWNERS, TestHub, affine_capability, stderr, stdout};

/// The PP-OCR classifier's smoke-test answer for a crop filled with 0.5 (onnxruntime 1.32.0).
const OCR_AT_HALF: [f32; 2] = [0.503_059_27, 0.496_940_76];

/// Writes a suite directory: `suite.toml` and the arrays, by file name.
fn write_suite(hub: &TestHub, dir: &str, toml: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = hub.tmp.path().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("suite.toml"), toml).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

/// Three 0.5-filled crops, labelled upright, with onnxruntime's outputs as the reference.
fn ocr_suite(hub: &TestHub) -> PathBuf {
    let toml = r#"name = "ocr-direction-golden"
capability = "ocr.text-direction"
description = "three grey crops, onnxruntime's answers as reference"
metrics = ["top1_accuracy", "agreement", "max_abs_diff", "latency", "peak_memory", "size"]
labels = "labels.npy"
[inputs]
x = "crops.npy"
[reference]
outputs = { "save_infer_model/scale_0.tmp_1" = "reference.npy" }
[budget]
threads = 1
warmup = 1
runs = 5
"#;
    let crops = encode_f32(&[3, 1, 3, 48, 192], &vec![0.5; 3 * 3 * 48 * 192]);
    let reference = encode_f32(&[3, 1, 2], &OCR_AT_HALF.repeat(3));
    let files = [("crops.npy", crops), ("labels.npy", encode_i64(&[3], &[0, 0, 0])), ("reference.npy", reference)];
    write_suite(hub, "ocr-suite", toml, &files)
}

fn fixture_capability() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/capabilities/ocr-text-direction.toml")
}

#[test]
fn eval_run_measures_the_real_ocr_model_and_an_unbacked_card_is_flagged() {
    let hub = TestHub::new();
    hub.ok(&["capability", "add", fixture_capability()]);
    let (model, manifest) =
        (support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx"), support::fixture("ppocr-direction.toml"));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let dir = ocr_suite(&hub);
    let digest = hub.ok(&["suite", "add", dir.to_str().unwrap()]).trim().to_owned();
    let shown = hub.ok(&["suite", "show", "ocr-direction-golden"]);
    assert!(shown.contains(&digest) && shown.contains("crops.npy"), "{shown}");

    let out = hub.cli(&["eval", "run", "ppocr-direction@2.0.0", "--suite", "ocr-direction-golden", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let m = &record["metrics"];
    assert_eq!(m["top1_accuracy"], 1.0, "{record}");
    assert_eq!(m["agreement"], 1.0, "{record}");
    assert!(m["max_abs_diff"].as_f64().unwrap() < 1e-4, "tract matches onnxruntime: {record}");
    assert!(m["latency_p95_ms"].as_f64().unwrap() >= m["latency_p50_ms"].as_f64().unwrap());
    assert!(m["size_bytes"].as_f64().unwrap() > 500_000.0, "{record}");
    assert_eq!(record["suite"], digest);
    assert_eq!(record["samples"], 3);
    assert_eq!(record["versions"]["tract"], outpost_hub::evaluate::TRACT_VERSION);
    assert_eq!(record["machine"]["threads"], 1);

    // The fixture's card claims metrics on another suite: no record backs them, and `package show` says so.
    let show = hub.ok(&["package", "show", "ppocr-direction@2.0.0"]);
    assert!(show.contains("reference_outputs = 1  (UNBACKED: no evaluation record on this suite)"), "{show}");
    assert!(show.contains("card      UNBACKED: 2 of 2 claimed metrics"), "{show}");
    assert!(show.contains(&format!("record    {}", &record["id"].as_str().unwrap()[..12])), "{show}");
    let listed = hub.ok(&["eval", "list", "ppocr-direction@2.0.0"]);
    assert!(listed.contains("ocr-direction-golden"), "{listed}");
}

#[test]
fn a_card_is_backed_only_by_what_a_record_on_its_suite_measured() {
    let hub = TestHub::new();
    let cap = hub.write_capability("affine", &affine_capability(4, &ALL_OWNERS));
    hub.ok(&["capability", "add", cap.to_str().unwrap()]);
    let toml = r#"name = "affine-golden"
capability = "test.affine"
metrics = ["agreement", "max_abs_diff"]
[inputs]
x = "x.npy"
[reference]
outputs = { y = "y.npy" }
[budget]
threads = 1
warmup = 0
runs = 1
"#;
    let x = [1.0f32, 2.0, 3.0, 4.0, -1.0, 0.0, 0.5, 8.0];
    let y: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
    let dir = write_suite(
        &hub,
        "affine-suite",
        toml,
        &[("x.npy", encode_f32(&[2, 1, 4], &x)), ("y.npy", encode_f32(&[2, 1, 4], &y))],
    );
    let suite = hub.ok(&["suite", "add", dir.to_str().unwrap()]).trim().to_owned();

    // A card on that suite claiming an exact match (true) and half agreement (the record will say 1).
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let text = m
        .toml()
        .replace(&Digest::of(b"affine-golden").to_hex(), &suite)
        .replace("metrics = { max_abs_error = 0.0 }", "metrics = { max_abs_diff = 0.0, agreement = 0.5 }");
    let (model, manifest) = hub.write_files("affine-1.0.0", &outpost_shared::testkit::affine_model(2.0, 1.0), &text);
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let before = hub.ok(&["package", "show", "affine@1.0.0"]);
    assert!(before.contains("card      UNBACKED: 2 of 2"), "{before}");

    let id = hub.ok(&["eval", "run", "affine@1.0.0", "--suite", &suite[..12]]).trim().to_owned();
    let after = hub.ok(&["package", "show", "affine@1.0.0"]);
    let short = &id[..12];
    assert!(after.contains(&format!("max_abs_diff = 0  (backed by record {short})")), "{after}");
    assert!(after.contains(&format!("agreement = 0.5  (UNBACKED: record {short} measured 1)")), "{after}");
    assert!(after.contains("card      UNBACKED: 1 of 2"), "{after}");

    // The release's status links the same evidence.
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let key = offline.join("targets-1.key");
    hub.ok(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key.to_str().unwrap()]);
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
    let release = hub.ok(&["release", "start", "affine@1.0.0", "--plan", plan]).trim().to_owned();
    let status = hub.ok(&["release", "status", &release]);
    assert!(status.contains("evidence  card: 1 of 2 claimed metrics backed"), "{status}");
    assert!(status.contains(&format!("record    {short}")), "{status}");
    let json: serde_json::Value = serde_json::from_str(&hub.ok(&["release", "status", &release, "--json"])).unwrap();
    assert_eq!(json["evaluations"][0], id);

    // And the capability's boundary shows the champion's record on its suite.
    let boundary = hub.ok(&["capability", "show", "test.affine"]);
    assert!(boundary.contains(&format!("suite     affine-golden ({}), record {short}", &suite[..12])), "{boundary}");
    assert!(boundary.contains("evaluation suite: yes"), "{boundary}");
}

fn record(package: Digest, suite: Digest) -> EvaluationRecord {
    EvaluationRecord {
        package,
        suite,
        suite_name: "s".into(),
        metrics: BTreeMap::from([("size_bytes".to_owned(), 1.0)]),
        samples: 1,
        machine: Machine { cpu: "test".into(), cpus: 1, threads: 1 },
        versions: BTreeMap::new(),
        at: 1,
    }
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

#[test]
fn suites_and_records_are_write_once() {
    let hub = TestHub::new();
    let reg = hub.open();
    reg.capability_add(
        &outpost_shared::capability::Capability::from_toml(
            &std::fs::read_to_string(fixture_capability()).unwrap(),
            Path::new("cap.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = ocr_suite(&hub);
    let first = reg.suite_add(&dir).unwrap();
    assert!(first.added);
    let again = reg.suite_add(&dir).unwrap();
    assert!(!again.added, "the same suite again changes nothing");
    assert_eq!(again.digest, first.digest);
    // Each data file is a read-only blob under its digest.
    for f in first.manifest.files.values() {
        let path = reg.blobs().path_of(&f.digest);
        assert_eq!(mode(&path) & 0o222, 0, "{} is writable", path.display());
    }

    // A changed label under the same name is a different suite: refused, the name keeps its digest.
    std::fs::write(dir.join("labels.npy"), encode_i64(&[3], &[1, 0, 0])).unwrap();
    match reg.suite_add(&dir) {
        Err(RegistryError::SuiteNameTaken { name, existing }) => {
            assert_eq!((name.as_str(), existing), ("ocr-direction-golden", first.digest));
        }
        other => panic!("expected SuiteNameTaken, got {other:?}"),
    }
    assert_eq!(reg.suite("ocr-direction-golden").unwrap().0, first.digest);

    // A record is stored once under its id and never replaced.
    let r = record(Digest::of(b"package"), first.digest);
    let id = reg.evaluation_put(&r).unwrap();
    assert_eq!(id, r.id());
    assert!(matches!(reg.evaluation_put(&r), Err(RegistryError::RecordExists(d)) if d == id));
    assert_eq!(reg.evaluations(&Digest::of(b"package")).unwrap(), vec![(id, r)]);
}

#[test]
fn a_suite_that_does_not_match_its_capability_is_refused() {
    let hub = TestHub::new();
    let reg = hub.open();
    let toml = "name = \"s\"\ncapability = \"ocr.text-direction\"\nmetrics = [\"size\"]\n[inputs]\nimage = \"a.npy\"\n[budget]\nthreads = 1\nwarmup = 0\nruns = 1\n";
    let dir = write_suite(&hub, "bad", toml, &[("a.npy", encode_f32(&[1], &[0.0]))]);
    assert!(matches!(reg.suite_add(&dir), Err(RegistryError::UnknownCapability(c)) if c == "ocr.text-direction"));
    drop(reg);
    hub.ok(&["capability", "add", fixture_capability()]);
    let out = hub.cli(&["suite", "add", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no array for the capability's input `x`"), "{}", stderr(&out));
}

#[test]
fn the_recorded_tract_version_is_the_one_linked() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let entry = format!("name = \"tract-onnx\"\nversion = \"{}\"", outpost_hub::evaluate::TRACT_VERSION);
    assert!(lock.contains(&entry), "update evaluate::TRACT_VERSION to the tract-onnx in Cargo.lock");
}

#[test]
fn a_reference_package_is_run_on_the_same_samples() {
    let hub = TestHub::new();
    let cap = hub.write_capability("affine", &affine_capability(4, &ALL_OWNERS));
    hub.ok(&["capability", "add", cap.to_str().unwrap()]);
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let reference = hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.1.0", 2.0, 1.5));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let toml = format!(
        "name = \"vs-1.0\"\ncapability = \"test.affine\"\nmetrics = [\"agreement\", \"max_abs_diff\"]\n\
         [inputs]\nx = \"x.npz:x\"\n[reference]\npackage = \"{}\"\n[budget]\nthreads = 1\nwarmup = 0\nruns = 1\n",
        reference.trim()
    );
    // An np.savez archive (stored entries) holding `x`.
    let mut npz = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut npz);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("x.npy", stored).unwrap();
        std::io::Write::write_all(&mut zip, &encode_f32(&[2, 1, 4], &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 9.0]))
            .unwrap();
        zip.finish().unwrap();
    }
    let dir = write_suite(&hub, "vs", &toml, &[("x.npz", npz.into_inner())]);
    hub.ok(&["suite", "add", dir.to_str().unwrap()]);
    let out = hub.ok(&["eval", "run", "affine@1.1.0", "--suite", "vs-1.0", "--json"]);
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["metrics"]["max_abs_diff"], 0.5, "bias 1.5 against the reference's 1.0: {record}");
    assert_eq!(record["metrics"]["agreement"], 1.0, "{record}");
}

#[test]
fn frame_accuracy_thresholds_every_element_at_one_half_and_refuses_labels_that_do_not_cover_them() {
    let hub = TestHub::new();
    let cap = hub.write_capability("affine", &affine_capability(4, &ALL_OWNERS));
    hub.ok(&["capability", "add", cap.to_str().unwrap()]);
    let m = AffineManifest::new("affine", "1.0.0", 1.0, 0.0);
    let (model, manifest) =
        hub.write_files("affine-1.0.0", &outpost_shared::testkit::affine_model(1.0, 0.0), &m.toml());
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let toml = |name: &str| {
        format!(
            "name = \"{name}\"\ncapability = \"test.affine\"\nmetrics = [\"frame_accuracy\"]\nlabels = \"labels.npy\"\n\
             [inputs]\nx = \"x.npy\"\n[budget]\nthreads = 1\nwarmup = 0\nruns = 1\n"
        )
    };
    // y = x: elements at or above 0.5 say 1. Two samples of four elements; six of the eight labels are right.
    let x = encode_f32(&[2, 1, 4], &[0.9, 0.1, 0.5, 0.49, 0.0, 1.0, 0.7, 0.2]);
    let labels = encode_i64(&[2, 1, 4], &[1, 0, 1, 1, 0, 1, 0, 0]);
    let dir = write_suite(&hub, "frames", &toml("frames"), &[("x.npy", x.clone()), ("labels.npy", labels)]);
    hub.ok(&["suite", "add", dir.to_str().unwrap()]);
    let out = hub.cli(&["eval", "run", "affine@1.0.0", "--suite", "frames", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(record["metrics"]["frame_accuracy"], 0.75, "{record}");

    // One label per sample is what top1_accuracy takes, not a label per element: refused, naming the counts.
    let short = encode_i64(&[2], &[1, 0]);
    let dir = write_suite(&hub, "short", &toml("short"), &[("x.npy", x), ("labels.npy", short)]);
    hub.ok(&["suite", "add", dir.to_str().unwrap()]);
    let out = hub.cli(&["eval", "run", "affine@1.0.0", "--suite", "short"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("labels: 2 labels for 8 elements of the first output"), "{}", stderr(&out));
    let listed = hub.ok(&["eval", "list", "affine@1.0.0"]);
    assert!(
        listed.contains("frames") && !listed.contains("short"),
        "the good record stays, none for the bad: {listed}"
    );
}
