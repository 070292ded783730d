//! Manifest parsing defends against bad author input: every refusal names the file and the field.

use outpost_shared::manifest::{Dim, ElementType, PackageKind, RiskTier};
use outpost_shared::testkit::{AffineManifest, FirmwareManifest};
use outpost_shared::{Digest, Manifest, package};

fn parse(toml: &str) -> Result<Manifest, outpost_shared::ManifestError> {
    Manifest::from_toml(toml, "models/m.toml")
}

fn valid() -> String {
    AffineManifest::new("affine", "1.0.0", 2.0, 1.0).toml()
}

#[test]
fn valid_manifest_parses_with_symbolic_dims() {
    let m = parse(&valid()).unwrap();
    assert_eq!(m.name, "affine");
    assert_eq!(m.risk_tier, RiskTier::Low);
    assert_eq!(m.contract.inputs[0].dtype, ElementType::F32);
    assert_eq!(m.contract.inputs[0].shape, vec![Dim::Symbol("N".into()), Dim::Fixed(4)]);
}

#[test]
fn missing_field_is_named_with_file() {
    let text = valid().replace("capability = \"test.affine\"\n", "");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.file, "models/m.toml");
    assert_eq!(e.field, "capability");
    assert!(e.to_string().contains("models/m.toml"), "{e}");
    assert!(e.to_string().contains("`capability`"), "{e}");
}

#[test]
fn missing_nested_field_is_named_by_path() {
    let text = valid().replace("memory_budget_bytes = 1048576\n", "");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "runtime.memory_budget_bytes", "{e}");
}

#[test]
fn wrong_type_is_named_with_line() {
    let text = valid().replace("memory_budget_bytes = 1048576", "memory_budget_bytes = \"lots\"");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "runtime.memory_budget_bytes", "{e}");
    let line = text.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
    assert_eq!(e.line, Some(line), "{e}");
}

#[test]
fn unknown_key_is_refused_by_name() {
    let text = valid().replace("[runtime]\n", "[runtime]\ngpu = true\n");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "runtime.gpu", "{e}");
}

#[test]
fn bad_semver_and_bad_enum_are_refused() {
    let e = parse(&valid().replace("version = \"1.0.0\"", "version = \"one\"")).unwrap_err();
    assert_eq!(e.field, "version", "{e}");
    let e = parse(&valid().replace("risk_tier = \"low\"", "risk_tier = \"extreme\"")).unwrap_err();
    assert_eq!(e.field, "risk_tier", "{e}");
}

#[test]
fn syntax_error_reports_line() {
    let e = parse("name = \"x\"\nversion = \n").unwrap_err();
    assert_eq!(e.field, "(document)");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn root_with_parents_and_derived_without_parents_are_refused() {
    let parent = Digest::of(b"p");
    let text = valid().replace("parents = []", &format!("parents = [\"{parent}\"]"));
    assert_eq!(parse(&text).unwrap_err().field, "lineage.parents");
    let text = valid().replace("operator = \"none\"", "operator = \"quantize\"");
    assert_eq!(parse(&text).unwrap_err().field, "lineage.parents");
}

#[test]
fn smoke_test_for_unknown_input_or_wrong_shape_is_refused() {
    let text = valid().replace("inputs = [{ name = \"x\"", "inputs = [{ name = \"z\"");
    assert_eq!(parse(&text).unwrap_err().field, "smoke_test.inputs[0].name");
    let text = valid().replace("inputs = [{ name = \"x\", shape = [2, 4]", "inputs = [{ name = \"x\", shape = [2, 5]");
    assert_eq!(parse(&text).unwrap_err().field, "smoke_test.inputs[0].shape");
    let text = valid().replace("shape = [2, 4], fill = 1.0", "shape = [2, 4], values = [1.0, 2.0]");
    assert_eq!(parse(&text).unwrap_err().field, "smoke_test.inputs[0].values");
}

#[test]
fn bad_timestamp_is_refused() {
    let text = valid().replace("2026-11-28T12:00:00Z", "last tuesday");
    assert_eq!(parse(&text).unwrap_err().field, "provenance.built_at");
}

#[test]
fn same_inputs_build_the_same_package_digest() {
    let model = outpost_shared::testkit::affine_model(2.0, 1.0);
    // Reordering keys in the TOML must not change the canonical manifest.
    let reordered =
        valid().replacen("name = \"affine\"\nversion = \"1.0.0\"", "version = \"1.0.0\"\nname = \"affine\"", 1);
    let a = package::encode(&parse(&valid()).unwrap(), &model);
    let b = package::encode(&parse(&reordered).unwrap(), &model);
    assert_eq!(Digest::of(&a), Digest::of(&b));
    assert_eq!(package::digest_of_parts(&parse(&valid()).unwrap().to_cbor(), &model), Digest::of(&a));
}

#[test]
fn manifest_cbor_round_trips() {
    let m = parse(&valid()).unwrap();
    assert_eq!(Manifest::from_cbor(&m.to_cbor()).unwrap(), m);
}

fn firmware() -> String {
    FirmwareManifest::new("sensor-hub-fw", "1.4.0", "stm32h743-outpost-r2", 6).toml()
}

#[test]
fn firmware_manifest_parses_without_contract_or_smoke_test() {
    let m = parse(&firmware()).unwrap();
    assert_eq!(m.kind, PackageKind::Firmware);
    let fw = m.firmware.as_ref().unwrap();
    assert_eq!((fw.hardware_id.as_str(), fw.release_counter), ("stm32h743-outpost-r2", 6));
    assert!(m.contract.is_empty() && m.smoke_test.is_empty());
    assert_eq!(Manifest::from_cbor(&m.to_cbor()).unwrap(), m, "round-trips through the package encoding");
}

#[test]
fn model_manifest_encoding_has_no_kind_or_firmware_key() {
    // Model digests recorded in lineages must not change because the firmware kind exists.
    let cbor = parse(&valid()).unwrap().to_cbor();
    for key in [&b"kind"[..], b"firmware"] {
        assert!(!cbor.windows(key.len()).any(|w| w == key), "{}", String::from_utf8_lossy(key));
    }
}

#[test]
fn firmware_manifest_without_its_table_is_refused() {
    let text = firmware().replace("[firmware]\nhardware_id = \"stm32h743-outpost-r2\"\nrelease_counter = 6\n", "");
    assert_eq!(parse(&text).unwrap_err().field, "firmware");
}

#[test]
fn firmware_table_on_a_model_manifest_is_refused() {
    let text = format!("{}\n[firmware]\nhardware_id = \"x\"\nrelease_counter = 1\n", valid());
    assert_eq!(parse(&text).unwrap_err().field, "firmware");
}

#[test]
fn firmware_manifest_with_a_contract_is_refused() {
    let tensor = "name = \"x\"\ndtype = \"f32\"\nshape = [1]\n";
    let text = format!("{}\n[[contract.inputs]]\n{tensor}[[contract.outputs]]\n{tensor}", firmware());
    assert_eq!(parse(&text).unwrap_err().field, "contract");
}

#[test]
fn firmware_hardware_id_too_long_or_odd_is_refused() {
    for bad in ["", "has space", &"h".repeat(33)] {
        let text = firmware().replace("stm32h743-outpost-r2", bad);
        assert_eq!(parse(&text).unwrap_err().field, "firmware.hardware_id", "{bad:?}");
    }
}

#[test]
fn model_manifest_without_contract_names_the_contract() {
    let text = valid().replace(
        "[[contract.inputs]]\nname = \"x\"\ndtype = \"f32\"\nshape = [\"N\", 4]\n\n[[contract.outputs]]\nname = \"y\"\ndtype = \"f32\"\nshape = [\"N\", 4]\n",
        "",
    );
    assert_ne!(text, valid());
    assert_eq!(parse(&text).unwrap_err().field, "contract");
}

/// The contract flag that lets an input hold NaN or infinities: absent from a manifest that does not set it (so
/// every digest recorded before it existed still holds), kept through the package encoding when set, and refused
/// where it would let a broken model off (an output) or means nothing (integers).
#[test]
fn a_contract_may_allow_non_finite_values_on_a_float_input_only() {
    let old = parse(&valid()).unwrap();
    assert!(!old.contract.inputs[0].allow_non_finite, "default: not allowed");
    let cbor = old.to_cbor();
    let key = b"allow_non_finite";
    assert!(!cbor.windows(key.len()).any(|w| w == key), "an older manifest encodes as before");

    let allowing = AffineManifest::new("affine", "1.0.0", 2.0, 1.0).allowing_non_finite().toml();
    let m = parse(&allowing).unwrap();
    assert!(m.contract.inputs[0].allow_non_finite);
    assert_eq!(Manifest::from_cbor(&m.to_cbor()).unwrap(), m, "round-trips through the package encoding");
    assert_ne!(m.to_cbor(), cbor, "the flag is part of what the package's digest covers");

    let on_output =
        allowing.replace("shape = [\"N\", 4]\n\n[lineage]", "shape = [\"N\", 4]\nallow_non_finite = true\n\n[lineage]");
    assert_ne!(on_output, allowing, "the edit applies");
    let e = parse(&on_output).unwrap_err();
    assert_eq!(e.field, "contract.outputs[0].allow_non_finite", "{e}");
    let on_ints = allowing.replacen("dtype = \"f32\"", "dtype = \"i64\"", 1);
    let e = parse(&on_ints).unwrap_err();
    assert_eq!(e.field, "contract.inputs[0].allow_non_finite", "{e}");
}
