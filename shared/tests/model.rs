//! Models are checked against their manifest before anyone relies on them: contract and smoke test.

use std::path::PathBuf;

use outpost_shared::Manifest;
use outpost_shared::model::{self, MAX_SHAPE_PLANS, ModelError, NamedTensor, Planning, TensorData};
use outpost_shared::testkit::{AffineManifest, affine_model, nan_below};

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

fn x(shape: Vec<usize>, fill: f32) -> NamedTensor {
    let n = shape.iter().product();
    NamedTensor::new("x", shape, TensorData::F32(vec![fill; n]))
}

fn bad_input(e: ModelError) -> (String, String) {
    match e {
        ModelError::BadInput { input, problem } => (input, problem),
        other => panic!("expected a bad-input error, got {other}"),
    }
}

#[test]
fn serving_load_runs_any_batch_size_of_a_symbolic_dimension() {
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest();
    let loaded = model::load_for_serving(&affine_model(2.0, 1.0), &m).unwrap();
    assert_eq!(loaded.planning(), Planning::Symbolic);
    assert_eq!(loaded.cached_plans(), 2, "the symbolic plan, and a concrete one for the smoke test's shapes");
    loaded.smoke_test(&m).unwrap();
    for n in [1, 3, 17] {
        let out = loaded.run(vec![x(vec![n, 4], 0.5)]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "y");
        assert_eq!(out[0].shape, vec![n, 4]);
        assert_eq!(out[0].data, TensorData::F32(vec![2.0; n * 4]));
    }
}

#[test]
fn smoke_shaped_load_refuses_other_shapes_as_bad_input_not_a_panic() {
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest();
    let loaded = model::load(&affine_model(2.0, 1.0), &m).unwrap();
    assert_eq!(loaded.planning(), Planning::SmokeShapes);
    assert!(loaded.run(vec![x(vec![2, 4], 1.0)]).is_ok());
    let (input, problem) = bad_input(loaded.run(vec![x(vec![3, 4], 1.0)]).unwrap_err());
    assert_eq!(input, "x");
    assert!(problem.contains("dimension 0 is 3"), "{problem}");
}

#[test]
fn run_refuses_inputs_that_do_not_fit_the_contract() {
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest();
    let loaded = model::load_for_serving(&affine_model(2.0, 1.0), &m).unwrap();

    let (input, problem) = bad_input(loaded.run(vec![x(vec![2, 4], 1.0), x(vec![2, 4], 1.0)]).unwrap_err());
    assert_eq!((input.as_str(), problem.as_str()), ("x", "given more than once"));

    let (input, problem) = bad_input(loaded.run(vec![]).unwrap_err());
    assert_eq!(input, "x");
    assert!(problem.starts_with("missing"), "{problem}");

    let stranger = NamedTensor::new("z", vec![1, 4], TensorData::F32(vec![0.0; 4]));
    let (input, problem) = bad_input(loaded.run(vec![x(vec![1, 4], 1.0), stranger]).unwrap_err());
    assert_eq!(input, "z");
    assert!(problem.contains("its inputs: x"), "{problem}");

    let wrong_type = NamedTensor::new("x", vec![1, 4], TensorData::I64(vec![1; 4]));
    let (_, problem) = bad_input(loaded.run(vec![wrong_type]).unwrap_err());
    assert_eq!(problem, "element type is i64, the model takes f32");

    let (_, problem) = bad_input(loaded.run(vec![x(vec![4], 1.0)]).unwrap_err());
    assert!(problem.contains("rank 1, the model takes rank 2 [N, 4]"), "{problem}");

    let (_, problem) = bad_input(loaded.run(vec![x(vec![1, 5], 1.0)]).unwrap_err());
    assert!(problem.contains("dimension 1 is 5"), "{problem}");

    let short = NamedTensor::new("x", vec![2, 4], TensorData::F32(vec![0.0; 7]));
    let (_, problem) = bad_input(loaded.run(vec![short]).unwrap_err());
    assert_eq!(problem, "shape [2, 4] holds 8 elements, 7 were given");

    let overflow = NamedTensor::new("x", vec![usize::MAX, 4], TensorData::F32(vec![0.0; 4]));
    let (_, problem) = bad_input(loaded.run(vec![overflow]).unwrap_err());
    assert!(problem.contains("more than usize::MAX"), "{problem}");
}

#[test]
fn real_silero_vad_serving_load_matches_the_goldens_and_takes_other_sequence_lengths() {
    let (bytes, manifest) = real("silero_vad_16k_sequence.onnx", "silero-vad.toml");
    let loaded = model::load_for_serving(&bytes, &manifest).unwrap();
    loaded.smoke_test(&manifest).unwrap();
    let state = |name: &str| NamedTensor::new(name, vec![1, 1, 128], TensorData::F32(vec![0.0; 128]));
    for frames in [1, 5] {
        let audio = NamedTensor::new("input", vec![frames, 576], TensorData::F32(vec![0.0; frames * 576]));
        let out = loaded.run(vec![state("c"), audio, state("h")]).unwrap();
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["speech_probs", "hn", "cn"]);
        assert_eq!(out[0].shape, vec![frames]);
        assert!(out[0].data.to_f64().iter().all(|p| (0.0..=1.0).contains(p)), "{:?}", out[0].data);
    }
}

#[test]
fn real_ppocr_serving_load_matches_the_goldens_for_any_batch_and_crop_size() {
    let (bytes, manifest) = real("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml");
    let loaded = model::load_for_serving(&bytes, &manifest).unwrap();
    // tract cannot plan this graph symbolically (its final Reshape goes through an int32 cast of the shape).
    assert_eq!(loaded.planning(), Planning::PerShape);
    let shape: Vec<String> = loaded.inputs()[0].shape.iter().map(|d| d.to_string()).collect();
    assert_eq!(shape, ["N", "3", "H", "W"]);
    loaded.smoke_test(&manifest).unwrap();
    let golden = manifest.smoke_test.expected[0].materialize();
    let out = loaded.run(vec![x(vec![3, 3, 48, 192], 0.5)]).unwrap();
    assert_eq!(out[0].shape, vec![3, 2]);
    for (i, (got, want)) in out[0].data.to_f64().iter().zip(golden.iter().cycle()).enumerate() {
        assert!((got - want).abs() <= manifest.smoke_test.tolerance, "element {i}: {got} vs {want}");
    }
    // More distinct shapes than the plan cache holds, then the first ones again: all run.
    for width in (0..MAX_SHAPE_PLANS + 2).chain(0..2).map(|i| 160 + 32 * i) {
        let out = loaded.run(vec![x(vec![1, 3, 48, width], 0.5)]).unwrap();
        assert_eq!(out[0].shape, vec![1, 2]);
        let p: f64 = out[0].data.to_f64().iter().sum();
        assert!((p - 1.0).abs() < 1e-4, "softmax output sums to {p}");
        assert!(loaded.cached_plans() <= MAX_SHAPE_PLANS);
    }
    let (_, problem) = bad_input(loaded.run(vec![x(vec![0, 3, 48, 192], 0.5)]).unwrap_err());
    assert!(problem.contains("dimension 0 (`N`) is 0"), "{problem}");
}

#[test]
fn real_ppocr_with_a_fixed_crop_serves_any_batch_size() {
    let (bytes, manifest) = real("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml");
    let loaded = model::load_for_serving(&bytes, &manifest).unwrap();
    loaded.smoke_test(&manifest).unwrap();
    let out = loaded.run(vec![x(vec![2, 3, 48, 192], 0.5)]).unwrap();
    assert_eq!(out[0].shape, vec![2, 2]);
}

#[test]
fn model_answering_nan_is_a_model_failure_not_an_answer() {
    // Passes its smoke test (inputs of 1.0), yet answers NaN for inputs below 0.25.
    let m = AffineManifest::new("a", "1.0.0", 2.0, 1.0).manifest();
    let bytes = nan_below(&affine_model(2.0, 1.0), "x", 0.25).unwrap();
    let loaded = model::load_for_serving(&bytes, &m).unwrap();
    loaded.smoke_test(&m).unwrap();
    assert_eq!(loaded.run(vec![x(vec![1, 4], 0.5)]).unwrap()[0].data, TensorData::F32(vec![2.0; 4]));
    match loaded.run(vec![x(vec![1, 4], 0.0)]).unwrap_err() {
        ModelError::NonFinite { output, index, value } => {
            assert_eq!((output.as_str(), index, value.as_str()), ("y", 0, "NaN"));
        }
        other => panic!("expected a non-finite output error, got {other}"),
    }
}

#[test]
fn real_ppocr_rewritten_to_fail_on_dark_pixels_still_passes_its_smoke_test() {
    let (bytes, manifest) = real("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml");
    let loaded = model::load_for_serving(&nan_below(&bytes, "x", 0.25).unwrap(), &manifest).unwrap();
    loaded.smoke_test(&manifest).unwrap();
    let dark = loaded.run(vec![x(vec![1, 3, 48, 192], -0.5)]).unwrap_err();
    assert!(matches!(dark, ModelError::NonFinite { .. }), "{dark}");
}

/// A tensor of `shape` whose values differ from element to element and from seed to seed.
fn ramp(name: &str, shape: Vec<usize>, seed: usize) -> NamedTensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i * 7 + seed * 13) % 97) as f32 / 97.0 - 0.3).collect();
    NamedTensor::new(name, shape, TensorData::F32(data))
}

#[test]
fn no_request_is_answered_from_another_requests_run_state() {
    // ppocr-direction keeps nothing between runs, so the server reuses its tract run states: each request must
    // still be answered exactly as a model loaded for it alone answers it, in any order and from any thread.
    let (bytes, manifest) = real("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml");
    let served = model::load_for_serving(&bytes, &manifest).unwrap();
    assert!(served.reuses_run_states(), "a stateless model should reuse its run states");
    let requests: Vec<NamedTensor> = (0..4).map(|seed| ramp("x", vec![1, 3, 48, 192], seed)).collect();
    let alone: Vec<_> = requests
        .iter()
        .map(|r| model::load_for_serving(&bytes, &manifest).unwrap().run(vec![r.clone()]).unwrap())
        .collect();
    assert!(alone.windows(2).all(|w| w[0] != w[1]), "the requests must be told apart by their answers");
    for ix in [0, 1, 0, 2, 3, 3, 1] {
        assert_eq!(served.run(vec![requests[ix].clone()]).unwrap(), alone[ix], "request {ix}");
    }
    std::thread::scope(|s| {
        for (ix, (request, answer)) in requests.iter().zip(&alone).enumerate() {
            let served = &served;
            s.spawn(move || {
                for _ in 0..10 {
                    assert_eq!(served.run(vec![request.clone()]).unwrap(), *answer, "request {ix} on its thread");
                }
            });
        }
    });
    // Nor does a request of another shape (another plan), or one refused before tract runs.
    assert_eq!(served.run(vec![ramp("x", vec![2, 3, 48, 160], 5)]).unwrap()[0].shape, vec![2, 2]);
    assert!(served.run(vec![ramp("x", vec![1, 3, 48, 192], 0), ramp("x", vec![1, 3, 48, 192], 1)]).is_err());
    assert_eq!(served.run(vec![requests[2].clone()]).unwrap(), alone[2]);
}

#[test]
fn a_model_that_keeps_state_between_runs_runs_each_request_on_a_fresh_state() {
    // silero-vad's recurrent layer keeps state from one run to the next inside a tract run state: were one reused,
    // a request would be answered from the audio of the one before.
    let (bytes, manifest) = real("silero_vad_16k_sequence.onnx", "silero-vad.toml");
    let served = model::load_for_serving(&bytes, &manifest).unwrap();
    assert!(!served.reuses_run_states(), "a stateful model must not reuse its run states");
    let state = |name: &str| NamedTensor::new(name, vec![1, 1, 128], TensorData::F32(vec![0.0; 128]));
    let request = |seed| vec![state("c"), ramp("input", vec![2, 576], seed), state("h")];
    let first = served.run(request(1)).unwrap();
    for seed in [2, 1, 3, 1] {
        let answer = served.run(request(seed)).unwrap();
        if seed == 1 {
            assert_eq!(answer, first, "the same audio must be answered the same whatever came before");
        } else {
            assert_ne!(answer, first);
        }
    }
}

#[test]
fn a_recurring_shape_of_a_symbolic_model_gets_a_plan_of_its_own_that_answers_the_same() {
    // silero-vad plans symbolically; four frames is not its smoke test's two. The symbolic plan answers at once,
    // and once the shape recurs a concrete plan (faster) is built beside it and answers the same.
    let (bytes, manifest) = real("silero_vad_16k_sequence.onnx", "silero-vad.toml");
    let served = model::load_for_serving(&bytes, &manifest).unwrap();
    assert_eq!(served.planning(), Planning::Symbolic);
    assert_eq!(served.cached_plans(), 2);
    let state = |name: &str| NamedTensor::new(name, vec![1, 1, 128], TensorData::F32(vec![0.0; 128]));
    let request = |frames: usize, seed| vec![state("c"), ramp("input", vec![frames, 576], seed), state("h")];
    let symbolic = served.run(request(4, 1)).unwrap();
    for _ in 1..model::PLAN_RECURRING_AFTER {
        assert_eq!(served.run(request(4, 1)).unwrap(), symbolic);
    }
    // At most two minutes of 20 ms naps.
    for nap in 0.. {
        if served.settled() {
            break;
        }
        assert!(nap < 6_000, "planning four frames took over two minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(served.cached_plans(), 3, "four frames recurred: they have a plan of their own");
    let concrete = served.run(request(4, 1)).unwrap();
    for (a, b) in concrete.iter().zip(&symbolic) {
        assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
        for (x, y) in a.data.to_f64().iter().zip(b.data.to_f64()) {
            assert!((x - y).abs() < 1e-5, "{}: concrete {x}, symbolic {y}", a.name);
        }
    }
    // A shape seen once more than the cache holds never crowds it: concrete plans stay bounded.
    for frames in 5..5 + 2 * MAX_SHAPE_PLANS {
        for _ in 0..model::PLAN_RECURRING_AFTER {
            served.run(request(frames, 2)).unwrap();
        }
        while !served.settled() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(served.cached_plans() <= 1 + MAX_SHAPE_PLANS, "{} plans", served.cached_plans());
}
