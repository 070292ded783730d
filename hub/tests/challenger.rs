//! The challenger loop end to end on the real PP-OCR classifier: descendants become packages with lineage, the
//! cycle is decided against champion and no-op and stored, a cycle touches nothing in production, risk is derived
//! (a high-risk descendant is never started automatically; a low-risk one may start its shadow release), and the
//! operators' output loads in onnxruntime too when it is installed.

mod support;

use std::path::PathBuf;

use outpost_shared::Digest;
use outpost_shared::npy::encode_f32;
use outpost_shared::operators::{Fp16, Granularity, Int8, fp16_weights, quantize_int8};
use support::{TestHub, stderr, stdout};

const CHAMPION: &str = "ppocr-direction@2.0.0";

fn fixture_capability() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/capabilities/ocr-text-direction.toml")
}

/// Eight deterministic text-like crops (bars and gaps, some upside down), in [-1, 1].
fn crops(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * 3 * 48 * 192);
    for k in 0..n {
        for c in 0..3 {
            for y in 0..48 {
                for x in 0..192 {
                    let (yy, xx) = if k % 2 == 1 { (47 - y, 191 - x) } else { (y, x) };
                    let bar = ((xx / (5 + k)) % 3 == 0) && yy > 10 + (xx % 7) && yy < 30 + k;
                    v.push(if bar { 0.8 } else { -0.6 + 0.01 * c as f32 });
                }
            }
        }
    }
    v
}

/// A hub with the capability, the champion and a suite whose reference is the champion itself (agreement and
/// max_abs_diff against the champion, latency, size).
fn hub_with_champion() -> (TestHub, String) {
    let hub = TestHub::new();
    hub.ok(&["capability", "add", fixture_capability()]);
    let (model, manifest) =
        (support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx"), support::fixture("ppocr-direction.toml"));
    let champion = hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let champion = champion.trim().to_owned();
    let dir = hub.tmp.path().join("suite");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("crops.npy"), encode_f32(&[8, 1, 3, 48, 192], &crops(8))).unwrap();
    std::fs::write(
        dir.join("suite.toml"),
        format!(
            r#"name = "ocr-direction-vs-champion"
capability = "ocr.text-direction"
metrics = ["agreement", "max_abs_diff", "latency", "size"]
[inputs]
x = "crops.npy"
[reference]
package = "{champion}"
[budget]
threads = 1
warmup = 1
runs = 4
"#
        ),
    )
    .unwrap();
    hub.ok(&["suite", "add", dir.to_str().unwrap()]);
    (hub, champion)
}

/// Runs a cycle and returns its record. Latency is not what these tests defend (tests share two cores and p95 of
/// four runs is their slowest), so its threshold is set out of the way.
fn cycle_json(hub: &TestHub, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["challenger", "run", "ocr.text-direction", "--max-latency-regression", "100"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = hub.cli(&all);
    assert!(out.status.success(), "{all:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn a_cycle_registers_descendants_with_lineage_and_decides_against_champion_and_noop() {
    let (hub, champion) = hub_with_champion();
    let cycle = cycle_json(&hub, &["--champion", CHAMPION, "--operator", "int8", "--count", "2", "--rounds", "2"]);

    // Champion, no-op and both descendants ran twice each, interleaved: no subject runs twice in a row.
    let order: Vec<String> = cycle["runs"].as_array().unwrap().iter().map(|r| r["subject"].to_string()).collect();
    assert_eq!(order.len(), 8);
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    assert_eq!(cycle["champion"], champion);
    assert_eq!(cycle["noise"]["agreement"], 0.0, "tract is deterministic: no quality noise");

    // Each descendant is a package whose lineage names the operator, its parameters and the champion.
    let reg = hub.open();
    let candidates = cycle["candidates"].as_array().unwrap();
    for (i, c) in candidates.iter().enumerate() {
        let d: Digest = c["package"].as_str().unwrap().parse().unwrap();
        let (_, m) = reg.manifest(&d).unwrap();
        assert_eq!(m.lineage.parents, vec![champion.parse::<Digest>().unwrap()]);
        assert_eq!(m.lineage.operator, outpost_shared::manifest::LineageOperator::Quantize);
        assert_eq!(m.lineage.parameters["operator"], "int8");
        assert_eq!(m.lineage.parameters["granularity"], if i == 0 { "per-channel" } else { "per-tensor" });
        assert_eq!(m.capability, "ocr.text-direction");
        assert_eq!(m.provenance.built_by, "outpost-hub challenger");
        assert!(m.evaluation.metrics.is_empty(), "the card claims nothing the cycle did not measure");
        // Four runs of each descendant's records exist on the suite (two rounds; the reference run is not one).
        assert_eq!(reg.evaluations(&d).unwrap().len(), 2);
        // Quantised to int8 (weights of 1024+ elements by default): under half the champion's 586,721 bytes.
        assert!(c["verdict"]["metrics"]["size_bytes"].as_f64().unwrap() < 0.5 * 586_721.0, "{c}");
    }
    // Per-channel int8 at the default threshold agrees with the champion on every crop and is promoted.
    assert_eq!(candidates[0]["verdict"]["metrics"]["agreement"], 1.0, "{cycle}");
    assert_eq!(cycle["promoted"], candidates[0]["package"], "{cycle}");
    assert_eq!(candidates[0]["risk"]["derived"], "low");
    drop(reg);

    // `challenger show` prints every candidate against champion, no-op and the noise band.
    let id = cycle["id"].as_str().unwrap();
    let shown = hub.ok(&["challenger", "show", &id[..12]]);
    for line in ["champion", "no-op (champion again)", "noise band", "PROMOTED", "max_quality_drop=0.01"] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    let listed = hub.ok(&["challenger", "list"]);
    assert!(listed.contains(&id[..12]) && listed.contains("int8"), "{listed}");
}

#[test]
fn a_candidate_worse_than_the_noop_noise_band_is_rejected_with_the_reason() {
    let (hub, _) = hub_with_champion();
    // Per-tensor int8 of every weight costs the classifier agreement on these crops; allow no drop at all.
    let cycle = cycle_json(
        &hub,
        &[
            "--champion",
            CHAMPION,
            "--operator",
            "int8",
            "--param",
            "granularity=per-tensor",
            "--param",
            "min_elements=0",
            "--max-quality-drop",
            "0",
            "--max-diff-increase",
            "0.01",
            "--rounds",
            "1",
        ],
    );
    let c = &cycle["candidates"][0];
    assert_eq!(c["verdict"]["outcome"], "rejected", "{cycle}");
    let reasons: Vec<&str> = c["verdict"]["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("max_abs_diff") && r.contains("> noise 0.0000 + max_diff_increase 0.01")),
        "{reasons:?}"
    );
    assert_eq!(cycle["promoted"], serde_json::Value::Null);
    let shown = hub.ok(&["challenger", "show", cycle["id"].as_str().unwrap()]);
    assert!(shown.contains("decision    NONE promoted") && shown.contains("reason: max_abs_diff"), "{shown}");
}

fn publish_champion(hub: &TestHub) -> PathBuf {
    support::publish_on_stable(hub, CHAMPION).join("targets-1.key")
}

#[test]
fn a_cycle_changes_no_tuf_metadata_director_assignment_or_device_state() {
    let (hub, champion) = hub_with_champion();
    publish_champion(&hub);
    let before = support::production(&hub);
    assert!(before.files.keys().any(|p| p.ends_with("timestamp.json")), "the repository exists");
    assert!(before.assigned.iter().all(|(current, _)| current.map(|d| d.to_hex()) == Some(champion.clone())));

    // The champion comes from the capability's boundary (channel stable), not --champion.
    let cycle = cycle_json(&hub, &["--operator", "fp16", "--count", "1", "--rounds", "1"]);
    assert_eq!(cycle["champion"], champion);
    assert_eq!(cycle["candidates"].as_array().unwrap().len(), 1);

    let after = support::production(&hub);
    assert_eq!(before.files, after.files, "TUF metadata and targets unchanged, byte for byte");
    assert_eq!(before.devices, after.devices, "device records unchanged");
    assert_eq!(before.releases, after.releases, "no release started");
    assert_eq!(before.assigned, after.assigned, "the director assigns every device what it did");
}

#[test]
fn a_low_risk_promoted_candidate_starts_as_a_shadow_release_with_auto_shadow() {
    let (hub, _) = hub_with_champion();
    let key = publish_champion(&hub);
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
    let cycle = cycle_json(
        &hub,
        &["--operator", "int8", "--rounds", "1", "--auto-shadow", plan, "--key", key.to_str().unwrap()],
    );
    assert!(cycle["promoted"].is_string(), "the per-channel int8 descendant is promoted: {cycle}");
    let follow = cycle["follow_up"].as_str().unwrap();
    assert!(follow.starts_with("shadow release r1 of ppocr-direction@2.0.0-int8."), "{follow}");
    let status = hub.ok(&["release", "status", "r1"]);
    assert!(status.contains("shadow"), "{status}");
    let list = hub.ok(&["release", "list"]);
    assert!(list.contains("ppocr-direction@2.0.0-int8"), "{list}");
}

#[test]
fn package_show_walks_the_lineage_with_each_steps_records_cycle_decisions_and_releases() {
    let (hub, champion) = hub_with_champion();
    let key = publish_champion(&hub);
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
    let cycle = cycle_json(
        &hub,
        &["--operator", "int8", "--rounds", "1", "--auto-shadow", plan, "--key", key.to_str().unwrap()],
    );
    let promoted = cycle["promoted"].as_str().unwrap();
    let id = &cycle["id"].as_str().unwrap()[..12];
    let shown = hub.ok(&["package", "show", promoted]);
    let lines: Vec<&str> = shown.lines().collect();
    let at = |what: &str| lines.iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}: {shown}"));
    // The descendant's own step, then its parent's, each followed by what joins to it.
    let child = at(&format!("{}  made by: quantize", &promoted[..12]));
    let parent = at(&format!("{}  made by:", &champion[..12]));
    assert!(child < parent, "{shown}");
    let child_part = lines[child..parent].join("\n");
    let parent_part = lines[parent..].iter().take_while(|l| !l.starts_with("evaluation")).cloned().collect::<Vec<_>>();
    let parent_part = parent_part.join("\n");
    assert!(child_part.contains("record   "), "the descendant's evaluation record: {child_part}");
    assert!(
        child_part.contains(&format!("cycle    {id} candidate against {}: PROMOTED", &champion[..12])),
        "{child_part}"
    );
    assert!(child_part.contains("release  r1 on stable: reached shadow; running"), "{child_part}");
    assert!(parent_part.contains(&format!("cycle    {id} champion:")), "{parent_part}");
    assert!(parent_part.contains(&format!("promoted {}", &promoted[..12])), "{parent_part}");
    assert!(parent_part.contains("record   "), "the champion's evaluation records: {parent_part}");
}

#[test]
fn a_high_risk_descendant_of_an_external_operator_is_recorded_and_never_started_automatically() {
    let (hub, _) = hub_with_champion();
    let key = publish_champion(&hub);
    // The "fine-tuning" pipeline hands back a graph with a DequantizeLinear node: a fine-tune does not explain
    // new operator types, so the descendant is new code on the device — high risk whatever the manifest says.
    let champion_model = std::fs::read(support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap();
    let tuned = quantize_int8(&champion_model, &Int8::default()).unwrap().model;
    let tuned_path = hub.tmp.path().join("tuned.onnx");
    std::fs::write(&tuned_path, &tuned).unwrap();
    let script = hub.tmp.path().join("fine-tune.sh");
    std::fs::write(&script, format!("#!/bin/sh\n# fine-tune INPUT OUTPUT\ncp {} \"$2\"\n", tuned_path.display()))
        .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
    let cycle = cycle_json(
        &hub,
        &[
            "--operator-cmd",
            script.to_str().unwrap(),
            "--lineage",
            "fine-tune",
            "--timeout-secs",
            "30",
            "--rounds",
            "1",
            "--auto-shadow",
            plan,
            "--key",
            key.to_str().unwrap(),
        ],
    );
    // Command, input digest and output digest are recorded.
    assert_eq!(cycle["operator"]["external"]["command"], script.to_str().unwrap());
    assert_eq!(cycle["operator"]["external"]["input"], Digest::of(&champion_model).to_hex());
    let c = &cycle["candidates"][0];
    assert_eq!(c["model"], Digest::of(&tuned).to_hex());
    assert_eq!(c["risk"]["declared"], "low");
    assert_eq!(c["risk"]["derived"], "high");
    assert!(c["risk"]["reasons"][0].as_str().unwrap().contains("DequantizeLinear"), "{c}");
    // It passes the offline gate, but is not started: two signatures and an approval first.
    assert_eq!(cycle["promoted"], c["package"], "{cycle}");
    let follow = cycle["follow_up"].as_str().unwrap();
    assert!(follow.contains("is high risk") && follow.contains("second signature"), "{follow}");
    assert!(hub.ok(&["release", "list"]).lines().count() <= 1, "no release started");
    // The registered package carries the derived tier.
    let d: Digest = c["package"].as_str().unwrap().parse().unwrap();
    assert_eq!(hub.open().manifest(&d).unwrap().1.risk_tier, outpost_shared::manifest::RiskTier::High);
}

#[test]
fn package_add_refuses_a_descendant_declaring_low_risk_with_a_changed_data_class() {
    let (hub, champion) = hub_with_champion();
    let text = std::fs::read_to_string(support::fixture("ppocr-direction.toml"))
        .unwrap()
        .replace("version = \"2.0.0\"", "version = \"2.0.1\"")
        .replace("data_classification = \"internal\"", "data_classification = \"confidential\"")
        .replace("operator = \"none\"", &format!("operator = \"convert\"\nparents = [\"{champion}\"]"));
    let model = std::fs::read(support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap();
    let (model, manifest) = hub.write_files("reclassified", &model, &text);
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("declared low, but the changes against the parent make it high")
            && err.contains("data classification changes from internal to confidential"),
        "{err}"
    );
    // Declared high, the same package is admitted.
    let (model2, manifest2) = hub.write_files(
        "reclassified-high",
        &std::fs::read(&model).unwrap(),
        &text.replace("risk_tier = \"low\"", "risk_tier = \"high\""),
    );
    hub.ok(&["package", "add", model2.to_str().unwrap(), "--manifest", manifest2.to_str().unwrap()]);
}

#[test]
fn operator_outputs_load_in_onnxruntime_and_match_tract() {
    let python = std::process::Command::new("python3").args(["-c", "import onnxruntime"]).output();
    if !python.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 with onnxruntime is not installed (pip install onnxruntime)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let champion = std::fs::read(support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap();
    let models = [
        ("int8-per-channel", quantize_int8(&champion, &Int8 { min_elements: 0, granularity: Granularity::PerChannel })),
        ("int8-per-tensor", quantize_int8(&champion, &Int8 { min_elements: 0, granularity: Granularity::PerTensor })),
        ("fp16", fp16_weights(&champion, &Fp16 { min_elements: 0 })),
    ];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/onnxruntime-check.py");
    for (name, done) in models {
        let path = tmp.path().join(format!("{name}.onnx"));
        std::fs::write(&path, done.unwrap().model).unwrap();
        let out = std::process::Command::new("python3").arg(script).arg(&path).output().unwrap();
        assert!(out.status.success(), "{name}: onnxruntime refused it: {}", stderr(&out));
        // onnxruntime's answer for the 0.5-filled crop, against tract's.
        let ort: Vec<f64> = serde_json::from_str(stdout(&out).trim()).unwrap();
        let text = std::fs::read_to_string(support::fixture("ppocr-direction.toml")).unwrap();
        let manifest = outpost_shared::Manifest::from_toml(&text, "ppocr-direction.toml").unwrap();
        let loaded = outpost_shared::model::load(&std::fs::read(&path).unwrap(), &manifest).unwrap();
        let tract = loaded.smoke_outputs(&manifest).unwrap();
        let tract = tract[0].values.clone().unwrap();
        let diff = ort.iter().zip(&tract).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-4, "{name}: onnxruntime {ort:?} vs tract {tract:?}");
    }
}

/// A fixture capability with its committed labelled suite: capability file, champion model and manifest, suite
/// directory, suite name, champion, and onnxruntime 1.32.0's figure on the suite (scripts/onnxruntime-suite-accuracy.py).
struct FixtureCapability {
    capability: &'static str,
    file: &'static str,
    model: &'static str,
    manifest: &'static str,
    suite_dir: &'static str,
    suite: &'static str,
    champion: &'static str,
    metric: &'static str,
    onnxruntime: f64,
    /// Elements the metric counts: one tract/onnxruntime disagreement at the threshold moves it by 1/this.
    elements: f64,
}

const FIXTURES: [FixtureCapability; 2] = [
    FixtureCapability {
        capability: "ocr.text-direction",
        file: "ocr-text-direction.toml",
        model: "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        manifest: "ppocr-direction.toml",
        suite_dir: "ocr-direction",
        suite: "ocr-direction-rendered-v1",
        champion: "ppocr-direction@2.0.0",
        metric: "top1_accuracy",
        onnxruntime: 1.0,
        elements: 18.0,
    },
    FixtureCapability {
        capability: "audio.vad",
        file: "audio-vad.toml",
        model: "silero_vad_16k_sequence.onnx",
        manifest: "silero-vad.toml",
        suite_dir: "vad",
        suite: "vad-espeak-v1",
        champion: "silero-vad@6.2.3",
        metric: "frame_accuracy",
        onnxruntime: 982.0 / 1056.0,
        elements: 1056.0,
    },
];

/// The fixture's capability, champion (published on stable, three devices approved) and committed suite.
fn fixture_hub(f: &FixtureCapability) -> TestHub {
    let hub = TestHub::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
    hub.ok(&["capability", "add", &format!("{root}/capabilities/{}", f.file)]);
    let (model, manifest) = (support::fixture(f.model), support::fixture(f.manifest));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    hub.ok(&["suite", "add", &format!("{root}/suites/{}", f.suite_dir)]);
    support::publish_on_stable(&hub, f.champion);
    hub
}

#[test]
fn each_fixture_champion_scores_on_its_labelled_suite_what_onnxruntime_scores() {
    for f in &FIXTURES {
        let hub = fixture_hub(f);
        let out = hub.cli(&["eval", "run", f.champion, "--suite", f.suite, "--json"]);
        assert!(out.status.success(), "{}: {}", f.capability, stderr(&out));
        let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let got = record["metrics"][f.metric].as_f64().unwrap_or_else(|| panic!("{record}"));
        // tract and onnxruntime may land on either side of the 0.5 threshold for one borderline element.
        assert!(
            (got - f.onnxruntime).abs() <= 1.0 / f.elements + 1e-9,
            "{}: tract {got}, onnxruntime {}",
            f.capability,
            f.onnxruntime
        );
    }
}

#[test]
fn a_breeding_cycle_on_each_fixture_capability_records_a_decision_and_changes_nothing_in_production() {
    for f in &FIXTURES {
        let hub = fixture_hub(f);
        let before = support::production(&hub);
        let args = ["challenger", "run", f.capability, "--operator", "int8", "--count", "1", "--rounds", "1"];
        let out = hub.cli(&[&args[..], &["--max-latency-regression", "100", "--json"]].concat());
        assert!(out.status.success(), "{}: {}", f.capability, stderr(&out));
        let cycle: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(cycle["suite_name"], f.suite, "{cycle}");
        let candidate = &cycle["candidates"][0];
        assert!(candidate["verdict"]["metrics"][f.metric].is_f64(), "{}: {candidate}", f.capability);
        let promoted = cycle["promoted"].is_string();
        let rejected = !candidate["verdict"]["reasons"].as_array().unwrap().is_empty();
        assert!(promoted != rejected, "{}: a decision either way, with reasons when negative: {cycle}", f.capability);
        let shown = hub.ok(&["challenger", "show", &cycle["id"].as_str().unwrap()[..12]]);
        assert!(shown.contains("decision"), "{shown}");
        assert_eq!(before, support::production(&hub), "{}: the cycle touched production", f.capability);
    }
}
