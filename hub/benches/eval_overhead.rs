//! `eval run`'s cost against raw tract over the same samples: what the hub adds (suite arrays, metrics, the record)
//! on top of loading the model and running every inference the suite asks for.
//!
//! Run: `cargo bench -p outpost-hub --bench eval_overhead`. Both sides use the fixture PP-OCR direction classifier
//! and its labelled suite (`fixtures/suites/ocr-direction`), alternate `ROUNDS` times, and the medians are
//! compared. The baseline loads the same model bytes with the same loader and runs the same inferences: the suite's
//! samples once each, then its warm-up and timed runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use outpost_hub::Registry;
use outpost_hub::clock::SystemClock;
use outpost_shared::capability::Capability;
use outpost_shared::clock::Clock;
use outpost_shared::model::{self, NamedTensor, TensorData};
use outpost_shared::npy::{self, ArrayLimits};

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn seconds(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = root.join("fixtures");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("hub");
    Registry::init(&dir).expect("init");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let reg = Registry::open(&dir, clock.clone()).expect("open");
    let cap_path = fixtures.join("capabilities/ocr-text-direction.toml");
    let cap = Capability::from_toml(&std::fs::read_to_string(&cap_path).expect("capability"), &cap_path)
        .expect("capability parses");
    reg.capability_add(&cap).expect("capability add");
    let added = reg
        .add(
            &fixtures.join("models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            &fixtures.join("models/ppocr-direction.toml"),
        )
        .expect("package add");
    let suite = reg.suite_add(&fixtures.join("suites/ocr-direction")).expect("suite add");

    // The baseline's inputs: the suite's samples, decoded once outside the timing (eval run decodes its own).
    let record = reg.record(&added.digest).expect("index").expect("record");
    let model_bytes = reg.model_of(&record).expect("model");
    let (_, manifest) = reg.manifest(&added.digest).expect("manifest");
    let crops = std::fs::read(fixtures.join("suites/ocr-direction/crops.npy")).expect("crops");
    let crops = npy::decode(&crops, None, "x", &ArrayLimits::default()).expect("crops decode");
    let shape = crops.shape[1..].to_vec();
    let TensorData::F32(values) = &crops.data else { panic!("crops are float32") };
    let per: usize = shape.iter().product();
    let samples: Vec<NamedTensor> =
        values.chunks(per).map(|c| NamedTensor::new("x", shape.clone(), TensorData::F32(c.to_vec()))).collect();
    let budget = suite.manifest.suite.budget;
    let inferences = samples.len() + budget.warmup as usize + budget.runs as usize;

    let ours = || {
        outpost_hub::evaluate::run(&reg, &clock, &added.digest, &suite.digest).expect("eval run");
    };
    let raw = || {
        let model = model::load_for_serving(&model_bytes, &manifest).expect("load");
        for i in 0..inferences {
            model.run(vec![samples[i % samples.len()].clone()]).expect("run");
        }
    };
    // Warm the page cache, tract's kernels and the allocator on both sides.
    seconds(ours);
    seconds(raw);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(seconds(ours));
        b.push(seconds(raw));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "eval run vs raw tract: PP-OCR direction classifier, suite {} ({} samples; {inferences} inferences a run), \
         median of {ROUNDS}",
        suite.manifest.suite.name,
        samples.len()
    );
    println!("  outpost-hub eval run (library call)   : {:.1} ms", a * 1e3);
    println!("  raw tract, same loader and inferences : {:.1} ms  (baseline)", b * 1e3);
    println!("  ratio (ours / baseline)               : {:.3}  (goal <= 1.10)", a / b);
}
