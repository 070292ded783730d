//! Capabilities as registry objects: a package outside its registered capability's contract is refused at add,
//! a capability without its four owners cannot publish, and `capability show` tells champion, rollback path and
//! owners at a glance. Packages of unregistered capabilities keep today's behaviour.

mod support;

use outpost_hub::RegistryError;
use outpost_hub::registry::{CapabilityAdded, CapabilityCheck};
use outpost_shared::capability::{Capability, ContractMismatch, Side, Unfit};
use outpost_shared::testkit::AffineManifest;
use support::{ALL_OWNERS, TestHub, affine_capability, stderr};

fn capability(toml: &str) -> Capability {
    Capability::from_toml(toml, std::path::Path::new("cap.toml")).unwrap()
}

#[test]
fn a_package_outside_its_capabilitys_contract_is_refused() {
    let hub = TestHub::new();
    let reg = hub.open();
    // The capability serves x[N, 8]; the affine package takes x[N, 4].
    reg.capability_add(&capability(&affine_capability(8, &ALL_OWNERS))).unwrap();
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let err = reg.add(&model, &manifest).unwrap_err();
    match err {
        RegistryError::OutsideCapability { capability, revision: 1, source, .. } => {
            assert_eq!(capability, "test.affine");
            assert_eq!(
                *source,
                Unfit::Contract(ContractMismatch::Dimension {
                    side: Side::Inputs,
                    name: "x".into(),
                    axis: 1,
                    capability: "8".into(),
                    package: "4".into()
                })
            );
        }
        other => panic!("expected OutsideCapability, got {other:?}"),
    }
    assert!(reg.list().unwrap().is_empty(), "nothing was registered");
    assert!(hub.blob_files().is_empty(), "refused before any blob was written");
    drop(reg);

    // The same refusal from the CLI, naming the field.
    let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refused by capability `test.affine`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("contract.inputs.`x`.shape[1]"), "{}", stderr(&out));
}

#[test]
fn a_package_of_an_unregistered_capability_is_still_added_and_a_fitting_one_is_checked() {
    let hub = TestHub::new();
    let reg = hub.open();
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    assert_eq!(reg.add(&model, &manifest).unwrap().capability, Some(CapabilityCheck::NotRegistered));
    reg.capability_add(&capability(&affine_capability(4, &ALL_OWNERS))).unwrap();
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.1.0", 2.0, 1.0));
    assert_eq!(reg.add(&model, &manifest).unwrap().capability, Some(CapabilityCheck::Fits { revision: 1 }));
}

#[test]
fn a_capability_without_its_four_owners_cannot_publish() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let key = offline.join("targets-1.key");
    let key = key.to_str().unwrap();
    let partial = hub.write_capability("partial", &affine_capability(4, &["model", "evaluation"]));
    let added = hub.cli(&["capability", "add", partial.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(stderr(&added).contains("no security, production owners"), "warned at once: {}", stderr(&added));
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);

    let refused = hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key]);
    assert!(!refused.status.success(), "published without owners");
    assert!(
        stderr(&refused).contains("capability `test.affine` has no security, production owners"),
        "{}",
        stderr(&refused)
    );
    let shown = hub.ok(&["capability", "show", "test.affine"]);
    assert!(shown.contains("security    MISSING"), "{shown}");
    assert!(shown.contains("four owners: NO"), "{shown}");

    // Naming them is a new revision; then the publish goes through and the boundary shows the champion.
    let full = hub.write_capability("full", &affine_capability(4, &ALL_OWNERS));
    let revised = hub.cli(&["capability", "add", full.to_str().unwrap()]);
    assert!(stderr(&revised).contains("revised capability test.affine revision 2"), "{}", stderr(&revised));
    hub.ok(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key]);
    let shown = hub.ok(&["capability", "show", "test.affine"]);
    assert!(shown.contains("champion  affine@1.0.0"), "{shown}");
    assert!(shown.contains("rollback  NONE"), "{shown}");

    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.1.0", 2.0, 1.0));
    hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    hub.ok(&["release", "publish", "affine@1.1.0", "--channel", "stable", "--key", key]);
    let json: serde_json::Value =
        serde_json::from_str(&hub.ok(&["capability", "show", "test.affine", "--json"])).unwrap();
    let digest = |nv: &str| {
        hub.ok(&["package", "show", nv]).lines().next().unwrap().split_whitespace().nth(1).unwrap().to_owned()
    };
    assert_eq!(json["channels"][0]["champion"], digest("affine@1.1.0"));
    assert_eq!(json["channels"][0]["rollback"], digest("affine@1.0.0"), "the last good release is the rollback path");
    assert_eq!(json["missing_owners"], serde_json::json!([]));
    let list = hub.ok(&["capability", "list"]);
    assert!(list.contains("test.affine") && list.contains("4/4"), "{list}");
}

#[test]
fn a_registered_capabilitys_contract_cannot_change() {
    let hub = TestHub::new();
    let reg = hub.open();
    let (_, added) = reg.capability_add(&capability(&affine_capability(4, &ALL_OWNERS))).unwrap();
    assert_eq!(added, CapabilityAdded::Created);
    let (_, again) = reg.capability_add(&capability(&affine_capability(4, &ALL_OWNERS))).unwrap();
    assert_eq!(again, CapabilityAdded::Unchanged);
    let err = reg.capability_add(&capability(&affine_capability(8, &ALL_OWNERS))).unwrap_err();
    assert!(matches!(err, RegistryError::CapabilityContractChanged { ref name } if name == "test.affine"), "{err}");
    assert_eq!(reg.capability_history("test.affine").unwrap().len(), 1);
}

#[test]
fn the_fixture_ocr_capability_admits_both_real_ppocr_packages() {
    let hub = TestHub::new();
    let cap = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/capabilities/ocr-text-direction.toml");
    hub.ok(&["capability", "add", cap]);
    for (model, manifest) in [
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml"),
        ("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml"),
    ] {
        let (model, manifest) = (support::fixture(model), support::fixture(manifest));
        let out = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
        assert!(out.status.success(), "{manifest:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("fits its capability (revision 1)"), "{}", stderr(&out));
    }
}
