//! The viability controller end to end on the real PP-OCR classifier: it proposes and explains but changes nothing
//! until a key holder approves; an approval becomes the ordinary, audited operation; a structural proposal is
//! refused to the key that registered the controller policy.

mod support;

use std::path::PathBuf;

use support::{TestHub, stderr, stdout};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");

/// A hub with the OCR capability, its champion published on stable for three devices, the labelled suite, one
/// int8 breeding cycle (its per-channel descendant promoted to candidate) and the fixture controller policy
/// registered with targets-1. Returns the hub and its offline key directory.
fn hub_with_candidate() -> (TestHub, PathBuf) {
    let hub = TestHub::new();
    hub.ok(&["capability", "add", &format!("{FIXTURES}/capabilities/ocr-text-direction.toml")]);
    let (model, manifest) =
        (support::fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx"), support::fixture("ppocr-direction.toml"));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    hub.ok(&["suite", "add", &format!("{FIXTURES}/suites/ocr-direction")]);
    let offline = support::publish_on_stable(&hub, "ppocr-direction@2.0.0");
    let key1 = offline.join("targets-1.key");
    let cycle = hub.ok(&[
        "challenger",
        "run",
        "ocr.text-direction",
        "--operator",
        "int8",
        "--count",
        "1",
        "--rounds",
        "1",
        "--max-latency-regression",
        "100",
    ]);
    assert!(!cycle.trim().is_empty());
    // The fixture policy, with latency's weight moved to quality: the tests share two cores, so one round's p95
    // is noise here, and the cycle's noise band covers quality only.
    let policy = std::fs::read_to_string(format!("{FIXTURES}/controller/policy.toml"))
        .unwrap()
        .replace("offline_quality = 0.35", "offline_quality = 0.45")
        .replace("latency = 0.10", "latency = 0.0");
    let policy_file = hub.tmp.path().join("policy-v1.toml");
    std::fs::write(&policy_file, policy).unwrap();
    hub.ok(&["controller", "policy", "set", policy_file.to_str().unwrap(), "--key", key1.to_str().unwrap()]);
    (hub, offline)
}

fn run_json(hub: &TestHub) -> Vec<serde_json::Value> {
    let out = hub.cli(&["controller", "run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap().as_array().unwrap().clone()
}

/// The proposal for the champion (`ppocr-direction@2.0.0`) or, with `-int8`, for its descendant.
fn proposal_for<'a>(all: &'a [serde_json::Value], label: &str) -> &'a serde_json::Value {
    let matches = |l: &str| if label.ends_with("-int8") { l.starts_with(label) } else { l == label };
    all.iter().find(|p| matches(p["label"].as_str().unwrap())).unwrap()
}

#[test]
fn the_controller_never_changes_the_fleet_without_an_approval() {
    let (hub, offline) = hub_with_candidate();
    let before = support::production(&hub);
    let all = run_json(&hub);
    assert_eq!(support::production(&hub), before, "a controller run touched production");
    let champion = proposal_for(&all, "ppocr-direction@2.0.0");
    assert_eq!(champion["role"], "champion");
    assert_eq!(champion["action"], "no_op", "{champion}");
    let candidate = proposal_for(&all, "ppocr-direction@2.0.0-int8");
    assert_eq!(candidate["role"], "candidate");
    assert_eq!(candidate["action"], "shadow", "{candidate}");
    let id = candidate["id"].as_str().unwrap().to_owned();
    // The proposal names its inputs, weights, policy digest and rule.
    let components = candidate["decomposition"]["components"].as_array().unwrap();
    assert_eq!(components.len(), 8);
    let quality = components.iter().find(|c| c["name"] == "offline_quality").unwrap();
    assert_eq!(quality["weight"], 0.45);
    assert_eq!(quality["inputs"]["champion"], 1.0, "{quality}");
    let policy = hub.ok(&["controller", "policy", "show"]);
    assert!(policy.contains(candidate["policy"].as_str().unwrap()), "{policy}");
    let shown = hub.ok(&["controller", "show", &id[..12]]);
    for line in
        ["proposes    SHADOW", "because     candidate within shadow_margin", "offline_quality", "decision    pending"]
    {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    // Listing, showing and running again change nothing either, and a second run adds no copy of the pending one.
    hub.ok(&["controller", "list"]);
    let again = run_json(&hub);
    assert_eq!(proposal_for(&again, "ppocr-direction@2.0.0-int8")["id"], candidate["id"]);
    assert_eq!(hub.ok(&["controller", "list"]).lines().count(), 2, "a header and one proposal");
    assert_eq!(support::production(&hub), before);

    // Approval carries it out as the ordinary operation: published, and a shadow release under the plan.
    let key = offline.join("targets-1.key");
    let plan = format!("{FIXTURES}/plans/canary.toml");
    hub.ok(&["controller", "approve", &id[..12], "--key", key.to_str().unwrap(), "--plan", &plan]);
    assert_ne!(support::production(&hub), before);
    let releases = hub.ok(&["release", "list"]);
    assert!(releases.contains("ppocr-direction@2.0.0-int8"), "{releases}");
    let shown = hub.ok(&["controller", "show", &id[..12]]);
    assert!(shown.contains("decision    approved by") && shown.contains("shadow release r1"), "{shown}");
    let audit = hub.ok(&["audit", "show"]);
    assert!(audit.contains("decide") && audit.contains("approved shadow"), "{audit}");
    // A decision is final.
    let again = hub.cli(&["controller", "approve", &id[..12], "--key", key.to_str().unwrap(), "--plan", &plan]);
    assert!(!again.status.success() && stderr(&again).contains("already decided"), "{}", stderr(&again));
}

#[test]
fn a_structural_proposal_approved_by_its_policy_author_is_refused() {
    let (hub, offline) = hub_with_candidate();
    let key1 = offline.join("targets-1.key");
    let plan = format!("{FIXTURES}/plans/canary.toml");
    let all = run_json(&hub);
    let id = proposal_for(&all, "ppocr-direction@2.0.0-int8")["id"].as_str().unwrap().to_owned();
    hub.ok(&["controller", "approve", &id[..12], "--key", key1.to_str().unwrap(), "--plan", &plan]);

    // Now shadowing. A policy that weighs only size, under a capability budget the champion nearly fills: the
    // smaller int8 shadow beats it and is proposed for promotion, a structural change.
    let cap = std::fs::read_to_string(format!("{FIXTURES}/capabilities/ocr-text-direction.toml"))
        .unwrap()
        .replace("package_size_bytes = 2097152", "package_size_bytes = 600000");
    let cap_file = hub.tmp.path().join("cap.toml");
    std::fs::write(&cap_file, cap).unwrap();
    hub.ok(&["capability", "add", cap_file.to_str().unwrap()]);
    let policy = "version = 2\nauthor = \"size-first\"\n[weights]\noffline_quality = 0.0\nfield_reliability = 0.0\n\
                  latency = 0.0\nmemory = 0.0\ncost = 1.0\ntraffic = 0.0\nstaleness = 0.0\nrisk = 0.0\n\
                  [thresholds]\nmin_inferences = 0\n[oscillation]\nmin_dwell_secs = 0\n";
    let policy_file = hub.tmp.path().join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    hub.ok(&["controller", "policy", "set", policy_file.to_str().unwrap(), "--key", key1.to_str().unwrap()]);
    let all = run_json(&hub);
    let shadow = proposal_for(&all, "ppocr-direction@2.0.0-int8");
    assert_eq!(shadow["role"], "shadow");
    assert_eq!(shadow["action"], "promote", "{shadow}");
    let id = shadow["id"].as_str().unwrap().to_owned();
    let before = support::production(&hub);

    let refused = hub.cli(&["controller", "approve", &id[..12], "--key", key1.to_str().unwrap(), "--plan", &plan]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("structural"), "{}", stderr(&refused));
    assert_eq!(support::production(&hub), before, "a refused approval changed nothing");

    let key2 = offline.join("targets-2.key");
    hub.ok(&["controller", "approve", &id[..12], "--key", key2.to_str().unwrap(), "--plan", &plan]);
    let shown = hub.ok(&["controller", "show", &id[..12]]);
    assert!(shown.contains("approved by") && shown.contains("release r2"), "{shown}");
}

#[test]
fn a_projection_far_from_actuals_is_flagged() {
    let (hub, offline) = hub_with_candidate();
    let all = run_json(&hub);
    let candidate = proposal_for(&all, "ppocr-direction@2.0.0-int8");
    let id = candidate["id"].as_str().unwrap().to_owned();
    let projected = candidate["projection"]["bytes_to_ship"].as_u64().unwrap();
    let size = candidate["decomposition"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cost")
        .unwrap()["inputs"]["size_bytes"]
        .as_f64()
        .unwrap() as u64;
    assert_eq!(projected, 3 * size, "every device of stable would download it");
    let key = offline.join("targets-1.key");
    let plan = format!("{FIXTURES}/plans/canary.toml");
    hub.ok(&["controller", "approve", &id[..12], "--key", key.to_str().unwrap(), "--plan", &plan]);

    // Only one device of the three downloads it (the shadow cohort is small): a third of the projected bytes.
    let package: outpost_shared::Digest = candidate["package"].as_str().unwrap().parse().unwrap();
    {
        let clock = std::sync::Arc::new(outpost_hub::clock::SystemClock);
        let store = outpost_hub::store::Store::open(&hub.dir(), clock).unwrap();
        let event = outpost_shared::telemetry::Event {
            seq: 1,
            at: 0,
            kind: outpost_shared::telemetry::EventKind::UpdateStep {
                package,
                step: outpost_shared::telemetry::Step::Downloaded,
                detail: String::new(),
            },
        };
        let batch = outpost_shared::telemetry::Batch { stream: 7, first_seq: 1, events: vec![event], dropped: 0 };
        store.telemetry().ingest(&"11".repeat(32), None, Some("r1"), None, &batch).unwrap();
    }
    let shown = hub.ok(&["controller", "show", &id[..12]]);
    let line = shown.lines().find(|l| l.starts_with("actual      bytes_to_ship")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains(&format!("projected {projected}, actual {size}")), "{line}");
    assert!(line.contains("OFF: error above the bound 0.25"), "{line}");
    let json: serde_json::Value = serde_json::from_str(&hub.ok(&["controller", "show", &id[..12], "--json"])).unwrap();
    assert_eq!(json["reconciliation"]["flagged"], serde_json::json!(["bytes_to_ship"]), "{json}");

    // A controller run records the comparison (the serving hub's periodic run does the same).
    run_json(&hub);
    let reg = hub.open();
    let id: outpost_shared::Digest = id.parse().unwrap();
    let recorded = reg.reconciliation(&id).unwrap().expect("recorded by the run");
    assert_eq!(recorded.reconciliation.flagged, vec!["bytes_to_ship".to_owned()]);
    assert_eq!(recorded.actuals.bytes_shipped, Some(size));
}

#[test]
fn a_rejected_proposal_keeps_its_reason_and_can_never_be_approved() {
    let (hub, offline) = hub_with_candidate();
    let all = run_json(&hub);
    let id = proposal_for(&all, "ppocr-direction@2.0.0-int8")["id"].as_str().unwrap().to_owned();
    let before = support::production(&hub);
    let key = offline.join("targets-1.key");
    let no_key = hub.cli(&["controller", "reject", &id[..12], "--reason", "not this quarter"]);
    assert!(!no_key.status.success(), "a rejection is a key holder's decision too");
    hub.ok(&["controller", "reject", &id[..12], "--key", key.to_str().unwrap(), "--reason", "not this quarter"]);
    let shown = hub.ok(&["controller", "show", &id[..12]]);
    assert!(shown.contains("decision    rejected by") && shown.contains("not this quarter"), "{shown}");
    let plan = format!("{FIXTURES}/plans/canary.toml");
    let late = hub.cli(&["controller", "approve", &id[..12], "--key", key.to_str().unwrap(), "--plan", &plan]);
    assert!(!late.status.success() && stderr(&late).contains("already decided"), "{}", stderr(&late));
    assert_eq!(support::production(&hub), before, "a rejection changes nothing in the fleet");
    // The rejection stands under this policy: the next run does not ask again.
    let again = run_json(&hub);
    assert_eq!(proposal_for(&again, "ppocr-direction@2.0.0-int8")["id"].as_str().unwrap(), id);
    let listed = hub.ok(&["controller", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("rejected by"), "{listed}");
}
