//! The router's rules, its choice of candidate per request, the circuit breaker and route quality: a router whose
//! route has no covering fallback or names an unserved capability is refused; a specialist out of service passes
//! its requests to the fallback with the reason; a tripped breaker recovers after its cool-down.

use std::path::Path;
use std::time::Duration;

use outpost_shared::manifest::{Contract, Dim, ElementType, TensorSpec};
use outpost_shared::route::breaker::{Admission, Breaker, BreakerPolicy, BreakerState};
use outpost_shared::route::quality::RouteQuality;
use outpost_shared::route::select::{RequestFacts, Skip, plan};
use outpost_shared::route::{Router, RouterError};

const SPECIALIST: &str = "ocr.text-direction";
const GENERALIST: &str = "ocr.text-direction.any-size";

fn fixture() -> Router {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers/ocr-direction.toml");
    Router::from_toml(&std::fs::read_to_string(&path).expect("fixture"), &path).expect("the fixture router parses")
}

fn dims(d: &[&str]) -> Vec<Dim> {
    d.iter().map(|s| s.parse::<u64>().map_or_else(|_| Dim::Symbol((*s).into()), Dim::Fixed)).collect()
}

fn contract(input: &[&str]) -> Contract {
    let spec =
        |name: &str, shape| TensorSpec { name: name.into(), dtype: ElementType::F32, shape, allow_non_finite: false };
    Contract {
        inputs: vec![spec("x", dims(input))],
        outputs: vec![spec("save_infer_model/scale_0.tmp_1", dims(&["N", "2"]))],
    }
}

/// The capabilities the fixture's channels serve: the fixed-shape specialist and the any-size generalist.
fn served(capability: &str) -> Option<Contract> {
    match capability {
        SPECIALIST => Some(contract(&["N", "3", "48", "192"])),
        GENERALIST => Some(contract(&["N", "3", "H", "W"])),
        _ => None,
    }
}

#[test]
fn the_fixture_router_passes_the_publish_checks_and_signs_as_canonical_cbor() {
    let router = fixture();
    router.check(served).expect("specialist niche covered, fallback covers the route");
    let cbor = router.to_cbor().expect("encodes");
    assert_eq!(Router::from_cbor(&cbor).expect("decodes"), router);
    assert_eq!(router.capabilities(), [SPECIALIST, GENERALIST]);
}

#[test]
fn router_rules_without_a_covering_fallback_are_refused() {
    // The fixed-shape model as the fallback of an any-size route: a 32x100 crop would have no one to answer it.
    let mut router = fixture();
    router.routes[0].candidates[1].capability = SPECIALIST.into();
    let err = router.check(served).expect_err("refused");
    assert!(
        matches!(&err, RouterError::FallbackDoesNotCover { route, capability, .. }
            if route == "text-direction" && capability == SPECIALIST),
        "{err}"
    );

    // A last candidate with a niche is no fallback at all.
    let mut router = fixture();
    router.routes[0].candidates.remove(1);
    assert_eq!(
        router.check(served),
        Err(RouterError::NoFallback { route: "text-direction".into(), last: Some(SPECIALIST.into()) })
    );

    // A specialist whose contract does not cover its niche.
    let mut router = fixture();
    router.routes[0].candidates[0].niche.shapes.insert("x".into(), dims(&["N", "3", "32", "100"]));
    assert!(matches!(router.check(served), Err(RouterError::NicheNotCovered { .. })));
}

#[test]
fn a_router_naming_a_capability_no_channel_serves_is_refused() {
    let mut router = fixture();
    router.routes[0].candidates[0].capability = "ocr.text-direction.tiny".into();
    assert_eq!(
        router.check(served),
        Err(RouterError::UnservedCapability {
            route: "text-direction".into(),
            capability: "ocr.text-direction.tiny".into()
        })
    );
}

#[test]
fn a_router_toml_with_no_fallback_is_refused_when_read() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers/ocr-direction.toml"))
            .expect("fixture");
    let cut = text.find("# The fallback").expect("the fixture has a fallback");
    let err = Router::from_toml(&text[..cut], Path::new("r.toml")).expect_err("refused");
    assert!(err.to_string().contains("no fallback"), "{err}");
}

fn request(h: u64, w: u64) -> RequestFacts {
    RequestFacts { shapes: [("x".to_owned(), vec![1, 3, h, w])].into(), parameters: Default::default() }
}

#[test]
fn a_specialist_out_of_service_passes_its_niche_to_the_fallback_with_the_reason() {
    let router = fixture();
    let route = router.route("text-direction").expect("route");
    // In its niche and usable: the specialist first, the fallback behind it.
    let p = plan(route, &request(48, 192), |_| Ok(()));
    assert_eq!((p.order.as_slice(), p.fallback_reason(0)), (&[0, 1][..], None));
    // Outside its niche: the generalist answers, and that is routing, not a fallback.
    let p = plan(route, &request(32, 100), |_| Ok(()));
    assert_eq!((p.order.as_slice(), p.fallback_reason(1)), (&[1][..], None));
    // Every way the specialist can be out of service hands the request on with its reason.
    for reason in [
        Skip::NotInstalled,
        Skip::NotReady,
        Skip::HealthFailed,
        Skip::RefusedByPolicy,
        Skip::Revoked,
        Skip::CircuitOpen,
    ] {
        let p = plan(route, &request(48, 192), |c| if c.capability == SPECIALIST { Err(reason) } else { Ok(()) });
        assert_eq!((p.order.as_slice(), p.fallback_reason(1)), (&[1][..], Some(reason)));
    }
    // A specialist erring on the request itself: the next one answers it.
    let mut p = plan(route, &request(48, 192), |_| Ok(()));
    p.erred(0);
    assert_eq!((p.order.as_slice(), p.fallback_reason(1)), (&[1][..], Some(Skip::Erred)));
}

#[test]
fn a_request_no_candidate_can_serve_gets_every_reason() {
    let router = fixture();
    let route = router.route("text-direction").expect("route");
    let p = plan(route, &request(48, 192), |c| {
        Err(if c.capability == SPECIALIST { Skip::Revoked } else { Skip::NotInstalled })
    });
    assert!(p.order.is_empty());
    assert_eq!(p.skipped, [(0, Skip::Revoked), (1, Skip::NotInstalled)]);
}

#[test]
fn a_tripped_circuit_breaker_recovers_after_its_cool_down() {
    let policy = BreakerPolicy {
        failures_to_trip: 3,
        cool_down: Duration::from_secs(30),
        latency_budget: Some(Duration::from_millis(25)),
    };
    let mut b = Breaker::new(policy);
    let t = |s: u64| Duration::from_secs(1000 + s);
    let fast = Duration::from_millis(2);
    // Two errors and an answer over budget in a row trip it; a good answer between would have reset the count.
    assert_eq!(b.admit(t(0)), Admission::Allowed);
    assert_eq!(b.record(t(0), false, fast), None);
    assert_eq!(b.record(t(1), true, fast), None);
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    b.record(t(2), false, fast);
    b.record(t(3), false, fast);
    assert_eq!(b.record(t(4), true, Duration::from_millis(80)), Some(BreakerState::Open { until: t(34) }));
    // Open: nothing goes to the candidate for the cool-down, and the breaker says when it ends.
    assert_eq!(b.admit(t(20)), Admission::Refused);
    assert_eq!(b.next_deadline(), Some(t(34)));
    // After it, one request probes; the others still go elsewhere.
    assert_eq!(b.admit(t(34)), Admission::Probe);
    assert_eq!(b.admit(t(35)), Admission::Refused);
    // A failed probe opens it for another cool-down...
    assert_eq!(b.record(t(35), false, fast), Some(BreakerState::Open { until: t(65) }));
    assert_eq!(b.admit(t(64)), Admission::Refused);
    // ...a probe that never answers lets another go after a cool-down...
    assert_eq!(b.admit(t(65)), Admission::Probe);
    assert_eq!(b.admit(t(94)), Admission::Refused);
    assert_eq!(b.admit(t(95)), Admission::Probe);
    // ...and a good probe closes it: every request goes to the candidate again.
    assert_eq!(b.record(t(96), true, fast), Some(BreakerState::Closed { failures: 0 }));
    assert_eq!(b.admit(t(97)), Admission::Allowed);
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn route_quality_shows_a_fallback_carrying_the_traffic() {
    let mut q = RouteQuality::default();
    for _ in 0..2 {
        q.record(Some((SPECIALIST, Duration::from_millis(3))), &[], None);
    }
    for _ in 0..7 {
        q.record(Some((GENERALIST, Duration::from_millis(9))), &[], Some(Skip::Revoked));
    }
    q.record(Some((GENERALIST, Duration::from_millis(9))), &[SPECIALIST], Some(Skip::Erred));
    q.record(None, &[], None);
    assert_eq!((q.requests, q.unanswered), (11, 1));
    assert_eq!(q.fallbacks(), [(Skip::Revoked, 7), (Skip::Erred, 1)].into());
    assert_eq!(q.candidates[SPECIALIST].errors, 1);
    let c = q.concentration().expect("answers");
    assert_eq!(c.top, GENERALIST);
    assert!((c.top_share - 0.8).abs() < 1e-9, "{c:?}");
    assert!((c.hhi - (0.8f64.powi(2) + 0.2f64.powi(2))).abs() < 1e-9, "{c:?}");
    let p95 = q.candidates[GENERALIST].latency.quantile_us(0.95).expect("latencies");
    assert!((8_192..=10_240).contains(&p95), "9 ms is in the 8.2–10.2 ms bucket: {p95}");
    let mut fleet = RouteQuality::default();
    fleet.merge(&q);
    fleet.merge(&q);
    assert_eq!((fleet.requests, fleet.fallbacks()[&Skip::Revoked]), (22, 14));
}

#[test]
fn route_quality_travels_as_telemetry_and_a_device_cannot_claim_more_answers_than_requests() {
    use outpost_shared::telemetry::{Batch, BatchLimits, Event, EventKind};
    let mut q = RouteQuality::default();
    q.record(Some((SPECIALIST, Duration::from_millis(3))), &[], None);
    q.record(Some((GENERALIST, Duration::from_millis(9))), &[SPECIALIST], Some(Skip::Erred));
    let event = |quality| Event {
        seq: 1,
        at: 1_800_000_000,
        kind: EventKind::RouteQuality { route: "text-direction".into(), quality },
    };
    let batch = Batch { stream: 7, first_seq: 1, events: vec![event(q.clone())], dropped: 0 };
    let bytes = batch.encode(&BatchLimits::default()).expect("encodes");
    assert_eq!(Batch::decode(&bytes, &BatchLimits::default()).expect("decodes"), batch);

    let mut lying = q;
    lying.requests = 1; // two answers, one request
    let batch = Batch { stream: 7, first_seq: 1, events: vec![event(lying)], dropped: 0 };
    // Encoding runs the checks the hub's decode runs.
    assert!(
        matches!(
            batch.encode(&BatchLimits::default()),
            Err(outpost_shared::telemetry::TelemetryError::Invalid { field: "quality.requests", .. })
        ),
        "a batch claiming more answers than requests is refused"
    );
}
