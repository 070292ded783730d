//! The local inference API against the real fixture models, over a real TCP socket, with a minimal HTTP/1.1
//! client written here: outputs match the packages' smoke-test goldens, bad requests are 400s, swaps drop nothing.

mod inference_support;

use inference_support::*;

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

/// Local clients on the device reach the same API over a Unix socket: the same answers as over TCP, the socket
/// file owner-and-group only; a socket left by an earlier run is replaced, anything else at the path is kept.
#[tokio::test]
async fn the_api_answers_on_a_unix_socket_as_on_tcp() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inference.sock");
    let model = silero();
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model.clone());
    let tcp = Server::start(handle.clone()).await;
    // A stale socket from an earlier run, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = inference::bind_unix(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(inference::serve(listener, handle, ServeLimits::default(), None, async {
        let _ = stopped.await;
    }));

    let request = smoke_request(&model);
    let body = request.to_string();
    let head = format!(
        "POST /v2/models/silero-vad/infer HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let over_unix: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let (status, over_tcp) = tcp.infer("silero-vad", &request).await;
    assert_eq!(status, 200);
    assert_eq!(over_unix["outputs"], over_tcp["outputs"], "the same answer both ways");
    assert_matches_goldens(&model, &over_unix);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    tcp.stop().await;
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(inference::bind_unix(&file).is_err(), "a regular file is not replaced");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
