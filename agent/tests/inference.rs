//! The local inference API against the real fixture models, over a real TCP socket, with a minimal HTTP/1.1
//! client written here: outputs match the packages' smoke-test goldens, bad requests are 400s, swaps drop nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use outpost_agent::inference::{self, BearerToken, InferenceError, LoadError, ModelHandle, ServeLimits, Served};
use outpost_shared::manifest::SmokeTensor;
use outpost_shared::{Digest, Manifest, PackageLimits};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const PPOCR: &str = "ppocr-direction";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name)
}

fn manifest(toml: &str) -> Manifest {
    Manifest::from_toml(&std::fs::read_to_string(fixture(toml)).unwrap(), toml).unwrap()
}

/// A fixture model and its manifest, loaded for serving (smoke test included).
fn served(model: &str, toml: &str) -> Arc<Served> {
    Arc::new(Served::from_parts(manifest(toml), &std::fs::read(fixture(model)).unwrap()).unwrap())
}

fn silero() -> Arc<Served> {
    served("silero_vad_16k_sequence.onnx", "silero-vad.toml")
}

/// ppocr-direction 2.0.0: `x: f32[N, 3, H, W]`.
fn ppocr() -> Arc<Served> {
    served("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml")
}

/// ppocr-direction 2.0.1: the same weights with the crop fixed to 48×192.
fn ppocr_fixed() -> Arc<Served> {
    served("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml")
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(handle: Arc<ModelHandle>) -> Server {
        Server::start_with(handle, ServeLimits::default()).await
    }

    async fn start_with(handle: Arc<ModelHandle>, limits: ServeLimits) -> Server {
        Server::start_with_token(handle, limits, None).await
    }

    async fn start_with_token(handle: Arc<ModelHandle>, limits: ServeLimits, token: Option<BearerToken>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(inference::serve(listener, handle, limits, token, async {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        http(self.addr, "GET", path, b"").await
    }

    async fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        http(self.addr, "POST", path, body).await
    }

    async fn infer(&self, model: &str, body: &Value) -> (u16, Value) {
        self.post(&format!("/v2/models/{model}/infer"), body.to_string().as_bytes()).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body as JSON (`Null` when empty).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, _, body) = http_raw(addr, method, path, &[("Content-Type", "application/json")], body).await;
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    (status, json)
}

/// One HTTP/1.1 request on a fresh connection with extra `headers`; returns the status, the response head
/// (lower case) and the raw body.
async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap().to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[eol + 2 + len + 2..];
    }
}

/// The OIP request for a package's smoke-test inputs.
fn smoke_request(served: &Served) -> Value {
    let inputs: Vec<Value> = served
        .manifest()
        .smoke_test
        .inputs
        .iter()
        .map(|t| {
            let spec = served.manifest().contract.inputs.iter().find(|s| s.name == t.name).unwrap();
            json!({
                "name": t.name,
                "shape": t.shape,
                "datatype": inference::oip_name(spec.dtype),
                "data": t.materialize(),
            })
        })
        .collect();
    json!({ "id": "smoke", "inputs": inputs })
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| {
        panic!("no output `{name}` in {response}");
    })
}

/// Asserts every expected smoke-test output is in `response` with its shape and values within the tolerance.
fn assert_matches_goldens(served: &Served, response: &Value) {
    let st = &served.manifest().smoke_test;
    for expected in &st.expected {
        assert_matches(response, expected, st.tolerance, 1);
    }
}

/// Like [`assert_matches_goldens`] for one output, with the expected rows repeated `batch` times.
fn assert_matches(response: &Value, expected: &SmokeTensor, tolerance: f64, batch: u64) {
    let out = output(response, &expected.name);
    let mut shape = expected.shape.clone();
    shape[0] *= batch;
    assert_eq!(out["shape"], json!(shape), "{}", expected.name);
    assert_eq!(out["datatype"], "FP32");
    let got: Vec<f64> = out["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let want: Vec<f64> = (0..batch).flat_map(|_| expected.materialize()).collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tolerance, "{} element {i}: {g} vs golden {w}", expected.name);
    }
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test]
async fn silero_vad_outputs_match_the_smoke_test_goldens() {
    let model = silero();
    let mut request = smoke_request(&model);
    // Send the audio as nested rows (OIP allows nested or flat data), the state tensors flat.
    for input in request["inputs"].as_array_mut().unwrap() {
        if input["name"] == "input" {
            let flat: Vec<Value> = input["data"].as_array().unwrap().clone();
            input["data"] = json!(flat.chunks(576).map(|c| c.to_vec()).collect::<Vec<_>>());
        }
    }
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start(handle).await;

    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "silero-vad");
    assert_eq!(body["model_version"], "6.2.3");
    assert_eq!(body["id"], "smoke");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 3);
    assert_matches_goldens(&model, &body);

    // The versioned route and an output selection.
    request["outputs"] = json!([{ "name": "speech_probs" }]);
    let (status, body) =
        server.post("/v2/models/silero-vad/versions/6.2.3/infer", request.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    let st = &model.manifest().smoke_test;
    assert_matches(&body, st.expected.iter().find(|t| t.name == "speech_probs").unwrap(), st.tolerance, 1);
    server.stop().await;
}

#[tokio::test]
async fn ppocr_classifier_outputs_match_the_smoke_test_goldens() {
    for model in [ppocr(), ppocr_fixed()] {
        let handle = Arc::new(ModelHandle::new());
        handle.swap(model.clone());
        let server = Server::start(handle).await;
        let (status, body) = server.infer(PPOCR, &smoke_request(&model)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], model.version());
        assert_matches_goldens(&model, &body);
        server.stop().await;
    }
}

#[tokio::test]
async fn batch_of_two_works_with_symbolic_batch_dimension() {
    let model = ppocr();
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    let request = json!({ "inputs": [{
        "name": "x", "shape": [2, 3, 48, 192], "datatype": "FP32", "data": vec![0.5; 2 * 3 * 48 * 192],
    }]});
    let (status, body) = server.infer(PPOCR, &request).await;
    assert_eq!(status, 200, "{body}");
    let st = &model.manifest().smoke_test;
    assert_matches(&body, &st.expected[0], st.tolerance, 2);

    // The metadata says which dimensions are free.
    let (status, meta) = server.get("/v2/models/ppocr-direction").await;
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "onnx-tract");
    assert_eq!(meta["versions"], json!(["2.0.0"]));
    assert_eq!(meta["inputs"], json!([{ "name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1] }]));
    assert_eq!(
        meta["outputs"],
        json!([{ "name": "save_infer_model/scale_0.tmp_1", "datatype": "FP32", "shape": [-1, 2] }])
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_shape_is_a_400_not_a_crash() {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(ppocr_fixed());
    let server = Server::start(handle.clone()).await;
    let x = |shape: Vec<usize>, n: usize| json!({ "inputs": [{ "name": "x", "shape": shape, "datatype": "FP32", "data": vec![0.5; n] }] });

    let (status, body) = server.infer(PPOCR, &x(vec![1, 3, 48], 3 * 48)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("rank 3, the model takes rank 4 [N, 3, 48, 192]"), "{body}");

    let (status, body) = server.infer(PPOCR, &x(vec![1, 3, 48, 100], 3 * 48 * 100)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("dimension 3 is 100"), "{body}");

    let (status, body) = server.infer(PPOCR, &x(vec![1, 3, 48, 192], 10)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("holds 27648 elements, 10 were given"), "{body}");

    let negative = json!({ "inputs": [{ "name": "x", "shape": [-1, 3, 48, 192], "datatype": "FP32", "data": [] }] });
    let (status, body) = server.infer(PPOCR, &negative).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("negative dimension"), "{body}");

    // The server is still up and the model still serves.
    let (status, body) = server.infer(PPOCR, &smoke_request(&handle.current().unwrap())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(handle.current().unwrap().stats().failed, 0, "client errors do not count against the model");
    server.stop().await;
}

#[tokio::test]
async fn wrong_datatype_is_a_400() {
    let model = silero();
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    let mut request = smoke_request(&model);
    assert_eq!(request["inputs"][0]["name"], "h");
    request["inputs"][0]["datatype"] = json!("INT64");
    request["inputs"][0]["data"] = json!([0, 0]);
    request["inputs"][0]["shape"] = json!([1, 1, 2]);
    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("datatype INT64, the model takes FP32"), "{body}");

    request["inputs"][0]["datatype"] = json!("FP16");
    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("datatype `FP16` is not supported"), "{body}");

    request["inputs"][0]["datatype"] = json!("FP32");
    request["inputs"][0]["data"] = json!([true, false]);
    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("FP32 data must be numbers"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_input_name_is_a_400() {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(ppocr());
    let server = Server::start(handle).await;
    let request = json!({ "inputs": [{ "name": "image", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": vec![0.5; 27648] }] });
    let (status, body) = server.infer(PPOCR, &request).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("input `image`: not an input of this model (its inputs: x)"), "{body}");

    let missing = json!({ "inputs": [] });
    let (status, body) = server.infer(PPOCR, &missing).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("input `x`: missing"), "{body}");

    let mut unknown_output = smoke_request(&ppocr());
    unknown_output["outputs"] = json!([{ "name": "logits" }]);
    let (status, body) = server.infer(PPOCR, &unknown_output).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("requested output `logits`"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(ppocr());
    let server = Server::start(handle).await;
    for body in [
        &b"{\"inputs\": ["[..],
        b"not json",
        b"",
        b"{\"inputs\": [{\"name\": \"x\"}]}",
        b"{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\": [\"a\"]}]}",
        b"{\"inputs\": [{\"name\": \"x\", \"shape\": [2], \"datatype\": \"FP32\", \"data\": [1, true]}]}",
    ] {
        let (status, reply) = server.post("/v2/models/ppocr-direction/infer", body).await;
        assert_eq!(status, 400, "{}: {reply}", String::from_utf8_lossy(body));
        assert!(error_text(&reply).starts_with("not a valid inference request"), "{reply}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_model_is_a_404() {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(ppocr());
    let server = Server::start(handle).await;
    let request = smoke_request(&ppocr());
    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_text(&body).contains("no model named `silero-vad`"), "{body}");
    let (status, _) =
        server.post("/v2/models/ppocr-direction/versions/9.9.9/infer", request.to_string().as_bytes()).await;
    assert_eq!(status, 404);
    assert_eq!(server.get("/v2/models/silero-vad").await.0, 404);
    assert_eq!(server.get("/v2/models/silero-vad/ready").await.0, 404);
    assert_eq!(server.get("/v2/models/ppocr-direction/versions/9.9.9").await.0, 404);
    assert_eq!(server.get("/v2/no/such/thing").await.0, 404);
    assert_eq!(server.get("/v2/models/ppocr-direction/versions/2.0.0/ready").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn not_ready_without_a_model() {
    let handle = Arc::new(ModelHandle::new());
    let server = Server::start(handle.clone()).await;
    assert_eq!(server.get("/v2/health/live").await.0, 200);
    let (status, body) = server.get("/v2/health/ready").await;
    assert_eq!((status, error_text(&body)), (503, "no model is active"));
    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "outpost-agent");
    let model = ppocr();
    assert_eq!(server.infer(PPOCR, &smoke_request(&model)).await.0, 503);
    assert_eq!(server.get("/v2/models/ppocr-direction").await.0, 503);

    handle.swap(model.clone());
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
    assert_eq!(server.get("/v2/models/ppocr-direction/ready").await.0, 200);
    assert_eq!(server.infer(PPOCR, &smoke_request(&model)).await.0, 200);

    assert!(handle.clear().is_some());
    assert_eq!(server.get("/v2/health/ready").await.0, 503);
    assert_eq!(server.infer(PPOCR, &smoke_request(&model)).await.0, 503);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inference_storm_during_swap_has_zero_failed_requests() {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 40;
    let (a, b) = (ppocr(), ppocr_fixed());
    let reported = Arc::new(AtomicU64::new(0));
    let observed = reported.clone();
    let handle =
        Arc::new(ModelHandle::with_observer(Arc::new(outpost_shared::clock::ManualClock::new(0)), move |_, ok, _| {
            assert!(ok);
            observed.fetch_add(1, Ordering::Relaxed);
        }));
    handle.swap(a.clone());
    let server = Server::start(handle.clone()).await;
    let request = Arc::new(smoke_request(&a).to_string());

    let done = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (handle, done, a, b) = (handle.clone(), done.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            let (mut swaps, mut while_busy) = (0u32, 0u32);
            while !done.load(Ordering::Relaxed) {
                let next = if swaps % 2 == 0 { b.clone() } else { a.clone() };
                let old = handle.swap(next).unwrap();
                // Held by the test, this task and `old`; any more are requests still running on the old model.
                if Arc::strong_count(&old) > 3 {
                    while_busy += 1;
                }
                swaps += 1;
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            (swaps, while_busy)
        })
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, request) = (server.addr, request.clone());
        clients.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..REQUESTS {
                let (status, body) = http(addr, "POST", "/v2/models/ppocr-direction/infer", request.as_bytes()).await;
                assert_eq!(status, 200, "{body}");
                versions.push((body["model_version"].as_str().unwrap().to_owned(), body));
            }
            versions
        }));
    }
    let mut per_version = std::collections::BTreeMap::<String, u64>::new();
    for client in clients {
        for (version, body) in client.await.unwrap() {
            let model = if version == a.version() { &a } else { &b };
            assert!(version == a.version() || version == b.version(), "{version}");
            assert_matches_goldens(model, &body);
            *per_version.entry(version).or_default() += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    let (swaps, while_busy) = swapper.await.unwrap();
    let total = (CLIENTS * REQUESTS) as u64;
    assert_eq!(per_version.values().sum::<u64>(), total);
    // Each response names the model that actually ran it: the models' own counters agree.
    assert_eq!(a.stats().ok, per_version.get(&a.version()).copied().unwrap_or(0));
    assert_eq!(b.stats().ok, per_version.get(&b.version()).copied().unwrap_or(0));
    assert_eq!(a.stats().failed + b.stats().failed, 0);
    assert_eq!(reported.load(Ordering::Relaxed), total);
    assert!(swaps >= 10, "only {swaps} swaps happened during the storm");
    assert!(while_busy > 0, "no swap happened while a request was running on the old model");
    assert_eq!(per_version.len(), 2, "both models served during the storm: {per_version:?}");
    server.stop().await;
}

#[tokio::test]
async fn model_files_are_opened_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ppocr.opkg");
    let bytes = outpost_shared::package::encode(
        &manifest("ppocr-direction.toml"),
        &std::fs::read(fixture("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap(),
    );
    std::fs::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();

    let wrong = Digest::of(b"another package");
    let e = Served::open_package(&path, Some(&wrong), &PackageLimits::default()).unwrap_err();
    assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e}");
    let model = Arc::new(Served::open_package(&path, Some(&digest), &PackageLimits::default()).unwrap());
    assert_eq!(model.digest(), &digest);
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    for _ in 0..3 {
        let (status, body) = server.infer(PPOCR, &smoke_request(&model)).await;
        assert_eq!(status, 200, "{body}");
        assert_matches_goldens(&model, &body);
    }
    server.stop().await;

    // Root ignores permission bits, so also show nothing was written: same bytes, same mtime, no new files.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
    let listing: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(listing, ["ppocr.opkg"]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn one_shot_inference_answers_like_the_http_endpoint() {
    let model = silero();
    let request = smoke_request(&model);
    let once = inference::infer_once(&model, request.to_string().as_bytes()).unwrap();
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    let (status, body) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 200);
    assert_eq!(once, body);
    assert_matches_goldens(&model, &once);
    let e = inference::infer_once(&model, b"{").unwrap_err();
    assert!(matches!(e, InferenceError::BadRequest(_)), "{e}");
    assert_eq!(e.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn oversized_body_is_a_413() {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(ppocr());
    let limits = ServeLimits { max_body_bytes: 1024, ..ServeLimits::default() };
    let server = Server::start_with(handle, limits).await;
    let (status, body) = server.infer(PPOCR, &smoke_request(&ppocr())).await;
    assert_eq!(status, 413, "{body}");
    assert!(error_text(&body).contains("larger than 1024 bytes"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_counts_inferences_and_failures_per_model_in_prometheus_format() {
    let model = ppocr();
    let handle =
        Arc::new(ModelHandle::with_observer(Arc::new(outpost_shared::clock::ManualClock::new(0)), |_, _, _| {}));
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    assert_eq!(server.infer(PPOCR, &smoke_request(&model)).await.0, 200);
    let (status, _) = server.post(&format!("/v2/models/{PPOCR}/infer"), b"{\"inputs\":[]}").await;
    assert_eq!(status, 400, "refused before it reached the model: not counted");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let labels = format!("model=\"{PPOCR}\",version=\"{}\"", model.version());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&format!("outpost_agent_inferences_total{{{labels}}} 1")), "{text}");
    assert!(text.contains(&format!("outpost_agent_inference_failures_total{{{labels}}} 0")), "{text}");
    assert!(text.contains(&format!("outpost_agent_inference_seconds_count{{{labels}}} 1")), "{text}");
    assert!(text.contains("outpost_agent_model_active{"), "{text}");
    server.stop().await;
}

impl Server {
    /// A server whose active model is `model`.
    async fn serving(model: &Arc<Served>) -> Server {
        let handle = Arc::new(ModelHandle::new());
        handle.swap(model.clone());
        Server::start(handle).await
    }

    /// POSTs a body in the binary tensor data extension: a JSON object of `json_len` bytes, then tensor bytes.
    async fn infer_binary(&self, model: &str, body: &[u8], json_len: &str) -> (u16, String, Vec<u8>) {
        let headers = [("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", json_len)];
        http_raw(self.addr, "POST", &format!("/v2/models/{model}/infer"), &headers, body).await
    }
}

/// `request` in the binary tensor data extension: the `data` of each input named in `binary` moved after the
/// JSON object as little-endian FP32 bytes, with its `binary_data_size`. Returns the body and the JSON length.
fn binary_body(request: &Value, binary: &[&str]) -> (Vec<u8>, String) {
    let mut header = request.clone();
    let mut tail = Vec::new();
    for input in header["inputs"].as_array_mut().unwrap() {
        if !binary.contains(&input["name"].as_str().unwrap()) {
            continue;
        }
        let data = input.as_object_mut().unwrap().remove("data").unwrap();
        let start = tail.len();
        for v in data.as_array().unwrap() {
            tail.extend_from_slice(&(v.as_f64().unwrap() as f32).to_le_bytes());
        }
        input["parameters"] = json!({ "binary_data_size": tail.len() - start });
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len().to_string();
    body.extend_from_slice(&tail);
    (body, json_len)
}

/// A binary-extension body (`json_len` long JSON header) with its header changed by `edit`; returns the new body
/// and header length.
fn edit_header(body: &[u8], json_len: &str, edit: impl FnOnce(&mut Value)) -> (Vec<u8>, String) {
    let json_len: usize = json_len.parse().unwrap();
    let mut header: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    edit(&mut header);
    let mut edited = serde_json::to_vec(&header).unwrap();
    let edited_len = edited.len().to_string();
    edited.extend_from_slice(&body[json_len..]);
    (edited, edited_len)
}

fn input_mut<'a>(request: &'a mut Value, name: &str) -> &'a mut Value {
    request["inputs"].as_array_mut().unwrap().iter_mut().find(|i| i["name"] == name).unwrap()
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// A binary-extension response as the all-JSON response it stands for: each binary output's FP32 bytes put
/// back as `data`, printed the way the server prints floats.
fn unbinary(head: &str, body: &[u8]) -> Value {
    let len: usize = header_value(head, "inference-header-content-length").expect("the header").parse().unwrap();
    let mut json: Value = serde_json::from_slice(&body[..len]).unwrap();
    let mut rest = &body[len..];
    for out in json["outputs"].as_array_mut().unwrap() {
        let Some(size) = out["parameters"]["binary_data_size"].as_u64() else { continue };
        assert_eq!(out["datatype"], "FP32");
        let (bytes, tail) = rest.split_at(size as usize);
        rest = tail;
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let o = out.as_object_mut().unwrap();
        o.remove("parameters");
        o.insert("data".into(), serde_json::from_str(&serde_json::to_string(&values).unwrap()).unwrap());
    }
    assert!(rest.is_empty(), "{} bytes after the last binary output", rest.len());
    json
}

// On a multi-thread runtime: the path where inferences run under `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_request_gives_the_same_outputs_as_json() {
    let model = silero();
    let server = Server::serving(&model).await;
    let (_, meta) = server.get("/v2").await;
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));
    let request = smoke_request(&model);
    let (status, as_json) = server.infer("silero-vad", &request).await;
    assert_eq!(status, 200, "{as_json}");

    // Every input and every output binary.
    let mut all = request.clone();
    all["parameters"] = json!({ "binary_data_output": true });
    let (body, n) = binary_body(&all, &["input", "h", "c"]);
    let (status, head, raw) = server.infer_binary("silero-vad", &body, &n).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(header_value(&head, "content-type"), Some("application/octet-stream"), "{head}");
    assert_eq!(unbinary(&head, &raw), as_json);

    // One input binary, two JSON; outputs chosen one by one, `binary_data: false` overriding the request's.
    let mut mixed = request.clone();
    mixed["parameters"] = json!({ "binary_data_output": true });
    mixed["outputs"] = json!([{ "name": "speech_probs" }, { "name": "hn", "parameters": { "binary_data": false } }]);
    let (body, n) = binary_body(&mixed, &["input"]);
    let (status, head, raw) = server.infer_binary("silero-vad", &body, &n).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let len: usize = header_value(&head, "inference-header-content-length").unwrap().parse().unwrap();
    let header: Value = serde_json::from_slice(&raw[..len]).unwrap();
    assert!(header["outputs"][0]["data"].is_null() && header["outputs"][1]["data"].is_array(), "{header}");
    let got = unbinary(&head, &raw);
    assert_eq!(got["outputs"], json!([output(&as_json, "speech_probs"), output(&as_json, "hn")]));

    // Binary inputs, JSON outputs: a plain JSON answer without the extension's header.
    let (body, n) = binary_body(&request, &["input", "h", "c"]);
    let (status, head, raw) = server.infer_binary("silero-vad", &body, &n).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(header_value(&head, "content-type"), Some("application/json"), "{head}");
    assert_eq!(header_value(&head, "inference-header-content-length"), None, "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), as_json);
    assert_eq!(model.stats().ok, 4);
    server.stop().await;
}

#[tokio::test]
async fn binary_sizes_that_do_not_add_up_are_a_400() {
    let model = silero();
    let server = Server::serving(&model).await;
    let request = smoke_request(&model);
    let (body, n) = binary_body(&request, &["input", "h", "c"]);
    let json_len: usize = n.parse().unwrap();
    let refused = |(status, _, raw): (u16, String, Vec<u8>), needle: &str| {
        let body: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(error_text(&body).contains(needle), "expected `{needle}` in {body}");
    };

    // The JSON header would run past the end of the body.
    let beyond = (body.len() + 1).to_string();
    refused(server.infer_binary("silero-vad", &body, &beyond).await, "but the body holds only");
    // Bytes left over after the declared tensors, and bytes missing.
    let mut longer = body.clone();
    longer.push(0);
    refused(server.infer_binary("silero-vad", &longer, &n).await, "add up to");
    refused(server.infer_binary("silero-vad", &body[..body.len() - 4], &n).await, "add up to");
    // Binary data declared, but no header saying where the JSON ends.
    let (status, json) = server.post("/v2/models/silero-vad/infer", &body[..json_len]).await;
    assert_eq!(status, 400, "{json}");
    assert!(error_text(&json).contains("absent, so the whole body is JSON"), "{json}");
    // The sizes add up, but one tensor's size is not its shape times 4 bytes.
    let (skewed, skewed_len) = edit_header(&body, &n, |header| {
        input_mut(header, "h")["parameters"]["binary_data_size"] = json!(508);
        input_mut(header, "c")["parameters"]["binary_data_size"] = json!(516);
    });
    refused(server.infer_binary("silero-vad", &skewed, &skewed_len).await, "binary_data_size is 508 bytes");
    // The header is not a length.
    refused(server.infer_binary("silero-vad", &body, "ten").await, "not a length in bytes");
    assert_eq!(model.stats(), Default::default(), "nothing reached the model");
    server.stop().await;
}

#[tokio::test]
async fn binary_inputs_with_both_or_neither_data_or_an_unsupported_datatype_are_400s() {
    let model = silero();
    let server = Server::serving(&model).await;
    let (body, n) = binary_body(&smoke_request(&model), &["h"]);
    let with_h = |edit: &dyn Fn(&mut Value)| edit_header(&body, &n, |header| edit(input_mut(header, "h")));
    for (edit, needle) in [
        (&(|h: &mut Value| h["data"] = json!(vec![0.0; 128])) as &dyn Fn(&mut Value), "has both `data` and"),
        (&|h: &mut Value| h["parameters"] = json!({}), "has no data"),
        (&|h: &mut Value| h["datatype"] = json!("BYTES"), "BYTES tensors are not supported"),
        (&|h: &mut Value| h["datatype"] = json!("FP16"), "datatype `FP16` is not supported"),
    ] {
        let (mut body, n) = with_h(edit);
        if needle == "has no data" {
            body.truncate(n.parse().unwrap()); // no bytes for it either
        }
        let (status, _, raw) = server.infer_binary("silero-vad", &body, &n).await;
        let body: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(status, 400, "{body}");
        let text = error_text(&body);
        assert!(text.contains(needle) && text.contains("input `h`"), "expected `{needle}` in {body}");
    }
    assert_eq!(model.stats(), Default::default(), "nothing reached the model");
    server.stop().await;
}

// On a multi-thread runtime, an inference runs in place or on the blocking pool by its model's last latency;
// `in_place_below: 0` sends every one to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferences_on_the_blocking_pool_answer_like_those_run_in_place() {
    let model = silero();
    let request = smoke_request(&model);
    let in_place = Server::serving(&model).await;
    let (status, expected) = in_place.infer("silero-vad", &request).await;
    assert_eq!(status, 200, "{expected}");
    in_place.stop().await;
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let limits = ServeLimits { in_place_below: std::time::Duration::ZERO, ..ServeLimits::default() };
    let pooled = Server::start_with(handle, limits).await;
    for _ in 0..3 {
        assert_eq!(pooled.infer("silero-vad", &request).await, (200, expected.clone()));
    }
    pooled.stop().await;
}

/// One request with a non-finite input (JSON `1e300`, which is `inf` as FP32; NaN bits in binary data) used to
/// reach the model, whose non-finite output counted as the model's failure: one such request in a health window
/// rolled a good release back. It is the caller's fault: a 400, and the observer (the health window) never hears
/// of it.
#[tokio::test]
async fn non_finite_input_cannot_fail_the_model_and_roll_back_its_release() {
    let failures = Arc::new(AtomicU64::new(0));
    let seen = failures.clone();
    let handle =
        Arc::new(ModelHandle::with_observer(Arc::new(outpost_shared::clock::ManualClock::new(0)), move |_, ok, _| {
            seen.fetch_add(u64::from(!ok), Ordering::Relaxed);
        }));
    let model = ppocr_fixed();
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    // One crop of flat data, every value 0.5 but the first.
    let request = |first: f64| {
        let mut data = vec![json!(0.5); 3 * 48 * 192];
        data[0] = json!(first);
        json!({ "inputs": [{ "name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": data }] })
    };

    let (mut body, n) = binary_body(&request(0.5), &["x"]);
    let json_len: usize = n.parse().unwrap();
    for value in body[json_len..].chunks_exact_mut(4) {
        value.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let (status, _, raw) = server.infer_binary(PPOCR, &body, &n).await;
    let answer: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(error_text(&answer).contains("input `x`: element 0 is NaN"), "{answer}");

    let (status, body) = server.infer(PPOCR, &request(1e300)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body).contains("input `x`: element 0 is inf: inputs must be finite"), "{body}");

    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failure reached the health window");
    assert_eq!(model.stats(), Default::default(), "nothing reached the model");
    // The model still serves finite requests.
    assert_eq!(server.infer(PPOCR, &request(0.5)).await.0, 200);
    server.stop().await;
}

/// A handle serving `model`.
fn handle_of(model: Arc<Served>) -> Arc<ModelHandle> {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model);
    handle
}

/// Opens a connection and sends `head` (and nothing more): a client that goes slow mid-request.
async fn stall_after(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A request head declaring a 1000-byte body, and the first byte of it.
const SLOW_BODY: &str = "POST /v2/models/silero-vad/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                         Content-Length: 1000\r\n\r\n{";

/// Reads what the server sends until it closes the connection; `None` if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: std::time::Duration) -> Option<String> {
    let mut raw = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut raw)).await {
        Ok(_) => Some(String::from_utf8_lossy(&raw).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_body_does_not_hold_an_inference_slot() {
    let model = silero();
    let limits = ServeLimits { max_concurrent_inferences: 1, ..ServeLimits::default() };
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let server = Server::start_with(handle, limits).await;
    let slow = stall_after(server.addr, SLOW_BODY).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answered =
        tokio::time::timeout(std::time::Duration::from_secs(5), server.infer("silero-vad", &smoke_request(&model)))
            .await
            .expect("a whole request is served while another client dribbles its body");
    assert_eq!(answered.0, 200, "{}", answered.1);
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn slowloris_body_is_cut_off_with_a_408() {
    let limits = ServeLimits { body_timeout: std::time::Duration::from_millis(300), ..ServeLimits::default() };
    let server = Server::start_with(handle_of(silero()), limits).await;
    let mut slow = stall_after(server.addr, SLOW_BODY).await;
    let answer = closed_within(&mut slow, std::time::Duration::from_secs(5)).await.expect("the server gives up");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request body not received within 300ms"), "{answer}");
    server.stop().await;
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // The server's header timeout runs in real time, and so does the wait it causes.
async fn slowloris_headers_are_cut_off_and_connections_are_capped() {
    let header_timeout = std::time::Duration::from_millis(1000);
    let limits = ServeLimits { max_connections: 2, header_timeout, ..ServeLimits::default() };
    let model = silero();
    let server = Server::start_with(handle_of(model.clone()), limits).await;
    let head = "POST /v2/models/silero-vad/infer HTTP/1.1\r\nHost:";
    let mut slow = [stall_after(server.addr, head).await, stall_after(server.addr, head).await];
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, body) = server.infer("silero-vad", &smoke_request(&model)).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= header_timeout / 2, "served before a connection slot was free: the cap did not hold");
    for s in &mut slow {
        closed_within(s, std::time::Duration::from_secs(5)).await.expect("a head that never ends is cut off");
    }
    server.stop().await;
}

/// A request declaring a tensor larger than the contract lets one request hold used to be decoded whole (a 64 MiB
/// JSON body became some 256 MiB of numbers) before the model's own check refused its shape. The bound is the
/// contract's: exact for fixed dimensions, `max_dynamic_elements` for a symbolic one; past it, a 400 naming both
/// numbers, and the model never sees the request. (The codec's own test, `shared/tests/request_memory.rs`,
/// measures the memory this saves.)
#[tokio::test]
async fn an_oversized_json_tensor_is_refused_with_the_contract_bound_before_it_reaches_the_model() {
    let model = ppocr_fixed(); // x: f32[N, 3, 48, 192]
    let crop = 3 * 48 * 192;
    let limits = ServeLimits { max_dynamic_elements: crop, ..ServeLimits::default() };
    let server = Server::start_with(handle_of(model.clone()), limits).await;
    let request = |n: u64, data: usize| {
        let input = json!({ "name": "x", "shape": [n, 3, 48, 192], "datatype": "FP32", "data": vec![0.5; data] });
        json!({ "inputs": [input] })
    };
    // Two crops declared, one sent: refused on the shape, before a byte of data is decoded.
    let (status, body) = server.infer(PPOCR, &request(2, 1)).await;
    assert_eq!(status, 400, "{body}");
    let expected = format!(
        "input `x`: shape [2, 3, 48, 192] holds {} elements, more than the {crop} the contract's [N, 3, 48, 192] \
         allows",
        2 * crop
    );
    assert_eq!(error_text(&body), expected);
    // One crop declared, a crop and one value more sent: refused at the first element past the shape.
    let (status, body) = server.infer(PPOCR, &request(1, crop as usize + 1)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_text(&body).contains(&format!("input `x`: data: more than the {crop} elements its shape holds")),
        "{body}"
    );
    assert_eq!(model.stats(), Default::default(), "nothing reached the model");
    // What fits is served.
    assert_eq!(server.infer(PPOCR, &request(1, crop as usize)).await.0, 200);
    server.stop().await;
}

/// The outcome queue to the update loop used to be unbounded: a loop busy elsewhere (a long check) let it grow
/// with every request. Now it holds `capacity` outcomes; past that, outcomes are dropped and counted on
/// `/metrics`, and no request ever waits for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outcome_queue_drops_and_counts_outcomes_and_never_blocks_inference() {
    let clock = Arc::new(outpost_shared::clock::ManualClock::new(0));
    let (handle, mut outcomes) = ModelHandle::with_outcomes(clock, 2);
    let handle = Arc::new(handle);
    let model = silero();
    handle.swap(model.clone());
    let server = Server::start(handle.clone()).await;
    for _ in 0..5 {
        let (status, body) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server.infer("silero-vad", &smoke_request(&model)),
        )
        .await
        .expect("no request waits for the update loop");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(outcomes.dropped(), 3, "two queued, three dropped");
    let metrics = handle.prometheus(outpost_shared::metrics::Format::Prometheus);
    assert!(metrics.contains("outpost_agent_inference_outcomes_dropped_total 3"), "{metrics}");
    for _ in 0..2 {
        let o = outcomes.recv().await.unwrap();
        assert_eq!((o.model, o.ok), (*model.digest(), true));
    }
    server.stop().await;
}

/// A contract may let an input hold NaN or infinities (a model that reads NaN as "missing"): then such a request is
/// served (non-finite outputs as JSON `null`), and the non-finite answer it causes is the caller's doing — neither
/// a success nor a failure of the model, so it never reaches the health window or the failure counters.
#[tokio::test]
async fn a_non_finite_input_the_contract_allows_is_served_and_never_counted_against_the_model() {
    let m = outpost_shared::testkit::AffineManifest::new("affine", "1.0.0", 2.0, 1.0).allowing_non_finite();
    let model = Arc::new(Served::from_parts(m.manifest(), &outpost_shared::testkit::affine_model(2.0, 1.0)).unwrap());
    let failures = Arc::new(AtomicU64::new(0));
    let seen = failures.clone();
    let handle =
        Arc::new(ModelHandle::with_observer(Arc::new(outpost_shared::clock::ManualClock::new(0)), move |_, ok, _| {
            seen.fetch_add(u64::from(!ok), Ordering::Relaxed);
        }));
    handle.swap(model.clone());
    let server = Server::start(handle).await;
    let request = |first: f64| {
        let x = json!({ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [first, 1, 2, 3] });
        json!({ "inputs": [x] })
    };
    // 1e300 is infinity as FP32: 2 x inf + 1 is infinity.
    let (status, body) = server.infer("affine", &request(1e300)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(output(&body, "y")["data"], json!([null, 3.0, 5.0, 7.0]), "{body}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failure reached the health window");
    assert_eq!(model.stats(), Default::default(), "neither a success nor a failure of the model");
    assert_eq!(server.infer("affine", &request(0.0)).await.0, 200);
    assert_eq!(model.stats().ok, 1);
    server.stop().await;
}

/// On a device where other local processes are not trusted, the API can require a bearer token: without it, or
/// with another, every route but the health probes is a 401 with `WWW-Authenticate: Bearer` (RFC 6750), and the
/// model never sees the request.
#[tokio::test]
async fn an_inference_request_without_the_token_is_refused() {
    let token = "s3cret-token-0123456789";
    let model = silero();
    let server = Server::start_with_token(
        handle_of(model.clone()),
        ServeLimits::default(),
        Some(BearerToken::new(token, "test").unwrap()),
    )
    .await;
    let body = smoke_request(&model).to_string();
    let infer = "/v2/models/silero-vad/infer";
    let json = ("Content-Type", "application/json");

    let (status, head, raw) = http_raw(server.addr, "POST", infer, &[json], body.as_bytes()).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&raw));
    assert!(head.contains("www-authenticate: bearer realm=\"outpost-agent\""), "{head}");
    assert!(!head.contains("invalid_token"), "no token is not a wrong token: {head}");
    let wrong = ("Authorization", "Bearer s3cret-token-0123456788");
    let (status, head, _) = http_raw(server.addr, "POST", infer, &[json, wrong], body.as_bytes()).await;
    assert_eq!(status, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let basic = ("Authorization", "Basic czNjcmV0LXRva2VuLTAxMjM0NTY3ODk=");
    assert_eq!(http_raw(server.addr, "POST", infer, &[json, basic], body.as_bytes()).await.0, 401);
    for path in ["/metrics", "/v2", "/v2/models/silero-vad", "/v2/models/silero-vad/ready"] {
        assert_eq!(http_raw(server.addr, "GET", path, &[], b"").await.0, 401, "{path}");
    }
    assert_eq!(model.stats(), Default::default(), "nothing reached the model");

    // The probes a supervisor polls need no secret.
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(http_raw(server.addr, "GET", path, &[], b"").await.0, 200, "{path}");
    }
    let bearer = format!("Bearer {token}");
    let right = ("Authorization", bearer.as_str());
    let (status, _, raw) = http_raw(server.addr, "POST", infer, &[json, right], body.as_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(http_raw(server.addr, "GET", "/metrics", &[right], b"").await.0, 200);
    server.stop().await;

    // A token too short to be secret, or one no client could send, is refused at start.
    assert!(BearerToken::new("short", "agent.toml").is_err());
    assert!(BearerToken::new("has a space in it, sixteen+", "agent.toml").is_err());
    assert!(BearerToken::new("s3cret-token-0123456789\n", "file").is_ok(), "a file's final newline is not part of it");
}
