//! The inference API under hostile or careless clients: slow ones, oversized tensors, non-finite inputs, a full
//! outcome queue, a missing bearer token. Each is refused or absorbed without failing the model or the server.

mod inference_support;

use inference_support::*;

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
