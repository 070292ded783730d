//! Models are checked against their manifest before anyone relies on them: contract and smoke test.

use std::path::PathBuf;

use outpost_shared::Manifest;
use outpost_shared::model::{self, ModelError};
use outpost_shared::testkit::{AffineManifest, affine_model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name)
}

fn real(model: &str, manifest: &str) -> (Vec<u8>, Manifest) {
    let text = std::fs::read_to_string(fixture(manifest)).unwrap();
    (std::fs::read(fixture(model)).unwrap(), Manifest::from_toml(&text, manifest).unwrap())
}

#[test]
fn generated_model_passes_its_smoke_test() {
    let report =
        model::check(&affine_model(2.0, 1.0), &AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest()).unwrap();
    assert_eq!(report.outputs.len(), 1);
    assert!(report.outputs[0].1 <= 1e-6);
}

#[test]
fn real_silero_vad_matches_onnxruntime_goldens() {
    let (bytes, manifest) = real("silero_vad_16k_sequence.onnx", "silero-vad.toml");
    let report = model::check(&bytes, &manifest).unwrap();
    assert_eq!(report.outputs.len(), 2);
}

#[test]
fn real_ppocr_classifier_matches_onnxruntime_goldens() {
    let (bytes, manifest) = real("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml");
    model::check(&bytes, &manifest).unwrap();
}

#[test]
fn smoke_test_outside_tolerance_is_refused() {
    // The manifest expects scale 2, bias 1; the model adds 1.01.
    let e =
        model::check(&affine_model(2.0, 1.01), &AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest()).unwrap_err();
    match e {
        ModelError::SmokeMismatch { output, diff, .. } => {
            assert_eq!(output, "y");
            assert!((diff - 0.01).abs() < 1e-4, "{diff}");
        }
        other => panic!("expected a smoke mismatch, got {other}"),
    }
}

#[test]
fn contract_with_wrong_dtype_is_refused() {
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).toml().replacen("dtype = \"f32\"", "dtype = \"i64\"", 1);
    let m = Manifest::from_toml(&m, "m.toml").unwrap();
    let e = model::check(&affine_model(2.0, 1.0), &m).unwrap_err();
    assert!(matches!(&e, ModelError::Contract { field, .. } if field == "contract.inputs[0].dtype"), "{e}");
}

#[test]
fn contract_with_wrong_shape_or_name_is_refused() {
    let text = AffineManifest::new("a", "1.0.0", 2.0, 1.0).toml();
    let fixed = text
        .replacen("shape = [\"N\", 4]", "shape = [\"N\", 8]", 1)
        .replace("shape = [2, 4], fill = 1.0 }]", "shape = [2, 8], fill = 1.0 }]");
    let e = model::check(&affine_model(2.0, 1.0), &Manifest::from_toml(&fixed, "m.toml").unwrap()).unwrap_err();
    assert!(matches!(&e, ModelError::Contract { field, .. } if field == "contract.inputs[0].shape"), "{e}");

    let renamed = text.replace("name = \"y\"", "name = \"out\"");
    let e = model::check(&affine_model(2.0, 1.0), &Manifest::from_toml(&renamed, "m.toml").unwrap()).unwrap_err();
    assert!(matches!(&e, ModelError::Contract { field, .. } if field == "contract.outputs[0].name"), "{e}");
}

#[test]
fn garbage_model_bytes_are_a_load_error_not_a_panic() {
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest();
    for bytes in [&b""[..], b"not onnx at all", &[0xff; 64]] {
        assert!(matches!(model::check(bytes, &m), Err(ModelError::Load(_))));
    }
}
