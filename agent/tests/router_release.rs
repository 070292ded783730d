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
use outpost_shared::clock::Clock;
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
