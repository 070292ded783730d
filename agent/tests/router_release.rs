//! A router release end to end: the hub assigns the channel's router beside the model, the agent fetches and
//! verifies it like any package and its inference API routes by it; a newer router replaces the rules, and when
//! that router is revoked the device goes back to the router before — the model it serves untouched. A model the
//! device stops serving tells its routes why (revoked, or its release failed on the device).

mod inference_support;
mod support;

use std::time::Duration;

use inference_support::{Arc, ModelHandle, ServeLimits, TcpListener, http, inference, json};
use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_agent::inference::Routes;
use outpost_hub::director::Director;
use outpost_hub::rollouts;
use outpost_shared::Digest;
use outpost_shared::clock::Clock;
use outpost_shared::manifest::RiskTier;
use outpost_shared::rollout::{Command, DeviceState, Outcome, Plan, Release, State};
use outpost_shared::testkit::AffineManifest;
use support::World;

/// Router rules `version` with one route, `route`, over the affine capability (x[N, 4] → y[N, 4]): a specialist nobody
/// publishes for requests asking the `fast` tier, and the affine model as the fallback.
fn rules(version: &str, route: &str) -> String {
    format!(
        r#"name = "affine-router"
version = "{version}"
[[route]]
name = "{route}"
[[route.contract.inputs]]
name = "x"
dtype = "f32"
shape = ["N", 4]
[[route.contract.outputs]]
name = "y"
dtype = "f32"
shape = ["N", 4]
[[route.candidate]]
capability = "test.affine.fast"
niche = {{ cost_tier = "fast" }}
[[route.candidate]]
capability = "test.affine"
"#
    )
}

/// Adds router `version` with `route` and publishes it on stable.
fn publish_router(w: &World, version: &str, route: &str) -> outpost_shared::Digest {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers/ocr-router.toml"),
    )
    .unwrap()
    .replace("name = \"ocr-router\"", "name = \"affine-router\"")
    .replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    let (r, m) =
        (w.tmp.path().join(format!("rules-{version}.toml")), w.tmp.path().join(format!("router-{version}.toml")));
    std::fs::write(&r, rules(version, route)).unwrap();
    std::fs::write(&m, manifest).unwrap();
    let reg = w.registry();
    let d = reg.add(&r, &m).unwrap().digest;
    let (record, manifest) = (reg.record(&d).unwrap().unwrap(), reg.manifest(&d).unwrap().1);
    drop(reg);
    w.publish_as(&record, &manifest, "stable");
    d
}

async fn infer(addr: std::net::SocketAddr, name: &str, tier: Option<&str>) -> (u16, serde_json::Value) {
    let mut body =
        json!({ "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 1.0, 1.0, 1.0] }] });
    if let Some(t) = tier {
        body["parameters"] = json!({ "cost_tier": t });
    }
    http(addr, "POST", &format!("/v2/models/{name}/infer"), body.to_string().as_bytes()).await
}

/// A device on `w`'s hub serving its inference API through routes: the agent, its routes and the API's address.
async fn routed_device(w: &World) -> (Agent, Arc<Routes>, std::net::SocketAddr, String) {
    let (hub, hub_key) = w.serve().await;
    let dev = w.tmp.path().join("dev");
    let key = init_device(&dev, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text =
        config::render(&hub.to_string(), &hub_key.to_hex()).replace("health_inferences = 20", "health_inferences = 1");
    std::fs::write(dev.join("agent.toml"), &text).unwrap();
    let models = Arc::new(ModelHandle::new());
    let mut agent =
        Agent::open_with(AgentConfig::parse(&text, &dev.join("agent.toml")).unwrap(), w.clock.clone(), models.clone())
            .unwrap();
    let routes = Arc::new(Routes::new(w.clock.clone(), Default::default()));
    routes.serve_handle(models.clone());
    agent.set_routes(routes.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let limits = ServeLimits::default();
    tokio::spawn(inference::serve_with_routes(listener, models, routes.clone(), limits, None, std::future::pending()));
    (agent, routes, api, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_model_is_named_revoked_by_the_routes_it_served() {
    let w = World::new();
    let (mut agent, _routes, api, _) = routed_device(&w).await;
    let (model, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    publish_router(&w, "1.0.0", "scale");
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    assert_eq!(infer(api, "scale", None).await.0, 200);

    // Its only model revoked, the device stops serving it: the route says why rather than "not ready".
    Director::new(&w.repo).revoke(model, "bad weights", w.clock.wall()).unwrap();
    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|m| *m.digest()), None);
    let (status, body) = infer(api, "scale", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("test.affine: revoked"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_release_rolls_back_alone() {
    let w = World::new();
    let (mut agent, routes, api, text) = routed_device(&w).await;
    let dev = w.tmp.path().join("dev");

    // The model and router 1.0.0 (route `scale`): the route answers through its fallback, the model.
    let (model, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    publish_router(&w, "1.0.0", "scale");
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    let (status, body) = infer(api, "scale", None).await;
    assert_eq!((status, body["model_name"].as_str()), (200, Some("affine")), "{body}");
    assert_eq!(body["parameters"], json!({ "route": "scale" }), "{body}");
    // Asking for the fast tier: its specialist is not installed, the fallback answers and says why.
    let (status, body) = infer(api, "scale", Some("fast")).await;
    assert_eq!((status, body["parameters"]["fallback_reason"].as_str()), (200, Some("not_installed")), "{body}");

    // What the route served reaches the hub as telemetry at the next check: fleet status reads it from there.
    agent.check().await.unwrap();
    let store = outpost_hub::telemetry::TelemetryStore::open(&w.dir, w.clock.clone()).unwrap();
    let by_device = store.aggregate(outpost_hub::telemetry::GroupBy::Device, &Default::default()).unwrap();
    let scale = by_device.iter().find_map(|g| g.summary.routes.get("scale")).expect("route telemetry stored");
    assert_eq!((scale.requests, scale.unanswered), (2, 0));
    assert_eq!(scale.candidates["test.affine"].fallbacks.values().sum::<u64>(), 1, "{scale:?}");
    drop(store);

    // Router 1.1.0 renames the route: the rules change, the model does not.
    w.clock.advance(Duration::from_secs(2));
    let v2 = publish_router(&w, "1.1.0", "scale-v2");
    agent.check().await.unwrap();
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.1.0".to_owned()));
    assert_eq!(infer(api, "scale-v2", None).await.0, 200);
    assert_eq!(infer(api, "scale", None).await.0, 404, "no route or model of that name now");

    // Router 1.1.0 is revoked: the device routes by 1.0.0 again, and its model was never touched.
    Director::new(&w.repo).revoke(v2, "route renamed by mistake", w.clock.wall()).unwrap();
    agent.check().await.unwrap();
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.0.0".to_owned()));
    assert_eq!(infer(api, "scale", None).await.0, 200);
    assert_eq!(infer(api, "scale-v2", None).await.0, 404);
    assert_eq!(agent.active().map(|m| *m.digest()), Some(model));
    assert!(agent.state().rolled_back.is_empty(), "no model rolled back: {:?}", agent.state().rolled_back);
    assert_eq!(agent.state().last_error, None);

    // A restart routes at once by the router kept on disk.
    agent.shutdown().unwrap();
    let models = Arc::new(ModelHandle::new());
    let mut agent =
        Agent::open_with(AgentConfig::parse(&text, &dev.join("agent.toml")).unwrap(), w.clock.clone(), models).unwrap();
    let routes = Arc::new(Routes::new(w.clock.clone(), Default::default()));
    agent.set_routes(routes.clone());
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.0.0".to_owned()));
}

/// One stage over every device that soaks for an hour: the releases stay running while the test looks at them.
const PLAN: &str = "name = \"all\"\n[[stage]]\nname = \"all\"\ncohort_percent = 100\nmin_devices = 1\n\
                    soak_secs = 3600\nsuccess_percent = 100\nerror_percent = 99\n";

/// Starts a release of `package` (rollback path `last_good`) on stable under [`PLAN`], as `release start` does.
fn start(w: &World, package: Digest, last_good: Digest, label: &str, line: rollouts::Line) -> String {
    let release =
        Release { id: String::new(), package, last_good: Some(last_good), risk: RiskTier::Low, signers: vec![] };
    let plan = Plan::from_toml(PLAN, std::path::Path::new("plan.toml")).unwrap();
    rollouts::start_line(&w.registry(), release, label, line, plan, "stable", w.clock.wall()).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_release_under_a_plan_rolls_back_alone() {
    let w = World::new();
    let (mut agent, routes, api, _) = routed_device(&w).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let r1 = publish_router(&w, "1.0.0", "scale");
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.0.0".to_owned()));

    // Router 1.1.0 and model 1.1.0, each under its own release on the same channel: neither supersedes the other.
    w.clock.advance(Duration::from_secs(2));
    let r2 = publish_router(&w, "1.1.0", "scale-v2");
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let router_line = rollouts::Line { capability: Some("router.ocr".into()), router: true };
    let router_release = start(&w, r2, r1, "affine-router@1.1.0", router_line);
    let model_line = rollouts::Line { capability: Some("test.affine".into()), router: false };
    let model_release = start(&w, v2, v1, "affine@1.1.0", model_line);
    let state = |id: &str| rollouts::get(&w.registry(), id).unwrap().rollout.state;
    assert_eq!(state(&router_release), State::Running, "a model release does not supersede a router release");
    assert_eq!(state(&model_release), State::Running);
    w.clock.advance(Duration::from_secs(2));

    // The device takes both: the router release is judged on the router it reports, the model's on its model.
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    agent.check().await.unwrap();
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.1.0".to_owned()));
    assert_eq!(agent.active().map(|m| *m.digest()), Some(v2));
    let key = w.registry().devices().unwrap().remove(0).key; // the only device
    let outcome = |id: &str| rollouts::get(&w.registry(), id).unwrap().rollout.devices[&key].state.clone();
    assert_eq!(outcome(&router_release), DeviceState::Reported(Outcome::Installed));
    assert_eq!(outcome(&model_release), DeviceState::Reported(Outcome::Installed));

    // The router release is aborted: the device goes back to router 1.0.0 (counted as recovered), and the model
    // release on the same channel is untouched, its model still serving.
    let abort = Command::Abort { reason: "route renamed by mistake".into() };
    rollouts::command(&w.registry(), &router_release, abort, w.clock.wall()).unwrap();
    w.clock.advance(Duration::from_secs(2));
    agent.check().await.unwrap();
    assert_eq!(routes.router().map(|r| r.version.clone()), Some("1.0.0".to_owned()));
    assert_eq!(infer(api, "scale", None).await.0, 200);
    assert_eq!(agent.active().map(|m| *m.digest()), Some(v2), "the model is not rolled back");
    assert!(agent.state().rolled_back.is_empty(), "{:?}", agent.state().rolled_back);
    let aborted = rollouts::get(&w.registry(), &router_release).unwrap().rollout;
    assert!(matches!(aborted.state, State::Aborted { .. }), "{:?}", aborted.state);
    assert_eq!(aborted.recovery.map(|r| r.recovered), Some(1), "the device is back on the router before");
    assert_eq!(state(&model_release), State::Running, "the model release goes on");
    assert_eq!(outcome(&model_release), DeviceState::Reported(Outcome::Installed));
}
