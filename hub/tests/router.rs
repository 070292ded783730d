//! Router packages on the hub: rules added like any package (TOML in, canonical CBOR stored), refused at publish
//! when a route has no fallback covering its contract or names a capability no channel serves, published once the
//! channels serve it — and never assigned to a device as its model.

mod support;

use std::path::PathBuf;

use support::{TestHub, fixture, production, stderr};

fn routers(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers").join(name)
}

/// Writes router rules and a router manifest at `version`; returns (rules, manifest).
fn write_router(hub: &TestHub, version: &str, rules: &str) -> (String, String) {
    let manifest = std::fs::read_to_string(routers("ocr-router.toml")).unwrap();
    let manifest = manifest.replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    let (r, m) =
        (hub.tmp.path().join(format!("router-{version}.toml")), hub.tmp.path().join(format!("m-{version}.toml")));
    std::fs::write(&r, rules.replace("version = \"1.0.0\"", &format!("version = \"{version}\""))).unwrap();
    std::fs::write(&m, manifest).unwrap();
    (r.to_str().unwrap().to_owned(), m.to_str().unwrap().to_owned())
}

#[test]
fn a_router_without_a_covering_fallback_is_refused_at_publish() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let key = offline.join("targets-1.key");
    let key = key.to_str().unwrap();
    let publish = |package: &str| hub.cli(&["release", "publish", package, "--channel", "stable", "--key", key]);
    let add = |model: &str, manifest: &str| hub.ok(&["package", "add", model, "--manifest", manifest]);

    // The specialist: the fixed 48x192 PP-OCR direction model (capability ocr.text-direction; derived from the
    // generalist, which is added first and not published) on stable.
    let model = fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx");
    add(model.to_str().unwrap(), fixture("ppocr-direction.toml").to_str().unwrap());
    let fixed = fixture("ppocr_direction_fixed48x192.onnx");
    add(fixed.to_str().unwrap(), fixture("ppocr-direction-fixed.toml").to_str().unwrap());
    assert!(publish("ppocr-direction@2.0.1").status.success());

    // A router whose any-size route falls back on the fixed-shape model: a 32x100 crop would have no one.
    let rules = std::fs::read_to_string(routers("ocr-direction.toml")).unwrap();
    let uncovered =
        rules.replace("capability = \"ocr.text-direction.any-size\"", "capability = \"ocr.text-direction\"");
    let (r, m) = write_router(&hub, "1.0.0", &uncovered);
    add(&r, &m);
    let refused = publish("ocr-router@1.0.0");
    assert!(!refused.status.success(), "published a router without a covering fallback");
    let err = stderr(&refused);
    assert!(
        err.contains("route `text-direction`: the fallback `ocr.text-direction` does not cover the route contract"),
        "{err}"
    );
    assert!(err.contains("contract.inputs.`x`.shape[2]"), "names the dimension at fault: {err}");

    // The fixture router's fallback is a capability no channel serves yet: refused, by name.
    let (r, m) = write_router(&hub, "1.1.0", &rules);
    add(&r, &m);
    let refused = publish("ocr-router@1.1.0");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("names capability `ocr.text-direction.any-size`, which no channel serves"),
        "{}",
        stderr(&refused)
    );

    // Once the any-size generalist is published, the same router is.
    let generalist = std::fs::read_to_string(fixture("ppocr-direction.toml"))
        .unwrap()
        .replace("name = \"ppocr-direction\"", "name = \"ppocr-direction-any-size\"")
        .replace("capability = \"ocr.text-direction\"", "capability = \"ocr.text-direction.any-size\"");
    let generalist_manifest = hub.tmp.path().join("any-size.toml");
    std::fs::write(&generalist_manifest, generalist).unwrap();
    add(model.to_str().unwrap(), generalist_manifest.to_str().unwrap());
    assert!(publish("ppocr-direction-any-size@2.0.0").status.success());
    let published = publish("ocr-router@1.1.0");
    assert!(published.status.success(), "{}", stderr(&published));

    // Published after the models, the router is still no device's model: the newest model is.
    hub.ok(&["device", "approve", &"11".repeat(32), "--channel", "stable"]);
    let reg = hub.open();
    let any_size = reg.resolve("ppocr-direction-any-size@2.0.0").unwrap();
    let router = reg.resolve("ocr-router@1.1.0").unwrap();
    drop(reg);
    let (current, eligible) = production(&hub).assigned.remove(0);
    assert_eq!(current, Some(any_size));
    assert!(!eligible.contains(&router), "{eligible:?}");
}

#[test]
fn router_rules_that_do_not_parse_are_refused_when_added() {
    let hub = TestHub::new();
    let rules = std::fs::read_to_string(routers("ocr-direction.toml")).unwrap();
    let cut = rules.find("# The fallback").unwrap();
    let (r, m) = write_router(&hub, "1.0.0", &rules[..cut]);
    let refused = hub.cli(&["package", "add", &r, "--manifest", &m]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("has no fallback"), "{}", stderr(&refused));
    assert!(hub.open().list().unwrap().is_empty(), "nothing registered");

    // Rules and manifest naming different versions are one package with two versions: refused.
    let (r, _) = write_router(&hub, "1.0.0", &rules);
    let (_, m) = write_router(&hub, "2.0.0", &rules);
    let refused = hub.cli(&["package", "add", &r, "--manifest", &m]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("the rules are ocr-router@1.0.0, the manifest ocr-router@2.0.0"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn fleet_status_shows_each_routes_quality_and_concentration() {
    use outpost_shared::route::quality::RouteQuality;
    use outpost_shared::route::select::Skip;
    use outpost_shared::telemetry::{Batch, Event, EventKind};
    use std::time::Duration;

    let hub = TestHub::new();
    hub.ok(&["device", "approve", &"11".repeat(32), "--channel", "stable"]);
    // Two devices' route telemetry: the specialist answered 3, the fallback 7 (6 of them for a revoked specialist).
    let quality = |specialist: u64, revoked: u64| {
        let mut q = RouteQuality::default();
        for _ in 0..specialist {
            q.record(Some(("ocr.text-direction", Duration::from_millis(2))), &[], None);
        }
        for _ in 0..revoked {
            q.record(Some(("ocr.text-direction.any-size", Duration::from_millis(9))), &[], Some(Skip::Revoked));
        }
        q
    };
    {
        let clock = std::sync::Arc::new(outpost_shared::clock::ManualClock::new(1_795_881_600));
        let store = outpost_hub::telemetry::TelemetryStore::open(&hub.dir(), clock).unwrap();
        for (device, q) in [("11", quality(3, 2)), ("22", quality(0, 4))] {
            let kind = EventKind::RouteQuality { route: "text-direction".into(), quality: q };
            let batch =
                Batch { stream: 1, first_seq: 1, events: vec![Event { seq: 1, at: 1_795_881_600, kind }], dropped: 0 };
            store.ingest(&device.repeat(32), None, None, None, &batch).unwrap();
        }
        // One more answer by the fallback, without a reason: 3 of 10 answers from the specialist.
        let kind = EventKind::RouteQuality {
            route: "text-direction".into(),
            quality: {
                let mut q = RouteQuality::default();
                q.record(Some(("ocr.text-direction.any-size", Duration::from_millis(9))), &[], None);
                q
            },
        };
        let batch =
            Batch { stream: 1, first_seq: 2, events: vec![Event { seq: 2, at: 1_795_881_600, kind }], dropped: 0 };
        store.ingest(&"22".repeat(32), None, None, None, &batch).unwrap();
    }
    let out = hub.ok(&["fleet", "status"]);
    assert!(
        out.contains("text-direction       10 requests, 0 unanswered; top ocr.text-direction.any-size 70%, HHI 0.58"),
        "{out}"
    );
    let fallback = out
        .lines()
        .find(|l| l.contains("ocr.text-direction.any-size") && l.contains("revoked×6"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(fallback.split_whitespace().any(|w| w == "7"), "{fallback}");
    let json: serde_json::Value = serde_json::from_str(&hub.ok(&["fleet", "status", "--json"])).unwrap();
    let routes = &json[0]["telemetry"]["routes"]["text-direction"];
    assert_eq!(routes["requests"], 10, "{json}");
    assert_eq!(routes["candidates"]["ocr.text-direction.any-size"]["fallbacks"]["revoked"], 6, "{json}");
}
