//! Serving through routes on the real HTTP API with the PP-OCR direction fixtures: 48×192 crops go to the
//! fixed-shape specialist, other sizes to the any-size generalist; a specialist revoked under concurrent load
//! hands its requests to the fallback with no failed request, and every answer names who answered and why.

mod inference_support;

use inference_support::*;
use outpost_agent::inference::Routes;
use outpost_shared::clock::ManualClock;
use outpost_shared::route::Router;
use outpost_shared::route::breaker::BreakerPolicy;
use outpost_shared::route::select::Skip;

const SPECIALIST: &str = "ocr.text-direction";
const GENERALIST: &str = "ocr.text-direction.any-size";
const ROUTE: &str = "text-direction";

fn fixture_router() -> Router {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers/ocr-direction.toml");
    Router::from_toml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

/// A server with the specialist as its primary model, both capabilities' handles and the fixture router.
async fn routed() -> (Server, Arc<Routes>, Arc<ModelHandle>) {
    let specialist = handle_of(ppocr_fixed());
    let routes = Arc::new(Routes::new(Arc::new(ManualClock::new(1_800_000_000)), BreakerPolicy::default()));
    routes.set_model(SPECIALIST, specialist.clone());
    routes.set_model(GENERALIST, handle_of(ppocr()));
    routes.set_router(Some(fixture_router()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(inference::serve_with_routes(
        listener,
        specialist.clone(),
        routes.clone(),
        ServeLimits::default(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    (Server::from_parts(addr, stop, task), routes, specialist)
}

fn crop(h: u64, w: u64) -> Value {
    let n = (3 * h * w) as usize;
    json!({ "inputs": [{ "name": "x", "shape": [1, 3, h, w], "datatype": "FP32", "data": vec![0.5f32; n] }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crop_in_the_specialists_niche_goes_to_it_and_others_to_the_generalist() {
    let (server, _routes, _) = routed().await;
    let (status, body) = server.infer(ROUTE, &crop(48, 192)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["model_name"].as_str(), body["model_version"].as_str()), (Some(PPOCR), Some("2.0.1")));
    assert_eq!(body["parameters"], json!({ "route": ROUTE }), "no fallback: {body}");
    // Outside the niche: the generalist answers, and that is routing, not a fallback.
    let (status, body) = server.infer(ROUTE, &crop(32, 100)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"].as_str(), Some("2.0.0"));
    assert_eq!(body["parameters"], json!({ "route": ROUTE }));
    // A model name still addresses the model, with no route parameters.
    let (status, body) = server.infer(PPOCR, &crop(48, 192)).await;
    assert_eq!((status, body["model_version"].as_str(), body.get("parameters")), (200, Some("2.0.1"), None));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_specialist_falls_back_with_no_failed_request() {
    let (server, routes, specialist) = routed().await;
    let addr = server.addr;
    let sent = Arc::new(AtomicU64::new(0));
    let revoked = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (sent, revoked) = (sent.clone(), revoked.clone());
        clients.spawn(async move {
            let body = crop(48, 192).to_string();
            let mut answers = Vec::new();
            for _ in 0..40 {
                let after = revoked.load(Ordering::SeqCst);
                sent.fetch_add(1, Ordering::SeqCst);
                let (status, answer) = http(addr, "POST", &format!("/v2/models/{ROUTE}/infer"), body.as_bytes()).await;
                answers.push((after, status, answer));
            }
            answers
        });
    }
    // Mid-load, the hub revokes the specialist: the driver marks it and stops serving it (as it does on a
    // revocation), while requests are in flight on it.
    while sent.load(Ordering::SeqCst) < 80 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    routes.mark(SPECIALIST, Some(Skip::Revoked));
    specialist.clear();
    revoked.store(true, Ordering::SeqCst);

    let mut by = std::collections::BTreeMap::<(bool, String, String), u64>::new();
    while let Some(answers) = clients.join_next().await {
        for (after, status, answer) in answers.unwrap() {
            assert_eq!(status, 200, "a failed request: {answer}");
            let version = answer["model_version"].as_str().unwrap_or_default().to_owned();
            let reason = answer["parameters"]["fallback_reason"].as_str().unwrap_or("-").to_owned();
            *by.entry((after, version, reason)).or_default() += 1;
        }
    }
    // Before: the specialist; after: the generalist, saying why.
    assert!(by.get(&(false, "2.0.1".into(), "-".into())).is_some_and(|n| *n > 0), "{by:?}");
    let after: Vec<_> = by.iter().filter(|((after, ..), _)| *after).collect();
    assert!(!after.is_empty(), "{by:?}");
    for ((_, version, reason), _) in &after {
        assert_eq!((version.as_str(), reason.as_str()), ("2.0.0", "revoked"), "{by:?}");
    }
    let quality = routes.quality().remove(ROUTE).expect("counted");
    assert_eq!((quality.requests, quality.unanswered), (240, 0));
    assert!(quality.fallbacks().get(&Skip::Revoked).is_some_and(|n| *n > 0), "{quality:?}");
    let c = quality.concentration().expect("answers");
    assert!(c.hhi > 0.0 && c.top_share >= 0.5, "{c:?}");
    // The same figures on /metrics.
    let (status, _, text) = http_raw(addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(text).unwrap();
    assert_eq!(status, 200);
    let fallbacks = format!(
        "outpost_agent_route_fallbacks_total{{route=\"{ROUTE}\",candidate=\"{GENERALIST}\",reason=\"revoked\"}} {}",
        quality.fallbacks()[&Skip::Revoked]
    );
    let requests = format!("outpost_agent_route_requests_total{{route=\"{ROUTE}\"}} 240");
    for line in [fallbacks.as_str(), requests.as_str(), "outpost_agent_route_hhi{route=\"text-direction\"}"] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_candidate_can_serve_is_a_503_with_every_reason() {
    let (server, routes, _) = routed().await;
    routes.mark(SPECIALIST, Some(Skip::Revoked));
    routes.mark(GENERALIST, Some(Skip::RefusedByPolicy));
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), server.infer(ROUTE, &crop(48, 192)))
        .await
        .expect("answered, never a hang");
    assert_eq!(status, 503, "{body}");
    let text = error_text(&body);
    for reason in ["ocr.text-direction: revoked", "ocr.text-direction.any-size: refused_by_policy"] {
        assert!(text.contains(reason), "{reason} missing from {text}");
    }
    // Back in service, the route answers again.
    routes.mark(GENERALIST, None);
    assert_eq!(server.infer(ROUTE, &crop(48, 192)).await.0, 200);
    server.stop().await;
}
